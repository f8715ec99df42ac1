"""The change-notification channel: PostgreSQL NOTIFY on every change to integrations, event
types, devices and tokens (migrations 0002 and 0004), which the shim's token cache and the
worker's catalog follow."""

CHANNEL = "ingest_changes"
