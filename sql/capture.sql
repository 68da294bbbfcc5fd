-- Capture (DESIGN §2.1): triggers on the platform's tables append the touched accounts to the
-- dirty set riskd.dirty_accounts (the touched instruments to riskd.dirty_instruments, a
-- TRUNCATE a sweep request to riskd.sweep_requests) and wake the daemon on channel
-- riskd_changes, once per quiet spell rather than once per row or per transaction.
--
-- Every statement here runs inside a trading transaction, so:
--   * it reads nothing but the transition rows (and riskd's wakeup sequence): no other table,
--     so a trading transaction never gains a read dependency (SERIALIZABLE), never waits,
--     never meets a row-level security policy; what needs other rows is the daemon's work,
--     after commit;
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

-- How capture reads the platform's columns: accessors with SQL-standard bodies, one per mapped
-- column. The planner inlines them (a scratch measurement found them as cheap as a direct
-- column read, 1-row and 500-row statements), and PostgreSQL records what they read: a platform's
-- migration that renames a mapped column carries them along, so the capture functions below,
-- which name no platform column, keep working (I1); one that drops the column is refused,
-- naming them (I9). A row of a partition or an inheritance child is taken as its parent's.
CREATE FUNCTION riskd.position_account(r {positions}) RETURNS {type_p_account}
LANGUAGE sql IMMUTABLE RETURN r.{p_account};
CREATE FUNCTION riskd.position_instrument(r {positions}) RETURNS {type_p_instrument}
LANGUAGE sql IMMUTABLE RETURN r.{p_instrument};
CREATE FUNCTION riskd.position_quantity(r {positions}) RETURNS {type_p_quantity}
LANGUAGE sql IMMUTABLE RETURN r.{p_quantity};
CREATE FUNCTION riskd.position_unrealized_pnl(r {positions}) RETURNS {type_p_pnl}
LANGUAGE sql IMMUTABLE RETURN r.{p_pnl};
CREATE FUNCTION riskd.account_id_of(r {accounts}) RETURNS {type_a_id}
LANGUAGE sql IMMUTABLE RETURN r.{a_id};
CREATE FUNCTION riskd.account_balance(r {accounts}) RETURNS {type_a_balance}
LANGUAGE sql IMMUTABLE RETURN r.{a_balance};
CREATE FUNCTION riskd.instrument_id_of(r {instruments}) RETURNS {type_i_id}
LANGUAGE sql IMMUTABLE RETURN r.{i_id};
CREATE FUNCTION riskd.instrument_price(r {instruments}) RETURNS {type_i_price}
LANGUAGE sql IMMUTABLE RETURN r.{i_price};
CREATE FUNCTION riskd.instrument_margin_rate(r {instruments}) RETURNS {type_i_margin_rate}
LANGUAGE sql IMMUTABLE RETURN r.{i_margin_rate};

-- Positions inserted or deleted: the accounts of the open positions among them.
CREATE FUNCTION riskd.mark_positions_inserted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
BEGIN
    INSERT INTO riskd.dirty_accounts (account_id)
    SELECT DISTINCT riskd.position_account(n) FROM riskd_new AS n
    WHERE riskd.position_quantity(n) OPERATOR(pg_catalog.<>) 0;
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
        SELECT riskd.position_account(n) AS account_id, riskd.position_instrument(n) AS instrument,
               riskd.position_quantity(n) AS quantity, riskd.position_unrealized_pnl(n) AS pnl, 1 AS side
        FROM riskd_new AS n
        UNION ALL
        SELECT riskd.position_account(o), riskd.position_instrument(o), riskd.position_quantity(o), riskd.position_unrealized_pnl(o), -1
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
    SELECT DISTINCT riskd.position_account(o) FROM riskd_old AS o
    WHERE riskd.position_quantity(o) OPERATOR(pg_catalog.<>) 0;
    {wake_up}
    RETURN NULL;
END
$fn$;

-- Balances: one row per account, so a row trigger marks each account once whatever the
-- statement. AFTER, so that it reads the row as stored: after the platform's own BEFORE
-- triggers (which fire in name order, some after riskd's) and with generated columns computed
-- (a BEFORE trigger reads them as NULL). The change is tested in the body rather than in a
-- WHEN clause: a WHEN clause is read back from the catalog and compiled on every statement,
-- which cost more than the call it saves (docs/benchmarks.md). UPDATE OF keeps statements that
-- do not set the balance away from the trigger, in C; PostgreSQL fires it for a generated
-- balance when a column it is computed from is set.
CREATE FUNCTION riskd.mark_account_balance() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
BEGIN
    IF COALESCE(riskd.account_balance(NEW) OPERATOR(pg_catalog.=) riskd.account_balance(OLD),
                riskd.account_balance(NEW) IS NULL AND riskd.account_balance(OLD) IS NULL) THEN
        RETURN NEW;
    END IF;
    INSERT INTO riskd.dirty_accounts (account_id) VALUES (riskd.account_id_of(NEW));
    {wake_up}
    RETURN NEW;
END
$fn$;

-- Instruments: the ids of those whose price or margin rate changed, and of those inserted or
-- deleted (their holders gain or lose the price), go to riskd.dirty_instruments; nothing else
-- is read. Fanning an instrument out to its holders reads positions, which inside the trading
-- transaction would be a read dependency under SERIALIZABLE (a fill that read the price and
-- this tick would fail one of them), be filtered or refused by a row-level security policy,
-- and run in the writer's snapshot, missing a position committed meanwhile. The daemon does it
-- after commit instead (riskd.drain_instruments below).
CREATE FUNCTION riskd.mark_instruments_inserted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
BEGIN
    INSERT INTO riskd.dirty_instruments (instrument_id)
    SELECT riskd.instrument_id_of(n) FROM riskd_new AS n;
    {wake_up}
    RETURN NULL;
END
$fn$;

-- Updated: compared as the positions are (old rows -1, new rows +1, NULL-safe by grouping), so
-- a statement that sets a price to its own value marks nothing, and an instrument whose id
-- changed marks both ids.
CREATE FUNCTION riskd.mark_instruments_updated() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
BEGIN
    INSERT INTO riskd.dirty_instruments (instrument_id)
    SELECT DISTINCT c.instrument_id
    FROM (
        SELECT riskd.instrument_id_of(n) AS instrument_id, riskd.instrument_price(n) AS price,
               riskd.instrument_margin_rate(n) AS margin_rate, 1 AS side
        FROM riskd_new AS n
        UNION ALL
        SELECT riskd.instrument_id_of(o), riskd.instrument_price(o), riskd.instrument_margin_rate(o), -1
        FROM riskd_old AS o
    ) AS c
    GROUP BY c.instrument_id, c.price, c.margin_rate
    HAVING pg_catalog.sum(c.side) OPERATOR(pg_catalog.<>) 0;
    {wake_up}
    RETURN NULL;
END
$fn$;

CREATE FUNCTION riskd.mark_instruments_deleted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
BEGIN
    INSERT INTO riskd.dirty_instruments (instrument_id)
    SELECT riskd.instrument_id_of(o) FROM riskd_old AS o;
    {wake_up}
    RETURN NULL;
END
$fn$;

-- TRUNCATE of a mapped table: no row to mark, every account may have changed; ask for a sweep,
-- which the sweep leader makes at once (riskd.sweep_requests).
CREATE FUNCTION riskd.request_sweep() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
BEGIN
    INSERT INTO riskd.sweep_requests (reason)
    VALUES (pg_catalog.concat('TRUNCATE ', pg_catalog.quote_ident(TG_TABLE_SCHEMA), '.',
                              pg_catalog.quote_ident(TG_TABLE_NAME)));
    {wake_up}
    RETURN NULL;
END
$fn$;

-- Partitioned tables: the same marks from row triggers (the layouts, below). AFTER, as on
-- balances: the row as stored, the platform's BEFORE triggers applied and generated columns
-- computed; the change tested in the body.
CREATE FUNCTION riskd.mark_positions_row_inserted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
BEGIN
    IF riskd.position_quantity(NEW) OPERATOR(pg_catalog.<>) 0 THEN
        INSERT INTO riskd.dirty_accounts (account_id) VALUES (riskd.position_account(NEW));
        {wake_up}
    END IF;
    RETURN NEW;
END
$fn$;

-- A position moved between accounts marks both; otherwise a change of instrument, quantity or
-- PnL marks its account, NULL-safely (COALESCE(a = b, both NULL): no IS DISTINCT FROM, see the
-- header).
CREATE FUNCTION riskd.mark_positions_row_updated() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
BEGIN
    IF NOT COALESCE(riskd.position_account(NEW) OPERATOR(pg_catalog.=) riskd.position_account(OLD),
                    riskd.position_account(NEW) IS NULL AND riskd.position_account(OLD) IS NULL) THEN
        INSERT INTO riskd.dirty_accounts (account_id) VALUES (riskd.position_account(OLD)), (riskd.position_account(NEW));
    ELSIF COALESCE(riskd.position_quantity(NEW) OPERATOR(pg_catalog.=) riskd.position_quantity(OLD),
                   riskd.position_quantity(NEW) IS NULL AND riskd.position_quantity(OLD) IS NULL)
      AND COALESCE(riskd.position_unrealized_pnl(NEW) OPERATOR(pg_catalog.=) riskd.position_unrealized_pnl(OLD),
                   riskd.position_unrealized_pnl(NEW) IS NULL AND riskd.position_unrealized_pnl(OLD) IS NULL)
      AND COALESCE(riskd.position_instrument(NEW) OPERATOR(pg_catalog.=) riskd.position_instrument(OLD),
                   riskd.position_instrument(NEW) IS NULL AND riskd.position_instrument(OLD) IS NULL) THEN
        RETURN NEW;
    ELSE
        INSERT INTO riskd.dirty_accounts (account_id) VALUES (riskd.position_account(NEW));
    END IF;
    {wake_up}
    RETURN NEW;
END
$fn$;

CREATE FUNCTION riskd.mark_positions_row_deleted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
BEGIN
    IF riskd.position_quantity(OLD) OPERATOR(pg_catalog.<>) 0 THEN
        INSERT INTO riskd.dirty_accounts (account_id) VALUES (riskd.position_account(OLD));
        {wake_up}
    END IF;
    RETURN OLD;
END
$fn$;

CREATE FUNCTION riskd.mark_instruments_row_inserted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
BEGIN
    INSERT INTO riskd.dirty_instruments (instrument_id) VALUES (riskd.instrument_id_of(NEW));
    {wake_up}
    RETURN NEW;
END
$fn$;

CREATE FUNCTION riskd.mark_instruments_row_updated() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
BEGIN
    IF NOT COALESCE(riskd.instrument_id_of(NEW) OPERATOR(pg_catalog.=) riskd.instrument_id_of(OLD),
                    riskd.instrument_id_of(NEW) IS NULL AND riskd.instrument_id_of(OLD) IS NULL) THEN
        INSERT INTO riskd.dirty_instruments (instrument_id) VALUES (riskd.instrument_id_of(OLD)), (riskd.instrument_id_of(NEW));
    ELSIF COALESCE(riskd.instrument_price(NEW) OPERATOR(pg_catalog.=) riskd.instrument_price(OLD),
                   riskd.instrument_price(NEW) IS NULL AND riskd.instrument_price(OLD) IS NULL)
      AND COALESCE(riskd.instrument_margin_rate(NEW) OPERATOR(pg_catalog.=) riskd.instrument_margin_rate(OLD),
                   riskd.instrument_margin_rate(NEW) IS NULL AND riskd.instrument_margin_rate(OLD) IS NULL) THEN
        RETURN NEW;
    ELSE
        INSERT INTO riskd.dirty_instruments (instrument_id) VALUES (riskd.instrument_id_of(NEW));
    END IF;
    {wake_up}
    RETURN NEW;
END
$fn$;

CREATE FUNCTION riskd.mark_instruments_row_deleted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
BEGIN
    INSERT INTO riskd.dirty_instruments (instrument_id) VALUES (riskd.instrument_id_of(OLD));
    {wake_up}
    RETURN OLD;
END
$fn$;

-- The triggers. Their shape follows each table's layout, read from the catalog here:
--   * a plain table: the statement triggers with transition tables (positions, instruments)
--     and the row trigger on balances above;
--   * a partitioned table: row triggers for positions and instruments instead. PostgreSQL
--     clones a row trigger to every partition, present and future (created or attached
--     later), and fires it for a write through the parent and straight into a partition
--     alike, where a statement trigger fires only for the table a statement names and is
--     cloned nowhere. The price, measured on 4 hash partitions: a single-row write costs no
--     more than statement triggers on the parent would, a 500-row statement about 8 times
--     their capture CPU (one mark per row), which halved its throughput where they kept
--     0.85-0.94 of it;
--   * inheritance children, to which PostgreSQL clones nothing: every child present now gets a
--     copy of each of its parent's triggers (a child added later needs `riskd migrate` again).
--     A statement through the parent fires the parent's statement triggers, whose transition
--     tables hold the children's rows, and no child's; a row trigger fires on the table that
--     holds the row. Either way a change is marked once;
--   * TRUNCATE: a statement trigger on each table, which asks for a sweep.
-- Every trigger fires ALWAYS, under session_replication_role = replica too: a logical
-- replication subscriber applies the publisher's changes in that mode, and a change applied
-- there is as real to riskd as any other.
DO $do$
BEGIN
    IF (SELECT c.relkind OPERATOR(pg_catalog.=) 'p' FROM pg_catalog.pg_class AS c
        WHERE c.reltype OPERATOR(pg_catalog.=)
              pg_catalog.pg_typeof(NULL::{positions})::pg_catalog.oid) THEN
        CREATE TRIGGER riskd_positions_insert AFTER INSERT ON {positions}
            FOR EACH ROW EXECUTE FUNCTION riskd.mark_positions_row_inserted();
        CREATE TRIGGER riskd_positions_update AFTER UPDATE ON {positions}
            FOR EACH ROW EXECUTE FUNCTION riskd.mark_positions_row_updated();
        CREATE TRIGGER riskd_positions_delete AFTER DELETE ON {positions}
            FOR EACH ROW EXECUTE FUNCTION riskd.mark_positions_row_deleted();
    ELSE
        CREATE TRIGGER riskd_positions_insert AFTER INSERT ON {positions}
            REFERENCING NEW TABLE AS riskd_new
            FOR EACH STATEMENT EXECUTE FUNCTION riskd.mark_positions_inserted();
        CREATE TRIGGER riskd_positions_update AFTER UPDATE ON {positions}
            REFERENCING OLD TABLE AS riskd_old NEW TABLE AS riskd_new
            FOR EACH STATEMENT EXECUTE FUNCTION riskd.mark_positions_updated();
        CREATE TRIGGER riskd_positions_delete AFTER DELETE ON {positions}
            REFERENCING OLD TABLE AS riskd_old
            FOR EACH STATEMENT EXECUTE FUNCTION riskd.mark_positions_deleted();
    END IF;
    IF (SELECT c.relkind OPERATOR(pg_catalog.=) 'p' FROM pg_catalog.pg_class AS c
        WHERE c.reltype OPERATOR(pg_catalog.=)
              pg_catalog.pg_typeof(NULL::{instruments})::pg_catalog.oid) THEN
        CREATE TRIGGER riskd_instruments_insert AFTER INSERT ON {instruments}
            FOR EACH ROW EXECUTE FUNCTION riskd.mark_instruments_row_inserted();
        CREATE TRIGGER riskd_instruments_update AFTER UPDATE ON {instruments}
            FOR EACH ROW EXECUTE FUNCTION riskd.mark_instruments_row_updated();
        CREATE TRIGGER riskd_instruments_delete AFTER DELETE ON {instruments}
            FOR EACH ROW EXECUTE FUNCTION riskd.mark_instruments_row_deleted();
    ELSE
        CREATE TRIGGER riskd_instruments_insert AFTER INSERT ON {instruments}
            REFERENCING NEW TABLE AS riskd_new
            FOR EACH STATEMENT EXECUTE FUNCTION riskd.mark_instruments_inserted();
        CREATE TRIGGER riskd_instruments_update AFTER UPDATE ON {instruments}
            REFERENCING OLD TABLE AS riskd_old NEW TABLE AS riskd_new
            FOR EACH STATEMENT EXECUTE FUNCTION riskd.mark_instruments_updated();
        CREATE TRIGGER riskd_instruments_delete AFTER DELETE ON {instruments}
            REFERENCING OLD TABLE AS riskd_old
            FOR EACH STATEMENT EXECUTE FUNCTION riskd.mark_instruments_deleted();
    END IF;
END
$do$;

ALTER TABLE {positions} ENABLE ALWAYS TRIGGER riskd_positions_insert;
ALTER TABLE {positions} ENABLE ALWAYS TRIGGER riskd_positions_update;
ALTER TABLE {positions} ENABLE ALWAYS TRIGGER riskd_positions_delete;
ALTER TABLE {instruments} ENABLE ALWAYS TRIGGER riskd_instruments_insert;
ALTER TABLE {instruments} ENABLE ALWAYS TRIGGER riskd_instruments_update;
ALTER TABLE {instruments} ENABLE ALWAYS TRIGGER riskd_instruments_delete;

CREATE TRIGGER riskd_positions_truncate AFTER TRUNCATE ON {positions}
    FOR EACH STATEMENT EXECUTE FUNCTION riskd.request_sweep();
ALTER TABLE {positions} ENABLE ALWAYS TRIGGER riskd_positions_truncate;

CREATE TRIGGER riskd_account_balance AFTER UPDATE OF {a_balance} ON {accounts}
    FOR EACH ROW EXECUTE FUNCTION riskd.mark_account_balance();
ALTER TABLE {accounts} ENABLE ALWAYS TRIGGER riskd_account_balance;

CREATE TRIGGER riskd_accounts_truncate AFTER TRUNCATE ON {accounts}
    FOR EACH STATEMENT EXECUTE FUNCTION riskd.request_sweep();
ALTER TABLE {accounts} ENABLE ALWAYS TRIGGER riskd_accounts_truncate;

CREATE TRIGGER riskd_instruments_truncate AFTER TRUNCATE ON {instruments}
    FOR EACH STATEMENT EXECUTE FUNCTION riskd.request_sweep();
ALTER TABLE {instruments} ENABLE ALWAYS TRIGGER riskd_instruments_truncate;

-- Below the mapped tables: inheritance children get a copy of each riskd trigger of the mapped
-- table, ALWAYS too, at every level. Partitions have the row triggers cloned by PostgreSQL, but
-- not the TRUNCATE trigger, a statement trigger: a TRUNCATE of one partition would go
-- unnoticed, so each partition (sub-partitioned ones too) gets a copy of that one (a partition
-- attached later needs `riskd migrate` again, and `riskd status` says so). Foreign tables,
-- which take no transition table, are left out.
DO $do$
DECLARE
    t record;
    definition text;
BEGIN
    FOR t IN
        WITH RECURSIVE tree (root, relid) AS (
            SELECT c.oid, c.oid FROM pg_catalog.pg_class AS c
            WHERE c.reltype OPERATOR(pg_catalog.=) ANY (ARRAY[
                pg_catalog.pg_typeof(NULL::{positions}),
                pg_catalog.pg_typeof(NULL::{accounts}),
                pg_catalog.pg_typeof(NULL::{instruments})]::pg_catalog.oid[])
            UNION ALL
            SELECT tree.root, i.inhrelid FROM tree
            JOIN pg_catalog.pg_inherits AS i ON i.inhparent OPERATOR(pg_catalog.=) tree.relid
        )
        SELECT g.tgname, c.oid::pg_catalog.regclass AS child,
               pg_catalog.pg_get_triggerdef(g.oid) AS definition,
               pg_catalog.concat(' ON ', pg_catalog.quote_ident(rn.nspname), '.',
                                 pg_catalog.quote_ident(r.relname), ' ') AS root_clause,
               pg_catalog.concat(' ON ', pg_catalog.quote_ident(cn.nspname), '.',
                                 pg_catalog.quote_ident(c.relname), ' ') AS child_clause
        FROM tree
        JOIN pg_catalog.pg_class AS r ON r.oid OPERATOR(pg_catalog.=) tree.root
        JOIN pg_catalog.pg_namespace AS rn ON rn.oid OPERATOR(pg_catalog.=) r.relnamespace
        JOIN pg_catalog.pg_class AS c ON c.oid OPERATOR(pg_catalog.=) tree.relid
        JOIN pg_catalog.pg_namespace AS cn ON cn.oid OPERATOR(pg_catalog.=) c.relnamespace
        JOIN pg_catalog.pg_trigger AS g ON g.tgrelid OPERATOR(pg_catalog.=) tree.root
        JOIN pg_catalog.pg_proc AS f ON f.oid OPERATOR(pg_catalog.=) g.tgfoid
        WHERE tree.relid OPERATOR(pg_catalog.<>) tree.root
          AND f.pronamespace OPERATOR(pg_catalog.=) 'riskd'::pg_catalog.regnamespace
          AND NOT g.tgisinternal AND g.tgparentid OPERATOR(pg_catalog.=) 0
          AND CASE WHEN c.relispartition
                   -- row triggers are cloned; TRUNCATE (tgtype bit 5) is not
                   THEN c.relkind OPERATOR(pg_catalog.=) ANY (ARRAY['r', 'p']::"char"[])
                        AND (g.tgtype::pg_catalog.int4 OPERATOR(pg_catalog.&) 32)
                            OPERATOR(pg_catalog.<>) 0
                   ELSE c.relkind OPERATOR(pg_catalog.=) 'r' END
        ORDER BY c.oid, g.tgname
    LOOP
        definition := pg_catalog.replace(t.definition, t.root_clause, t.child_clause);
        IF definition OPERATOR(pg_catalog.=) t.definition THEN
            RAISE EXCEPTION USING MESSAGE = pg_catalog.concat(
                'riskd: cannot copy a trigger to an inheritance child: ', t.definition);
        END IF;
        EXECUTE definition;
        EXECUTE pg_catalog.concat('ALTER TABLE ', t.child, ' ENABLE ALWAYS TRIGGER ',
                                  pg_catalog.quote_ident(t.tgname));
    END LOOP;
END
$do$;

-- The fan-out of the instrument marks, run by the daemon's drain (sql/queries.sql, drain) after
-- the marking transaction committed, in the drain's own snapshot: a position committed while a
-- price change was in flight is found. It takes every mark (DELETE … RETURNING: several
-- instances draining at once share them, each mark going to one) and returns the accounts
-- holding one of those instruments open, each with its oldest mark. Not a trigger function:
-- SECURITY INVOKER, with the daemon's privileges. A SQL-standard body: its names are resolved
-- here, once (no search_path at run time), and recorded as dependencies, so that renaming a
-- mapped column carries it along and dropping one is refused naming it (I9).
CREATE FUNCTION riskd.drain_instruments()
RETURNS TABLE (account_id {account_id_type}, marked_at timestamptz)
LANGUAGE sql
BEGIN ATOMIC
    WITH d AS (
        DELETE FROM riskd.dirty_instruments RETURNING instrument_id, marked_at
    ), i AS (
        SELECT d.instrument_id, pg_catalog.min(d.marked_at) AS marked_at
        FROM d GROUP BY d.instrument_id
    )
    SELECT CAST(p.{p_account} AS {account_id_type}), pg_catalog.min(i.marked_at)
    FROM i JOIN {positions} AS p ON p.{p_instrument} OPERATOR(pg_catalog.=) i.instrument_id
    WHERE p.{p_quantity} OPERATOR(pg_catalog.<>) 0
    GROUP BY p.{p_account};
END;
