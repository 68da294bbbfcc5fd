-- Back to revision 0002: the check, flatten and sweep of riskd 0.1.0 (alembic/versions/0001).

-- The sweep (DESIGN §2.5): one set-based pass over every account, reading only. It records
-- accounts never seen before that are `ok` (no lock needed: no event), and returns the
-- accounts whose level changes, which the caller then sends through riskd.check_accounts in
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
        SELECT p.{p_account} AS account_id,
               count(*) AS n_open,
               sum(COALESCE(p.{p_pnl}, 0)) AS pnl,
               sum(abs(p.{p_quantity}) * COALESCE(i.{i_price}, 0)
                   * COALESCE(i.{i_margin_rate}, 0)) AS used
        FROM {positions} AS p
        LEFT JOIN {instruments} AS i ON i.{i_id} = p.{p_instrument}
        WHERE p.{p_quantity} <> 0
        GROUP BY p.{p_account}
    ), risk AS (
        SELECT a.{a_id} AS account_id,
               COALESCE(agg.n_open, 0) AS n_open,
               COALESCE(a.{a_balance}, 0) + COALESCE(agg.pnl, 0) AS equity,
               COALESCE(agg.used, 0) AS used_margin,
               COALESCE(l.warning_threshold, p_warning) AS w,
               COALESCE(l.auto_close_threshold, p_auto_close) AS ac,
               s.level AS recorded
        FROM {accounts} AS a
        LEFT JOIN agg ON agg.account_id = a.{a_id}
        LEFT JOIN riskd.account_limits AS l ON l.account_id = a.{a_id}
        LEFT JOIN riskd.account_state AS s ON s.account_id = a.{a_id}
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
    WHERE d.level <> COALESCE(d.recorded, 'ok');
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
        SELECT a.{a_id} AS account_id, a.{a_user}::text AS user_id,
               COALESCE(a.{a_balance}, 0) AS balance
        FROM {accounts} AS a JOIN ids ON a.{a_id} = ids.account_id
    ), pos AS (
        SELECT p.{p_account} AS account_id, p.{p_instrument}::text AS instrument,
               p.{p_quantity} AS quantity, i.{i_price} AS price,
               i.{i_margin_rate} AS margin_rate, p.{p_pnl} AS pnl
        FROM {positions} AS p
        JOIN ids ON p.{p_account} = ids.account_id
        LEFT JOIN {instruments} AS i ON i.{i_id} = p.{p_instrument}
        WHERE p.{p_quantity} <> 0
    ), agg AS (
        SELECT account_id,
               count(*) AS n_open,
               sum(COALESCE(pnl, 0)) AS pnl,
               sum(abs(quantity) * COALESCE(price, 0) * COALESCE(margin_rate, 0)) AS used,
               jsonb_agg(jsonb_build_object(
                   'instrument', instrument, 'quantity', quantity, 'price', price,
                   'margin_rate', margin_rate, 'pnl', pnl) ORDER BY instrument) AS positions
        FROM pos GROUP BY account_id
    ), risk AS (
        SELECT acct.account_id, acct.user_id, acct.balance,
               COALESCE(agg.n_open, 0) AS n_open,
               acct.balance + COALESCE(agg.pnl, 0) AS equity,
               COALESCE(agg.used, 0) AS used_margin,
               COALESCE(agg.positions, '[]'::jsonb) AS positions,
               COALESCE(l.warning_threshold, p_warning) AS w,
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
               jsonb_build_object(
                   'balance', balance, 'positions', positions,
                   'warning_threshold', w, 'auto_close_threshold', ac,
                   'hysteresis', p_hysteresis, 'first_check', NOT known),
               p_instance
        FROM decided WHERE level <> previous_level
        RETURNING id, account_id
    ), requested AS (
        INSERT INTO riskd.close_requests (account_id, status, utilization, detail)
        SELECT account_id, 'pending', utilization,
               jsonb_build_object('equity', equity, 'used_margin', used_margin,
                                  'positions', positions)
        FROM decided
        WHERE p_mode = 'request' AND level = 'critical' AND previous_level <> 'critical'
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
        v_results := riskd.flatten(v_results, p_warning);
    END IF;

    IF pg_notification_queue_usage() < v_notify_limit THEN
        PERFORM pg_notify('riskd_events', jsonb_build_object(
                    'event_id', r.event_id, 'account_id', r.account_id, 'user_id', r.user_id,
                    'from_level', r.previous_level, 'to_level', r.level,
                    'utilization', r.utilization,
                    'close_request_id', r.close_request_id)::text)
        FROM unnest(v_results) AS r WHERE r.event_id IS NOT NULL;
    END IF;

    RETURN QUERY SELECT * FROM unnest(v_results);
END
$fn$;

DROP FUNCTION riskd.flatten(riskd.check_result[], numeric, numeric);

-- Auto-close mode `flatten`: for every account that has just become critical, close its open
-- positions at the current price, largest loss first, until it is back under its warning
-- threshold (all of them when equity <= 0), realising their PnL into the balance; record what
-- was closed in a close request with status `done`. Positions are locked first, then the
-- closing set is computed from a new snapshot, so a fill that raced the check is seen.
CREATE FUNCTION riskd.flatten(p_results riskd.check_result[], p_warning numeric)
RETURNS riskd.check_result[]
LANGUAGE plpgsql SET search_path = pg_catalog, riskd AS $fn$
DECLARE
    v_ids {account_id_type}[];
    v_done riskd.check_result[];
BEGIN
    SELECT array_agg(r.account_id ORDER BY r.account_id) INTO v_ids
    FROM unnest(p_results) AS r
    WHERE r.level = 'critical' AND r.previous_level <> 'critical';
    IF v_ids IS NULL THEN
        RETURN p_results;
    END IF;

    -- Never make a trade wait, nor die in a deadlock, for a flatten: wait at most 200 ms for
    -- the platform's row locks (below the 1 s deadlock_timeout, so riskd gives up first); the
    -- batch then fails with lock_not_available, rolls back whole, and the daemon retries it.
    PERFORM set_config('lock_timeout', '200ms', true);
    -- the platform's fills lock a position and then its account: take them in that order
    PERFORM 1 FROM {positions} AS p WHERE p.{p_account} = ANY (v_ids) FOR UPDATE;
    PERFORM 1 FROM {accounts} AS a WHERE a.{a_id} = ANY (v_ids) FOR UPDATE;

    WITH pos AS (
        SELECT p.ctid AS row_id, p.{p_account} AS account_id,
               p.{p_instrument}::text AS instrument, p.{p_quantity} AS quantity,
               i.{i_price} AS price, i.{i_margin_rate} AS margin_rate,
               COALESCE(p.{p_pnl}, 0) AS pnl,
               abs(p.{p_quantity}) * COALESCE(i.{i_price}, 0) * COALESCE(i.{i_margin_rate}, 0)
                   AS margin
        FROM {positions} AS p
        LEFT JOIN {instruments} AS i ON i.{i_id} = p.{p_instrument}
        WHERE p.{p_account} = ANY (v_ids) AND p.{p_quantity} <> 0
    ), acct AS (
        SELECT a.{a_id} AS account_id,
               COALESCE(a.{a_balance}, 0) + COALESCE(sum(pos.pnl), 0) AS equity,
               COALESCE(sum(pos.margin), 0) AS used,
               COALESCE(l.warning_threshold, p_warning) AS w
        FROM {accounts} AS a
        LEFT JOIN pos ON pos.account_id = a.{a_id}
        LEFT JOIN riskd.account_limits AS l ON l.account_id = a.{a_id}
        WHERE a.{a_id} = ANY (v_ids)
        GROUP BY a.{a_id}, a.{a_balance}, l.warning_threshold
    ), ordered AS (
        SELECT pos.*, acct.equity, acct.used, acct.w,
               acct.used - COALESCE(sum(pos.margin) OVER (
                   PARTITION BY pos.account_id
                   ORDER BY pos.pnl, pos.instrument, pos.row_id
                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS used_before
        FROM pos JOIN acct USING (account_id)
    ), closing AS (
        SELECT * FROM ordered
        WHERE equity <= 0 OR used_before >= w * equity
    ), closed AS (
        UPDATE {positions} AS p SET {p_quantity} = 0, {p_pnl} = 0
        FROM closing AS c WHERE p.ctid = c.row_id
        RETURNING c.*
    ), realised AS (
        UPDATE {accounts} AS a SET {a_balance} = COALESCE(a.{a_balance}, 0) + r.pnl
        FROM (SELECT account_id, sum(pnl) AS pnl FROM closed GROUP BY account_id) AS r
        WHERE a.{a_id} = r.account_id
        RETURNING a.{a_id} AS account_id
    ), audit AS (
        INSERT INTO riskd.close_requests (account_id, status, utilization, completed_at, detail)
        SELECT acct.account_id, 'done',
               riskd.utilization(1, acct.equity, acct.used), now(),
               jsonb_build_object(
                   'mode', 'flatten', 'equity', acct.equity,
                   'used_margin_before', acct.used,
                   'used_margin_after', acct.used - COALESCE(sum(c.margin), 0),
                   'realised_pnl', COALESCE(sum(c.pnl), 0),
                   'closed', COALESCE(jsonb_agg(jsonb_build_object(
                       'instrument', c.instrument, 'quantity', c.quantity, 'price', c.price,
                       'margin_rate', c.margin_rate, 'pnl', c.pnl)
                       ORDER BY c.pnl, c.instrument) FILTER (WHERE c.row_id IS NOT NULL),
                       '[]'::jsonb))
        FROM acct LEFT JOIN closed AS c USING (account_id)
        GROUP BY acct.account_id, acct.equity, acct.used
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

REVOKE EXECUTE ON FUNCTION riskd.flatten(riskd.check_result[], numeric) FROM PUBLIC;

DROP VIEW riskd.platform_positions;
DROP VIEW riskd.platform_accounts;
DROP FUNCTION riskd.position_margin(numeric, numeric, numeric);
DROP FUNCTION riskd.position_pnl(numeric);
DROP FUNCTION riskd.position_data_error(numeric, numeric, numeric, numeric);

-- the mapping as riskd 0.1.0 recorded it: no position_id
UPDATE riskd.installation SET mapping = mapping - 'position_id';
