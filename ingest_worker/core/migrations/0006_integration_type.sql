-- Spot's integration types: 1 custom (the default), 2 pos. A constant default: no rewrite,
-- and the code before this migration keeps working beside it.
ALTER TABLE integrations
    ADD COLUMN integration_type_id smallint NOT NULL DEFAULT 1
    CHECK (integration_type_id IN (1, 2));
