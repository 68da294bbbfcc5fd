-- riskd 0.2.0, revision 0005: the flatten invariant on every layout, and capture that reads
-- the row as stored (issue 9). flatten reads and writes the platform's tables only through
-- SQL-standard functions, so that a platform's RENAME carries it along and a DROP is refused
-- naming it (I9); row triggers (partitioned tables, balances) fire AFTER, past the platform's
-- own BEFORE triggers and with generated columns computed; every partition gets a copy of the
-- TRUNCATE trigger. (sql/check.sql and sql/capture.sql at this revision.)

-- the capture triggers of revision 0004 off, wherever they sit, then this revision's on (the
-- trigger functions are unchanged)
DO $up$
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
END
$up$;

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


-- What flatten reads and writes of the platform's tables, as SQL-standard functions: their
-- names are resolved once, here, and recorded as dependencies, so that a platform's migration
-- renaming a mapped column or table carries them along and one dropping it is refused naming
-- them (I9), as for the views above. SECURITY INVOKER: with the daemon's own privileges.
--
-- A position is addressed by its key, its account and the table that holds the row (tableoid:
-- partitions and inheritance children each hold their own rows, and `riskd migrate` refuses a
-- table whose key is not unique), so a close touches only the breached account's own
-- positions, each once (I7).
CREATE TYPE riskd.position_ref AS (
    table_oid   oid,
    position_id {type_p_id},
    account_id  {account_id_type}
);

-- The open positions of these accounts with their instrument's figures, locked NOWAIT (see
-- riskd.flatten). Straight from the table, not through the view: the row's table (tableoid)
-- is a system column, which the view cannot carry without asking every mode for a table-wide
-- SELECT.
CREATE FUNCTION riskd.flatten_positions(p_accounts {account_id_type}[])
RETURNS TABLE (table_oid oid, position_id {type_p_id}, account_id {account_id_type},
               instrument text, quantity numeric, price numeric, margin_rate numeric,
               pnl numeric)
LANGUAGE sql
BEGIN ATOMIC
    SELECT p.tableoid, p.{p_id}, CAST(p.{p_account} AS {account_id_type}),
           CAST(p.{p_instrument} AS text), CAST(p.{p_quantity} AS numeric),
           CAST(i.{i_price} AS numeric), CAST(i.{i_margin_rate} AS numeric),
           CAST(p.{p_pnl} AS numeric)
    FROM {positions} AS p
    LEFT JOIN {instruments} AS i ON i.{i_id} OPERATOR(pg_catalog.=) p.{p_instrument}
    WHERE p.{p_account} OPERATOR(pg_catalog.=) ANY (p_accounts)
      AND p.{p_quantity} OPERATOR(pg_catalog.<>) 0
    FOR NO KEY UPDATE OF p NOWAIT;
END;

CREATE FUNCTION riskd.flatten_lock_accounts(p_accounts {account_id_type}[]) RETURNS bigint
LANGUAGE sql
BEGIN ATOMIC
    SELECT pg_catalog.count(*) FROM (
        SELECT 1 FROM {accounts} AS a
        WHERE a.{a_id} OPERATOR(pg_catalog.=) ANY (p_accounts)
        FOR NO KEY UPDATE NOWAIT
    ) AS locked;
END;

-- Closes these positions (quantity 0, and PnL 0 unless the platform computes it), returning
-- those it closed.
CREATE FUNCTION riskd.flatten_close(p_positions riskd.position_ref[])
RETURNS SETOF riskd.position_ref
LANGUAGE sql
BEGIN ATOMIC
    UPDATE {positions} AS p SET {p_quantity} = 0{set_pnl_zero}
    FROM pg_catalog.unnest(p_positions) AS c
    WHERE p.tableoid OPERATOR(pg_catalog.=) c.table_oid
      AND p.{p_id} OPERATOR(pg_catalog.=) c.position_id
      AND p.{p_account} OPERATOR(pg_catalog.=) c.account_id
    RETURNING c.table_oid, c.position_id, c.account_id;
END;

-- Books realised PnL into the balance of one account; returns the amount the balance really
-- moved by (what the column could hold: rounded by its scale or its type, a domain's too), NULL
-- when the account is not exactly one row it may update. A generated balance takes no UPDATE
-- (check_accounts then asks for a close request instead of flattening): NULL.
DO $do$
BEGIN
    IF {balance_bookable} THEN
        EXECUTE $f$
        CREATE FUNCTION riskd.flatten_book(p_account {account_id_type}, p_amount numeric)
        RETURNS numeric
        LANGUAGE sql
        BEGIN ATOMIC
            WITH before AS (
                SELECT a.{a_id} AS id, a.{a_balance} AS balance FROM {accounts} AS a
                WHERE a.{a_id} OPERATOR(pg_catalog.=) p_account
            ), booked AS (
                UPDATE {accounts} AS a
                SET {a_balance} = COALESCE(a.{a_balance}, 0) OPERATOR(pg_catalog.+) p_amount
                FROM before AS b
                WHERE a.{a_id} OPERATOR(pg_catalog.=) b.id
                RETURNING CAST(a.{a_balance} AS numeric) OPERATOR(pg_catalog.-)
                          CAST(COALESCE(b.balance, 0) AS numeric) AS amount
            )
            SELECT CASE WHEN pg_catalog.count(*) OPERATOR(pg_catalog.=) 1
                        THEN pg_catalog.max(booked.amount) END
            FROM booked;
        END
        $f$;
    ELSE
        EXECUTE $f$
        CREATE FUNCTION riskd.flatten_book(p_account {account_id_type}, p_amount numeric)
        RETURNS numeric
        LANGUAGE sql
        BEGIN ATOMIC
            SELECT CAST(NULL AS numeric);
        END
        $f$;
    END IF;
END
$do$;

-- Auto-close mode `flatten`: for every account found critical, close its open positions at the
-- current price, largest loss first, until it is back under its warning threshold (all of them
-- when equity <= 0), realising their PnL into the balance (what the balance column holds:
-- rounded to its scale); record what was closed and what was booked in a close request with
-- status `done`. Every check of a
-- critical account flattens again, so none is left critical with positions open; an account
-- with data riskd cannot trust is never flattened (DESIGN §1).
--
-- Never make a trade wait, nor die in a deadlock, for a flatten: the positions and then the
-- account are locked with NOWAIT, in the order the platform's fills take them, before anything
-- is computed (FOR NO KEY UPDATE: a fill inserting a position that references the account
-- takes KEY SHARE, which this does not block); if any is held the batch fails with
-- lock_not_available, rolls back whole, and the daemon retries the account alone a moment
-- later. The closing set is then read from a new snapshot, so a fill that raced the check is
-- seen, and locked in the same statement, NOWAIT too. A close that does not touch exactly the
-- rows it chose, or whose balance cannot be booked, is undone (that account alone) and the
-- account gets a pending close request saying why, as does a critical account whose positions
-- the daemon's role may read but not update: the check and its event stand.
CREATE OR REPLACE FUNCTION riskd.flatten(
    p_results riskd.check_result[], p_warning numeric, p_auto_close numeric
)
RETURNS riskd.check_result[]
LANGUAGE plpgsql SET search_path = pg_catalog, riskd AS $fn$
DECLARE
    v_ids {account_id_type}[];
    v_done riskd.check_result[];
    v_accounts {account_id_type}[] := '{{}}';
    v_requests bigint[] := '{{}}';
    v_closed bigint;
    v_booked numeric;
    v_request bigint;
    v_acct record;
    v_failed {account_id_type}[] := '{{}}';
    v_reasons text[] := '{{}}';
BEGIN
    SELECT array_agg(r.account_id ORDER BY r.account_id) INTO v_ids
    FROM unnest(p_results) AS r
    WHERE r.level = 'critical';
    IF v_ids IS NULL THEN
        RETURN p_results;
    END IF;

    PERFORM count(*) FROM riskd.flatten_positions(v_ids);
    PERFORM riskd.flatten_lock_accounts(v_ids);

    FOR v_acct IN
        WITH pos AS (
            SELECT v.*,
                   riskd.position_margin(v.quantity, v.price, v.margin_rate) AS margin,
                   riskd.position_pnl(v.pnl) AS pnl_value,
                   riskd.position_data_error(v.quantity, v.price, v.margin_rate, v.pnl)
                       AS data_error
            -- a position committed since the lock above is locked here, or refused, too
            FROM riskd.flatten_positions(v_ids) AS v
        ), acct AS (
            SELECT a.account_id,
                   a.balance_value + COALESCE(sum(pos.pnl_value), 0) AS equity,
                   COALESCE(sum(pos.margin), 0) AS used,
                   LEAST(COALESCE(l.warning_threshold, p_warning),
                         COALESCE(l.auto_close_threshold, p_auto_close)) AS w
            FROM riskd.platform_accounts AS a
            LEFT JOIN pos ON pos.account_id = a.account_id
            LEFT JOIN riskd.account_limits AS l ON l.account_id = a.account_id
            WHERE a.account_id = ANY (v_ids)
            GROUP BY a.account_id, a.balance_value, a.data_error, l.warning_threshold,
                     l.auto_close_threshold
            -- data riskd cannot trust: no close is made on it
            HAVING a.data_error IS NULL AND count(pos.data_error) = 0
        ), ordered AS (
            SELECT pos.*, acct.equity, acct.used, acct.w,
                   acct.used - COALESCE(sum(pos.margin) OVER (
                       PARTITION BY pos.account_id
                       ORDER BY pos.pnl_value, pos.instrument, pos.position_id::text
                       ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS used_before
            FROM pos JOIN acct USING (account_id)
        ), closing AS (
            SELECT * FROM ordered
            WHERE equity <= 0 OR used_before >= w * equity
        )
        SELECT c.account_id, c.equity, c.used,
               array_agg(ROW(c.table_oid, c.position_id, c.account_id)::riskd.position_ref)
                   AS refs,
               sum(c.margin) AS closed_margin,
               sum(c.pnl_value) AS realised,
               -- what the balance column can hold: rounded to its scale (half away from zero)
               COALESCE(round(sum(c.pnl_value), {balance_scale}), sum(c.pnl_value)) AS booked,
               jsonb_agg(jsonb_build_object(
                   'position', c.position_id, 'instrument', c.instrument,
                   'quantity', c.quantity, 'price', c.price,
                   'margin_rate', c.margin_rate, 'pnl', c.pnl_value)
                   ORDER BY c.pnl_value, c.instrument, c.position_id::text) AS closed
        FROM closing AS c
        GROUP BY c.account_id, c.equity, c.used
        ORDER BY c.account_id
    LOOP
        -- each account in a subtransaction (the daemon's, never a trade's): a close the
        -- platform's table refuses or hides (an UPDATE policy, a trigger that skips the row)
        -- undoes that account's close and books nothing; it gets a close request instead
        v_request := NULL;
        BEGIN
            SELECT count(*) INTO v_closed FROM riskd.flatten_close(v_acct.refs);
            IF v_closed <> cardinality(v_acct.refs) THEN
                RAISE EXCEPTION USING MESSAGE = concat(
                    'closed ', v_closed, ' rows for ', cardinality(v_acct.refs), ' positions');
            END IF;
            v_booked := riskd.flatten_book(v_acct.account_id, v_acct.booked);
            IF v_booked IS NULL THEN
                RAISE EXCEPTION USING MESSAGE = 'found no single balance row it may update';
            END IF;
            INSERT INTO riskd.close_requests
                (account_id, status, utilization, completed_at, detail)
            VALUES (v_acct.account_id, 'done',
                    riskd.utilization(1, v_acct.equity, v_acct.used), now(),
                    jsonb_build_object(
                        'mode', 'flatten', 'equity', v_acct.equity,
                        'used_margin_before', v_acct.used,
                        'used_margin_after', v_acct.used - v_acct.closed_margin,
                        'realised_pnl', v_acct.realised, 'booked_pnl', v_booked,
                        'closed', v_acct.closed))
            RETURNING id INTO v_request;
        EXCEPTION
            WHEN lock_not_available THEN
                RAISE;  -- a trade holds a row: the daemon retries the account later
            WHEN OTHERS THEN
                v_failed := v_failed || v_acct.account_id;
                v_reasons := v_reasons || SQLERRM;
        END;
        IF v_request IS NOT NULL THEN
            v_accounts := v_accounts || v_acct.account_id;
            v_requests := v_requests || v_request;
        END IF;
    END LOOP;

    -- A critical account with positions open and trustworthy data that flatten did not
    -- close (refused above, or none of its positions visible to the daemon's updates) is not
    -- left so: a close request for the platform, saying why (DESIGN §1).
    WITH fallback AS (
        INSERT INTO riskd.close_requests (account_id, status, utilization, detail)
        SELECT r.account_id, 'pending', r.utilization,
               jsonb_build_object(
                   'mode', 'flatten', 'equity', r.equity, 'used_margin', r.used_margin,
                   'flatten_failed', COALESCE(f.reason, 'no open position it may close'))
        FROM unnest(p_results) AS r
        LEFT JOIN unnest(v_failed, v_reasons) AS f (account_id, reason)
            ON f.account_id = r.account_id
        WHERE r.level = 'critical' AND r.account_id <> ALL (v_accounts)
          AND EXISTS (SELECT 1 FROM riskd.platform_positions AS p
                      WHERE p.account_id = r.account_id)
          AND NOT EXISTS (SELECT 1 FROM riskd.platform_positions AS p
                          WHERE p.account_id = r.account_id AND p.data_error IS NOT NULL)
          AND NOT EXISTS (SELECT 1 FROM riskd.platform_accounts AS a
                          WHERE a.account_id = r.account_id AND a.data_error IS NOT NULL)
        ON CONFLICT (account_id) WHERE status = 'pending' DO NOTHING
        RETURNING id, account_id
    )
    SELECT v_accounts || COALESCE(array_agg(account_id), '{{}}'),
           v_requests || COALESCE(array_agg(id), '{{}}')
    INTO v_accounts, v_requests
    FROM fallback;

    SELECT array_agg(ROW(r.account_id, r.user_id, r.level, r.previous_level, r.utilization,
                         r.equity, r.used_margin, r.event_id,
                         COALESCE(d.request_id, r.close_request_id))::riskd.check_result
                     ORDER BY r.account_id)
    INTO v_done
    FROM unnest(p_results) AS r
    LEFT JOIN unnest(v_accounts, v_requests) AS d (account_id, request_id)
        ON d.account_id = r.account_id;
    RETURN v_done;
END
$fn$;

-- Check a batch of accounts: lock them (transaction advisory locks, in one global order so
-- that instances never deadlock), then — in a new snapshot, which READ COMMITTED gives each
-- statement of a PL/pgSQL function — compute their risk, record state, write one event per
-- level transition, notify, and act. Two checks of one account serialise on its lock and the
-- second sees the first one's state: never two events, never two pending close requests (I3).
CREATE OR REPLACE FUNCTION riskd.check_accounts(
    p_ids        text[],
    p_instance   text,
    p_warning    numeric,
    p_auto_close numeric,
    p_hysteresis numeric,
    p_mode       text
) RETURNS SETOF riskd.check_result
LANGUAGE plpgsql SET search_path = pg_catalog, riskd AS $fn$
DECLARE
    -- ids come as text so that every caller speaks one type; cast once, here
    v_ids {account_id_type}[] := p_ids::{account_id_type}[];
    v_results riskd.check_result[];
    -- as the triggers read it: a value that is not a plain number counts as the default, so
    -- that a typo in a setting can never stop every check
    -- a generated balance cannot take realised PnL: flatten falls back to a close request
    v_mode text := CASE WHEN p_mode = 'flatten' AND NOT {balance_bookable} THEN 'request'
                        ELSE p_mode END;
    v_notify_limit float8 := CASE
        WHEN current_setting('riskd.notify_queue_limit', true) ~ '^ *[0-9]{{0,6}}[.]?[0-9]{{1,12}} *$'
        THEN float8(current_setting('riskd.notify_queue_limit', true))
        ELSE 0.5 END;
BEGIN
    PERFORM pg_advisory_xact_lock({lock_class}, s.k)
    FROM (SELECT DISTINCT hashtext(i::text) AS k FROM unnest(v_ids) AS i ORDER BY 1) AS s;

    WITH ids AS (
        SELECT DISTINCT i AS account_id FROM unnest(v_ids) AS i WHERE i IS NOT NULL
    ), acct AS (
        SELECT a.* FROM riskd.platform_accounts AS a JOIN ids USING (account_id)
    ), agg AS (
        SELECT p.account_id,
               count(*) AS n_open,
               sum(p.pnl_value) AS pnl,
               sum(p.margin) AS used,
               jsonb_agg(jsonb_build_object(
                   'position', p.position_id, 'instrument', p.instrument,
                   'quantity', p.quantity, 'price', p.price, 'margin_rate', p.margin_rate,
                   'pnl', p.pnl) ORDER BY p.instrument, p.position_id::text) AS positions,
               jsonb_agg(p.data_error || jsonb_build_object('position', p.position_id))
                   FILTER (WHERE p.data_error IS NOT NULL) AS data_errors
        FROM riskd.platform_positions AS p JOIN ids USING (account_id)
        GROUP BY p.account_id
    ), risk AS (
        SELECT acct.account_id, acct.user_id, acct.balance,
               COALESCE(agg.n_open, 0) AS n_open,
               acct.balance_value + COALESCE(agg.pnl, 0) AS equity,
               COALESCE(agg.used, 0) AS used_margin,
               COALESCE(agg.positions, '[]'::jsonb) AS positions,
               NULLIF(COALESCE(agg.data_errors, '[]'::jsonb)
                      || CASE WHEN acct.data_error IS NOT NULL
                              THEN jsonb_build_array(acct.data_error)
                              ELSE '[]'::jsonb END,
                      '[]'::jsonb) AS data_errors,
               -- a limit that sets one threshold keeps the warning at or under auto-close
               LEAST(COALESCE(l.warning_threshold, p_warning),
                     COALESCE(l.auto_close_threshold, p_auto_close)) AS w,
               COALESCE(l.auto_close_threshold, p_auto_close) AS ac,
               COALESCE(s.level, 'ok') AS previous_level,
               s.account_id IS NOT NULL AS known
        FROM acct
        LEFT JOIN agg USING (account_id)
        LEFT JOIN riskd.account_limits AS l ON l.account_id = acct.account_id
        LEFT JOIN riskd.account_state AS s ON s.account_id = acct.account_id
    ), decided AS (
        SELECT r.*,
               riskd.decide_level(r.n_open, r.equity, r.used_margin, r.w, r.ac,
                                  p_hysteresis, r.previous_level) AS level,
               riskd.utilization(r.n_open, r.equity, r.used_margin) AS utilization
        FROM risk AS r
    ), state AS (
        INSERT INTO riskd.account_state AS s
            (account_id, level, utilization, equity, used_margin, checked_at, changed_at)
        SELECT account_id, level, utilization, equity, used_margin, now(), now() FROM decided
        ON CONFLICT (account_id) DO UPDATE
        SET level = excluded.level, utilization = excluded.utilization,
            equity = excluded.equity, used_margin = excluded.used_margin,
            checked_at = excluded.checked_at,
            changed_at = CASE WHEN s.level = excluded.level THEN s.changed_at
                              ELSE excluded.changed_at END
    ), events AS (
        INSERT INTO riskd.risk_events
            (account_id, user_id, from_level, to_level, utilization, equity, used_margin,
             detail, instance)
        SELECT account_id, user_id, previous_level, level, utilization, equity, used_margin,
               jsonb_strip_nulls(jsonb_build_object(
                   'balance', balance, 'positions', positions,
                   'warning_threshold', w, 'auto_close_threshold', ac,
                   'hysteresis', p_hysteresis, 'first_check', NOT known,
                   'data_errors', data_errors)),
               p_instance
        FROM decided WHERE level <> previous_level
        RETURNING id, account_id
    ), requested AS (
        INSERT INTO riskd.close_requests (account_id, status, utilization, detail)
        SELECT account_id, 'pending', utilization,
               jsonb_build_object('equity', equity, 'used_margin', used_margin,
                                  'positions', positions)
        FROM decided
        -- every check of a critical account with open positions and trustworthy data asks,
        -- so that one whose request was done or cancelled while still critical asks again;
        -- the unique index keeps it to one pending request (I3)
        WHERE v_mode = 'request' AND level = 'critical' AND n_open > 0 AND data_errors IS NULL
        ON CONFLICT (account_id) WHERE status = 'pending' DO NOTHING
        RETURNING id, account_id
    ), cancelled AS (
        -- leaving critical: a pending request is no longer wanted (every data-modifying CTE
        -- runs to completion whether or not the main query reads it)
        UPDATE riskd.close_requests AS c SET status = 'cancelled', completed_at = now()
        FROM decided AS d
        WHERE c.account_id = d.account_id AND c.status = 'pending'
          AND d.previous_level = 'critical' AND d.level <> 'critical'
        RETURNING c.id
    )
    SELECT array_agg(ROW(d.account_id, d.user_id, d.level, d.previous_level, d.utilization,
                         d.equity, d.used_margin, e.id, q.id)::riskd.check_result
                     ORDER BY d.account_id)
    INTO v_results
    FROM decided AS d
    LEFT JOIN events AS e ON e.account_id = d.account_id
    LEFT JOIN requested AS q ON q.account_id = d.account_id;

    IF v_mode = 'flatten' THEN
        v_results := riskd.flatten(v_results, p_warning, p_auto_close);
    END IF;

    IF pg_notification_queue_usage() < v_notify_limit THEN
        PERFORM pg_notify('riskd_events', jsonb_build_object(
                    'event_id', r.event_id, 'account_id', r.account_id, 'user_id', r.user_id,
                    'from_level', r.previous_level, 'to_level', r.level,
                    'utilization', r.utilization,
                    'close_request_id', r.close_request_id)::text)
        -- a transition, or a close request opened again for an account still critical
        FROM unnest(v_results) AS r
        WHERE r.event_id IS NOT NULL OR r.close_request_id IS NOT NULL;
    END IF;

    RETURN QUERY SELECT * FROM unnest(v_results);
END
$fn$;

-- the functions flatten now calls: executable by whoever may run flatten, not by PUBLIC
DO $up$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT pg_catalog.quote_ident(g.rolname) AS role
        FROM pg_catalog.pg_proc AS p
        CROSS JOIN LATERAL pg_catalog.aclexplode(p.proacl) AS a
        JOIN pg_catalog.pg_roles AS g ON g.oid = a.grantee
        WHERE p.oid = 'riskd.flatten(riskd.check_result[], numeric, numeric)'::pg_catalog.regprocedure
          AND a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner
    LOOP
        EXECUTE 'GRANT EXECUTE ON FUNCTION riskd.flatten_positions, riskd.flatten_lock_accounts, '
             || 'riskd.flatten_close, riskd.flatten_book TO ' || r.role;
    END LOOP;
END
$up$;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA riskd FROM PUBLIC;
