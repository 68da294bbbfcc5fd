-- Back to revision 0003: riskd 0.1.0's capture (alembic/versions/0001/capture.sql).

-- every capture trigger, wherever it sits (inheritance children included), and its function
DO $down$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT t.tgname, t.tgrelid::pg_catalog.regclass::text AS rel
        FROM pg_catalog.pg_trigger AS t
        JOIN pg_catalog.pg_proc AS p ON p.oid = t.tgfoid
        JOIN pg_catalog.pg_class AS c ON c.oid = t.tgrelid
        WHERE p.pronamespace = 'riskd'::pg_catalog.regnamespace
          AND c.relnamespace <> 'riskd'::pg_catalog.regnamespace
          AND NOT t.tgisinternal AND t.tgparentid = 0
    LOOP
        EXECUTE 'DROP TRIGGER ' || pg_catalog.quote_ident(r.tgname) || ' ON ' || r.rel;
    END LOOP;
    FOR r IN
        SELECT p.oid::pg_catalog.regprocedure::text AS fn
        FROM pg_catalog.pg_proc AS p
        WHERE p.pronamespace = 'riskd'::pg_catalog.regnamespace
          AND p.prorettype = 'pg_catalog.trigger'::pg_catalog.regtype
          AND p.proname <> 'fence_heartbeat'
    LOOP
        EXECUTE 'DROP FUNCTION ' || r.fn;
    END LOOP;
END
$down$;
-- the instrument marks not yet drained go to their holders' accounts first: none is lost
INSERT INTO riskd.dirty_accounts (account_id)
SELECT i.account_id FROM riskd.drain_instruments() AS i;
DROP FUNCTION riskd.drain_instruments();
DROP FUNCTION riskd.position_account({positions});
DROP FUNCTION riskd.position_instrument({positions});
DROP FUNCTION riskd.position_quantity({positions});
DROP FUNCTION riskd.position_unrealized_pnl({positions});
DROP FUNCTION riskd.account_id_of({accounts});
DROP FUNCTION riskd.account_balance({accounts});
DROP FUNCTION riskd.instrument_id_of({instruments});
DROP FUNCTION riskd.instrument_price({instruments});
DROP FUNCTION riskd.instrument_margin_rate({instruments});
DROP TABLE riskd.sweep_requests;
DROP TABLE riskd.dirty_instruments;

-- Capture (DESIGN §2.1): triggers on the platform's tables append the touched accounts to the
-- dirty set riskd.dirty_accounts and wake the daemon on channel riskd_changes, once per quiet
-- spell rather than once per row or per transaction.
--
-- Every statement here runs inside a trading transaction, so:
--   * the functions are SECURITY DEFINER (the trading role needs no grant on schema riskd) and,
--     to stay cheap, carry no SET clause: every name is schema-qualified instead, operators
--     included (no IS DISTINCT FROM or NULLIF in a function body: they look `=` up through
--     the caller's search_path; in a WHEN clause they are resolved once, at CREATE TRIGGER),
--     so nothing can be hijacked through search_path (CVE-2018-1058);
--   * nothing here can raise: plain INSERTs into an unlogged table without index (so no
--     conflict, no serialization failure under REPEATABLE READ or SERIALIZABLE), a sequence
--     read and draw, and a NOTIFY only when the notification queue is below
--     riskd.notify_queue_limit (default 0.5; '0' turns the NOTIFY off, e.g. for sessions that
--     use PREPARE TRANSACTION — the daemon's timer drain still finds the marks);
--   * the wake-up costs a read of the wakeup sequence while a wake-up is pending, and a draw
--     only when the daemon has re-armed it; the first mark after a re-arm draws 1 and notifies
--     (wake_up.sql).
--
-- Positions: statement triggers with transition tables, so that a statement marks each account
-- it changed once, whatever its size (a 100 000-row statement: one insert per account, one
-- wake-up at most), and a 500-row mark-to-market statement costs one call. The price, measured
-- (docs/benchmarks.md): a single-row write pays the transition-table capture, an after-trigger
-- queue entry and the start-up of the aggregates below — the plan itself is cached, its
-- executor start is not. Row triggers mark a single row for less but a bulk statement once
-- per row; handing over between the two per statement costs more than it saves (measured).
--
-- Rendered by riskd.sqlfiles from the [schema] mapping (identifiers quoted by psycopg.sql).

-- Positions inserted or deleted: the accounts of the open positions among them.
CREATE FUNCTION riskd.mark_positions_inserted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
BEGIN
    INSERT INTO riskd.dirty_accounts (account_id)
    SELECT DISTINCT n.{p_account} FROM riskd_new AS n
    WHERE n.{p_quantity} OPERATOR(pg_catalog.<>) 0;
    {wake_up}
    RETURN NULL;
END
$fn$;

-- Positions updated: the accounts whose (account, instrument, quantity, unrealised PnL) rows
-- changed. Old rows count -1, new rows +1, and a group that does not cancel out is a change;
-- grouping compares NULLs as equal, which is IS NOT DISTINCT FROM, so NULL transitions count
-- and no-op rows do not. A position moved between accounts marks both.
CREATE FUNCTION riskd.mark_positions_updated() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
BEGIN
    INSERT INTO riskd.dirty_accounts (account_id)
    SELECT DISTINCT c.account_id
    FROM (
        SELECT n.{p_account} AS account_id, n.{p_instrument} AS instrument,
               n.{p_quantity} AS quantity, n.{p_pnl} AS pnl, 1 AS side
        FROM riskd_new AS n
        UNION ALL
        SELECT o.{p_account}, o.{p_instrument}, o.{p_quantity}, o.{p_pnl}, -1
        FROM riskd_old AS o
    ) AS c
    GROUP BY c.account_id, c.instrument, c.quantity, c.pnl
    HAVING pg_catalog.sum(c.side) OPERATOR(pg_catalog.<>) 0;
    {wake_up}
    RETURN NULL;
END
$fn$;

CREATE FUNCTION riskd.mark_positions_deleted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
BEGIN
    INSERT INTO riskd.dirty_accounts (account_id)
    SELECT DISTINCT o.{p_account} FROM riskd_old AS o
    WHERE o.{p_quantity} OPERATOR(pg_catalog.<>) 0;
    {wake_up}
    RETURN NULL;
END
$fn$;

-- Balances: one row per account, so a row trigger marks each account once whatever the
-- statement. BEFORE (no after-trigger queue entry), and the change tested in the body rather
-- than in a WHEN clause: a WHEN clause is read back from the catalog and compiled on every
-- statement, which cost more than the call it saves (docs/benchmarks.md). UPDATE OF keeps
-- statements that do not set the balance away from the trigger, in C.
CREATE FUNCTION riskd.mark_account_balance() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
BEGIN
    IF COALESCE(NEW.{a_balance} OPERATOR(pg_catalog.=) OLD.{a_balance},
                NEW.{a_balance} IS NULL AND OLD.{a_balance} IS NULL) THEN
        RETURN NEW;
    END IF;
    INSERT INTO riskd.dirty_accounts (account_id) VALUES (NEW.{a_id});
    {wake_up}
    RETURN NEW;
END
$fn$;

-- Prices and margin rates: fan a changed instrument out to the accounts holding it open.
CREATE FUNCTION riskd.mark_instrument_holders() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
BEGIN
    INSERT INTO riskd.dirty_accounts (account_id)
    SELECT DISTINCT p.{p_account}
    FROM {positions} AS p
    WHERE p.{p_instrument} OPERATOR(pg_catalog.=) ANY (
            SELECT c.{i_id} FROM (
                SELECT n.{i_id}, n.{i_price}, n.{i_margin_rate} FROM riskd_new AS n
                EXCEPT
                SELECT o.{i_id}, o.{i_price}, o.{i_margin_rate} FROM riskd_old AS o
            ) AS c)
      AND p.{p_quantity} OPERATOR(pg_catalog.<>) 0;
    {wake_up}
    RETURN NULL;
END
$fn$;

CREATE TRIGGER riskd_positions_insert AFTER INSERT ON {positions}
    REFERENCING NEW TABLE AS riskd_new
    FOR EACH STATEMENT EXECUTE FUNCTION riskd.mark_positions_inserted();

CREATE TRIGGER riskd_positions_update AFTER UPDATE ON {positions}
    REFERENCING OLD TABLE AS riskd_old NEW TABLE AS riskd_new
    FOR EACH STATEMENT EXECUTE FUNCTION riskd.mark_positions_updated();

CREATE TRIGGER riskd_positions_delete AFTER DELETE ON {positions}
    REFERENCING OLD TABLE AS riskd_old
    FOR EACH STATEMENT EXECUTE FUNCTION riskd.mark_positions_deleted();

CREATE TRIGGER riskd_account_balance BEFORE UPDATE OF {a_balance} ON {accounts}
    FOR EACH ROW EXECUTE FUNCTION riskd.mark_account_balance();

CREATE TRIGGER riskd_instruments_update AFTER UPDATE ON {instruments}
    REFERENCING OLD TABLE AS riskd_old NEW TABLE AS riskd_new
    FOR EACH STATEMENT EXECUTE FUNCTION riskd.mark_instrument_holders();

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA riskd FROM PUBLIC;
