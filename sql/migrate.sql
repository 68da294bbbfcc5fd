-- What `riskd migrate` (riskd/migrate.py, alembic/env.py) asks of the database, apart from
-- the install scripts. Sections in {braces} are filled with literals (psycopg.sql), the others
-- take %(name)s parameters.

-- name: session
-- riskd migrate's session: a lock not had within lock_timeout is retried, never queued
-- behind trades (I1); what a WHEN clause or a view resolves at creation never meets a hostile
-- schema.
SELECT pg_catalog.set_config('lock_timeout', %(lock_timeout)s, false),
       pg_catalog.set_config('search_path', 'pg_catalog', false)

-- name: try_lock
SELECT pg_catalog.pg_try_advisory_lock(%(lock_class)s, %(key)s)

-- name: statement_timeout
SELECT pg_catalog.current_setting('statement_timeout')

-- name: lock_wait
-- Waiting for another riskd migrate: bounded by a lock_timeout of its own, not by a
-- statement_timeout the role may carry.
SELECT pg_catalog.set_config('lock_timeout', %(wait)s, false),
       pg_catalog.set_config('statement_timeout', '0', false)

-- name: lock
SELECT pg_catalog.pg_advisory_lock(%(lock_class)s, %(key)s)

-- name: lock_waited
SELECT pg_catalog.set_config('lock_timeout', %(lock_timeout)s, false),
       pg_catalog.set_config('statement_timeout', %(statement_timeout)s, false)

-- name: create_schema
CREATE SCHEMA IF NOT EXISTS riskd

-- name: script_begin
-- What a `riskd migrate --sql` script does first, as `riskd migrate` does: yield to trading
-- traffic, one migration at a time (a script applied by hand gets no retry: run it again if
-- its lock did not come).
SET LOCAL lock_timeout = {lock_timeout};
SELECT pg_catalog.pg_advisory_xact_lock({lock_class}, {key});
CREATE SCHEMA IF NOT EXISTS riskd;

-- name: record_installation
-- The mapping the triggers were rendered from.
INSERT INTO riskd.installation (mapping) VALUES ({mapping}::jsonb)
ON CONFLICT (singleton) DO UPDATE SET mapping = excluded.mapping, updated_at = now();

-- name: column_type
-- The SQL type of a column of one of riskd's tables.
SELECT pg_catalog.format_type(a.atttypid, a.atttypmod)
FROM pg_catalog.pg_attribute AS a
JOIN pg_catalog.pg_class AS c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = 'riskd' AND c.relname = %(table)s AND a.attname = %(column)s

-- name: remove
-- `riskd migrate --revision base`, after the revisions' downgrades: Alembic leaves its
-- (empty) version table; base means nothing of riskd is left.
DROP TABLE IF EXISTS riskd.alembic_version;
DROP SCHEMA IF EXISTS riskd;

-- name: max_prepared_transactions
SHOW max_prepared_transactions
