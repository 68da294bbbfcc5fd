-- riskd with least privilege: the roles the daemon and the on-call engineers use, and exactly
-- what they are granted, as `riskd grants --flatten` prints them for this [schema] mapping:
--   accounts_table = "public.trading_accounts"
--   account_id = "id"
--   account_user = "userId"
--   account_balance = "balance"
--   positions_table = "public.positions"
--   position_id = "id"
--   position_account = "tradingAccountId"
--   position_instrument = "instrumentId"
--   position_quantity = "quantity"
--   position_pnl = "unrealizedPnL"
--   instruments_table = "public.instruments"
--   instrument_id = "id"
--   instrument_price = "price"
--   instrument_margin_rate = "marginRate"
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

\if :{?daemon_role}
\else
\set daemon_role riskd_daemon
\endif
\if :{?monitor_role}
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
GRANT USAGE ON SCHEMA "riskd" TO :"daemon_role";
-- the schema(s) of the mapped tables
GRANT USAGE ON SCHEMA "public" TO :"daemon_role";

-- At start: the revision and the mapping riskd was installed with.
GRANT SELECT ON riskd.alembic_version, riskd.installation TO :"daemon_role";

-- The drain takes the dirty set (DELETE … RETURNING, which needs SELECT); at a stop, the
-- accounts left unchecked go back into it (INSERT). In the same statement it takes the
-- instrument marks and fans them out to their holders (riskd.drain_instruments, not SECURITY
-- DEFINER: it runs with these privileges and the SELECT on positions below).
GRANT SELECT, INSERT, DELETE ON riskd.dirty_accounts TO :"daemon_role";
GRANT SELECT, DELETE ON riskd.dirty_instruments TO :"daemon_role";

-- The sweep leader takes the sweep requests a TRUNCATE of a mapped table leaves
-- (DELETE … RETURNING).
GRANT SELECT, DELETE ON riskd.sweep_requests TO :"daemon_role";

-- Re-arming the wake-up after an empty drain is setval(), which needs UPDATE on the sequence
-- (and nothing else: the triggers draw from it with their owner's rights).
GRANT UPDATE ON SEQUENCE riskd.wakeup TO :"daemon_role";

-- The heartbeat row: INSERT … ON CONFLICT DO UPDATE (which needs SELECT and UPDATE too) while
-- running, DELETE at a clean stop.
GRANT SELECT, INSERT, UPDATE, DELETE ON riskd.daemons TO :"daemon_role";

-- The check (riskd.check_accounts) and the sweep (riskd.sweep) are not SECURITY DEFINER: they
-- run with these privileges. State is upserted; events and close requests are inserted and
-- read back (RETURNING); a pending close request is cancelled (UPDATE) when its account leaves
-- critical; per-account limits are only read. The identity columns of risk_events and
-- close_requests need nothing on their sequences.
GRANT SELECT, INSERT, UPDATE ON riskd.account_state TO :"daemon_role";
GRANT SELECT, INSERT ON riskd.risk_events TO :"daemon_role";
GRANT SELECT, INSERT, UPDATE ON riskd.close_requests TO :"daemon_role";
GRANT SELECT ON riskd.account_limits TO :"daemon_role";

-- The safety rails (issue 14): the check records what a rail held back (riskd.alerts) and
-- reads the kill switch (riskd.controls); it changes the switch only through riskd.pause and
-- riskd.resume (SECURITY DEFINER, below with the functions), as `riskd pause` does.
GRANT SELECT, INSERT ON riskd.alerts TO :"daemon_role";
GRANT SELECT ON riskd.controls TO :"daemon_role";

-- The webhook outbox (issue 13): the check's events get their delivery row in the same
-- transaction (a trigger, with these privileges), and the delivery task claims due rows
-- (SELECT … FOR UPDATE SKIP LOCKED) and records each attempt (UPDATE).
GRANT SELECT, INSERT, UPDATE ON riskd.deliveries TO :"daemon_role";

-- The functions the daemon calls, and the SQL functions they call in turn (a function called
-- from a function is checked against the caller too). PostgreSQL grants EXECUTE to PUBLIC by
-- default; `riskd migrate` revokes that, and these grants give it back to the daemon alone.
GRANT EXECUTE ON FUNCTION
    riskd.check_accounts(text[], text, numeric, numeric, numeric, text),
    riskd.sweep(numeric, numeric, numeric),
    riskd.decide_level(bigint, numeric, numeric, numeric, numeric, numeric, text),
    riskd.utilization(bigint, numeric, numeric),
    riskd.position_margin(numeric, numeric, numeric),
    riskd.position_pnl(numeric),
    riskd.position_data_error(numeric, numeric, numeric, numeric),
    riskd.position_untrusted(numeric, numeric, numeric, numeric),
    riskd.drain_instruments(),
    riskd.act(riskd.checked_account[], riskd.check_result[], numeric, numeric),
    riskd.setting_number(text),
    riskd.pause(text, text, jsonb),
    riskd.resume(text, text)
TO :"daemon_role";
GRANT EXECUTE ON FUNCTION riskd.model_figures TO :"daemon_role";

-- The platform's own margin model ([risk] model), which the check calls: what the function
-- itself reads is its owner's to grant (or make it SECURITY DEFINER).

-- [risk] model = "builtin": none of the platform's

-- The check and the sweep read the platform's tables through two views of riskd's
-- (security_invoker: with these privileges, as if they read the tables).
GRANT SELECT ON riskd.platform_positions, riskd.platform_accounts TO :"daemon_role";

-- The platform's data, read only, and only the mapped columns.
GRANT SELECT (
    "id",               -- [schema] account_id
    "userId",           -- [schema] account_user
    "balance"           -- [schema] account_balance
) ON "public"."trading_accounts" TO :"daemon_role";   -- [schema] accounts_table
GRANT SELECT (
    "id",               -- [schema] position_id
    "tradingAccountId", -- [schema] position_account
    "instrumentId",     -- [schema] position_instrument
    "quantity",         -- [schema] position_quantity
    "unrealizedPnL"     -- [schema] position_pnl
) ON "public"."positions" TO :"daemon_role";   -- [schema] positions_table
GRANT SELECT (
    "id",               -- [schema] instrument_id
    "price",            -- [schema] instrument_price
    "marginRate"        -- [schema] instrument_margin_rate
) ON "public"."instruments" TO :"daemon_role";   -- [schema] instruments_table

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
GRANT EXECUTE ON FUNCTION
    riskd.flatten(riskd.check_result[], numeric, numeric),
    riskd.flatten_positions,
    riskd.flatten_lock_accounts,
    riskd.flatten_close,
    riskd.flatten_book,
    riskd.flatten_by_model
TO :"daemon_role";
GRANT SELECT ON "public"."positions" TO :"daemon_role";   -- [schema] positions_table
GRANT UPDATE (
    "quantity",         -- [schema] position_quantity
    "unrealizedPnL"     -- [schema] position_pnl
) ON "public"."positions" TO :"daemon_role";   -- [schema] positions_table
GRANT UPDATE (
    "balance"           -- [schema] account_balance
) ON "public"."trading_accounts" TO :"daemon_role";   -- [schema] accounts_table

-- ====================================================================== the monitoring role
-- `riskd status` and `riskd events` (--follow LISTENs, which needs no privilege; neither does
-- pg_notification_queue_usage()): riskd's tables, read only, and nothing of the platform's.
GRANT CONNECT ON DATABASE :"DBNAME" TO :"monitor_role";
GRANT USAGE ON SCHEMA "riskd" TO :"monitor_role";
GRANT SELECT ON
    riskd.alembic_version,
    riskd.installation,
    riskd.daemons,
    riskd.dirty_accounts,
    riskd.dirty_instruments,
    riskd.account_state,
    riskd.risk_events,
    riskd.close_requests,
    riskd.account_limits,
    riskd.deliveries,
    riskd.alerts,
    riskd.controls
TO :"monitor_role";
-- The dashboard's one action: `riskd dashboard --allow-actions` pauses and resumes (the kill
-- switch, SECURITY DEFINER functions) as this role, each behind the dashboard's password and
-- recorded with who and why. Revoke it where no dashboard may act.
GRANT EXECUTE ON FUNCTION riskd.pause, riskd.resume TO :"monitor_role";

-- ============================================================================ memberships
\if :{?login}
GRANT :"daemon_role" TO :"login";
\endif
\if :{?monitor_login}
GRANT :"monitor_role" TO :"monitor_login";
\endif

COMMIT;
