-- wrk script: POST one event per request to the ingest route.
-- INGEST_PATH and INGEST_TOKEN come from the environment (set by bench/api.sh).
wrk.method = "POST"
wrk.path = os.getenv("INGEST_PATH")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("INGEST_TOKEN")
wrk.body = '{"integration_event_type_id": 1, "timestamp": "2024-06-01T12:00:00Z", ' ..
  '"attributes": {"store_id": "S042", "lane": 3, "total": 12.5}, "device_external_id": "S042:3"}'
