-- The wake-up, inlined into every capture function as {wake_up} (a nested call would cost
-- every trading statement). Runs right after the mark: FOUND says the mark inserted a row.
IF FOUND
       AND pg_catalog.nextval('riskd.wakeup'::pg_catalog.regclass) OPERATOR(pg_catalog.=) 1
       AND pg_catalog.pg_notification_queue_usage() OPERATOR(pg_catalog.<) pg_catalog.float8(
           COALESCE(NULLIF(pg_catalog.current_setting('riskd.notify_queue_limit', true), ''),
                    '0.5'))
    THEN
        PERFORM pg_catalog.pg_notify('riskd_changes', '');
    END IF;
