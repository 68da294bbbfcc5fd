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
SELECT v.position_id, v.account_id, v.instrument, v.quantity, v.price, v.margin_rate, v.pnl,
       riskd.position_margin(v.quantity, v.price, v.margin_rate) AS margin,
       riskd.position_pnl(v.pnl) AS pnl_value,
       riskd.position_data_error(v.quantity, v.price, v.margin_rate, v.pnl) AS data_error,
       -- when the price was set ([schema] instrument_price_time; NULL when not mapped), which
       -- the stale-price guard reads
       v.price_time
FROM (
    SELECT p.{p_id} AS position_id, p.{p_account} AS account_id,
           p.{p_instrument}::text AS instrument, p.{p_quantity}::numeric AS quantity,
           i.{i_price}::numeric AS price, i.{i_margin_rate}::numeric AS margin_rate,
           p.{p_pnl}::numeric AS pnl, {price_time} AS price_time
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

-- The margin model's figures for these accounts, those with something open (DESIGN §1): the
-- platform's own function when [risk] model names one, else the built-in model over
-- the views above. The check and the sweep join it when the model is the platform's (they
-- inline the built-in sums); flatten re-asks it after each close. SQL-standard: the platform's
-- function is a recorded dependency, which its owner cannot drop from under riskd (I9).
CREATE FUNCTION riskd.model_figures(p_accounts {account_id_type}[])
RETURNS TABLE (account_id {account_id_type}, equity numeric, used_margin numeric)
LANGUAGE sql STABLE
BEGIN ATOMIC
    {model_figures}
END;

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
    evidence       jsonb,   -- for a transition or a critical account: {{positions, data_errors}}
    mode           text,    -- its auto-close mode: the account's limit, else the check's
    price_time     timestamptz  -- its oldest price's time (-infinity: one has none)
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
    v_close bigint;    -- critical accounts with positions open and a mode that closes
    v_notify bigint := 0;  -- results to announce on riskd_events
    -- as the triggers read it: a value that is not a plain number counts as the default, so
    -- that a typo in a setting can never stop every check
    v_notify_limit float8 := CASE
        WHEN current_setting('riskd.notify_queue_limit', true) ~ '^ *[0-9]{{0,6}}[.]?[0-9]{{1,12}} *$'
        THEN float8(current_setting('riskd.notify_queue_limit', true))
        ELSE 0.5 END;
BEGIN
    PERFORM pg_advisory_xact_lock({lock_class}, s.k)
    FROM (SELECT DISTINCT hashtext(i::text) AS k FROM unnest(v_ids) AS i ORDER BY 1) AS s;

    WITH risk AS (
        -- the figures of the margin model (riskd.sqlfiles: built in, or the platform's)
        SELECT a.account_id, a.user_id, a.balance, {account_error} AS account_error,
               {n_open} AS n_open,
               {equity} AS equity,
               {used_margin} AS used_margin,
               {account_error} IS NULL AND COALESCE(agg.n_untrusted, 0) = 0 AS trusted,
               agg.price_time,
               -- a generated balance cannot take realised PnL: flatten becomes a close request
               CASE WHEN COALESCE(l.auto_close, p_mode) = 'flatten' AND NOT {balance_bookable}
                    THEN 'request' ELSE COALESCE(l.auto_close, p_mode) END AS mode,
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
                       p.quantity, p.price, p.margin_rate, p.pnl)) AS n_untrusted,
                   min(COALESCE(p.price_time, '-infinity')) AS price_time
            FROM riskd.platform_positions AS p
            WHERE p.account_id = ANY (v_ids)
            GROUP BY p.account_id
        ) AS agg ON agg.account_id = a.account_id
        {model_join}
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
                         f.evidence, f.mode, f.price_time)::riskd.checked_account
                     ORDER BY f.account_id)
               FILTER (WHERE f.rewrite OR f.level <> f.previous_level OR f.level = 'critical'),
           count(*) FILTER (WHERE f.rewrite AND NOT f.known),
           count(*) FILTER (WHERE f.rewrite AND f.known),
           count(*) FILTER (WHERE f.level <> f.previous_level OR f.level = 'critical'),
           count(*) FILTER (WHERE f.level = 'critical' AND f.n_open > 0
                              AND f.mode IN ('request', 'flatten'))
    INTO v_results, v_checked, v_new, v_changed, v_act, v_close
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
                       'model', {model_name},
                       'data_errors', data_errors)),
                   p_instance
            FROM kept WHERE level <> previous_level
            ORDER BY account_id  -- one batch's events numbered in account order
            RETURNING id, account_id
        ), flagged AS (
            -- a transition decided on data riskd cannot trust gets an alert (a critical one's
            -- held close says it, sql/act.sql)
            INSERT INTO riskd.alerts (kind, account_id, detail)
            SELECT 'data_error', account_id,
                   jsonb_build_object('data_errors', data_errors, 'from_level', previous_level,
                                      'to_level', level)
            FROM kept
            WHERE level <> previous_level AND level <> 'critical' AND data_errors IS NOT NULL
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
                             NULL)::riskd.check_result ORDER BY r.account_id),
               count(e.id)
        INTO v_results, v_notify
        FROM unnest(v_results) AS r
        LEFT JOIN events AS e ON e.account_id = r.account_id;
    END IF;

    -- the auto-close (sql/act.sql): a close request or a flatten, unless a safety rail holds it
    IF v_close > 0 THEN
        v_results := riskd.act(v_checked, v_results, p_warning, p_auto_close);
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
