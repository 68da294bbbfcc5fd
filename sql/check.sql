-- The risk check (DESIGN §1, §2.4): set-based, one round trip per batch, in one transaction.
-- Rendered by riskd.sqlfiles from the [schema] mapping.

-- The level of an account, DESIGN §1. Decided without division (used >= threshold * equity),
-- so that a level never depends on how a quotient was rounded. Hysteresis: going down, an
-- account keeps a level while it is within h of that level's threshold. A plain SQL function
-- with no SET clause, so that the planner inlines it; every name in it is qualified.
CREATE FUNCTION riskd.decide_level(
    n_open bigint, equity numeric, used numeric,
    w numeric, ac numeric, h numeric, previous text
) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    -- OPERATOR(pg_catalog.x) all bind alike, hence the parentheses
    SELECT CASE
        WHEN n_open OPERATOR(pg_catalog.=) 0 THEN 'ok'
        WHEN equity OPERATOR(pg_catalog.<=) 0 THEN 'critical'
        WHEN used OPERATOR(pg_catalog.>=) (ac OPERATOR(pg_catalog.*) equity) THEN 'critical'
        WHEN previous OPERATOR(pg_catalog.=) 'critical'
             AND used OPERATOR(pg_catalog.>=)
                 ((ac OPERATOR(pg_catalog.-) h) OPERATOR(pg_catalog.*) equity) THEN 'critical'
        WHEN used OPERATOR(pg_catalog.>=) (w OPERATOR(pg_catalog.*) equity) THEN 'warning'
        WHEN previous OPERATOR(pg_catalog.=) ANY (ARRAY['critical', 'warning'])
             AND used OPERATOR(pg_catalog.>=)
                 ((w OPERATOR(pg_catalog.-) h) OPERATOR(pg_catalog.*) equity) THEN 'warning'
        ELSE 'ok'
    END
$fn$;

-- Utilisation for display and audit: used / equity rounded half away from zero to 10 decimal
-- places, computed exactly (integer division) whatever the magnitudes; NULL when equity <= 0.
CREATE FUNCTION riskd.utilization(n_open bigint, equity numeric, used numeric) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT CASE
        WHEN n_open OPERATOR(pg_catalog.=) 0 THEN 0::numeric
        WHEN equity OPERATOR(pg_catalog.<=) 0 THEN NULL::numeric
        ELSE (pg_catalog.sign(used) OPERATOR(pg_catalog.*) pg_catalog.div(
                 ((2 OPERATOR(pg_catalog.*) pg_catalog.abs(used))
                      OPERATOR(pg_catalog.*) 10000000000) OPERATOR(pg_catalog.+) equity,
                 2 OPERATOR(pg_catalog.*) equity))
             OPERATOR(pg_catalog.*) 0.0000000001
    END
$fn$;

-- What one open position counts for, and what is wrong with it. Data riskd cannot trust — a
-- NaN or infinite quantity, price, margin rate or PnL, or a NULL price — counts nothing (the
-- account is checked on what can be computed) and is named, which holds every action back
-- (DESIGN §1). Plain SQL functions, inlined by the planner; every figure already numeric.
-- A value is finite when it lies strictly between -Infinity and Infinity (numeric sorts NaN
-- above Infinity): two comparisons, where `IN ('NaN', 'Infinity', '-Infinity')` deconstructed
-- an array for every position of every check (measured: a sixth of a check's time).
CREATE FUNCTION riskd.position_margin(quantity numeric, price numeric, margin_rate numeric)
RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN NOT (quantity > '-Infinity' AND quantity < 'Infinity')
              OR price IS NULL OR NOT (price > '-Infinity' AND price < 'Infinity')
              OR NOT (margin_rate > '-Infinity' AND margin_rate < 'Infinity')
            THEN 0
            ELSE abs(quantity) * price * COALESCE(margin_rate, 0) END;

CREATE FUNCTION riskd.position_pnl(pnl numeric) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN NOT (pnl > '-Infinity' AND pnl < 'Infinity') THEN 0 ELSE COALESCE(pnl, 0) END;

CREATE FUNCTION riskd.position_data_error(
    quantity numeric, price numeric, margin_rate numeric, pnl numeric
) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN NULLIF(jsonb_strip_nulls(jsonb_build_object(
           'quantity', CASE WHEN NOT (quantity > '-Infinity' AND quantity < 'Infinity')
                            THEN quantity::text END,
           'price', CASE WHEN price IS NULL THEN 'NULL'
                         WHEN NOT (price > '-Infinity' AND price < 'Infinity') THEN price::text END,
           'margin_rate', CASE WHEN NOT (margin_rate > '-Infinity' AND margin_rate < 'Infinity')
                               THEN margin_rate::text END,
           'pnl', CASE WHEN NOT (pnl > '-Infinity' AND pnl < 'Infinity') THEN pnl::text END)),
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
       CASE WHEN NOT (v.balance > '-Infinity' AND v.balance < 'Infinity') THEN 0
            ELSE COALESCE(v.balance, 0) END AS balance_value,
       CASE WHEN NOT (v.balance > '-Infinity' AND v.balance < 'Infinity')
            THEN jsonb_build_object('balance', v.balance::text) END AS data_error
FROM (
    SELECT a.{a_id} AS account_id, a.{a_user}::text AS user_id, a.{a_balance}::numeric AS balance
    FROM {accounts} AS a
) AS v;

CREATE TYPE riskd.check_result AS (
    account_id       {account_id_type},
    user_id          text,
    level            text,
    previous_level   text,
    utilization      numeric,
    equity           numeric,
    used_margin      numeric,
    event_id         bigint,
    close_request_id bigint
);

-- Whether riskd can trust an open position's figures (the cases position_data_error names), as
-- a plain boolean: the check counts untrusted positions for every account and builds the
-- description only for the evidence it keeps.
CREATE FUNCTION riskd.position_untrusted(
    quantity numeric, price numeric, margin_rate numeric, pnl numeric
) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN NOT (quantity > '-Infinity' AND quantity < 'Infinity')
    OR price IS NULL OR NOT (price > '-Infinity' AND price < 'Infinity')
    OR NOT (margin_rate > '-Infinity' AND margin_rate < 'Infinity')
    OR NOT (pnl > '-Infinity' AND pnl < 'Infinity');

-- An account as a check found it, between the statements of riskd.check_accounts.
CREATE TYPE riskd.checked_account AS (
    account_id     {account_id_type},
    user_id        text,
    balance        numeric,
    account_error  jsonb,
    n_open         bigint,
    equity         numeric,
    used_margin    numeric,
    trusted        boolean,
    w              numeric,
    ac             numeric,
    known          boolean,
    previous_level text,
    level          text,
    utilization    numeric,
    rewrite        boolean,
    evidence       jsonb    -- for a transition or a critical account: {{positions, data_errors}}
);

-- Check a batch of accounts: lock them (transaction advisory locks, in one global order so
-- that instances never deadlock), then — in a new snapshot, which READ COMMITTED gives each
-- statement of a PL/pgSQL function — compute their risk, record state, write one event per
-- level transition, notify, and act. Two checks of one account serialise on its lock and the
-- second sees the first one's state: never two events, never two pending close requests (I3).
--
-- At the cost of a bare aggregate over the same accounts (DESIGN §2.4, bench/check_cost.py):
--   * the accounts and their open positions are read through `= ANY (ids)`, so that every plan
--     the function caches, generic ones included, looks them up by index (a join to a set
--     built from the array was estimated at 200 rows and hash-joined against whole tables);
--   * one statement reads and decides; each write is a statement of its own, run only when
--     there is something to write, so that a check with nothing to record plans and starts
--     no write at all;
--   * account_state is written only where something in it changed (level or figures): a
--     check that finds an account as recorded writes no row and no WAL, and checked_at is the
--     time of the latest check that found it changed;
--   * the evidence (each open position as JSON) is built only for the accounts that keep it
--     (a transition's event, a critical account's close request), in the statement that reads
--     their figures: an event's evidence is what it was decided on.
CREATE FUNCTION riskd.check_accounts(
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
    v_checked riskd.checked_account[];
    v_results riskd.check_result[];
    v_new bigint;      -- accounts checked for the first time
    v_changed bigint;  -- known accounts whose level or figures changed
    v_act bigint;      -- accounts with a transition, or critical: events, close requests
    v_notify bigint := 0;  -- results to announce on riskd_events
    -- as the triggers read it: a value that is not a plain number counts as the default, so
    -- that a typo in a setting can never stop every check
    v_notify_limit float8 := CASE
        WHEN current_setting('riskd.notify_queue_limit', true) ~ '^ *[0-9]{{0,6}}[.]?[0-9]{{1,12}} *$'
        THEN float8(current_setting('riskd.notify_queue_limit', true))
        ELSE 0.5 END;
    -- a generated balance cannot take realised PnL: flatten falls back to a close request
    v_mode text := CASE WHEN p_mode = 'flatten' AND NOT {balance_bookable} THEN 'request'
                        ELSE p_mode END;
BEGIN
    PERFORM pg_advisory_xact_lock({lock_class}, s.k)
    FROM (SELECT DISTINCT hashtext(i::text) AS k FROM unnest(v_ids) AS i ORDER BY 1) AS s;

    WITH risk AS (
        SELECT a.account_id, a.user_id, a.balance, a.data_error AS account_error,
               COALESCE(agg.n_open, 0) AS n_open,
               a.balance_value + COALESCE(agg.pnl, 0) AS equity,
               COALESCE(agg.used, 0) AS used_margin,
               a.data_error IS NULL AND COALESCE(agg.n_untrusted, 0) = 0 AS trusted,
               -- a limit that sets one threshold keeps the warning at or under auto-close
               LEAST(COALESCE(l.warning_threshold, p_warning),
                     COALESCE(l.auto_close_threshold, p_auto_close)) AS w,
               COALESCE(l.auto_close_threshold, p_auto_close) AS ac,
               s.account_id IS NOT NULL AS known,
               COALESCE(s.level, 'ok') AS previous_level,
               s.utilization AS recorded_utilization, s.equity AS recorded_equity,
               s.used_margin AS recorded_used_margin
        FROM riskd.platform_accounts AS a
        LEFT JOIN (
            SELECT p.account_id, count(*) AS n_open, sum(p.pnl_value) AS pnl,
                   sum(p.margin) AS used,
                   count(*) FILTER (WHERE riskd.position_untrusted(
                       p.quantity, p.price, p.margin_rate, p.pnl)) AS n_untrusted
            FROM riskd.platform_positions AS p
            WHERE p.account_id = ANY (v_ids)
            GROUP BY p.account_id
        ) AS agg ON agg.account_id = a.account_id
        LEFT JOIN riskd.account_limits AS l ON l.account_id = a.account_id
        LEFT JOIN riskd.account_state AS s ON s.account_id = a.account_id
        WHERE a.account_id = ANY (v_ids)
    ), decided AS MATERIALIZED (
        -- materialised: the level and the utilisation are inlined expressions, which every
        -- reference below would otherwise compute (and compile) again
        SELECT r.*,
               riskd.decide_level(r.n_open, r.equity, r.used_margin, r.w, r.ac,
                                  p_hysteresis, r.previous_level) AS level,
               riskd.utilization(r.n_open, r.equity, r.used_margin) AS utilization
        FROM risk AS r
    ), found AS (
        SELECT d.*,
               NOT d.known
               OR (d.level, d.utilization, d.equity, d.used_margin) IS DISTINCT FROM
                  (d.previous_level, d.recorded_utilization, d.recorded_equity,
                   d.recorded_used_margin) AS rewrite,
               -- the evidence an event or a close request keeps, read in this statement's
               -- snapshot (the one its figures come from), for those accounts only
               CASE WHEN d.level <> d.previous_level OR d.level = 'critical' THEN (
                   SELECT jsonb_build_object(
                       'positions', COALESCE(jsonb_agg(jsonb_build_object(
                           'position', p.position_id, 'instrument', p.instrument,
                           'quantity', p.quantity, 'price', p.price,
                           'margin_rate', p.margin_rate, 'pnl', p.pnl)
                           ORDER BY p.instrument, p.position_id::text), '[]'::jsonb),
                       'data_errors', COALESCE(jsonb_agg(
                           p.data_error || jsonb_build_object('position', p.position_id))
                           FILTER (WHERE p.data_error IS NOT NULL), '[]'::jsonb))
                   FROM riskd.platform_positions AS p
                   WHERE p.account_id = d.account_id)
               END AS evidence
        FROM decided AS d
    )
    -- the results as they stand (an action below adds its ids), and the accounts that have
    -- something to write
    SELECT array_agg(ROW(f.account_id, f.user_id, f.level, f.previous_level, f.utilization,
                         f.equity, f.used_margin, NULL, NULL)::riskd.check_result
                     ORDER BY f.account_id),
           array_agg(ROW(f.account_id, f.user_id, f.balance, f.account_error, f.n_open,
                         f.equity, f.used_margin, f.trusted, f.w, f.ac, f.known,
                         f.previous_level, f.level, f.utilization, f.rewrite,
                         f.evidence)::riskd.checked_account ORDER BY f.account_id)
               FILTER (WHERE f.rewrite OR f.level <> f.previous_level OR f.level = 'critical'),
           count(*) FILTER (WHERE f.rewrite AND NOT f.known),
           count(*) FILTER (WHERE f.rewrite AND f.known),
           count(*) FILTER (WHERE f.level <> f.previous_level OR f.level = 'critical')
    INTO v_results, v_checked, v_new, v_changed, v_act
    FROM found AS f;

    IF v_new > 0 THEN
        -- a sweep may have recorded the account meanwhile: its first figures, no level of its
        -- own, so this check's stand
        INSERT INTO riskd.account_state AS s
            (account_id, level, utilization, equity, used_margin, checked_at, changed_at)
        SELECT c.account_id, c.level, c.utilization, c.equity, c.used_margin, now(), now()
        FROM unnest(v_checked) AS c
        WHERE c.rewrite AND NOT c.known
        ON CONFLICT (account_id) DO UPDATE
        SET level = excluded.level, utilization = excluded.utilization,
            equity = excluded.equity, used_margin = excluded.used_margin,
            checked_at = excluded.checked_at,
            changed_at = CASE WHEN s.level = excluded.level THEN s.changed_at
                              ELSE excluded.changed_at END;
    END IF;
    IF v_changed > 0 THEN
        UPDATE riskd.account_state AS s
        SET level = c.level, utilization = c.utilization, equity = c.equity,
            used_margin = c.used_margin, checked_at = now(),
            changed_at = CASE WHEN c.level = c.previous_level THEN s.changed_at
                              ELSE now() END
        FROM unnest(v_checked) AS c
        WHERE c.rewrite AND c.known AND s.account_id = c.account_id;
    END IF;

    IF v_act > 0 THEN
        WITH kept AS (
            SELECT c.*, c.evidence -> 'positions' AS positions,
                   NULLIF(c.evidence -> 'data_errors'
                          || CASE WHEN c.account_error IS NOT NULL
                                  THEN jsonb_build_array(c.account_error)
                                  ELSE '[]'::jsonb END,
                          '[]'::jsonb) AS data_errors
            FROM unnest(v_checked) AS c
            WHERE c.level <> c.previous_level OR c.level = 'critical'
        ), events AS (
            INSERT INTO riskd.risk_events
                (account_id, user_id, from_level, to_level, utilization, equity, used_margin,
                 detail, instance)
            SELECT account_id, user_id, previous_level, level, utilization, equity,
                   used_margin,
                   jsonb_strip_nulls(jsonb_build_object(
                       'balance', balance, 'positions', positions,
                       'warning_threshold', w, 'auto_close_threshold', ac,
                       'hysteresis', p_hysteresis, 'first_check', NOT known,
                       'data_errors', data_errors)),
                   p_instance
            FROM kept WHERE level <> previous_level
            ORDER BY account_id  -- one batch's events numbered in account order
            RETURNING id, account_id
        ), requested AS (
            INSERT INTO riskd.close_requests (account_id, status, utilization, detail)
            SELECT account_id, 'pending', utilization,
                   jsonb_build_object('equity', equity, 'used_margin', used_margin,
                                      'positions', positions)
            FROM kept
            -- every check of a critical account with open positions and trustworthy data
            -- asks, so that one whose request was done or cancelled while still critical asks
            -- again; the unique index keeps it to one pending request (I3)
            WHERE v_mode = 'request' AND level = 'critical' AND n_open > 0 AND trusted
            ON CONFLICT (account_id) WHERE status = 'pending' DO NOTHING
            RETURNING id, account_id
        ), cancelled AS (
            -- leaving critical: a pending request is no longer wanted (every data-modifying
            -- CTE runs to completion whether or not the main query reads it)
            UPDATE riskd.close_requests AS c SET status = 'cancelled', completed_at = now()
            FROM kept AS a
            WHERE c.account_id = a.account_id AND c.status = 'pending'
              AND a.previous_level = 'critical' AND a.level <> 'critical'
            RETURNING c.id
        )
        SELECT array_agg(ROW(r.account_id, r.user_id, r.level, r.previous_level,
                             r.utilization, r.equity, r.used_margin, e.id,
                             q.id)::riskd.check_result ORDER BY r.account_id),
               count(*) FILTER (WHERE e.id IS NOT NULL OR q.id IS NOT NULL)
        INTO v_results, v_notify
        FROM unnest(v_results) AS r
        LEFT JOIN events AS e ON e.account_id = r.account_id
        LEFT JOIN requested AS q ON q.account_id = r.account_id;
    END IF;

    IF v_mode = 'flatten' THEN
        v_results := riskd.flatten(v_results, p_warning, p_auto_close);
        v_notify := 1;
    END IF;

    IF v_notify > 0 AND pg_notification_queue_usage() < v_notify_limit THEN
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
CREATE FUNCTION riskd.flatten(
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
