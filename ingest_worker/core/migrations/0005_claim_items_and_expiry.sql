-- An import item claims its import's Idempotency-Key together with its index; a single event
-- claims the key alone (index -1). The two can never take each other's claim.
ALTER TABLE idempotency_claims ADD COLUMN item_index integer NOT NULL DEFAULT -1;
ALTER TABLE idempotency_claims DROP CONSTRAINT idempotency_claims_pkey;
ALTER TABLE idempotency_claims ADD PRIMARY KEY (integration_id, key, item_index);

-- Claims expire (INGEST_IDEMPOTENCY_TTL_S); the worker deletes the old ones by this index.
CREATE INDEX idempotency_claims_claimed ON idempotency_claims (claimed);

-- Counting an integration's auto-created devices (INGEST_MAX_AUTO_DEVICES) reads this index.
CREATE INDEX devices_auto_created ON devices (integration_id) WHERE auto_created;
