-- The event store: every revision of every event the worker decided, one row each.
--
-- Revision 0 is a rejected event (`error`: status, code, message, details); 1 the accepted
-- event (`created`); 2, 3 ... its updates and, last, its delete. `current` marks the one
-- listable row of an event: its latest revision, unless that is a delete. Every revision of
-- an event shares its partition key, `received_at_ms` (when its first one was received),
-- so retention drops whole events by dropping whole days (`ingest_event_partitions`).
-- `raw_key` is the key of the event's raw record, so that its updates are published to the
-- same raw partition, after it.
-- `source_partition`/`source_offset` name the raw record that made the revision: a replayed
-- batch finds its own revisions there and writes nothing twice.
-- No foreign keys (they would cost every insert a lookup and a lock): deleting a device, an
-- event type or an integration deletes its events in the same transaction.
-- Times are epoch integers (`_ms`: milliseconds, `timestamp_us`: microseconds), as the
-- worker has them: its rows go in by COPY as they are (measured: half the server's work of
-- converting them to timestamptz on the way in).

CREATE TABLE events (
    integration_id      integer NOT NULL,
    id                  uuid NOT NULL,
    revision            integer NOT NULL CHECK (revision >= 0),
    received_at_ms      bigint NOT NULL,
    op                  text NOT NULL CHECK (op IN ('rejected', 'created', 'updated', 'deleted')),
    current             boolean NOT NULL,
    event_type_id       integer,
    event_type_version  integer,
    device_id           integer,
    device_external_id  text,
    device_resolution   text,
    timestamp_us        bigint,
    duration_ms         bigint,
    buffer_ms           bigint,
    -- json, not jsonb: given back as sent (jsonb would rewrite numbers and key order).
    attributes          json,
    revision_received_at_ms bigint NOT NULL,
    idempotency_key     text,
    traceparent         text,
    raw_key             bytea,
    source_partition    integer NOT NULL,
    source_offset       bigint NOT NULL,
    error               json,  -- json: a message may quote a NUL, which jsonb refuses
    created_ms          bigint NOT NULL,
    updated_ms          bigint NOT NULL DEFAULT (extract(epoch FROM now()) * 1000)::bigint,
    PRIMARY KEY (integration_id, id, revision, received_at_ms),
    CHECK ((revision = 0) = (op = 'rejected')),
    CHECK (NOT current OR op IN ('created', 'updated'))
) PARTITION BY RANGE (received_at_ms);

-- Spot's filters, in timestamp order: by device, or all of an integration (an event type
-- filter reads the latter; each index costs every insert, measured). The primary key's
-- prefix finds an integration's rows, and an event type's for a cascade.
CREATE INDEX events_by_device ON events (integration_id, device_id, timestamp_us, id);
CREATE INDEX events_by_time ON events (integration_id, timestamp_us, id) WHERE current;

-- Rows whose day has no partition (a received-at far from today): moved out when their day's
-- partition is made, deleted row by row once past the retention.
CREATE TABLE events_default PARTITION OF events DEFAULT;

-- Epoch milliseconds at the start of a UTC day.
CREATE FUNCTION ingest_day_ms(day date) RETURNS bigint LANGUAGE sql IMMUTABLE AS $$
    SELECT ((day - date '1970-01-01')::bigint) * 86400000
$$;

-- Make the partitions of the days around today and drop those past the retention. Safe to run
-- from any number of workers at once: one at a time (an advisory lock; a worker that cannot
-- take it within its lock timeout tries again later). Workers keep new rows within yesterday
-- to tomorrow, so the default partition only holds rows written while this was behind.
CREATE FUNCTION ingest_event_partitions(retention_days integer, ahead_days integer DEFAULT 2)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    today date := (now() AT TIME ZONE 'UTC')::date;
    oldest date := today - retention_days;
    day date;
    part record;
BEGIN
    PERFORM pg_advisory_xact_lock(x'1E57'::integer);
    FOR part IN
        SELECT c.relname, to_date(substr(c.relname, 9), 'YYYYMMDD') AS day
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'events'::regclass AND c.relname ~ '^events_p[0-9]{8}$'
    LOOP
        IF part.day + 1 <= oldest THEN
            EXECUTE format('DROP TABLE %I', part.relname);
        END IF;
    END LOOP;
    DELETE FROM events_default WHERE received_at_ms < ingest_day_ms(oldest);
    FOR day IN SELECT generate_series(today - 1, today + ahead_days, interval '1 day')::date LOOP
        PERFORM ingest_event_partition(day);
    END LOOP;
END $$;

-- The partition of one UTC day, made if missing; rows of that day waiting in the default
-- partition move into it.
CREATE FUNCTION ingest_event_partition(day date) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    name text := 'events_p' || to_char(day, 'YYYYMMDD');
    lo bigint := ingest_day_ms(day);
    hi bigint := ingest_day_ms(day + 1);
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name);
    EXECUTE format(
        'WITH moved AS (DELETE FROM events_default WHERE received_at_ms >= $1 '
        'AND received_at_ms < $2 RETURNING *) INSERT INTO %I SELECT * FROM moved', name)
        USING lo, hi;
    EXECUTE format('ALTER TABLE events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                   name, lo, hi);
END $$;

SELECT ingest_event_partitions(30);
