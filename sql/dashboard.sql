-- The named queries of `riskd dashboard` (riskd/dashboard/): riskd's own tables only, read as
-- the monitoring role of `riskd grants`, each bounded by an index or a limit. The overview's
-- other figures come from the queries `riskd status` and `riskd accounts` use (queries.sql).

-- name: level_changes
-- The transitions of the last hour, by the levels they left and reached (the index on
-- created_at): each level's count an hour ago is its count now less these.
SELECT from_level, to_level, count(*) AS n
FROM riskd.risk_events
WHERE created_at > pg_catalog.now() - interval '1 hour'
GROUP BY from_level, to_level

-- name: feed_cursors
-- Where the live feed starts: the latest event and alert.
SELECT (SELECT coalesce(max(id), 0) FROM riskd.risk_events) AS event_id,
       (SELECT coalesce(max(id), 0) FROM riskd.alerts) AS alert_id

-- name: feed_events
-- The events after a cursor, oldest first (the primary key), with the close request the
-- event's check opened (same transaction: same created_at).
SELECT e.id, e.account_id::text AS account_id, e.user_id, e.from_level, e.to_level,
       e.utilization, e.equity, e.used_margin, e.created_at,
       (SELECT c.id FROM riskd.close_requests AS c
        WHERE c.account_id = e.account_id AND c.created_at = e.created_at
        ORDER BY c.id DESC LIMIT 1) AS close_request_id
FROM riskd.risk_events AS e
WHERE e.id > %(after)s
ORDER BY e.id
LIMIT %(limit)s

-- name: feed_alerts
-- The alerts after a cursor, oldest first.
SELECT a.id, a.kind, a.account_id::text AS account_id, a.detail, a.created_at
FROM riskd.alerts AS a
WHERE a.id > %(after)s
ORDER BY a.id
LIMIT %(limit)s

-- name: account_figures
-- The account page: its latest check's figures and the thresholds that apply to it (the
-- account given as text becomes the account id type through the table's row type).
WITH id AS (
    SELECT (pg_catalog.jsonb_populate_record(
                NULL::riskd.account_state,
                pg_catalog.jsonb_build_object('account_id', %(account)s::text))).account_id
)
SELECT s.account_id::text AS account_id, s.level, s.utilization, s.equity, s.used_margin,
       s.checked_at, s.changed_at,
       greatest(0, extract(epoch FROM pg_catalog.clock_timestamp() - s.checked_at))::float8
           AS checked_age,
       least(coalesce(l.warning_threshold, %(warning)s::numeric),
             coalesce(l.auto_close_threshold, %(auto_close)s::numeric)) AS warning_threshold,
       coalesce(l.auto_close_threshold, %(auto_close)s::numeric) AS auto_close_threshold,
       l.auto_close
FROM riskd.account_state AS s
JOIN id ON s.account_id = id.account_id
LEFT JOIN riskd.account_limits AS l ON l.account_id = s.account_id

-- name: account_events
-- The account page: its latest events with their evidence, newest first (the index on
-- (account_id, id)).
SELECT e.id, e.from_level, e.to_level, e.utilization, e.equity, e.used_margin, e.detail,
       e.created_at, e.instance
FROM riskd.risk_events AS e
WHERE e.account_id = (pg_catalog.jsonb_populate_record(
          NULL::riskd.risk_events,
          pg_catalog.jsonb_build_object('account_id', %(account)s::text))).account_id
ORDER BY e.id DESC
LIMIT %(limit)s

-- name: account_close_requests
-- The account page: its close requests, newest first.
SELECT c.id, c.status, c.utilization, c.created_at, c.completed_at, c.detail
FROM riskd.close_requests AS c
WHERE c.account_id = (pg_catalog.jsonb_populate_record(
          NULL::riskd.close_requests,
          pg_catalog.jsonb_build_object('account_id', %(account)s::text))).account_id
ORDER BY c.id DESC
LIMIT %(limit)s

-- name: account_alerts
-- The account page: its alerts, newest first (the partial index on (account_id, id)).
SELECT a.id, a.kind, a.detail, a.created_at
FROM riskd.alerts AS a
WHERE a.account_id = (pg_catalog.jsonb_populate_record(
          NULL::riskd.alerts,
          pg_catalog.jsonb_build_object('account_id', %(account)s::text))).account_id
ORDER BY a.id DESC
LIMIT %(limit)s

-- name: snapshot
-- Each page in one snapshot, read only, without changing the pooled connection's defaults.
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY
