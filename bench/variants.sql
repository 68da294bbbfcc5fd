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

-- riskd's mark as row triggers, the cheapest shape measured for single-row statements: BEFORE
-- (no after-trigger queue entry), no WHEN clause (a WHEN clause is read from the catalog and
-- compiled on every statement, which cost more than the test it saves), the change tested in
-- PL/pgSQL with qualified operators. It marks once per changed row, so a bulk statement marks
-- an account once per position: the other half of "measure both", not a design riskd can ship.
CREATE FUNCTION bench_mark_position_row() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    IF NOT COALESCE(NEW."unrealizedPnL" OPERATOR(pg_catalog.=) OLD."unrealizedPnL",
                    NEW."unrealizedPnL" IS NULL AND OLD."unrealizedPnL" IS NULL)
       OR NOT COALESCE(NEW.quantity OPERATOR(pg_catalog.=) OLD.quantity,
                       NEW.quantity IS NULL AND OLD.quantity IS NULL) THEN
        INSERT INTO riskd.dirty_accounts (account_id) VALUES (NEW."tradingAccountId");
        IF pg_catalog.nextval('riskd.wakeup'::pg_catalog.regclass) OPERATOR(pg_catalog.=) 1
           AND pg_catalog.pg_notification_queue_usage() OPERATOR(pg_catalog.<) 0.5 THEN
            PERFORM pg_catalog.pg_notify('riskd_changes', '');
        END IF;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER bench_row_positions BEFORE UPDATE OF quantity, "unrealizedPnL" ON public.positions
    FOR EACH ROW EXECUTE FUNCTION bench_mark_position_row();
CREATE FUNCTION bench_mark_account_row() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    IF NOT COALESCE(NEW.balance OPERATOR(pg_catalog.=) OLD.balance,
                    NEW.balance IS NULL AND OLD.balance IS NULL) THEN
        INSERT INTO riskd.dirty_accounts (account_id) VALUES (NEW.id);
        IF pg_catalog.nextval('riskd.wakeup'::pg_catalog.regclass) OPERATOR(pg_catalog.=) 1
           AND pg_catalog.pg_notification_queue_usage() OPERATOR(pg_catalog.<) 0.5 THEN
            PERFORM pg_catalog.pg_notify('riskd_changes', '');
        END IF;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER bench_row_accounts BEFORE UPDATE OF balance ON public.trading_accounts
    FOR EACH ROW EXECUTE FUNCTION bench_mark_account_row();

-- The floor of any statement-trigger design on positions: transition tables captured, the
-- function does nothing (beside the do-nothing row trigger on balances).
CREATE FUNCTION bench_nothing_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RETURN NULL;
END $$;
CREATE TRIGGER bench_statement_floor_positions AFTER UPDATE ON public.positions
    REFERENCING OLD TABLE AS riskd_old NEW TABLE AS riskd_new
    FOR EACH STATEMENT EXECUTE FUNCTION bench_nothing_statement();

-- riskd as revision 0004 installed it: the balance trigger BEFORE (revision 0005 fires it
-- AFTER, to read the row as stored), beside riskd's own capture on positions.
CREATE TRIGGER bench_riskd_before_accounts BEFORE UPDATE OF balance ON public.trading_accounts
    FOR EACH ROW EXECUTE FUNCTION riskd.mark_account_balance();
