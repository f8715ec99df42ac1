-- wrk script: POST one event per request to the ingest route.
-- INGEST_PATH, INGEST_TOKEN and INGEST_TYPE_ID come from the environment (set by bench/api.py).
wrk.method = "POST"
wrk.path = os.getenv("INGEST_PATH")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("INGEST_TOKEN")
wrk.body = '{"integration_event_type_id": ' .. (os.getenv("INGEST_TYPE_ID") or "1") ..
  ', "timestamp": "2024-06-01T12:00:00Z", ' ..
  '"attributes": {"store_id": "S042", "lane": 3, "total": 12.5}, "device_external_id": "S042:3"}'
