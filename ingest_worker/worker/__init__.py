"""`ingest-worker worker`: decode, decide, resolve in batches, emit exactly once."""
