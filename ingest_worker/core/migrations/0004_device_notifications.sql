-- Workers keep resolved devices in memory; a deleted device must leave every copy at once.
CREATE TRIGGER devices_notify AFTER DELETE ON devices
    FOR EACH ROW EXECUTE FUNCTION notify_change();
