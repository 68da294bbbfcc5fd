-- The named queries of `riskd dashboard` (riskd/dashboard/): riskd's own tables only, read as
-- the monitoring role of `riskd grants`, each bounded by an index or a limit. The overview's
-- other figures come from the queries `riskd status` and `riskd accounts` use (queries.sql).

-- name: overview_summary
-- The overview's figures read at every refresh (as of its snapshot's time), each through an index (never every account):
-- the accounts over a threshold per level (the partial index of revision 0009), the pending
-- close requests and the oldest's age (the partial unique index on them), the revision, the
-- notification queue.
SELECT pg_catalog.now() AS read_at,
       (SELECT version_num FROM riskd.alembic_version) AS revision,
       pg_catalog.pg_notification_queue_usage()::float8 AS queue_usage,
       (SELECT coalesce(jsonb_object_agg(t.level, t.n), '{}')
          FROM (SELECT s.level, count(*) AS n FROM riskd.account_state AS s
                WHERE s.level <> 'ok' GROUP BY s.level) AS t) AS in_trouble,
       (SELECT count(*) FROM riskd.close_requests AS c WHERE c.status = 'pending')
           AS pending_close_requests,
       (SELECT extract(epoch FROM pg_catalog.clock_timestamp() - min(c.created_at))::float8
          FROM riskd.close_requests AS c WHERE c.status = 'pending')
           AS oldest_close_request_age

-- name: accounts_in_trouble
-- The accounts over a threshold, critical first, then by utilisation (none: equity gone,
-- first), through the partial index of revision 0009; with the thresholds that apply, how long
-- each has been at its level, its pending close request and the mode of its auto-close. The
-- worst are taken from riskd.account_state alone (its level and utilisation say which), and
-- only they are joined: the cost grows with the accounts in trouble, not with the book.
WITH worst AS (
    SELECT s.account_id, s.level, s.utilization, s.equity, s.used_margin, s.checked_at,
           s.changed_at
    FROM riskd.account_state AS s
    WHERE s.level <> 'ok'
    ORDER BY s.level = 'critical' DESC, s.utilization DESC NULLS FIRST, s.account_id
    LIMIT %(limit)s
)
SELECT s.account_id::text AS account_id, s.level, s.utilization, s.equity, s.used_margin,
       greatest(0, extract(epoch FROM pg_catalog.clock_timestamp() - s.checked_at))::float8
           AS checked_age,
       greatest(0, extract(epoch FROM pg_catalog.clock_timestamp() - s.changed_at))::float8
           AS level_age,
       least(coalesce(l.warning_threshold, %(warning)s::numeric),
             coalesce(l.auto_close_threshold, %(auto_close)s::numeric)) AS warning_threshold,
       coalesce(l.auto_close_threshold, %(auto_close)s::numeric) AS auto_close_threshold,
       coalesce(l.auto_close, %(mode)s::text) AS auto_close,
       c.id AS close_request_id,
       greatest(0, extract(epoch FROM pg_catalog.clock_timestamp() - c.created_at))::float8
           AS close_request_age
FROM worst AS s
LEFT JOIN riskd.account_limits AS l ON l.account_id = s.account_id
LEFT JOIN riskd.close_requests AS c ON c.account_id = s.account_id AND c.status = 'pending'
ORDER BY s.level = 'critical' DESC, s.utilization DESC NULLS FIRST, s.account_id

-- name: ok_ranking
-- The accounts at ok nearest their warning threshold, and how many accounts riskd keeps a
-- level for. The one read of the overview that goes over every account: the dashboard makes
-- it seldom (riskd.dashboard.app) and follows the accounts it ranked with ok_nearest.
WITH r AS (
    SELECT s.account_id,
           least(coalesce(l.warning_threshold, %(warning)s::numeric),
                 coalesce(l.auto_close_threshold, %(auto_close)s::numeric)) - s.utilization
               AS distance
    FROM riskd.account_state AS s
    LEFT JOIN riskd.account_limits AS l ON l.account_id = s.account_id
    WHERE s.level = 'ok' AND s.utilization IS NOT NULL
)
SELECT (SELECT coalesce(pg_catalog.array_agg(t.account_id::text ORDER BY t.distance,
                                              t.account_id), '{}')
          FROM (SELECT r.account_id, r.distance FROM r
                ORDER BY r.distance, r.account_id LIMIT %(limit)s) AS t) AS ranked,
       (SELECT count(*) FROM riskd.account_state) AS accounts

-- name: ok_nearest
-- The accounts ok_ranking ranked, as they are now (by their keys: the account ids, given as
-- text, become the account id type through the table's row type), still at ok, nearest
-- their warning threshold first.
WITH ids AS (
    SELECT (pg_catalog.jsonb_populate_record(
                NULL::riskd.account_state,
                pg_catalog.jsonb_build_object('account_id', x))).account_id
    FROM unnest(%(ids)s::text[]) AS x
), n AS (
    SELECT s.account_id, s.level, s.utilization, s.equity, s.used_margin, s.checked_at,
           least(coalesce(l.warning_threshold, %(warning)s::numeric),
                 coalesce(l.auto_close_threshold, %(auto_close)s::numeric)) AS w,
           coalesce(l.auto_close_threshold, %(auto_close)s::numeric) AS ac
    FROM riskd.account_state AS s
    LEFT JOIN riskd.account_limits AS l ON l.account_id = s.account_id
    WHERE s.account_id IN (SELECT ids.account_id FROM ids)
      AND s.level = 'ok' AND s.utilization IS NOT NULL
)
SELECT n.account_id::text AS account_id, n.level, n.utilization, n.equity, n.used_margin,
       greatest(0, extract(epoch FROM pg_catalog.clock_timestamp() - n.checked_at))::float8
           AS checked_age,
       n.w AS warning_threshold, n.ac AS auto_close_threshold,
       'warning' AS next_level, n.w AS next_threshold, n.w - n.utilization AS distance
FROM n
ORDER BY n.w - n.utilization, n.account_id
LIMIT %(limit)s

-- name: pending_close_requests
-- The pending close requests, oldest first (through the partial unique index on them).
SELECT c.id, c.account_id::text AS account_id, c.utilization, c.created_at,
       greatest(0, extract(epoch FROM pg_catalog.clock_timestamp() - c.created_at))::float8
           AS age
FROM riskd.close_requests AS c
WHERE c.status = 'pending'
ORDER BY c.created_at, c.id
LIMIT %(limit)s

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
-- The account page: its close requests, newest first (the index on (account_id, id)).
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
