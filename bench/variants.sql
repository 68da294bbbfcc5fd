-- Capture designs the capture benchmark compares against riskd's own (bench/capture.py).
-- Installed beside riskd's triggers, disabled; the benchmark enables one design per round.
-- Reference schema names; benchmark-only, never installed by riskd.

-- The floor of any trigger design: the same two row triggers, doing nothing.
CREATE FUNCTION bench_nothing() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RETURN NULL;
END $$;
CREATE TRIGGER bench_floor_positions AFTER UPDATE ON public.positions
    FOR EACH ROW EXECUTE FUNCTION bench_nothing();
CREATE TRIGGER bench_floor_accounts AFTER UPDATE ON public.trading_accounts
    FOR EACH ROW EXECUTE FUNCTION bench_nothing();

-- The seed design: pg_notify per changed row.
CREATE FUNCTION bench_notify_position() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('riskd_changes', NEW."tradingAccountId");
    RETURN NULL;
END $$;
CREATE FUNCTION bench_notify_account() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('riskd_changes', NEW.id);
    RETURN NULL;
END $$;
CREATE TRIGGER bench_notify_positions AFTER UPDATE OF quantity, "unrealizedPnL" ON public.positions
    FOR EACH ROW WHEN (OLD.quantity IS DISTINCT FROM NEW.quantity
                       OR OLD."unrealizedPnL" IS DISTINCT FROM NEW."unrealizedPnL")
    EXECUTE FUNCTION bench_notify_position();
CREATE TRIGGER bench_notify_accounts AFTER UPDATE OF balance ON public.trading_accounts
    FOR EACH ROW WHEN (OLD.balance IS DISTINCT FROM NEW.balance)
    EXECUTE FUNCTION bench_notify_account();

-- riskd's mark as an AFTER row trigger on position updates (riskd installs a statement trigger
-- with transition tables): the other half of "measure both".
CREATE FUNCTION bench_mark_position_row() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO riskd.dirty_accounts (account_id) VALUES (NEW."tradingAccountId");
    IF pg_catalog.nextval('riskd.wakeup'::pg_catalog.regclass) OPERATOR(pg_catalog.=) 1
       AND pg_catalog.pg_notification_queue_usage() OPERATOR(pg_catalog.<) 0.5 THEN
        PERFORM pg_catalog.pg_notify('riskd_changes', '');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER bench_row_positions AFTER UPDATE OF quantity, "unrealizedPnL" ON public.positions
    FOR EACH ROW WHEN (OLD.quantity IS DISTINCT FROM NEW.quantity
                       OR OLD."unrealizedPnL" IS DISTINCT FROM NEW."unrealizedPnL")
    EXECUTE FUNCTION bench_mark_position_row();

