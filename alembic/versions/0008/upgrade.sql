-- riskd 0.2.0, revision 0008: the safety rails and the platform's own margin model (issue 14).
-- riskd.alerts (what a rail did, announced on riskd_events and, with a [webhook] url,
-- delivered) and riskd.controls (the kill switch); riskd.pause and riskd.resume; the
-- per-account auto-close mode in riskd.account_limits; the check's auto-close moved into
-- riskd.act, where the kill switch, the circuit breaker and the stale-price guard hold it back;
-- the positions view carries the price's time ([schema] instrument_price_time);
-- riskd.model_figures, and flatten asking the model again after each close ([risk] model).
-- (sql/rails.sql, sql/check.sql, sql/act.sql and sql/sweep.sql at this revision.)

-- What a rail did: paused / resumed (the kill switch), circuit_open (the breaker paused
-- riskd), close_held (an auto-close held back: a stale price or data riskd cannot trust),
-- data_error, endpoint_gone (the webhook endpoint answered 410). account_id NULL for what
-- concerns no single account.
CREATE TABLE riskd.alerts (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind       text NOT NULL CHECK (kind IN ('paused', 'resumed', 'circuit_open', 'close_held',
                                             'data_error', 'endpoint_gone')),
    account_id {account_id_type},
    detail     jsonb NOT NULL DEFAULT '{{}}',
    created_at timestamptz NOT NULL DEFAULT now()
);
-- an account's alerts (the close_held already said for a critical episode, an account page)
CREATE INDEX alerts_account_idx ON riskd.alerts (account_id, id) WHERE account_id IS NOT NULL;

-- The kill switch: one row. Paused, no instance makes a close (sql/act.sql); levels, events
-- and deliveries go on. Changed only through riskd.pause and riskd.resume.
CREATE TABLE riskd.controls (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    paused    boolean NOT NULL DEFAULT false,
    paused_by text,
    reason    text,
    since     timestamptz
);
INSERT INTO riskd.controls DEFAULT VALUES;

-- Every alert is announced on riskd_events as JSON (the dashboard and `riskd events --follow`
-- listen there) and, in a session with a [webhook] url, gets its delivery — but endpoint_gone,
-- which says the endpoint is no longer there to take it. A row trigger: alerts are few. The
-- NOTIFY is skipped when the queue is nearly full, as the check's are.
CREATE FUNCTION riskd.announce_alert() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, riskd
AS $$
DECLARE
    v_payload text := jsonb_build_object(
        'alert_id', NEW.id, 'kind', NEW.kind, 'account_id', NEW.account_id,
        'created_at', NEW.created_at, 'detail', NEW.detail)::text;
BEGIN
    IF pg_catalog.current_setting('riskd.webhook', true) IS NOT DISTINCT FROM 'on'
       AND NEW.kind <> 'endpoint_gone' THEN
        INSERT INTO riskd.deliveries (alert_id) VALUES (NEW.id);
    END IF;
    IF octet_length(v_payload) >= 7900 THEN  -- NOTIFY takes < 8000 bytes: the rest is in the row
        v_payload := jsonb_build_object('alert_id', NEW.id, 'kind', NEW.kind,
                                        'account_id', NEW.account_id,
                                        'created_at', NEW.created_at)::text;
    END IF;
    -- the limit as the triggers read it: a value that is not a plain number counts as 0.5
    IF pg_notification_queue_usage() < (CASE
           WHEN current_setting('riskd.notify_queue_limit', true) ~ '^ *[0-9]{{0,6}}[.]?[0-9]{{1,12}} *$'
           THEN float8(current_setting('riskd.notify_queue_limit', true))
           ELSE 0.5 END) THEN
        PERFORM pg_notify('riskd_events', v_payload);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER alerts_announce AFTER INSERT ON riskd.alerts
    FOR EACH ROW EXECUTE FUNCTION riskd.announce_alert();

-- The circuit breaker counts the closes of the last minute, across instances (sql/act.sql).
CREATE INDEX close_requests_created_idx ON riskd.close_requests (created_at);

ALTER TABLE riskd.account_limits
    ADD COLUMN auto_close text CHECK (auto_close IN ('request', 'flatten', 'off'));

ALTER TABLE riskd.deliveries
    ADD CONSTRAINT deliveries_alert_id_fkey FOREIGN KEY (alert_id)
        REFERENCES riskd.alerts (id) ON DELETE CASCADE;
CREATE UNIQUE INDEX deliveries_alert_idx ON riskd.deliveries (alert_id);

-- The platform's data as the check and the sweep read it. Views, so that every reference to a
-- platform table or column is recorded as a dependency: renaming a mapped column or table
-- carries the views along, dropping one is refused naming them (I9). security_invoker: read
-- with the caller's grants and row-level security, as if it read the tables. Every figure is
-- cast to numeric: the platform may keep any numeric type.
CREATE OR REPLACE VIEW riskd.platform_positions WITH (security_invoker = true) AS
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
               {n_open} AS n_open,
               {equity} AS equity,
               {used_margin} AS used_margin,
               LEAST(COALESCE(l.warning_threshold, p_warning),
                     COALESCE(l.auto_close_threshold, p_auto_close)) AS w,
               COALESCE(l.auto_close_threshold, p_auto_close) AS ac,
               s.level AS recorded, s.utilization AS recorded_utilization,
               s.equity AS recorded_equity, s.used_margin AS recorded_used_margin
        FROM riskd.platform_accounts AS a
        LEFT JOIN agg ON agg.account_id = a.account_id
        {model_join_all}
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

-- A number from a setting riskd's sessions set (riskd.db: session_settings), as the triggers
-- read theirs: a value that is not a plain number counts as 0 (the rail off), so that a typo
-- can never stop every check.
CREATE FUNCTION riskd.setting_number(p_name text) RETURNS float8
LANGUAGE sql STABLE PARALLEL SAFE
RETURN CASE WHEN current_setting(p_name, true) ~ '^ *[0-9]{{0,9}}[.]?[0-9]{{1,12}} *$'
            THEN float8(current_setting(p_name, true)) ELSE 0 END;

-- The kill switch (DESIGN §1): `riskd pause` and `riskd resume`, and the circuit breaker, which
-- pauses with the detail of why (an alert circuit_open rather than paused). SECURITY DEFINER:
-- the roles that may call them need nothing on riskd.controls itself. Each takes the rails
-- lock exclusively, so it returns only once every check that read the switch before it has
-- committed: after `riskd pause`, no close is made until `riskd resume`. Each returns whether
-- it changed the switch (pausing a paused riskd says so and changes nothing).
CREATE FUNCTION riskd.pause(p_by text, p_reason text, p_breaker jsonb DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, riskd AS $fn$
BEGIN
    PERFORM pg_advisory_xact_lock({rails_lock});
    UPDATE riskd.controls SET paused = true, paused_by = p_by, reason = p_reason, since = now()
    WHERE NOT paused;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO riskd.alerts (kind, detail)
    VALUES (CASE WHEN p_breaker IS NULL THEN 'paused' ELSE 'circuit_open' END,
            jsonb_build_object('by', p_by, 'reason', p_reason, 'role', session_user::text)
            || COALESCE(p_breaker, '{{}}'));
    RETURN true;
END
$fn$;

-- Resuming, the accounts still critical are marked dirty and the daemon woken: each is closed
-- at its next check, worst first (the daemon checks by risk), within the breaker's cap.
CREATE FUNCTION riskd.resume(p_by text, p_reason text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, riskd AS $fn$
DECLARE
    v_was riskd.controls;
BEGIN
    PERFORM pg_advisory_xact_lock({rails_lock});
    SELECT * INTO v_was FROM riskd.controls;
    IF NOT v_was.paused THEN
        RETURN false;
    END IF;
    UPDATE riskd.controls SET paused = false, paused_by = NULL, reason = NULL, since = NULL;
    INSERT INTO riskd.alerts (kind, detail)
    VALUES ('resumed', jsonb_build_object(
        'by', p_by, 'reason', p_reason, 'role', session_user::text,
        'paused_by', v_was.paused_by,
        'paused_reason', v_was.reason, 'paused_since', v_was.since,
        'paused_seconds', extract(epoch FROM now() - v_was.since)));
    INSERT INTO riskd.dirty_accounts (account_id)
    SELECT s.account_id FROM riskd.account_state AS s WHERE s.level = 'critical';
    PERFORM pg_notify('riskd_changes', '');
    RETURN true;
END
$fn$;

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
    -- the platform's margin model: close one position at a time, asking it again after each
    IF {model_flatten} THEN
        RETURN riskd.flatten_by_model(p_results, p_warning, p_auto_close);
    END IF;
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

-- flatten with the platform's margin model ([risk] model): the same locks, order and audit as
-- riskd.flatten, but one position at a time — largest loss first, its PnL booked at once —
-- asking the model again after each close and stopping once the account is back under its
-- warning threshold (DESIGN §1): riskd cannot compute what closing a position frees under a
-- model it does not know. Each account in a subtransaction; a close the platform's table
-- refuses undoes that account's closes and asks for a close request instead.
CREATE FUNCTION riskd.flatten_by_model(
    p_results riskd.check_result[], p_warning numeric, p_auto_close numeric
)
RETURNS riskd.check_result[]
LANGUAGE plpgsql SET search_path = pg_catalog, riskd AS $fn$
DECLARE
    v_ids {account_id_type}[];
    v_acct record;
    v_pos record;
    v_before record;
    v_now record;
    v_closed jsonb;
    v_realised numeric;
    v_booked numeric;
    v_step numeric;
    v_n bigint;
    v_under boolean;
    v_request bigint;
    v_accounts {account_id_type}[] := '{{}}';
    v_requests bigint[] := '{{}}';
    v_settled {account_id_type}[] := '{{}}';  -- the model found them under warning: no close
    v_failed {account_id_type}[] := '{{}}';
    v_reasons text[] := '{{}}';
    v_done riskd.check_result[];
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
        SELECT u.id AS account_id,
               LEAST(COALESCE(l.warning_threshold, p_warning),
                     COALESCE(l.auto_close_threshold, p_auto_close)) AS w
        FROM unnest(v_ids) AS u (id)
        LEFT JOIN riskd.account_limits AS l ON l.account_id = u.id
        ORDER BY u.id
    LOOP
        v_request := NULL;
        v_under := false;
        v_closed := '[]';
        v_realised := 0;
        v_booked := 0;
        BEGIN
            SELECT f.equity, f.used_margin INTO v_before
            FROM riskd.model_figures(ARRAY[v_acct.account_id]) AS f;
            FOR v_pos IN
                SELECT v.*, riskd.position_pnl(v.pnl) AS pnl_value
                FROM riskd.flatten_positions(ARRAY[v_acct.account_id]) AS v
                ORDER BY riskd.position_pnl(v.pnl), v.instrument, v.position_id::text
            LOOP
                -- ask again: nothing open (no row), or under the warning threshold, is enough
                SELECT f.equity, f.used_margin INTO v_now
                FROM riskd.model_figures(ARRAY[v_acct.account_id]) AS f;
                IF NOT FOUND
                   OR (v_now.equity > 0 AND v_now.used_margin < v_acct.w * v_now.equity) THEN
                    v_under := true;
                    EXIT;
                END IF;
                SELECT count(*) INTO v_n FROM riskd.flatten_close(ARRAY[ROW(
                    v_pos.table_oid, v_pos.position_id, v_pos.account_id)::riskd.position_ref]);
                IF v_n <> 1 THEN
                    RAISE EXCEPTION USING MESSAGE = concat('closed ', v_n, ' rows for 1 position');
                END IF;
                v_step := riskd.flatten_book(v_acct.account_id, COALESCE(
                    round(v_pos.pnl_value, {balance_scale}), v_pos.pnl_value));
                IF v_step IS NULL THEN
                    RAISE EXCEPTION USING MESSAGE = 'found no single balance row it may update';
                END IF;
                v_realised := v_realised + v_pos.pnl_value;
                v_booked := v_booked + v_step;
                v_closed := v_closed || jsonb_build_object(
                    'position', v_pos.position_id, 'instrument', v_pos.instrument,
                    'quantity', v_pos.quantity, 'price', v_pos.price,
                    'margin_rate', v_pos.margin_rate, 'pnl', v_pos.pnl_value);
            END LOOP;
            IF jsonb_array_length(v_closed) > 0 THEN
                SELECT f.equity, f.used_margin INTO v_now
                FROM riskd.model_figures(ARRAY[v_acct.account_id]) AS f;
                INSERT INTO riskd.close_requests
                    (account_id, status, utilization, completed_at, detail)
                VALUES (v_acct.account_id, 'done',
                        riskd.utilization(1, v_before.equity, v_before.used_margin), now(),
                        jsonb_build_object(
                            'mode', 'flatten', 'model', {model_name},
                            'equity', v_before.equity,
                            'used_margin_before', v_before.used_margin,
                            'equity_after', COALESCE(v_now.equity, 0),
                            'used_margin_after', COALESCE(v_now.used_margin, 0),
                            'realised_pnl', v_realised, 'booked_pnl', v_booked,
                            'closed', v_closed))
                RETURNING id INTO v_request;
            ELSIF v_under THEN
                v_settled := v_settled || v_acct.account_id;
            END IF;
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

    -- as riskd.flatten: a critical account left so gets a close request saying why
    WITH fallback AS (
        INSERT INTO riskd.close_requests (account_id, status, utilization, detail)
        SELECT r.account_id, 'pending', r.utilization,
               jsonb_build_object(
                   'mode', 'flatten', 'model', {model_name}, 'equity', r.equity,
                   'used_margin', r.used_margin,
                   'flatten_failed', COALESCE(f.reason, 'no open position it may close'))
        FROM unnest(p_results) AS r
        LEFT JOIN unnest(v_failed, v_reasons) AS f (account_id, reason)
            ON f.account_id = r.account_id
        WHERE r.level = 'critical' AND r.account_id <> ALL (v_accounts)
          AND r.account_id <> ALL (v_settled)
          AND EXISTS (SELECT 1 FROM riskd.platform_positions AS p
                      WHERE p.account_id = r.account_id)
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

-- The auto-close of the accounts a check found critical with positions open, in a mode that
-- closes (the account's own, else the check's): returns the check's results with the close
-- requests it opened. The safety rails, in order:
--   * data riskd cannot trust, or (with [risk] max_price_age) a price older than that, holds
--     the account's close back; an alert close_held says why, once per reason while the
--     account stays critical;
--   * paused (riskd.controls), nothing is closed;
--   * with [risk] max_closes_per_minute, the closes of the last minute (close requests made,
--     flattens done, on every instance) plus these may not exceed it: the worst accounts are
--     closed up to the cap, and riskd pauses itself (an alert circuit_open).
-- The rails lock orders this against pause and resume, and (exclusively, when the breaker
-- counts) against every other check about to close, so that two instances never both count
-- the same last free close. It is taken after the accounts' locks, as every check takes them.
CREATE FUNCTION riskd.act(
    p_checked riskd.checked_account[], p_results riskd.check_result[],
    p_warning numeric, p_auto_close numeric
) RETURNS riskd.check_result[]
LANGUAGE plpgsql SET search_path = pg_catalog, riskd AS $fn$
DECLARE
    v_cap bigint := floor(riskd.setting_number('riskd.max_closes_per_minute'));
    v_max_age float8 := riskd.setting_number('riskd.max_price_age');  -- seconds
    v_want riskd.checked_account[];
    v_go riskd.checked_account[];
    v_recent bigint;
    v_may_flatten boolean;
    v_flattened riskd.check_result[] := '{{}}';
    v_out riskd.check_result[];
BEGIN
    -- what this check would close, worst first: equity gone, then by utilisation
    SELECT array_agg(c ORDER BY c.equity > 0, c.utilization DESC NULLS FIRST, c.account_id)
    INTO v_want
    FROM unnest(p_checked) AS c
    WHERE c.level = 'critical' AND c.n_open > 0 AND c.mode IN ('request', 'flatten')
      -- in request mode, an account whose request is pending is asked no more (I3)
      AND (c.mode = 'flatten' OR NOT EXISTS (
          SELECT FROM riskd.close_requests AS q
          WHERE q.account_id = c.account_id AND q.status = 'pending'));
    IF v_want IS NULL THEN
        RETURN p_results;
    END IF;

    WITH held AS (
        SELECT c.account_id, c.evidence,
               CASE WHEN NOT c.trusted THEN 'data_error' ELSE 'stale_price' END AS reason
        FROM unnest(v_want) AS c
        WHERE NOT c.trusted
           OR (v_max_age > 0 AND c.price_time < now() - v_max_age * interval '1 second')
    )
    INSERT INTO riskd.alerts (kind, account_id, detail)
    SELECT 'close_held', h.account_id, jsonb_strip_nulls(jsonb_build_object(
               'reason', h.reason,
               'data_errors', CASE WHEN h.reason = 'data_error'
                                   THEN h.evidence -> 'data_errors' END,
               'max_price_age', CASE WHEN h.reason = 'stale_price' THEN v_max_age END)
               || COALESCE(o.oldest, '{{}}'))
    FROM held AS h
    LEFT JOIN LATERAL (
        -- the instrument whose price is the oldest, and its age
        SELECT jsonb_build_object(
                   'instrument', p.instrument, 'price_time', p.price_time,
                   'price_age', round(extract(epoch FROM now() - p.price_time), 3)) AS oldest
        FROM riskd.platform_positions AS p
        WHERE h.reason = 'stale_price' AND p.account_id = h.account_id
        ORDER BY p.price_time NULLS FIRST, p.instrument
        LIMIT 1
    ) AS o ON true
    -- said once while the account stays critical: none of this reason since its last event
    WHERE NOT EXISTS (
        SELECT FROM riskd.alerts AS a
        WHERE a.account_id = h.account_id AND a.kind = 'close_held'
          AND a.detail ->> 'reason' = h.reason
          AND a.created_at >= COALESCE(
              (SELECT e.created_at FROM riskd.risk_events AS e
               WHERE e.account_id = h.account_id ORDER BY e.id DESC LIMIT 1), '-infinity'));

    SELECT array_agg(c ORDER BY c.equity > 0, c.utilization DESC NULLS FIRST, c.account_id)
    INTO v_go
    FROM unnest(v_want) AS c
    WHERE c.trusted
      AND NOT (v_max_age > 0 AND c.price_time < now() - v_max_age * interval '1 second');
    IF v_go IS NULL THEN
        RETURN p_results;
    END IF;

    -- paused: nothing to close, and no lock to take (while paused in a crash, every check of
    -- a critical account comes here)
    IF (SELECT k.paused FROM riskd.controls AS k) THEN
        RETURN p_results;
    END IF;
    IF v_cap > 0 THEN
        PERFORM pg_advisory_xact_lock({rails_lock});
    ELSE
        PERFORM pg_advisory_xact_lock_shared({rails_lock});
    END IF;
    -- read again after the lock: a pause committed meanwhile is seen
    IF (SELECT k.paused FROM riskd.controls AS k) THEN
        RETURN p_results;
    END IF;
    IF v_cap > 0 THEN
        SELECT count(*) INTO v_recent
        FROM riskd.close_requests AS q WHERE q.created_at > now() - interval '1 minute';
        IF v_recent + cardinality(v_go) > v_cap THEN
            PERFORM riskd.pause(
                'circuit breaker',
                concat(v_recent + cardinality(v_go), ' closes in a minute would exceed ',
                       '[risk] max_closes_per_minute = ', v_cap),
                jsonb_build_object(
                    'max_closes_per_minute', v_cap, 'closes_in_last_minute', v_recent,
                    'closing', greatest(v_cap - v_recent, 0),
                    'held', cardinality(v_go) - greatest(v_cap - v_recent, 0)));
            v_go := v_go[1:greatest(v_cap - v_recent, 0)];
        END IF;
    END IF;

    -- flatten needs its grants (`riskd grants --flatten`); without them a close request
    v_may_flatten := has_function_privilege(
        'riskd.flatten(riskd.check_result[], numeric, numeric)', 'EXECUTE');
    IF v_may_flatten AND EXISTS (SELECT FROM unnest(v_go) AS c WHERE c.mode = 'flatten') THEN
        v_flattened := riskd.flatten(
            ARRAY(SELECT r FROM unnest(p_results) AS r
                  JOIN unnest(v_go) AS c ON c.account_id = r.account_id
                  WHERE c.mode = 'flatten' ORDER BY r.account_id),
            p_warning, p_auto_close);
    END IF;

    WITH requested AS (
        INSERT INTO riskd.close_requests (account_id, status, utilization, detail)
        SELECT c.account_id, 'pending', c.utilization,
               jsonb_strip_nulls(jsonb_build_object(
                   'equity', c.equity, 'used_margin', c.used_margin,
                   'positions', c.evidence -> 'positions',
                   'flatten_failed', CASE WHEN c.mode = 'flatten' THEN
                       'the daemon may not flatten (riskd grants --flatten)' END))
        FROM unnest(v_go) AS c
        WHERE c.mode = 'request' OR NOT v_may_flatten
        ON CONFLICT (account_id) WHERE status = 'pending' DO NOTHING
        RETURNING id, account_id
    )
    SELECT array_agg(ROW(r.account_id, r.user_id, r.level, r.previous_level, r.utilization,
                         r.equity, r.used_margin, r.event_id,
                         COALESCE(q.id, f.close_request_id, r.close_request_id)
                     )::riskd.check_result ORDER BY r.account_id)
    INTO v_out
    FROM unnest(p_results) AS r
    LEFT JOIN requested AS q ON q.account_id = r.account_id
    LEFT JOIN unnest(v_flattened) AS f ON f.account_id = r.account_id;
    RETURN v_out;
END
$fn$;

-- What the roles riskd's grants made may do with the new objects: the daemon's (EXECUTE on the
-- check) runs the rails and reads and writes alerts; the flattening one (EXECUTE on flatten)
-- flattens by the model; the monitor's (SELECT on the events, but no INSERT) reads the alerts
-- and the switch. Nobody else: not PUBLIC.
DO $up$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT pg_catalog.quote_ident(g.rolname) AS role, p.oid AS fn
        FROM pg_catalog.pg_proc AS p
        CROSS JOIN LATERAL pg_catalog.aclexplode(p.proacl) AS a
        JOIN pg_catalog.pg_roles AS g ON g.oid = a.grantee
        WHERE p.oid IN (
                'riskd.check_accounts(text[], text, numeric, numeric, numeric, text)'::pg_catalog.regprocedure,
                'riskd.flatten(riskd.check_result[], numeric, numeric)'::pg_catalog.regprocedure)
          AND a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner
    LOOP
        IF r.fn = 'riskd.flatten(riskd.check_result[], numeric, numeric)'::pg_catalog.regprocedure THEN
            EXECUTE 'GRANT EXECUTE ON FUNCTION riskd.flatten_by_model TO ' || r.role;
        ELSE
            EXECUTE 'GRANT EXECUTE ON FUNCTION riskd.act, riskd.setting_number, riskd.pause, '
                || 'riskd.resume, riskd.model_figures TO ' || r.role;
            EXECUTE 'GRANT SELECT, INSERT ON riskd.alerts TO ' || r.role;
            EXECUTE 'GRANT SELECT ON riskd.controls TO ' || r.role;
        END IF;
    END LOOP;
    FOR r IN
        SELECT pg_catalog.quote_ident(g.rolname) AS role
        FROM pg_catalog.pg_class AS c
        CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) AS a
        JOIN pg_catalog.pg_roles AS g ON g.oid = a.grantee
        WHERE c.oid = 'riskd.risk_events'::pg_catalog.regclass
          AND a.privilege_type = 'SELECT' AND a.grantee <> c.relowner
          AND NOT pg_catalog.has_table_privilege(a.grantee, c.oid, 'INSERT')
    LOOP
        EXECUTE 'GRANT SELECT ON riskd.alerts, riskd.controls TO ' || r.role;
    END LOOP;
END
$up$;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA riskd FROM PUBLIC;
