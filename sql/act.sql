-- The auto-close (DESIGN §1, §2.4 "act"), after riskd.check_accounts has recorded levels and
-- events: which critical accounts to close, what the safety rails hold back, and the close
-- itself (a close request, or flatten). Rendered by riskd.sqlfiles from the [schema] mapping.

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
