-- The wake-up, inlined into every capture function as {wake_up} (a nested call would cost
-- every trading statement). Runs right after a mark: FOUND says the mark inserted a row.
-- Armed (the daemon's setval(…, 1, false)), the sequence reads NULL: only then is it drawn, and
-- the mark that draws 1 notifies. Disarmed, the read is all it costs — a shared lock on the
-- sequence's one buffer, where a draw takes it exclusively and writes it, which every trading
-- backend would queue for (docs/benchmarks.md). Two marks that both read NULL both draw; one of
-- them draws 1.
-- riskd.notify_queue_limit is read only when about to notify, and a value that is not a plain
-- number counts as the default: a typo in a setting must never fail a trade (I1).
IF FOUND
       AND pg_catalog.pg_sequence_last_value('riskd.wakeup'::pg_catalog.regclass) IS NULL
       AND pg_catalog.nextval('riskd.wakeup'::pg_catalog.regclass) OPERATOR(pg_catalog.=) 1
       AND pg_catalog.pg_notification_queue_usage() OPERATOR(pg_catalog.<) (CASE
           WHEN pg_catalog.current_setting('riskd.notify_queue_limit', true)
                OPERATOR(pg_catalog.~) '^ *[0-9]{0,6}[.]?[0-9]{1,12} *$'
           THEN pg_catalog.float8(pg_catalog.current_setting('riskd.notify_queue_limit', true))
           ELSE 0.5::pg_catalog.float8 END)
    THEN
        PERFORM pg_catalog.pg_notify('riskd_changes', '');
    END IF;
