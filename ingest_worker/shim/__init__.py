"""`ingest-worker api`: the HTTP shim (routes, auth, rate limit, publish, management store)."""
