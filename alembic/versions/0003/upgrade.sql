-- riskd 0.2.0, revision 0003: the check reads the platform through views (dependencies
-- recorded, numbers cast and judged), flatten addresses a position by its key, its account
-- and its table, locks with NOWAIT, books what the balance can hold, and acts on every
-- check of a critical account; the sweep finds critical accounts left with positions open.
-- (sql/check.sql and sql/sweep.sql at this revision.)

-- What one open position counts for, and what is wrong with it. Data riskd cannot trust — a
-- NaN or infinite quantity, price, margin rate or PnL, or a NULL price — counts nothing (the
-- account is checked on what can be computed) and is named, which holds every action back
-- (DESIGN §1). Plain SQL functions, inlined by the planner; every figure already numeric.
CREATE FUNCTION riskd.position_margin(quantity numeric, price numeric, margin_rate numeric)
RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN quantity IN ('NaN', 'Infinity', '-Infinity')
              OR price IS NULL OR price IN ('NaN', 'Infinity', '-Infinity')
              OR margin_rate IN ('NaN', 'Infinity', '-Infinity')
            THEN 0
            ELSE abs(quantity) * price * COALESCE(margin_rate, 0) END;

CREATE FUNCTION riskd.position_pnl(pnl numeric) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN pnl IN ('NaN', 'Infinity', '-Infinity') THEN 0 ELSE COALESCE(pnl, 0) END;

CREATE FUNCTION riskd.position_data_error(
    quantity numeric, price numeric, margin_rate numeric, pnl numeric
) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN NULLIF(jsonb_strip_nulls(jsonb_build_object(
           'quantity', CASE WHEN quantity IN ('NaN', 'Infinity', '-Infinity')
                            THEN quantity::text END,
           'price', CASE WHEN price IS NULL THEN 'NULL'
                         WHEN price IN ('NaN', 'Infinity', '-Infinity') THEN price::text END,
           'margin_rate', CASE WHEN margin_rate IN ('NaN', 'Infinity', '-Infinity')
                               THEN margin_rate::text END,
           'pnl', CASE WHEN pnl IN ('NaN', 'Infinity', '-Infinity') THEN pnl::text END)),
       '{{}}'::jsonb);

-- The platform's data as the check and the sweep read it. Views, so that every reference to a
-- platform table or column is recorded as a dependency: renaming a mapped column or table
-- carries the views along, dropping one is refused naming them (I9). security_invoker: read
-- with the caller's grants and row-level security, as if it read the tables. Every figure is
-- cast to numeric: the platform may keep any numeric type.
CREATE VIEW riskd.platform_positions WITH (security_invoker = true) AS
SELECT v.*,
       riskd.position_margin(v.quantity, v.price, v.margin_rate) AS margin,
       riskd.position_pnl(v.pnl) AS pnl_value,
       riskd.position_data_error(v.quantity, v.price, v.margin_rate, v.pnl) AS data_error
FROM (
    SELECT p.{p_id} AS position_id, p.{p_account} AS account_id,
           p.{p_instrument}::text AS instrument, p.{p_quantity}::numeric AS quantity,
           i.{i_price}::numeric AS price, i.{i_margin_rate}::numeric AS margin_rate,
           p.{p_pnl}::numeric AS pnl
    FROM {positions} AS p
    LEFT JOIN {instruments} AS i ON i.{i_id} = p.{p_instrument}
    WHERE p.{p_quantity} <> 0
) AS v;

CREATE VIEW riskd.platform_accounts WITH (security_invoker = true) AS
SELECT v.account_id, v.user_id, v.balance,
       CASE WHEN v.balance IN ('NaN', 'Infinity', '-Infinity') THEN 0
            ELSE COALESCE(v.balance, 0) END AS balance_value,
       CASE WHEN v.balance IN ('NaN', 'Infinity', '-Infinity')
            THEN jsonb_build_object('balance', v.balance::text) END AS data_error
FROM (
    SELECT a.{a_id} AS account_id, a.{a_user}::text AS user_id, a.{a_balance}::numeric AS balance
    FROM {accounts} AS a
) AS v;

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

DROP FUNCTION riskd.flatten(riskd.check_result[], numeric);

-- Auto-close mode `flatten`: for every account found critical, close its open positions at the
-- current price, largest loss first, until it is back under its warning threshold (all of them
-- when equity <= 0), realising their PnL into the balance (rounded to the balance column's
-- scale); record what was closed in a close request with status `done`. Every check of a
-- critical account flattens again, so none is left critical with positions open; an account
-- with data riskd cannot trust is never flattened (DESIGN §1).
--
-- A position is addressed by its key, its account and the table that holds the row
-- (tableoid: partitions and inheritance children each hold their own rows), so a close
-- touches only the breached account's own positions, each once (I7).
--
-- Never make a trade wait, nor die in a deadlock, for a flatten: the positions and then the
-- account are locked with NOWAIT, in the order the platform's fills take them, before anything
-- is computed (FOR NO KEY UPDATE: a fill inserting a position that references the account
-- takes KEY SHARE, which this does not block); if any is held the batch fails with
-- lock_not_available, rolls back whole, and the daemon retries the account alone a moment
-- later. The closing set is then read from a new snapshot, so a fill that raced the check is
-- seen, and locked in the same statement, NOWAIT too.
CREATE FUNCTION riskd.flatten(
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

-- The sweep (DESIGN §2.5): one set-based pass over every account, reading only. It records
-- accounts never seen before that are `ok` (no lock needed: no event), and returns the
-- accounts whose level changes, and the critical accounts with open positions and no pending
-- close request (so that none is left critical with positions open, DESIGN §1: a request done
-- or cancelled while still critical, flatten mode switched on, a flatten that could not
-- finish), which the caller then sends through riskd.check_accounts in
-- batches — the same locked path as every other check, so a sweep and the daemon never write
-- the same transition twice. It does not rewrite the figures of accounts whose level holds:
-- every change the triggers see is checked anyway, and rewriting 100 000 rows a minute after
-- each price move would cost more than the sweep itself. Rendered by riskd.sqlfiles.
CREATE OR REPLACE FUNCTION riskd.sweep(p_warning numeric, p_auto_close numeric, p_hysteresis numeric)
RETURNS TABLE (account_id {account_id_type}, level text, previous_level text)
LANGUAGE plpgsql SET search_path = pg_catalog, riskd AS $fn$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH agg AS (
        SELECT p.account_id, count(*) AS n_open, sum(p.pnl_value) AS pnl,
               sum(p.margin) AS used
        FROM riskd.platform_positions AS p
        GROUP BY p.account_id
    ), risk AS (
        SELECT a.account_id,
               COALESCE(agg.n_open, 0) AS n_open,
               a.balance_value + COALESCE(agg.pnl, 0) AS equity,
               COALESCE(agg.used, 0) AS used_margin,
               LEAST(COALESCE(l.warning_threshold, p_warning),
                     COALESCE(l.auto_close_threshold, p_auto_close)) AS w,
               COALESCE(l.auto_close_threshold, p_auto_close) AS ac,
               s.level AS recorded
        FROM riskd.platform_accounts AS a
        LEFT JOIN agg ON agg.account_id = a.account_id
        LEFT JOIN riskd.account_limits AS l ON l.account_id = a.account_id
        LEFT JOIN riskd.account_state AS s ON s.account_id = a.account_id
    ), decided AS (
        SELECT r.*,
               riskd.decide_level(r.n_open, r.equity, r.used_margin, r.w, r.ac, p_hysteresis,
                                  COALESCE(r.recorded, 'ok')) AS level
        FROM risk AS r
    ), first_seen AS (
        INSERT INTO riskd.account_state AS s (account_id, level, utilization, equity, used_margin)
        SELECT d.account_id, d.level, riskd.utilization(d.n_open, d.equity, d.used_margin),
               d.equity, d.used_margin
        FROM decided AS d WHERE d.recorded IS NULL AND d.level = 'ok'
        ON CONFLICT ON CONSTRAINT account_state_pkey DO NOTHING
    )
    SELECT d.account_id, d.level, COALESCE(d.recorded, 'ok')
    FROM decided AS d
    WHERE d.level <> COALESCE(d.recorded, 'ok')
       OR (d.level = 'critical' AND d.n_open > 0
           AND NOT EXISTS (SELECT 1 FROM riskd.close_requests AS c
                           WHERE c.account_id = d.account_id AND c.status = 'pending'));
END
$fn$;

REVOKE EXECUTE ON FUNCTION
    riskd.position_margin(numeric, numeric, numeric),
    riskd.position_pnl(numeric),
    riskd.position_data_error(numeric, numeric, numeric, numeric),
    riskd.flatten(riskd.check_result[], numeric, numeric)
FROM PUBLIC;
