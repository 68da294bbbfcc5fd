-- The psql script `riskd grants` prints: riskd's two least-privilege roles and exactly what
-- they are granted for the configured [schema] mapping (riskd/grants.py renders it). The GRANT
-- statements come from riskd/privileges.py, the list the daemon also probes at start: each
-- {name} below is one of them, quoted by psycopg.sql; everything else is printed as it is
-- ({{ and }} are a brace). Sections: script, then flatten or no_flatten in its place.

-- name: script
-- riskd with least privilege: the roles the daemon and the on-call engineers use, and exactly
-- what they are granted, as {command} prints them for this [schema] mapping:
{mapping}
--
-- Found by experiment, starting from nothing, and proven by
-- tests/integration/test_least_privilege.py, which runs this output — on the reference schema
-- and on one of another shape — and then the daemon as the role it creates, in a database that
-- grants PUBLIC nothing.
--
-- Run it after every `riskd migrate`, and after a change of [schema] or of auto_close, with
-- psql, as a role that may grant on everything named here: a GRANT takes the object's owner,
-- so the owner of schema riskd and of the platform's tables (the role that ran the migration)
-- for most lines, and the database's owner for the CONNECT lines — or a superuser. It creates
-- the two group roles when they do not exist yet, which takes CREATEROLE, and granting their
-- membership takes ADMIN on them; without those, have a role administrator create them
-- (CREATE ROLE riskd_daemon NOLOGIN; CREATE ROLE riskd_monitor NOLOGIN) and grant the
-- memberships, and leave out login= / monitor_login=. Running it again changes nothing.
--
--   riskd grants | psql -X -v ON_ERROR_STOP=1 -d trading -v login=riskd -f -
--   riskd grants --flatten | psql -X -v ON_ERROR_STOP=1 -d trading -v login=riskd -f -
--   riskd grants | psql -X -v ON_ERROR_STOP=1 -d trading -v monitor_login=oncall -f -
--
-- psql variables (all optional):
--   daemon_role    the group role holding the daemon's privileges   (default riskd_daemon)
--   monitor_role   the read-only group role for `riskd status` / `riskd events` (riskd_monitor)
--   login          an existing LOGIN role the daemon connects as, made a member of daemon_role
--   monitor_login  an existing LOGIN role made a member of monitor_role
--
-- Why a NOLOGIN group role and a separate LOGIN role: the privileges are written down once,
-- against a role nobody can log in as, while each login role (one per host or per instance if
-- you like, so pg_stat_activity tells them apart) carries only a membership and its own
-- authentication — a password, a certificate or peer — and can be replaced (a rotated secret, a
-- new host) without touching a single GRANT. The login role must INHERIT (the default): the
-- daemon never runs SET ROLE.
--
-- The platform's tables and columns below are those [schema] maps (the comments give the
-- keys); riskd quotes every name itself.
--
-- What the daemon does NOT get: no privilege at all on a platform table or column outside the
-- mapping, no write on the platform's data unless flatten is on, no DELETE or TRUNCATE on
-- riskd's history (risk_events, close_requests, account_state), no write on account_limits, no
-- CREATE anywhere, no TEMPORARY. The capture triggers need nothing from it (nor from the
-- trading roles): their functions are SECURITY DEFINER, owned by the migrating role.

\if :{{?daemon_role}}
\else
\set daemon_role riskd_daemon
\endif
\if :{{?monitor_role}}
\else
\set monitor_role riskd_monitor
\endif

SELECT NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = :'daemon_role')
           AS riskd_create_daemon_role,
       NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = :'monitor_role')
           AS riskd_create_monitor_role
\gset
\if :riskd_create_daemon_role
CREATE ROLE :"daemon_role" NOLOGIN;
\endif
\if :riskd_create_monitor_role
CREATE ROLE :"monitor_role" NOLOGIN;
\endif

BEGIN;

-- ============================================================================== the daemon

-- PUBLIC has CONNECT on a database unless it was revoked, as hardened databases do; and
-- PUBLIC has USAGE on schema public unless revoked. Granted here so that the daemon does not
-- depend on either.
GRANT CONNECT ON DATABASE :"DBNAME" TO :"daemon_role";
{riskd_usage}
-- the schema(s) of the mapped tables
{platform_usage}

-- At start: the revision and the mapping riskd was installed with.
{start}

-- The drain takes the dirty set (DELETE … RETURNING, which needs SELECT); at a stop, the
-- accounts left unchecked go back into it (INSERT). In the same statement it takes the
-- instrument marks and fans them out to their holders (riskd.drain_instruments, not SECURITY
-- DEFINER: it runs with these privileges and the SELECT on positions below).
{drain}
{drain_instruments}

-- The sweep leader takes the sweep requests a TRUNCATE of a mapped table leaves
-- (DELETE … RETURNING).
{sweep_requests}

-- Re-arming the wake-up after an empty drain is setval(), which needs UPDATE on the sequence
-- (and nothing else: the triggers draw from it with their owner's rights).
{wakeup}

-- The heartbeat row: INSERT … ON CONFLICT DO UPDATE (which needs SELECT and UPDATE too) while
-- running, DELETE at a clean stop.
{heartbeat}

-- The check (riskd.check_accounts) and the sweep (riskd.sweep) are not SECURITY DEFINER: they
-- run with these privileges. State is upserted; events and close requests are inserted and
-- read back (RETURNING); a pending close request is cancelled (UPDATE) when its account leaves
-- critical; per-account limits are only read. The identity columns of risk_events and
-- close_requests need nothing on their sequences.
{state}
{events}
{close_requests}
{limits}

-- The safety rails (issue 14): the check records what a rail held back (riskd.alerts) and
-- reads the kill switch (riskd.controls); it changes the switch only through riskd.pause and
-- riskd.resume (SECURITY DEFINER, below with the functions), as `riskd pause` does.
{alerts}
{controls}

-- The webhook outbox (issue 13): the check's events get their delivery row in the same
-- transaction (a trigger, with these privileges), and the delivery task claims due rows
-- (SELECT … FOR UPDATE SKIP LOCKED) and records each attempt (UPDATE).
{deliveries}

-- The functions the daemon calls, and the SQL functions they call in turn (a function called
-- from a function is checked against the caller too). PostgreSQL grants EXECUTE to PUBLIC by
-- default; `riskd migrate` revokes that, and these grants give it back to the daemon alone.
{functions}
{model_figures}

-- The platform's own margin model ([risk] model), which the check calls: what the function
-- itself reads is its owner's to grant (or make it SECURITY DEFINER).
{model_usage}
{model}

-- The check and the sweep read the platform's tables through two views of riskd's
-- (security_invoker: with these privileges, as if they read the tables).
{views}

-- The platform's data, read only, and only the mapped columns.
{accounts}
{positions}
{instruments}

{flatten}

-- ====================================================================== the monitoring role
-- `riskd status` and `riskd events` (--follow LISTENs, which needs no privilege; neither does
-- pg_notification_queue_usage()): riskd's tables, read only, and nothing of the platform's.
GRANT CONNECT ON DATABASE :"DBNAME" TO :"monitor_role";
{monitor_usage}
{monitor_tables}
-- The dashboard's one action: `riskd dashboard --allow-actions` pauses and resumes (the kill
-- switch, SECURITY DEFINER functions) as this role, each behind the dashboard's password and
-- recorded with who and why. Revoke it where no dashboard may act.
{monitor_actions}

-- ============================================================================ memberships
\if :{{?login}}
GRANT :"daemon_role" TO :"login";
\endif
\if :{{?monitor_login}}
GRANT :"monitor_role" TO :"monitor_login";
\endif

COMMIT;

-- name: flatten
-- ==================================================================== FLATTEN (--flatten)
-- [risk] auto_close = "flatten" (or an account's limit saying flatten): riskd closes positions
-- itself. The check calls riskd.flatten (without this block it opens a close request instead,
-- saying that the daemon may not flatten), which locks the
-- accounts' positions and balances (SELECT … FOR UPDATE, which needs UPDATE on a column),
-- zeroes the closed positions and realises their PnL into the balance. It reads and writes the platform's tables through
-- functions PostgreSQL tracks (a RENAME of a mapped column carries them along); their argument
-- types follow the mapping, so they go by name. It addresses a position by its key, its
-- account and the table holding the row (tableoid: partitions and inheritance children), a
-- system column that only a table-wide SELECT covers: hence SELECT on the whole positions
-- table, not on the mapped columns alone.
-- Your own triggers on these tables run as the daemon's role when it flattens: grant what
-- they need too. GRANTs only add: switching flatten off later, revoke this block's privileges
-- (REVOKE EXECUTE ON FUNCTION riskd.flatten … ; REVOKE SELECT, UPDATE ON <positions> … ;
-- REVOKE UPDATE (<balance>) ON <accounts> …) and run `riskd grants` again.
{flatten_functions}
{flatten_positions_select}
{flatten_positions_update}
{flatten_balance}

-- name: no_flatten
-- ============================================================== FLATTEN (not included)
-- [risk] auto_close is not "flatten": riskd writes nothing of the platform's. Before setting
-- it to "flatten", run this script again as `riskd grants --flatten` prints it: every check
-- would fail without the writes it adds.
