-- riskd's own tables (DESIGN §4 "Database objects"), all in schema riskd.
-- Rendered by riskd.sqlfiles: {account_id_type} is the type of the platform's account id column,
-- so riskd's rows join the platform's without casts.

CREATE TABLE riskd.account_state (
    account_id  {account_id_type} PRIMARY KEY,
    level       text NOT NULL CHECK (level IN ('ok', 'warning', 'critical')),
    utilization numeric,            -- NULL when equity <= 0 with open positions
    equity      numeric NOT NULL,
    used_margin numeric NOT NULL,
    checked_at  timestamptz NOT NULL DEFAULT now(),
    changed_at  timestamptz NOT NULL DEFAULT now()
);
-- the accounts over a threshold, which the dashboard lists and counts at every refresh; keyed
-- by the level alone, which changes only at a transition, so that a rewrite of the figures
-- stays a HOT update (an index on the utilisation would cost the check every one of them)
CREATE INDEX account_state_trouble_idx ON riskd.account_state (level) WHERE level <> 'ok';

CREATE TABLE riskd.risk_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id  {account_id_type} NOT NULL,
    user_id     text,
    from_level  text NOT NULL CHECK (from_level IN ('ok', 'warning', 'critical')),
    to_level    text NOT NULL CHECK (to_level IN ('ok', 'warning', 'critical')),
    utilization numeric,
    equity      numeric NOT NULL,
    used_margin numeric NOT NULL,
    detail      jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    instance    text NOT NULL
);
CREATE INDEX risk_events_account_idx ON riskd.risk_events (account_id, id);
CREATE INDEX risk_events_created_idx ON riskd.risk_events (created_at);

CREATE TABLE riskd.close_requests (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id   {account_id_type} NOT NULL,
    status       text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'cancelled')),
    utilization  numeric,
    created_at   timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    detail       jsonb NOT NULL DEFAULT '{{}}'
);
-- I3: at most one pending close request per account, whatever the number of instances.
CREATE UNIQUE INDEX close_requests_one_pending ON riskd.close_requests (account_id)
    WHERE status = 'pending';
-- The circuit breaker counts the closes of the last minute, across instances (sql/act.sql).
CREATE INDEX close_requests_created_idx ON riskd.close_requests (created_at);
-- An account's requests, newest first (the dashboard's account page).
CREATE INDEX close_requests_account_idx ON riskd.close_requests (account_id, id);

CREATE TABLE riskd.account_limits (
    account_id           {account_id_type} PRIMARY KEY,
    warning_threshold    numeric CHECK (warning_threshold > 0),
    auto_close_threshold numeric CHECK (auto_close_threshold > 0),
    CHECK (warning_threshold < auto_close_threshold),
    -- the auto-close mode of this account; NULL: [risk] auto_close
    auto_close           text CHECK (auto_close IN ('request', 'flatten', 'off'))
);

CREATE TABLE riskd.daemons (
    instance     text PRIMARY KEY,
    host         text NOT NULL,
    pid          integer NOT NULL,
    version      text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    stats        jsonb NOT NULL DEFAULT '{{}}'
);

-- The dirty set: an append-only log with no index, so that marking an account costs the
-- trading transaction one heap insert and can never conflict (no unique check, hence no
-- serialization failure under REPEATABLE READ or SERIALIZABLE). The drainer de-duplicates.
-- UNLOGGED: no WAL on the trading path; a server crash empties it, the sweep after every
-- reconnect covers that.
-- account_id may be NULL: a position without an account marks NULL rather than failing the
-- trade on a NOT NULL check; the drainer skips it.
CREATE UNLOGGED TABLE riskd.dirty_accounts (
    account_id {account_id_type},
    marked_at  timestamptz NOT NULL DEFAULT now()
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000);

-- The instruments whose price or margin rate changed, or that were inserted or deleted (their
-- holders gain or lose the price): capture appends their ids and reads nothing else (DESIGN
-- §2.1). The daemon's drain fans them out to the accounts holding them open, after commit
-- (riskd.drain_instruments, sql/capture.sql). Same shape as the dirty set, for the same reasons:
-- append-only, no index, UNLOGGED; an id may be NULL, the fan-out matches no position with it.
CREATE UNLOGGED TABLE riskd.dirty_instruments (
    instrument_id {instrument_id_type},
    marked_at     timestamptz NOT NULL DEFAULT now()
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000);

-- Sweep requests: a TRUNCATE of a mapped table changes accounts without a row to mark, so its
-- trigger appends a row here and wakes the daemon; the sweep leader takes them and sweeps at
-- once rather than at its next sweep_interval. UNLOGGED: a server crash empties it, and the
-- sweep after every reconnect covers that.
CREATE UNLOGGED TABLE riskd.sweep_requests (
    requested_at timestamptz NOT NULL DEFAULT now(),
    reason       text NOT NULL
);

-- The wake-up: the first mark after the daemon re-armed it (setval to 1, is_called false)
-- draws 1 and NOTIFYs; every later mark draws more and stays silent, so a storm of updates
-- costs one notification. UNLOGGED: drawing a value writes no WAL.
CREATE UNLOGGED SEQUENCE riskd.wakeup AS bigint START 1 CACHE 1 NO CYCLE;

-- What `riskd migrate` installed from, so that the daemon refuses a configuration whose
-- [schema] mapping differs from the triggers in place.
CREATE TABLE riskd.installation (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    mapping    jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
