-- Back to revision 0007: no alerts, no kill switch, no per-account mode, no margin model of
-- the platform's; the check closes without the rails. The positions view loses the price's
-- time: dropped and made again (a view cannot lose a column in place), with its grants given
-- back.

DROP FUNCTION riskd.act(riskd.checked_account[], riskd.check_result[], numeric, numeric);
DROP FUNCTION riskd.pause(text, text, jsonb);
DROP FUNCTION riskd.resume(text, text);
DROP FUNCTION riskd.setting_number(text);
DROP FUNCTION riskd.flatten_by_model(riskd.check_result[], numeric, numeric);
DROP FUNCTION riskd.model_figures;
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

-- The sweep (DESIGN §2.5): one set-based pass over every account. It records accounts never
-- seen before that are `ok` (no lock needed: no event), brings the figures of accounts whose
-- level holds up to date (so that after a sweep every row of riskd.account_state is current,
-- DESIGN §4: what `riskd accounts --nearest`, the dashboard and risk-first ordering read), and
-- returns the accounts whose level changes, and the critical accounts with open positions and
-- no pending close request (so that none is left critical with positions open, DESIGN §1: a
-- request done or cancelled while still critical, flatten mode switched on, a flatten that
-- could not finish), which the caller then sends through riskd.check_accounts in batches — the
-- same locked path as every other check, so a sweep and the daemon never write the same
-- transition twice.
--
-- The figures are refreshed in place, compare-and-set: a row is rewritten only while it still
-- holds what this pass read (PostgreSQL re-reads a row a check changed meanwhile, and that
-- check's figures stand), and a row a check holds locked is skipped (that check writes it).
-- In a moving market most holders' figures are always a few seconds older than the price, and
-- the daemon checks each of them anyway; sending them all through the check from every sweep
-- would double that work. Rendered by riskd.sqlfiles.
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
               s.level AS recorded, s.utilization AS recorded_utilization,
               s.equity AS recorded_equity, s.used_margin AS recorded_used_margin
        FROM riskd.platform_accounts AS a
        LEFT JOIN agg ON agg.account_id = a.account_id
        LEFT JOIN riskd.account_limits AS l ON l.account_id = a.account_id
        LEFT JOIN riskd.account_state AS s ON s.account_id = a.account_id
    ), decided AS (
        SELECT r.*,
               riskd.decide_level(r.n_open, r.equity, r.used_margin, r.w, r.ac, p_hysteresis,
                                  COALESCE(r.recorded, 'ok')) AS level,
               riskd.utilization(r.n_open, r.equity, r.used_margin) AS utilization
        FROM risk AS r
    ), first_seen AS (
        INSERT INTO riskd.account_state AS s (account_id, level, utilization, equity, used_margin)
        SELECT d.account_id, d.level, d.utilization, d.equity, d.used_margin
        FROM decided AS d WHERE d.recorded IS NULL AND d.level = 'ok'
        ON CONFLICT ON CONSTRAINT account_state_pkey DO NOTHING
    ), stale AS (
        SELECT s.account_id, d.utilization, d.equity, d.used_margin
        FROM riskd.account_state AS s
        JOIN decided AS d ON d.account_id = s.account_id
        WHERE d.level = d.recorded
          AND (d.utilization, d.equity, d.used_margin) IS DISTINCT FROM
              (d.recorded_utilization, d.recorded_equity, d.recorded_used_margin)
          -- still as this pass read it (checked again on a row a check changed meanwhile)
          AND s.level = d.recorded
          AND (s.utilization, s.equity, s.used_margin) IS NOT DISTINCT FROM
              (d.recorded_utilization, d.recorded_equity, d.recorded_used_margin)
        FOR NO KEY UPDATE OF s SKIP LOCKED
    ), refreshed AS (
        UPDATE riskd.account_state AS s
        SET utilization = t.utilization, equity = t.equity, used_margin = t.used_margin,
            checked_at = now()
        FROM stale AS t
        WHERE s.account_id = t.account_id
    )
    SELECT d.account_id, d.level, COALESCE(d.recorded, 'ok')
    FROM decided AS d
    WHERE d.level <> COALESCE(d.recorded, 'ok')
       OR (d.level = 'critical' AND d.n_open > 0
           AND NOT EXISTS (SELECT 1 FROM riskd.close_requests AS c
                           WHERE c.account_id = d.account_id AND c.status = 'pending'));
END
$fn$;

DROP TYPE riskd.checked_account;
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

CREATE TEMPORARY TABLE riskd_view_grants ON COMMIT DROP AS
SELECT pg_catalog.quote_ident(g.rolname) AS role, a.privilege_type AS privilege
FROM pg_catalog.pg_class AS c
CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) AS a
JOIN pg_catalog.pg_roles AS g ON g.oid = a.grantee
WHERE c.oid = 'riskd.platform_positions'::pg_catalog.regclass AND a.grantee <> c.relowner;
DROP VIEW riskd.platform_positions;
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

DO $down$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT * FROM riskd_view_grants LOOP
        EXECUTE 'GRANT ' || r.privilege || ' ON riskd.platform_positions TO ' || r.role;
    END LOOP;
END
$down$;

DROP INDEX riskd.deliveries_alert_idx;
ALTER TABLE riskd.deliveries DROP CONSTRAINT deliveries_alert_id_fkey;
ALTER TABLE riskd.account_limits DROP COLUMN auto_close;
DROP INDEX riskd.close_requests_created_idx;
DROP TRIGGER alerts_announce ON riskd.alerts;
DROP FUNCTION riskd.announce_alert();
DROP TABLE riskd.controls;
DROP TABLE riskd.alerts;
