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
--     conflict, no serialization failure under REPEATABLE READ or SERIALIZABLE), transaction-
--     local settings, a sequence draw, and a NOTIFY only when the notification queue is below
--     riskd.notify_queue_limit (default 0.5; '0' turns the NOTIFY off, e.g. for sessions that
--     use PREPARE TRANSACTION — the daemon's timer drain still finds the marks);
--   * the wake-up costs nothing but the draw: only the first mark after the daemon re-armed
--     the sequence draws 1 and notifies (wake_up.sql).
--
-- Positions: one changed row is cheapest marked by a row trigger with a WHEN clause (no call at
-- all for a row whose watched columns did not change); many changed rows are cheapest marked
-- once per account by a statement trigger reading the transition tables. Queries on transition
-- tables are planned anew on every call, so a statement trigger alone would make every
-- single-row write pay a plan. Both are installed and hand over per statement:
--   * the BEFORE row trigger runs as each row is written. The first changed row of a statement
--     marks its account and leaves "one" in a transaction-local setting; a second changed row
--     marks nothing and leaves "bulk", and from then on the WHEN clause skips the call;
--   * the AFTER statement trigger reads the setting: "one" — done, reset; "bulk" — mark every
--     account whose rows changed, from the transition tables, once each; reset.
-- The setting is keyed by operation and trigger depth (riskd.capture_update_1, …), so that a
-- MERGE's actions and statements run by other triggers keep their own.
--
-- Rendered by riskd.sqlfiles from the [schema] mapping (identifiers quoted by psycopg.sql).

-- Row half. BEFORE, so it runs synchronously (an AFTER row trigger's WHEN is evaluated while the
-- statement runs, its call deferred to the statement's end); it returns the row unchanged.
CREATE FUNCTION riskd.mark_position_inserted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
DECLARE
    v_flag text := 'riskd.capture_insert_'
                   OPERATOR(pg_catalog.||) pg_catalog.pg_trigger_depth()::text;
    v_state text := pg_catalog.current_setting(v_flag, true);
BEGIN
    IF v_state OPERATOR(pg_catalog.<>) '' THEN  -- '=<account>': a second changed row
        PERFORM pg_catalog.set_config(v_flag OPERATOR(pg_catalog.||) '_first',
                                      pg_catalog.substr(v_state, 2), true);
        PERFORM pg_catalog.set_config(v_flag, 'bulk', true);
        RETURN NEW;
    END IF;
    INSERT INTO riskd.dirty_accounts (account_id) VALUES (NEW.{p_account});
    PERFORM pg_catalog.set_config(v_flag, '=' OPERATOR(pg_catalog.||) NEW.{p_account}::text, true);
    PERFORM pg_catalog.set_config('riskd.marked', NEW.{p_account}::text, true);
    {wake_up}
    RETURN NEW;
END
$fn$;

CREATE FUNCTION riskd.mark_position_updated() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
DECLARE
    v_flag text := 'riskd.capture_update_'
                   OPERATOR(pg_catalog.||) pg_catalog.pg_trigger_depth()::text;
    v_state text := pg_catalog.current_setting(v_flag, true);
BEGIN
    IF v_state OPERATOR(pg_catalog.<>) '' THEN  -- '=<account>': a second changed row
        PERFORM pg_catalog.set_config(v_flag OPERATOR(pg_catalog.||) '_first',
                                      pg_catalog.substr(v_state, 2), true);
        PERFORM pg_catalog.set_config(v_flag, 'bulk', true);
        RETURN NEW;
    END IF;
    INSERT INTO riskd.dirty_accounts (account_id) VALUES (NEW.{p_account});
    PERFORM pg_catalog.set_config(v_flag, '=' OPERATOR(pg_catalog.||) NEW.{p_account}::text, true);
    PERFORM pg_catalog.set_config('riskd.marked', NEW.{p_account}::text, true);
    {wake_up}
    RETURN NEW;
END
$fn$;

CREATE FUNCTION riskd.mark_position_deleted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
DECLARE
    v_flag text := 'riskd.capture_delete_'
                   OPERATOR(pg_catalog.||) pg_catalog.pg_trigger_depth()::text;
    v_state text := pg_catalog.current_setting(v_flag, true);
BEGIN
    IF v_state OPERATOR(pg_catalog.<>) '' THEN  -- '=<account>': a second changed row
        PERFORM pg_catalog.set_config(v_flag OPERATOR(pg_catalog.||) '_first',
                                      pg_catalog.substr(v_state, 2), true);
        PERFORM pg_catalog.set_config(v_flag, 'bulk', true);
        RETURN OLD;
    END IF;
    INSERT INTO riskd.dirty_accounts (account_id) VALUES (OLD.{p_account});
    PERFORM pg_catalog.set_config(v_flag, '=' OPERATOR(pg_catalog.||) OLD.{p_account}::text, true);
    {wake_up}
    RETURN OLD;
END
$fn$;

-- A position moved to another account changes the old one too. Rare: a plain row trigger.
CREATE FUNCTION riskd.mark_position_moved() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
BEGIN
    INSERT INTO riskd.dirty_accounts (account_id) VALUES (OLD.{p_account});
    {wake_up}
    RETURN NEW;
END
$fn$;

-- Statement half. Called for every statement, it costs a setting read unless the statement
-- was "bulk". An UPDATE marks the accounts whose (account, instrument, quantity, unrealised
-- PnL) rows changed: old rows count -1, new rows +1, and a group that does not cancel out is
-- a change. Grouping compares NULLs as equal, which is IS NOT DISTINCT FROM: NULL transitions
-- count, no-op rows do not.
CREATE FUNCTION riskd.mark_positions_inserted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
DECLARE
    v_flag text := 'riskd.capture_insert_'
                   OPERATOR(pg_catalog.||) pg_catalog.pg_trigger_depth()::text;
    v_state text := pg_catalog.current_setting(v_flag, true);
    v_first text;
BEGIN
    IF v_state IS NULL OR v_state OPERATOR(pg_catalog.=) '' THEN
        RETURN NULL;
    END IF;
    PERFORM pg_catalog.set_config(v_flag, '', true);
    IF v_state OPERATOR(pg_catalog.=) 'bulk' THEN
        -- the account the row trigger marked before handing over
        v_first := pg_catalog.current_setting(v_flag OPERATOR(pg_catalog.||) '_first', true);
        INSERT INTO riskd.dirty_accounts (account_id)
        SELECT DISTINCT n.{p_account} FROM riskd_new AS n
        WHERE n.{p_quantity} OPERATOR(pg_catalog.<>) 0
          AND (v_first IS NULL OR n.{p_account}::text OPERATOR(pg_catalog.<>) v_first);
        {wake_up}
    END IF;
    RETURN NULL;
END
$fn$;

CREATE FUNCTION riskd.mark_positions_updated() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
DECLARE
    v_flag text := 'riskd.capture_update_'
                   OPERATOR(pg_catalog.||) pg_catalog.pg_trigger_depth()::text;
    v_state text := pg_catalog.current_setting(v_flag, true);
    v_first text;
BEGIN
    IF v_state IS NULL OR v_state OPERATOR(pg_catalog.=) '' THEN
        RETURN NULL;
    END IF;
    PERFORM pg_catalog.set_config(v_flag, '', true);
    IF v_state OPERATOR(pg_catalog.=) 'bulk' THEN
        -- the account the row trigger marked before handing over
        v_first := pg_catalog.current_setting(v_flag OPERATOR(pg_catalog.||) '_first', true);
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
        HAVING pg_catalog.sum(c.side) OPERATOR(pg_catalog.<>) 0
           AND (v_first IS NULL OR c.account_id::text OPERATOR(pg_catalog.<>) v_first);
        {wake_up}
    END IF;
    RETURN NULL;
END
$fn$;

CREATE FUNCTION riskd.mark_positions_deleted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
DECLARE
    v_flag text := 'riskd.capture_delete_'
                   OPERATOR(pg_catalog.||) pg_catalog.pg_trigger_depth()::text;
    v_state text := pg_catalog.current_setting(v_flag, true);
    v_first text;
BEGIN
    IF v_state IS NULL OR v_state OPERATOR(pg_catalog.=) '' THEN
        RETURN NULL;
    END IF;
    PERFORM pg_catalog.set_config(v_flag, '', true);
    IF v_state OPERATOR(pg_catalog.=) 'bulk' THEN
        -- the account the row trigger marked before handing over
        v_first := pg_catalog.current_setting(v_flag OPERATOR(pg_catalog.||) '_first', true);
        INSERT INTO riskd.dirty_accounts (account_id)
        SELECT DISTINCT o.{p_account} FROM riskd_old AS o
        WHERE o.{p_quantity} OPERATOR(pg_catalog.<>) 0
          AND (v_first IS NULL OR o.{p_account}::text OPERATOR(pg_catalog.<>) v_first);
        {wake_up}
    END IF;
    RETURN NULL;
END
$fn$;

-- Balances: one row per account, so a row trigger marks each account once whatever the
-- statement; BEFORE, with a WHEN clause, like the position rows. A fill moves a position and
-- then the balance of the same account: the position's row trigger leaves the account in the
-- transaction-local setting riskd.marked, and the WHEN clause skips the second mark — one
-- mark per transaction covers every change the transaction commits with it.
CREATE FUNCTION riskd.mark_account_balance() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
BEGIN
    INSERT INTO riskd.dirty_accounts (account_id) VALUES (NEW.{a_id});
    PERFORM pg_catalog.set_config('riskd.marked', NEW.{a_id}::text, true);
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

CREATE TRIGGER riskd_position_insert BEFORE INSERT ON {positions}
    FOR EACH ROW
    WHEN (NEW.{p_quantity} OPERATOR(pg_catalog.<>) 0
          AND pg_catalog.current_setting('riskd.capture_insert_'
                  OPERATOR(pg_catalog.||) (pg_catalog.pg_trigger_depth()
                                           OPERATOR(pg_catalog.+) 1)::text, true)
              IS DISTINCT FROM 'bulk')
    EXECUTE FUNCTION riskd.mark_position_inserted();

CREATE TRIGGER riskd_position_update
    BEFORE UPDATE OF {p_account}, {p_instrument}, {p_quantity}, {p_pnl} ON {positions}
    FOR EACH ROW
    WHEN ((OLD.{p_quantity} IS DISTINCT FROM NEW.{p_quantity}
           OR OLD.{p_pnl} IS DISTINCT FROM NEW.{p_pnl}
           OR OLD.{p_account} IS DISTINCT FROM NEW.{p_account}
           OR OLD.{p_instrument} IS DISTINCT FROM NEW.{p_instrument})
          AND pg_catalog.current_setting('riskd.capture_update_'
                  OPERATOR(pg_catalog.||) (pg_catalog.pg_trigger_depth()
                                           OPERATOR(pg_catalog.+) 1)::text, true)
              IS DISTINCT FROM 'bulk')
    EXECUTE FUNCTION riskd.mark_position_updated();

CREATE TRIGGER riskd_position_move BEFORE UPDATE OF {p_account} ON {positions}
    FOR EACH ROW WHEN (OLD.{p_account} IS DISTINCT FROM NEW.{p_account})
    EXECUTE FUNCTION riskd.mark_position_moved();

CREATE TRIGGER riskd_position_delete BEFORE DELETE ON {positions}
    FOR EACH ROW
    WHEN (OLD.{p_quantity} OPERATOR(pg_catalog.<>) 0
          AND pg_catalog.current_setting('riskd.capture_delete_'
                  OPERATOR(pg_catalog.||) (pg_catalog.pg_trigger_depth()
                                           OPERATOR(pg_catalog.+) 1)::text, true)
              IS DISTINCT FROM 'bulk')
    EXECUTE FUNCTION riskd.mark_position_deleted();

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
    FOR EACH ROW WHEN (OLD.{a_balance} IS DISTINCT FROM NEW.{a_balance}
                       AND pg_catalog.current_setting('riskd.marked', true)
                           IS DISTINCT FROM NEW.{a_id}::text)
    EXECUTE FUNCTION riskd.mark_account_balance();

CREATE TRIGGER riskd_instruments_update AFTER UPDATE ON {instruments}
    REFERENCING OLD TABLE AS riskd_old NEW TABLE AS riskd_new
    FOR EACH STATEMENT EXECUTE FUNCTION riskd.mark_instrument_holders();
