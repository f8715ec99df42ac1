-- Worker bookkeeping that makes replays harmless.

-- The event whose processing inserted an auto-created device: a replayed batch finds the row
-- and still reports `device_created` for that event alone.
ALTER TABLE devices ADD COLUMN created_by_event uuid;

-- One claim per Idempotency-Key and integration, naming the raw record that made it, so a
-- replay of that record is recognised and any other record with the key is a duplicate.
CREATE TABLE idempotency_claims (
    integration_id  integer NOT NULL REFERENCES integrations (id) ON DELETE CASCADE,
    key             text NOT NULL,
    event_id        uuid NOT NULL,
    raw_topic       text NOT NULL,
    raw_partition   integer NOT NULL,
    raw_offset      bigint NOT NULL,
    claimed         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (integration_id, key)
);
