-- Named queries riskd runs (loaded once by riskd.sqlfiles.queries). Parameters: %(name)s.

-- name: describe_table
-- The kind of a mapped relation and its columns with their SQL types.
SELECT c.relkind::text AS relkind, a.attname::text AS column_name,
       format_type(a.atttypid, a.atttypmod) AS column_type, a.atttypid::int AS type_oid,
       a.attgenerated <> '' AS generated,
       CASE WHEN a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype) THEN 0
            -- numeric(p, s): s in the low 11 bits of typmod - 4, signed (negative from PG 15)
            WHEN a.atttypid = 'numeric'::regtype AND a.atttypmod >= 4
            THEN (((a.atttypmod - 4) & 2047) # 1024) - 1024 END AS numeric_scale
FROM pg_catalog.pg_class AS c
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_attribute AS a
       ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname = %(schema)s AND c.relname = %(table)s

-- name: installed_mapping
SELECT mapping FROM riskd.installation

-- name: check_accounts
SELECT account_id::text, user_id, level, previous_level, utilization, equity, used_margin,
       event_id, close_request_id
FROM riskd.check_accounts(%(ids)s::text[], %(instance)s, %(warning)s, %(auto_close)s,
                          %(hysteresis)s, %(mode)s)

-- name: sweep
SELECT account_id::text, level, previous_level
FROM riskd.sweep(%(warning)s, %(auto_close)s, %(hysteresis)s)

-- name: level_counts
SELECT level, count(*) AS accounts FROM riskd.account_state GROUP BY level

-- name: account_count
SELECT count(*) FROM riskd.account_state

-- name: assignable
-- Whether a value of the first type can be stored in a column of the second without an
-- explicit cast (the capture triggers store position account ids as account ids).
SELECT %(source)s::oid = %(target)s::oid OR EXISTS (
    SELECT 1 FROM pg_catalog.pg_cast
    WHERE castsource = %(source)s::oid AND casttarget = %(target)s::oid
      AND castcontext IN ('a', 'i'))

-- name: base_type
-- A type without its precision, or the type a domain is over.
SELECT pg_catalog.format_type(COALESCE(NULLIF(t.typbasetype, 0), t.oid), NULL)
FROM pg_catalog.pg_type AS t WHERE t.oid = %(type)s::oid

-- name: drain
-- The daemon's drain (DESIGN §2.2): take every mark, one row per account, with the age of its
-- oldest mark (so max_delay counts from the change, not from the drain) and its priority: its
-- last recorded utilisation (infinite for an account critical on equity <= 0, 0 for one never
-- checked), so that under overload the accounts over or nearest a threshold are checked first
-- (DESIGN §1). The instrument marks come in the same round trip, fanned out to their holders
-- (riskd.drain_instruments). Several instances may drain at once: a mark goes to exactly one
-- of them.
WITH d AS (DELETE FROM riskd.dirty_accounts RETURNING account_id, marked_at),
m AS (
    SELECT m.account_id, min(m.marked_at) AS marked_at
    FROM (
        SELECT d.account_id, d.marked_at FROM d
        UNION ALL
        SELECT i.account_id, i.marked_at FROM riskd.drain_instruments() AS i
    ) AS m
    WHERE m.account_id IS NOT NULL GROUP BY m.account_id
)
SELECT m.account_id::text,
       extract(epoch FROM pg_catalog.clock_timestamp() - m.marked_at)::float8 AS age,
       CASE WHEN s.account_id IS NULL THEN 0
            -- a utilisation beyond float8 (a broken price) must not fail the drain
            WHEN s.utilization IS NULL OR s.utilization > 1e300 THEN 'Infinity'
            ELSE s.utilization END::float8 AS priority
FROM m LEFT JOIN riskd.account_state AS s ON s.account_id = m.account_id

-- name: rearm
-- After a drain came back empty: the next mark draws 1 from the sequence and NOTIFYs.
SELECT pg_catalog.setval('riskd.wakeup', 1, false)

-- name: requeue
-- Hand accounts back to the dirty set (shutdown with work undone); text ids become the account
-- id type through the table's row type, whatever that type is.
INSERT INTO riskd.dirty_accounts (account_id)
SELECT r.account_id
FROM pg_catalog.jsonb_populate_recordset(NULL::riskd.dirty_accounts, %(rows)s::jsonb) AS r

-- name: take_sweep_requests
-- The sweep leader takes every pending sweep request (a TRUNCATE of a mapped table): the one
-- sweep that follows honours them all.
WITH r AS (DELETE FROM riskd.sweep_requests RETURNING reason)
SELECT count(*)::int AS requests, string_agg(DISTINCT r.reason, ', ') AS reasons FROM r

-- name: pool_session
-- Every connection of the daemon's pool, once: generic plans from the first call. The check and
-- the drain are written to plan well without the batch's values (`= ANY(ids)`: index lookups
-- whatever the batch), and bench/check_cost.py measures them so; left to itself PostgreSQL
-- re-plans each statement of the check for the first five calls on a connection, and for ever
-- when it estimates the generic plan dearer: several milliseconds a call, most of a lone
-- account's check.
SET plan_cache_mode = force_generic_plan

-- name: session_settings
-- What the configuration tells the SQL a riskd session runs (riskd.db), for the session:
-- riskd.webhook 'on' (a [webhook] url: every event and alert it writes gets its row in the
-- webhook outbox, sql/outbox.sql), and the safety rails' limits the check reads
-- (sql/act.sql), so that riskd.check_accounts keeps its signature.
SELECT pg_catalog.set_config('riskd.webhook', %(webhook)s, false),
       pg_catalog.set_config('riskd.max_closes_per_minute', %(max_closes_per_minute)s, false),
       pg_catalog.set_config('riskd.max_price_age', %(max_price_age)s, false)

-- name: listen
LISTEN {channel}

-- name: ping
SELECT pg_catalog.pg_notify(%(channel)s, %(payload)s)

-- name: try_sweep_leader
SELECT pg_catalog.pg_try_advisory_lock(%(lock_class)s, %(key)s)

-- name: heartbeat
INSERT INTO riskd.daemons AS d (instance, host, pid, version, started_at, heartbeat_at, stats)
VALUES (%(instance)s, %(host)s, %(pid)s, %(version)s, %(started_at)s, pg_catalog.now(),
        %(stats)s)
ON CONFLICT (instance) DO UPDATE
SET heartbeat_at = pg_catalog.now(), stats = EXCLUDED.stats, version = EXCLUDED.version

-- name: daemon_controls
-- The heartbeat reads the kill switch for the daemon's STATUS= line and its log.
SELECT k.paused, k.paused_by, k.reason FROM riskd.controls AS k

-- name: leave
DELETE FROM riskd.daemons WHERE instance = %(instance)s

-- name: riskd_installed
-- Is riskd installed: its version table exists. Read from the catalog, which any role may
-- read (to_regclass on riskd's tables would need USAGE on schema riskd). riskd.migrate's
-- installed_revision() reads schema_revision next; both are the one way to ask.
SELECT EXISTS (
    SELECT FROM pg_catalog.pg_class AS c
    JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
    WHERE n.nspname = 'riskd' AND c.relname = 'alembic_version' AND c.relkind = 'r'
)

-- name: schema_revision
SELECT version_num FROM riskd.alembic_version

-- name: status_instances
-- riskd status: every heartbeat row, its ages measured on the server's clock (never the
-- client's, which may be skewed).
SELECT instance, host, pid, version, started_at, heartbeat_at, stats,
       greatest(0, extract(epoch FROM pg_catalog.clock_timestamp() - started_at))::float8
           AS uptime,
       greatest(0, extract(epoch FROM pg_catalog.clock_timestamp() - heartbeat_at))::float8
           AS heartbeat_age
FROM riskd.daemons
ORDER BY host, pid, instance

-- name: status_summary
-- riskd status: the rest of the figures in one round trip. The dirty set is an append-only
-- log: marks waiting for a drain, and the distinct accounts they name.
SELECT (SELECT version_num FROM riskd.alembic_version) AS revision,
       pg_catalog.pg_notification_queue_usage()::float8 AS queue_usage,
       (SELECT count(*) FROM riskd.dirty_accounts) AS dirty_marks,
       (SELECT count(DISTINCT account_id) FROM riskd.dirty_accounts) AS dirty_accounts,
       (SELECT coalesce(jsonb_object_agg(level, n), '{}')
          FROM (SELECT level, count(*) AS n FROM riskd.account_state GROUP BY level) AS l)
           AS levels,
       (SELECT count(*) FROM riskd.close_requests WHERE status = 'pending')
           AS pending_close_requests,
       (SELECT extract(epoch FROM pg_catalog.clock_timestamp() - min(created_at))::float8
          FROM riskd.close_requests WHERE status = 'pending')
           AS oldest_close_request_age

-- name: recent_events
-- riskd events: the latest events passing the filters, newest first. The account, given as
-- text, becomes the account id type through the table's row type, so the index on
-- (account_id, id) serves whatever that type is.
SELECT id, account_id::text AS account_id, user_id, from_level, to_level, utilization, equity,
       used_margin, detail, created_at, instance
FROM riskd.risk_events
WHERE (%(account)s::text IS NULL
       OR account_id = (pg_catalog.jsonb_populate_record(
              NULL::riskd.risk_events,
              pg_catalog.jsonb_build_object('account_id', %(account)s::text))).account_id)
  AND (%(level)s::text IS NULL OR to_level = %(level)s::text)
  AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s::timestamptz)
  AND (%(ago)s::float8 IS NULL
       OR created_at >= pg_catalog.now() - pg_catalog.make_interval(secs => %(ago)s::float8))
ORDER BY id DESC
LIMIT %(limit)s

-- name: last_event_id
SELECT coalesce(max(id), 0) FROM riskd.risk_events

-- name: events_after
-- riskd events --follow: every event after the last one read, and those notifications named
-- (an id can commit after a larger one was read), each with whether it passes the filters.
SELECT id, account_id::text AS account_id, user_id, from_level, to_level, utilization, equity,
       used_margin, detail, created_at, instance,
       (%(account)s::text IS NULL
        OR account_id = (pg_catalog.jsonb_populate_record(
               NULL::riskd.risk_events,
               pg_catalog.jsonb_build_object('account_id', %(account)s::text))).account_id)
       AND (%(level)s::text IS NULL OR to_level = %(level)s::text)
       AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s::timestamptz)
       AND (%(ago)s::float8 IS NULL
            OR created_at >= pg_catalog.now() - pg_catalog.make_interval(secs => %(ago)s::float8))
           AS wanted
FROM riskd.risk_events
WHERE id > %(after)s OR id = ANY(%(ids)s::bigint[])
ORDER BY id

-- name: prune_daemons
-- Heartbeat rows of instances that died without removing theirs (SIGKILL, a lost host): shown
-- as stale by `riskd status` for a while, so that the loss is noticed, then removed.
DELETE FROM riskd.daemons
WHERE heartbeat_at < pg_catalog.now() - pg_catalog.make_interval(secs => %(after)s)

-- name: missing_privileges
-- The privileges of a list (riskd.privileges) that the current role does not hold.
SELECT t.n
FROM unnest(%(kinds)s::text[], %(targets)s::text[], %(columns)s::text[],
            %(privileges)s::text[]) WITH ORDINALITY AS t(kind, target, col, privilege, n)
WHERE NOT CASE t.kind
    WHEN 'schema' THEN pg_catalog.has_schema_privilege(t.target, t.privilege)
    WHEN 'table' THEN pg_catalog.has_table_privilege(t.target, t.privilege)
    WHEN 'sequence' THEN pg_catalog.has_sequence_privilege(t.target, t.privilege)
    -- a signature, or a bare name for a function whose argument types follow the mapping
    WHEN 'function' THEN CASE WHEN pg_catalog.strpos(t.target, '(') > 0
        THEN pg_catalog.has_function_privilege(t.target, t.privilege)
        ELSE pg_catalog.has_function_privilege(t.target::pg_catalog.regproc::pg_catalog.oid,
                                               t.privilege) END
    WHEN 'column' THEN pg_catalog.has_column_privilege(t.target, t.col, t.privilege)
END
ORDER BY t.n


-- name: rls_hidden
-- The mapped tables whose rows row-level security would hide from the current role (I8): RLS
-- on, and the role neither a superuser, nor BYPASSRLS, nor (a member of) the owner of a table
-- without FORCE, nor let through by a permissive policy USING (true) for SELECT with no
-- restrictive policy beside it. A partition or child read through its parent answers to the
-- parent's policies alone, so the mapped tables are all there is to ask.
WITH t AS (
    SELECT c.oid, c.relowner, c.relrowsecurity, c.relforcerowsecurity
    FROM pg_catalog.pg_class AS c
    WHERE c.oid = ANY (%(tables)s::text[]::regclass[])
), applies AS (
    SELECT p.polrelid, p.polpermissive, p.polqual
    FROM pg_catalog.pg_policy AS p
    WHERE p.polcmd IN ('r', '*')
      AND (0::oid = ANY (p.polroles) OR EXISTS (
               SELECT 1 FROM pg_catalog.unnest(p.polroles) AS r (role)
               WHERE pg_catalog.pg_has_role(r.role, 'USAGE')))
)
SELECT t.oid::regclass::text AS table_name
FROM t
WHERE t.relrowsecurity
  AND NOT (SELECT r.rolsuper OR r.rolbypassrls FROM pg_catalog.pg_roles AS r
           WHERE r.rolname = current_user)
  AND NOT (pg_catalog.pg_has_role(t.relowner, 'USAGE') AND NOT t.relforcerowsecurity)
  AND NOT (EXISTS (SELECT 1 FROM applies AS a
                   WHERE a.polrelid = t.oid AND a.polpermissive
                     AND pg_catalog.pg_get_expr(a.polqual, a.polrelid) = 'true')
           AND NOT EXISTS (SELECT 1 FROM applies AS a
                           WHERE a.polrelid = t.oid AND NOT a.polpermissive))
ORDER BY 1

-- name: capture_problems
-- I8: every capture trigger riskd installs (%(expected)s: table and trigger name, from the
-- rendered capture.sql) present and firing ALWAYS, on each mapped table and on each table below
-- it: inheritance children (copies), partitions (row triggers cloned by PostgreSQL, the
-- TRUNCATE trigger copied; one disabled on a single partition counts too). What is missing or
-- not enabled ALWAYS comes back, one row each.
WITH RECURSIVE expected AS (
    SELECT c.oid AS rel, pg_catalog.quote_ident(e.nsp) || '.' || pg_catalog.quote_ident(e.rel)
               AS tbl, e.name
    FROM pg_catalog.jsonb_to_recordset(%(expected)s::jsonb) AS e (nsp text, rel text, name text)
    LEFT JOIN pg_catalog.pg_namespace AS n ON n.nspname = e.nsp
    LEFT JOIN pg_catalog.pg_class AS c ON c.relnamespace = n.oid AND c.relname = e.rel
), tree (root, relid) AS (
    SELECT DISTINCT e.rel, e.rel FROM expected AS e WHERE e.rel IS NOT NULL
    UNION ALL
    SELECT tree.root, i.inhrelid
    FROM tree
    JOIN pg_catalog.pg_inherits AS i ON i.inhparent = tree.relid
    JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid
    WHERE c.relkind = 'r' OR (c.relispartition AND c.relkind = 'p')
)
SELECT coalesce(t.relid::regclass::text, e.tbl) AS table_name, e.name AS trigger_name,
       CASE WHEN g.oid IS NULL THEN 'missing'
            WHEN g.tgenabled = 'D' THEN 'disabled'
            ELSE 'not enabled ALWAYS (skipped under session_replication_role = '
                 || CASE g.tgenabled WHEN 'O' THEN 'replica' ELSE 'origin' END || ')'
       END AS problem
FROM expected AS e
LEFT JOIN tree AS t ON t.root = e.rel
LEFT JOIN pg_catalog.pg_trigger AS g ON g.tgrelid = t.relid AND g.tgname = e.name
WHERE g.oid IS NULL OR g.tgenabled <> 'A'
ORDER BY 1, 2

-- name: take_marks
-- `riskd sweep` takes every mark its pass covers (a deployment without a daemon: nothing else
-- drains the dirty set, which would grow without bound).
WITH a AS (DELETE FROM riskd.dirty_accounts RETURNING 1),
     i AS (DELETE FROM riskd.dirty_instruments RETURNING 1),
     r AS (DELETE FROM riskd.sweep_requests RETURNING 1)
SELECT (SELECT count(*) FROM a) + (SELECT count(*) FROM i) + (SELECT count(*) FROM r) AS taken

-- name: grants_held
-- `riskd migrate`, before it installs the mapping-dependent objects again: the privileges granted
-- to roles other than the owner on riskd's functions and views, as the GRANT statements that
-- give them again (docs/grants.sql's, so that a running daemon keeps them).
SELECT 'GRANT ' || a.privilege_type || ' ON FUNCTION ' || p.oid::pg_catalog.regprocedure::text
       || ' TO ' || pg_catalog.quote_ident(r.rolname)
FROM pg_catalog.pg_proc AS p
CROSS JOIN LATERAL pg_catalog.aclexplode(p.proacl) AS a
JOIN pg_catalog.pg_roles AS r ON r.oid = a.grantee
WHERE p.pronamespace = 'riskd'::pg_catalog.regnamespace AND a.grantee <> p.proowner
UNION ALL
SELECT 'GRANT ' || a.privilege_type || ' ON TABLE ' || c.oid::pg_catalog.regclass::text
       || ' TO ' || pg_catalog.quote_ident(r.rolname)
FROM pg_catalog.pg_class AS c
CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) AS a
JOIN pg_catalog.pg_roles AS r ON r.oid = a.grantee
WHERE c.relnamespace = 'riskd'::pg_catalog.regnamespace AND c.relkind = 'v'
  AND a.grantee <> c.relowner

-- name: position_key_gaps
-- `riskd migrate` (I7): flatten addresses a position by (tableoid, [schema] position_id,
-- [schema] position_account), so each table that holds position rows must keep that key
-- unique, or a close could touch several rows. Those tables: the mapped one and everything
-- under it in pg_inherits (inheritance children, partitions, theirs in turn), less the
-- partitioned ones, which hold no row themselves (a unique index on one is one on each of its
-- partitions, kept in step by PostgreSQL). A table passes with a valid, non-partial unique
-- index (a primary key, a unique constraint) whose key columns are all among the two mapped
-- columns, none an expression; a foreign table, having no index, never does. One row per table
-- that does not pass, the mapped table first, with the unique index on those columns that
-- comes nearest and what it lacks (NULLs when there is none).
WITH RECURSIVE tree (relid, depth) AS (
    SELECT c.oid, 0
    FROM pg_catalog.pg_class AS c
    JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
    WHERE n.nspname = %(schema)s AND c.relname = %(table)s
    UNION ALL
    SELECT i.inhrelid, t.depth + 1
    FROM tree AS t
    JOIN pg_catalog.pg_inherits AS i ON i.inhparent = t.relid
), unique_index AS (
    SELECT x.indrelid AS relid, x.indexrelid, x.indisvalid AND x.indislive AS valid,
           x.indpred IS NOT NULL AS partial, x.indexprs IS NOT NULL AS expression,
           NOT EXISTS (
               SELECT 1
               FROM pg_catalog.unnest(x.indkey::pg_catalog.int2[])
                    WITH ORDINALITY AS k (attnum, n)
               JOIN pg_catalog.pg_attribute AS a
                 ON a.attrelid = x.indrelid AND a.attnum = k.attnum
               WHERE k.n <= x.indnkeyatts
                 AND a.attname::text NOT IN (%(id)s::text, %(account)s::text)
           ) AS on_key
    FROM pg_catalog.pg_index AS x
    WHERE x.indisunique AND x.indrelid IN (SELECT relid FROM tree)
)
SELECT n.nspname::text AS schema_name, c.relname::text AS table_name,
       near.index_name, near.lacks
FROM (SELECT relid, min(depth) AS depth FROM tree GROUP BY relid) AS t
JOIN pg_catalog.pg_class AS c ON c.oid = t.relid
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
LEFT JOIN LATERAL (
    SELECT ic.relname::text AS index_name,
           CASE WHEN u.partial THEN 'is partial'
                WHEN u.expression THEN 'is on an expression'
                ELSE 'is not valid' END AS lacks
    FROM unique_index AS u
    JOIN pg_catalog.pg_class AS ic ON ic.oid = u.indexrelid
    WHERE u.relid = t.relid AND u.on_key
    ORDER BY ic.relname
    LIMIT 1
) AS near ON true
WHERE c.relkind <> 'p'
  AND NOT EXISTS (
      SELECT 1 FROM unique_index AS u
      WHERE u.relid = t.relid AND u.on_key AND u.valid AND NOT u.partial AND NOT u.expression)
ORDER BY t.depth, 1, 2

-- name: status_reads_dirty_instruments
-- riskd status: whether this role can count the instrument marks (a schema before revision
-- 0004 has no riskd.dirty_instruments; a monitoring role granted before it may not read it).
SELECT coalesce(pg_catalog.has_table_privilege(
           pg_catalog.to_regclass('riskd.dirty_instruments'), 'SELECT'), false)

-- name: status_reads_deliveries
-- riskd status: whether this role can read the webhook outbox (a schema before revision 0007
-- has no riskd.deliveries; a monitoring role granted before it may not read it).
SELECT coalesce(pg_catalog.has_table_privilege(
           pg_catalog.to_regclass('riskd.deliveries'), 'SELECT'), false)

-- name: status_deliveries
-- riskd status: the webhook outbox's backlog, its oldest pending delivery's age, its dead
-- letters: each through its partial index, never the delivered rows.
SELECT (SELECT count(*) FROM riskd.deliveries WHERE status = 'pending') AS pending_deliveries,
       (SELECT extract(epoch FROM pg_catalog.clock_timestamp() - min(created_at))::float8
          FROM riskd.deliveries WHERE status = 'pending') AS oldest_delivery_age,
       (SELECT count(*) FROM riskd.deliveries WHERE status = 'failed') AS failed_deliveries

-- name: status_dirty_instruments
-- riskd status: the instrument half of the dirty set, an append-only log like the accounts':
-- marks waiting for a drain (which fans them out to the holders), and the distinct instruments
-- they name.
SELECT count(*) AS dirty_instrument_marks, count(DISTINCT instrument_id) AS dirty_instruments
FROM riskd.dirty_instruments

-- name: check_pending_requests
-- riskd check, in the check's transaction, before it: the pending close requests of these
-- accounts (given as [{"account_id": text}]: text ids become the account id type through the
-- table's row type, so the partial index on pending requests serves whatever that type is).
SELECT c.id
FROM riskd.close_requests AS c
WHERE c.status = 'pending'
  AND c.account_id = ANY (ARRAY(
      SELECT r.account_id
      FROM pg_catalog.jsonb_populate_recordset(NULL::riskd.close_requests,
                                               %(accounts)s::jsonb) AS r))

-- name: check_close_requests
-- riskd check, in the check's transaction, after it: the close requests it names (the one the
-- check opened or flattened into, those pending before it) and those pending now, each with
-- whether this transaction opened or completed it (created_at, completed_at: its now()).
SELECT c.id, c.account_id::text AS account_id, c.status, c.detail ->> 'mode' AS mode,
       c.detail ->> 'flatten_failed' AS flatten_failed,
       c.created_at = pg_catalog.now() AS opened_now,
       coalesce(c.completed_at = pg_catalog.now(), false) AS completed_now
FROM riskd.close_requests AS c
WHERE c.id IN (
    SELECT pg_catalog.unnest(%(ids)s::bigint[])
    UNION
    SELECT p.id
    FROM riskd.close_requests AS p
    WHERE p.status = 'pending'
      AND p.account_id = ANY (ARRAY(
          SELECT r.account_id
          FROM pg_catalog.jsonb_populate_recordset(NULL::riskd.close_requests,
                                                   %(accounts)s::jsonb) AS r)))
ORDER BY c.id

-- name: check_data_errors
-- riskd check: which of these accounts hold data riskd cannot trust (a NaN or infinite figure,
-- a NULL price), on which no close is made (DESIGN §1), as the check reads them.
WITH ids AS (
    SELECT r.account_id
    FROM pg_catalog.jsonb_populate_recordset(NULL::riskd.account_state, %(accounts)s::jsonb) AS r
)
SELECT p.account_id::text AS account_id
FROM riskd.platform_positions AS p JOIN ids USING (account_id)
WHERE p.data_error IS NOT NULL
UNION
SELECT a.account_id::text
FROM riskd.platform_accounts AS a JOIN ids USING (account_id)
WHERE a.data_error IS NOT NULL

-- name: check_held
-- riskd check: why these critical accounts got no close, as the check's transaction sees it:
-- the kill switch, the account's own mode, or what a rail held back (its close_held alert of
-- this critical spell: none older than the account's latest event).
WITH ids AS (
    SELECT r.account_id
    FROM pg_catalog.jsonb_populate_recordset(NULL::riskd.account_state, %(accounts)s::jsonb) AS r
)
SELECT ids.account_id::text AS account_id,
       (SELECT k.paused FROM riskd.controls AS k) AS paused,
       l.auto_close AS mode,
       (SELECT a.detail FROM riskd.alerts AS a
        WHERE a.account_id = ids.account_id AND a.kind = 'close_held'
          AND a.created_at >= COALESCE(
              (SELECT e.created_at FROM riskd.risk_events AS e
               WHERE e.account_id = ids.account_id ORDER BY e.id DESC LIMIT 1), '-infinity')
        ORDER BY a.id DESC LIMIT 1) AS held
FROM ids
LEFT JOIN riskd.account_limits AS l USING (account_id)

-- name: canonical_account_ids
-- riskd check: each text as an account id of this installation would print it (a uuid in
-- lower case, a number without leading zeros), or a data exception (class 22: not a uuid, out
-- of range, too long) when one of them cannot be an account id.
SELECT i.given,
       (pg_catalog.jsonb_populate_record(
            NULL::riskd.account_state,
            pg_catalog.jsonb_build_object('account_id', i.given))).account_id::text AS canonical
FROM pg_catalog.unnest(%(ids)s::text[]) AS i (given)

-- name: account_id_type
-- The SQL type of account ids in this installation (the platform's, copied by riskd migrate).
SELECT pg_catalog.format_type(a.atttypid, a.atttypmod)
FROM pg_catalog.pg_attribute AS a
WHERE a.attrelid = 'riskd.account_state'::pg_catalog.regclass AND a.attname = 'account_id'

-- name: accounts_by_level
-- riskd accounts: the accounts at these levels as their latest check recorded them, the
-- riskiest first (critical, equity gone, then by utilisation), each with the thresholds that
-- apply to it (riskd.account_limits over the configured ones, combined as riskd.check_accounts
-- combines them), the age of its check on the server's clock, and how many match in all.
-- riskd's own tables only: the monitoring role runs it.
SELECT s.account_id::text AS account_id, s.level, s.utilization, s.equity, s.used_margin,
       s.checked_at,
       greatest(0, extract(epoch FROM pg_catalog.clock_timestamp() - s.checked_at))::float8
           AS checked_age,
       least(coalesce(l.warning_threshold, %(warning)s::numeric),
             coalesce(l.auto_close_threshold, %(auto_close)s::numeric)) AS warning_threshold,
       coalesce(l.auto_close_threshold, %(auto_close)s::numeric) AS auto_close_threshold,
       count(*) OVER () AS total
FROM riskd.account_state AS s
LEFT JOIN riskd.account_limits AS l ON l.account_id = s.account_id
WHERE s.level = ANY (%(levels)s::text[])
ORDER BY CASE s.level WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END,
         s.utilization DESC NULLS FIRST, s.account_id
LIMIT %(limit)s

-- name: accounts_nearest
-- riskd accounts --nearest N: the accounts below critical nearest the next threshold up (ok:
-- warning; warning: auto-close), by the utilisation their latest check recorded, with that
-- threshold, the level it leads to, the distance (negative: already over it, for the next check
-- to record), and how many accounts were ranked. riskd's own tables only.
WITH t AS (
    SELECT s.account_id, s.level, s.utilization, s.equity, s.used_margin, s.checked_at,
           least(coalesce(l.warning_threshold, %(warning)s::numeric),
                 coalesce(l.auto_close_threshold, %(auto_close)s::numeric)) AS w,
           coalesce(l.auto_close_threshold, %(auto_close)s::numeric) AS ac
    FROM riskd.account_state AS s
    LEFT JOIN riskd.account_limits AS l ON l.account_id = s.account_id
    WHERE s.level <> 'critical' AND s.utilization IS NOT NULL
), n AS (
    SELECT t.*,
           CASE WHEN t.level = 'ok' THEN 'warning' ELSE 'critical' END AS next_level,
           CASE WHEN t.level = 'ok' THEN t.w ELSE t.ac END AS next_threshold
    FROM t
)
SELECT n.account_id::text AS account_id, n.level, n.utilization, n.equity, n.used_margin,
       n.checked_at,
       greatest(0, extract(epoch FROM pg_catalog.clock_timestamp() - n.checked_at))::float8
           AS checked_age,
       n.w AS warning_threshold, n.ac AS auto_close_threshold,
       n.next_level, n.next_threshold, n.next_threshold - n.utilization AS distance,
       -- counted apart: a window count over every ranked row would keep the sort from
       -- keeping only the top rows (measured at 100k accounts: 108 ms against 62 ms)
       (SELECT count(*) FROM riskd.account_state AS c
        WHERE c.level <> 'critical' AND c.utilization IS NOT NULL) AS total
FROM n
ORDER BY n.next_threshold - n.utilization, n.account_id
LIMIT %(limit)s

-- name: close_requests_list
-- riskd close-requests: the close requests with this status (NULL: every one), pending ones
-- oldest first, the others newest first, with their ages on the server's clock and how many
-- match in all. riskd's own tables only: the monitoring role runs it.
SELECT c.id, c.account_id::text AS account_id, c.status, c.utilization, c.created_at,
       c.completed_at, c.detail,
       greatest(0, extract(epoch FROM pg_catalog.clock_timestamp() - c.created_at))::float8
           AS age,
       CASE WHEN c.completed_at IS NOT NULL THEN greatest(
           0, extract(epoch FROM pg_catalog.clock_timestamp() - c.completed_at))::float8
       END AS completed_age,
       count(*) OVER () AS total
FROM riskd.close_requests AS c
WHERE %(status)s::text IS NULL OR c.status = %(status)s::text
ORDER BY c.status <> 'pending', CASE WHEN c.status = 'pending' THEN c.created_at END,
         CASE WHEN c.status = 'pending' THEN c.id END, c.id DESC
LIMIT %(limit)s

-- name: live_instances
-- riskd migrate's guard: the instances whose heartbeat is at most %(within)s seconds old
-- (riskd status's rule for a live instance), ages measured on the server's clock.
SELECT instance, host, pid,
       greatest(0, extract(epoch FROM pg_catalog.clock_timestamp() - heartbeat_at))::float8
           AS heartbeat_age
FROM riskd.daemons
WHERE pg_catalog.clock_timestamp() - heartbeat_at
      <= pg_catalog.make_interval(secs => %(within)s)
ORDER BY heartbeat_at DESC, instance

-- name: riskd_records
-- riskd migrate's guard: the records a removal drops for good.
SELECT (SELECT count(*) FROM riskd.risk_events) AS events,
       (SELECT count(*) FROM riskd.close_requests) AS close_requests,
       (SELECT count(*) FROM riskd.close_requests WHERE status = 'pending')
           AS pending_close_requests,
       (SELECT count(*) FROM riskd.account_limits) AS account_limits

-- name: event_actions
-- riskd events: the close request each event's check opened, flattened into or cancelled. The
-- check writes the event and acts in one transaction, so the request's created_at (opened,
-- flattened) or, for one it cancelled, its completed_at is the event's created_at: that
-- transaction's now(). One pass over close_requests (no index serves a request by account
-- once it is no longer pending), and only for the events asked about.
SELECT DISTINCT ON (e.id)
       e.id AS event_id, c.id AS close_request_id, c.status, c.detail ->> 'mode' AS mode,
       c.created_at = e.created_at AS opened
FROM riskd.risk_events AS e
JOIN riskd.close_requests AS c
  ON c.account_id = e.account_id
 AND (c.created_at = e.created_at
      OR (c.status = 'cancelled' AND c.completed_at = e.created_at))
WHERE e.id = ANY (%(ids)s::bigint[])
ORDER BY e.id, (c.created_at = e.created_at) DESC, c.id DESC

-- name: positions_without_account_index
-- `riskd migrate` and `riskd status` (DESIGN §2.4): every check looks an account's open positions
-- up by the [schema] position_account column, so each table that holds position rows (the
-- mapped one and everything under it in pg_inherits, less partitioned ones, whose partitions
-- hold the rows and the indexes) needs a valid index whose first key column is that column
-- (a partial one counts: the usual one covers the open positions, which is what a check
-- reads); without one a check, at any batch size, reads the whole table. One row per such
-- table, the mapped table first.
WITH RECURSIVE tree (relid, depth) AS (
    SELECT c.oid, 0
    FROM pg_catalog.pg_class AS c
    JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
    WHERE n.nspname = %(schema)s AND c.relname = %(table)s
    UNION ALL
    SELECT i.inhrelid, t.depth + 1
    FROM tree AS t
    JOIN pg_catalog.pg_inherits AS i ON i.inhparent = t.relid
)
SELECT n.nspname::text AS schema_name, c.relname::text AS table_name
FROM (SELECT relid, min(depth) AS depth FROM tree GROUP BY relid) AS t
JOIN pg_catalog.pg_class AS c ON c.oid = t.relid
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm')
  AND NOT EXISTS (
      SELECT 1
      FROM pg_catalog.pg_index AS x
      JOIN pg_catalog.pg_attribute AS a
        ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0]
      WHERE x.indrelid = t.relid AND x.indisvalid AND x.indisready
        AND a.attname::text = %(account)s::text)
ORDER BY t.depth, 1, 2

-- name: claim_deliveries
-- The delivery task (riskd/daemon/deliver.py): take up to %(limit)s due deliveries and lease
-- them (next_attempt_at moved past the attempt's timeout), so that any number of instances
-- share the outbox (SKIP LOCKED) and one that dies mid-POST leaves the delivery to whichever
-- claims it once the lease is over: at least once, never lost. In order per account: a
-- delivery waits while an earlier one of its account (an event's, or an alert's) is pending
-- (due, leased or waiting for a retry); the alerts of no account (pause, resume, the breaker)
-- keep their order among themselves. With each, its event or its alert, and the close request
-- the event's check opened, if any (the same transaction: the same created_at).
WITH due AS (
    SELECT d.id
    FROM riskd.deliveries AS d
    LEFT JOIN riskd.risk_events AS e ON e.id = d.event_id
    LEFT JOIN riskd.alerts AS a ON a.id = d.alert_id
    WHERE d.status = 'pending' AND d.next_attempt_at <= pg_catalog.now()
      AND NOT EXISTS (
          SELECT FROM riskd.deliveries AS d2
          LEFT JOIN riskd.risk_events AS e2 ON e2.id = d2.event_id
          LEFT JOIN riskd.alerts AS a2 ON a2.id = d2.alert_id
          WHERE d2.status = 'pending' AND d2.id < d.id
            AND COALESCE(e2.account_id, a2.account_id)
                IS NOT DISTINCT FROM COALESCE(e.account_id, a.account_id))
    ORDER BY d.next_attempt_at, d.id
    LIMIT %(limit)s
    FOR UPDATE OF d SKIP LOCKED
), leased AS (
    UPDATE riskd.deliveries AS d
    SET next_attempt_at = pg_catalog.now() + %(lease)s * interval '1 second'
    FROM due WHERE d.id = due.id
    RETURNING d.id, d.event_id, d.alert_id, d.attempts
)
SELECT l.id, l.event_id, l.alert_id, l.attempts,
       COALESCE(e.created_at, a.created_at) AS created_at,
       COALESCE(e.account_id, a.account_id)::text AS account_id, e.user_id,
       e.from_level, e.to_level, e.utilization, e.equity, e.used_margin,
       (SELECT c.id FROM riskd.close_requests AS c
        WHERE c.account_id = e.account_id AND c.created_at = e.created_at
        ORDER BY c.id DESC LIMIT 1) AS close_request_id,
       a.kind, a.detail
FROM leased AS l
LEFT JOIN riskd.risk_events AS e ON e.id = l.event_id
LEFT JOIN riskd.alerts AS a ON a.id = l.alert_id
ORDER BY l.id

-- name: endpoint_gone
-- The webhook endpoint answered 410: an alert (never delivered: the endpoint is gone).
INSERT INTO riskd.alerts (kind, detail)
VALUES ('endpoint_gone', pg_catalog.jsonb_build_object(
    'url', %(url)s::text, 'webhook_id', %(webhook_id)s::text, 'instance', %(instance)s::text))

-- name: record_delivery
-- What an attempt came to (riskd.webhooks.after): delivered, pending again at the next step, or
-- failed (the dead letter).
UPDATE riskd.deliveries
SET status = %(status)s, attempts = attempts + 1,
    next_attempt_at = COALESCE(%(next_attempt_at)s, next_attempt_at),
    last_status = %(last_status)s, last_error = %(last_error)s,
    delivered_at = CASE WHEN %(status)s = 'delivered' THEN pg_catalog.now() END
WHERE id = %(id)s

-- name: deliveries_list
-- riskd deliveries: the webhook outbox with this status (NULL: every one), pending ones oldest
-- first (the backlog), the others newest first, with their event, their ages on the server's
-- clock and how many match in all.
SELECT d.id, d.event_id, d.alert_id, d.status, d.attempts, d.last_status, d.last_error,
       d.created_at, d.delivered_at, e.account_id::text AS account_id, e.to_level,
       greatest(0, extract(epoch FROM pg_catalog.clock_timestamp() - d.created_at))::float8
           AS age,
       CASE WHEN d.status = 'pending' THEN
           extract(epoch FROM d.next_attempt_at - pg_catalog.clock_timestamp())::float8
       END AS next_in,
       count(*) OVER () AS total
FROM riskd.deliveries AS d
LEFT JOIN riskd.risk_events AS e ON e.id = d.event_id
WHERE %(status)s::text IS NULL OR d.status = %(status)s::text
ORDER BY d.status <> 'pending', CASE WHEN d.status = 'pending' THEN d.id END, d.id DESC
LIMIT %(limit)s

-- name: retry_deliveries
-- riskd deliveries retry: failed deliveries (these ids, or every one) pending again from the
-- schedule's start, due now. What is not failed is left as it is.
UPDATE riskd.deliveries
SET status = 'pending', attempts = 0, next_attempt_at = pg_catalog.now(), last_error = NULL
WHERE status = 'failed' AND (%(all)s OR id = ANY (%(ids)s::bigint[]))
RETURNING id

-- name: delivery_backlog
-- The outbox's pending deliveries, every instance's (the partial index on next_attempt_at).
SELECT count(*) FROM riskd.deliveries WHERE status = 'pending'

-- name: reads_controls
-- Whether this database has the kill switch (revision 0008 on) and this role may read it.
SELECT pg_catalog.to_regclass('riskd.controls') IS NOT NULL
       AND pg_catalog.has_table_privilege('riskd.controls', 'SELECT')

-- name: controls
-- The kill switch (riskd.rails.Switch), how long paused on the server's clock.
SELECT k.paused, k.paused_by, k.reason, k.since,
       extract(epoch FROM pg_catalog.clock_timestamp() - k.since)::float8 AS paused_for
FROM riskd.controls AS k

-- name: pause
-- `riskd pause`: true when this call paused, false when riskd was paused already.
SELECT riskd.pause(%(by)s, %(reason)s)

-- name: resume
-- `riskd resume`: true when this call resumed, false when riskd was not paused.
SELECT riskd.resume(%(by)s, %(reason)s)

-- name: reads_alerts
-- Whether this database has riskd.alerts (revision 0008 on) and this role may read it.
SELECT pg_catalog.to_regclass('riskd.alerts') IS NOT NULL
       AND pg_catalog.has_table_privilege('riskd.alerts', 'SELECT')

-- name: recent_alerts
-- The latest alerts (of one account), newest first; ages on the server's clock.
SELECT a.id, a.kind, a.account_id::text AS account_id, a.detail, a.created_at,
       greatest(0, extract(epoch FROM pg_catalog.clock_timestamp() - a.created_at))::float8
           AS age
FROM riskd.alerts AS a
WHERE %(account)s::text IS NULL OR a.account_id::text = %(account)s::text
ORDER BY a.id DESC
LIMIT %(limit)s

-- name: model_signature
-- [risk] model: every function of that name, with what DESIGN §1 asks of it — one argument,
-- an array of the account id's type; a set of (account_id, equity, used_margin), the id of the
-- account id's type and the figures numbers; not VOLATILE (riskd.mapping.model_problem).
SELECT p.oid::pg_catalog.regprocedure::text AS signature,
       p.pronargs = 1 AND p.proargtypes[0] = t.typarray AS takes_ids,
       p.proretset AS returns_set,
       p.provolatile::text AS volatility,
       ARRAY(SELECT o.name FROM unnest(p.proallargtypes, p.proargmodes::text[],
                                                  p.proargnames)
                                WITH ORDINALITY AS o (type, mode, name, n)
             WHERE o.mode IN ('t', 'o') ORDER BY o.n) AS names,
       EXISTS (SELECT FROM unnest(p.proallargtypes, p.proargmodes::text[])
                               WITH ORDINALITY AS o (type, mode, n)
               WHERE o.mode IN ('t', 'o') AND o.type = t.oid) AS id_type_ok,
       NOT EXISTS (SELECT FROM unnest(p.proallargtypes, p.proargmodes::text[],
                                                 p.proargnames) AS o (type, mode, name)
                   JOIN pg_catalog.pg_type AS ot ON ot.oid = o.type
                   WHERE o.mode IN ('t', 'o') AND o.name IN ('equity', 'used_margin')
                     AND ot.typcategory <> 'N') AS numeric
FROM pg_catalog.pg_proc AS p
JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
CROSS JOIN pg_catalog.pg_type AS t
WHERE n.nspname = %(schema)s AND p.proname = %(name)s AND t.oid = %(account_type)s::oid
ORDER BY 1

-- name: account_id_type_oid
-- The account id's type as riskd installed it (riskd.account_state), its oid and its name.
SELECT a.atttypid, pg_catalog.format_type(a.atttypid, a.atttypmod)
FROM pg_catalog.pg_attribute AS a
WHERE a.attrelid = 'riskd.account_state'::pg_catalog.regclass AND a.attname = 'account_id'
