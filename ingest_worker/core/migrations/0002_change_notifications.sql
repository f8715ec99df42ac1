-- Every change to integrations, event types and tokens is announced on one channel, so API
-- and worker caches refresh within moments instead of polling.

CREATE FUNCTION notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    row_data jsonb := to_jsonb(COALESCE(NEW, OLD));
BEGIN
    PERFORM pg_notify('ingest_changes', jsonb_build_object(
        'table', TG_TABLE_NAME,
        'op', TG_OP,
        'id', row_data -> 'id',
        'integration_id', row_data -> 'integration_id',
        'version', row_data -> 'version'
    )::text);
    RETURN NULL;
END $$;

CREATE TRIGGER integrations_notify AFTER INSERT OR UPDATE OR DELETE ON integrations
    FOR EACH ROW EXECUTE FUNCTION notify_change();
CREATE TRIGGER event_types_notify AFTER INSERT OR UPDATE OR DELETE ON event_types
    FOR EACH ROW EXECUTE FUNCTION notify_change();
CREATE TRIGGER api_tokens_notify AFTER INSERT OR UPDATE OR DELETE ON api_tokens
    FOR EACH ROW EXECUTE FUNCTION notify_change();
