-- The webhook outbox (DESIGN §4 "Webhooks"): one row per risk event (with the safety rails, per
-- alert too), written by the transaction that writes the event, so that an event without its
-- delivery row cannot exist and a check that rolls back leaves neither. The delivery task of
-- `riskd run` POSTs them, outside any check's transaction.
--
-- Only when the writer's configuration has a [webhook] url: riskd's sessions then set
-- riskd.webhook = 'on' (the named query webhook_session), so that riskd.check_accounts keeps
-- its signature and no other writer of events pays for an outbox it does not use.

CREATE TABLE riskd.deliveries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        bigint REFERENCES riskd.risk_events (id) ON DELETE CASCADE,
    alert_id        bigint REFERENCES riskd.alerts (id) ON DELETE CASCADE,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_status     integer,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    CHECK ((event_id IS NULL) <> (alert_id IS NULL))
);
-- one delivery per event; also what ON DELETE CASCADE looks up
CREATE UNIQUE INDEX deliveries_event_idx ON riskd.deliveries (event_id);
CREATE UNIQUE INDEX deliveries_alert_idx ON riskd.deliveries (alert_id);
-- what the delivery task claims: the due ones
CREATE INDEX deliveries_due_idx ON riskd.deliveries (next_attempt_at) WHERE status = 'pending';
-- the dead letters, which `riskd status` counts and `riskd deliveries retry` takes
CREATE INDEX deliveries_failed_idx ON riskd.deliveries (id) WHERE status = 'failed';

-- A statement trigger: one INSERT of the batch's events, one INSERT into the outbox, and
-- nothing at all in a session without riskd.webhook.
CREATE FUNCTION riskd.enqueue_event_deliveries() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, riskd
AS $$
BEGIN
    IF pg_catalog.current_setting('riskd.webhook', true) IS NOT DISTINCT FROM 'on' THEN
        INSERT INTO riskd.deliveries (event_id) SELECT e.id FROM new_events AS e;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER risk_events_outbox AFTER INSERT ON riskd.risk_events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION riskd.enqueue_event_deliveries();
