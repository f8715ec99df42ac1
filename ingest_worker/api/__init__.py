"""The HTTP shim: ingest, import, management, health (`ingest-worker api`)."""
