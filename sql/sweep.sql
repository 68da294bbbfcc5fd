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
CREATE FUNCTION riskd.sweep(p_warning numeric, p_auto_close numeric, p_hysteresis numeric)
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
