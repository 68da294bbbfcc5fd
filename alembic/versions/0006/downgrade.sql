-- Back to revision 0005: its check (one statement; account_state rewritten on every check,
-- evidence built for every account), its guards and its sweep.

-- What one open position counts for, and what is wrong with it. Data riskd cannot trust — a
-- NaN or infinite quantity, price, margin rate or PnL, or a NULL price — counts nothing (the
-- account is checked on what can be computed) and is named, which holds every action back
-- (DESIGN §1). Plain SQL functions, inlined by the planner; every figure already numeric.
CREATE OR REPLACE FUNCTION riskd.position_margin(quantity numeric, price numeric, margin_rate numeric)
RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN quantity IN ('NaN', 'Infinity', '-Infinity')
              OR price IS NULL OR price IN ('NaN', 'Infinity', '-Infinity')
              OR margin_rate IN ('NaN', 'Infinity', '-Infinity')
            THEN 0
            ELSE abs(quantity) * price * COALESCE(margin_rate, 0) END;

CREATE OR REPLACE FUNCTION riskd.position_pnl(pnl numeric) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN pnl IN ('NaN', 'Infinity', '-Infinity') THEN 0 ELSE COALESCE(pnl, 0) END;

CREATE OR REPLACE FUNCTION riskd.position_data_error(
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

CREATE OR REPLACE VIEW riskd.platform_accounts WITH (security_invoker = true) AS
SELECT v.account_id, v.user_id, v.balance,
       CASE WHEN v.balance IN ('NaN', 'Infinity', '-Infinity') THEN 0
            ELSE COALESCE(v.balance, 0) END AS balance_value,
       CASE WHEN v.balance IN ('NaN', 'Infinity', '-Infinity')
            THEN jsonb_build_object('balance', v.balance::text) END AS data_error
FROM (
    SELECT a.{a_id} AS account_id, a.{a_user}::text AS user_id, a.{a_balance}::numeric AS balance
    FROM {accounts} AS a
) AS v;

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

DROP FUNCTION riskd.position_untrusted;
DROP TYPE riskd.checked_account;
