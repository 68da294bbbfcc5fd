-- Back to revision 0004: its capture triggers (BEFORE row triggers on partitioned tables and
-- balances, no TRUNCATE trigger on partitions) and its flatten, which names the platform's
-- columns itself.

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
END
$down$;

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
        CREATE TRIGGER riskd_positions_insert BEFORE INSERT ON {positions}
            FOR EACH ROW EXECUTE FUNCTION riskd.mark_positions_row_inserted();
        CREATE TRIGGER riskd_positions_update BEFORE UPDATE ON {positions}
            FOR EACH ROW EXECUTE FUNCTION riskd.mark_positions_row_updated();
        CREATE TRIGGER riskd_positions_delete BEFORE DELETE ON {positions}
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
        CREATE TRIGGER riskd_instruments_insert BEFORE INSERT ON {instruments}
            FOR EACH ROW EXECUTE FUNCTION riskd.mark_instruments_row_inserted();
        CREATE TRIGGER riskd_instruments_update BEFORE UPDATE ON {instruments}
            FOR EACH ROW EXECUTE FUNCTION riskd.mark_instruments_row_updated();
        CREATE TRIGGER riskd_instruments_delete BEFORE DELETE ON {instruments}
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

CREATE TRIGGER riskd_account_balance BEFORE UPDATE OF {a_balance} ON {accounts}
    FOR EACH ROW EXECUTE FUNCTION riskd.mark_account_balance();
ALTER TABLE {accounts} ENABLE ALWAYS TRIGGER riskd_account_balance;

CREATE TRIGGER riskd_accounts_truncate AFTER TRUNCATE ON {accounts}
    FOR EACH STATEMENT EXECUTE FUNCTION riskd.request_sweep();
ALTER TABLE {accounts} ENABLE ALWAYS TRIGGER riskd_accounts_truncate;

CREATE TRIGGER riskd_instruments_truncate AFTER TRUNCATE ON {instruments}
    FOR EACH STATEMENT EXECUTE FUNCTION riskd.request_sweep();
ALTER TABLE {instruments} ENABLE ALWAYS TRIGGER riskd_instruments_truncate;

-- Inheritance children (partitions have their row triggers cloned): a copy of each riskd
-- trigger of the mapped table, ALWAYS too, at every level below it. Foreign tables, which take
-- no transition table, are left out.
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
          AND NOT c.relispartition AND c.relkind OPERATOR(pg_catalog.=) 'r'
          AND f.pronamespace OPERATOR(pg_catalog.=) 'riskd'::pg_catalog.regnamespace
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


CREATE OR REPLACE FUNCTION riskd.flatten(
    p_results riskd.check_result[], p_warning numeric, p_auto_close numeric
)
RETURNS riskd.check_result[]
LANGUAGE plpgsql SET search_path = pg_catalog, riskd AS $fn$
DECLARE
    v_ids {account_id_type}[];
    v_done riskd.check_result[];
BEGIN
    SELECT array_agg(r.account_id ORDER BY r.account_id) INTO v_ids
    FROM unnest(p_results) AS r
    WHERE r.level = 'critical';
    IF v_ids IS NULL THEN
        RETURN p_results;
    END IF;

    PERFORM 1 FROM {positions} AS p
    WHERE p.{p_account} = ANY (v_ids) AND p.{p_quantity} <> 0
    FOR NO KEY UPDATE NOWAIT;
    PERFORM 1 FROM {accounts} AS a WHERE a.{a_id} = ANY (v_ids) FOR NO KEY UPDATE NOWAIT;

    WITH pos AS (
        -- straight from the table: the row's table (tableoid) is a system column, which the
        -- view cannot carry without asking every mode for a table-wide SELECT
        SELECT v.*,
               riskd.position_margin(v.quantity, v.price, v.margin_rate) AS margin,
               riskd.position_pnl(v.pnl) AS pnl_value,
               riskd.position_data_error(v.quantity, v.price, v.margin_rate, v.pnl)
                   AS data_error
        FROM (
            SELECT p.tableoid AS table_oid, p.{p_id} AS position_id,
                   p.{p_account} AS account_id, p.{p_instrument}::text AS instrument,
                   p.{p_quantity}::numeric AS quantity, i.{i_price}::numeric AS price,
                   i.{i_margin_rate}::numeric AS margin_rate, p.{p_pnl}::numeric AS pnl
            FROM {positions} AS p
            LEFT JOIN {instruments} AS i ON i.{i_id} = p.{p_instrument}
            WHERE p.{p_account} = ANY (v_ids) AND p.{p_quantity} <> 0
            -- a position committed since the lock above is locked here, or refused, too
            FOR NO KEY UPDATE OF p NOWAIT
        ) AS v
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
    ), closed AS (
        UPDATE {positions} AS p SET {p_quantity} = 0{set_pnl_zero}
        FROM closing AS c
        WHERE p.tableoid = c.table_oid AND p.{p_id} = c.position_id
          AND p.{p_account} = c.account_id
        RETURNING c.*
    ), booked AS (
        -- what the balance column can hold: rounded to its scale (half away from zero)
        SELECT account_id, sum(pnl_value) AS realised,
               COALESCE(round(sum(pnl_value), {balance_scale}), sum(pnl_value)) AS booked
        FROM closed GROUP BY account_id
    ), realised AS (
        UPDATE {accounts} AS a SET {a_balance} = COALESCE(a.{a_balance}, 0) + b.booked
        FROM booked AS b
        WHERE a.{a_id} = b.account_id
        RETURNING a.{a_id} AS account_id
    ), audit AS (
        INSERT INTO riskd.close_requests (account_id, status, utilization, completed_at, detail)
        SELECT acct.account_id, 'done',
               riskd.utilization(1, acct.equity, acct.used), now(),
               jsonb_build_object(
                   'mode', 'flatten', 'equity', acct.equity,
                   'used_margin_before', acct.used,
                   'used_margin_after', acct.used - sum(c.margin),
                   'realised_pnl', b.realised, 'booked_pnl', b.booked,
                   'closed', jsonb_agg(jsonb_build_object(
                       'position', c.position_id, 'instrument', c.instrument,
                       'quantity', c.quantity, 'price', c.price,
                       'margin_rate', c.margin_rate, 'pnl', c.pnl_value)
                       ORDER BY c.pnl_value, c.instrument, c.position_id::text))
        FROM acct
        JOIN closed AS c USING (account_id)
        JOIN booked AS b USING (account_id)
        GROUP BY acct.account_id, acct.equity, acct.used, b.realised, b.booked
        RETURNING id, account_id
    )
    SELECT array_agg(ROW(r.account_id, r.user_id, r.level, r.previous_level, r.utilization,
                         r.equity, r.used_margin, r.event_id,
                         COALESCE(au.id, r.close_request_id))::riskd.check_result
                     ORDER BY r.account_id)
    INTO v_done
    FROM unnest(p_results) AS r
    LEFT JOIN audit AS au ON au.account_id = r.account_id;
    RETURN v_done;
END
$fn$;


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
        WHERE p_mode = 'request' AND level = 'critical' AND n_open > 0 AND data_errors IS NULL
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

    IF p_mode = 'flatten' THEN
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

DROP FUNCTION riskd.flatten_positions;
DROP FUNCTION riskd.flatten_lock_accounts;
DROP FUNCTION riskd.flatten_close;
DROP FUNCTION riskd.flatten_book;
DROP TYPE riskd.position_ref;
