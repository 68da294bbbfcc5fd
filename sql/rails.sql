-- The safety rails' state (DESIGN §1 "Safety rails", §4): what the rails did (riskd.alerts)
-- and the kill switch (riskd.controls). The functions that act on them render from the
-- mapping and live in sql/act.sql; what is here no mapping renders.

-- What a rail did: paused / resumed (the kill switch), circuit_open (the breaker paused
-- riskd), close_held (an auto-close held back: a stale price or data riskd cannot trust),
-- data_error, endpoint_gone (the webhook endpoint answered 410). account_id NULL for what
-- concerns no single account.
CREATE TABLE riskd.alerts (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind       text NOT NULL CHECK (kind IN ('paused', 'resumed', 'circuit_open', 'close_held',
                                             'data_error', 'endpoint_gone')),
    account_id {account_id_type},
    detail     jsonb NOT NULL DEFAULT '{{}}',
    created_at timestamptz NOT NULL DEFAULT now()
);
-- an account's alerts (the close_held already said for a critical episode, an account page)
CREATE INDEX alerts_account_idx ON riskd.alerts (account_id, id) WHERE account_id IS NOT NULL;

-- The kill switch: one row. Paused, no instance makes a close (sql/act.sql); levels, events
-- and deliveries go on. Changed only through riskd.pause and riskd.resume.
CREATE TABLE riskd.controls (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    paused    boolean NOT NULL DEFAULT false,
    paused_by text,
    reason    text,
    since     timestamptz
);
INSERT INTO riskd.controls DEFAULT VALUES;

-- Every alert is announced on riskd_events as JSON (the dashboard and `riskd events --follow`
-- listen there) and, in a session with a [webhook] url, gets its delivery — but endpoint_gone,
-- which says the endpoint is no longer there to take it. A row trigger: alerts are few. The
-- NOTIFY is skipped when the queue is nearly full, as the check's are.
CREATE FUNCTION riskd.announce_alert() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, riskd
AS $$
DECLARE
    v_payload text := jsonb_build_object(
        'alert_id', NEW.id, 'kind', NEW.kind, 'account_id', NEW.account_id,
        'created_at', NEW.created_at, 'detail', NEW.detail)::text;
BEGIN
    IF pg_catalog.current_setting('riskd.webhook', true) IS NOT DISTINCT FROM 'on'
       AND NEW.kind <> 'endpoint_gone' THEN
        INSERT INTO riskd.deliveries (alert_id) VALUES (NEW.id);
    END IF;
    IF octet_length(v_payload) >= 7900 THEN  -- NOTIFY takes < 8000 bytes: the rest is in the row
        v_payload := jsonb_build_object('alert_id', NEW.id, 'kind', NEW.kind,
                                        'account_id', NEW.account_id,
                                        'created_at', NEW.created_at)::text;
    END IF;
    -- the limit as the triggers read it: a value that is not a plain number counts as 0.5
    IF pg_notification_queue_usage() < (CASE
           WHEN current_setting('riskd.notify_queue_limit', true) ~ '^ *[0-9]{{0,6}}[.]?[0-9]{{1,12}} *$'
           THEN float8(current_setting('riskd.notify_queue_limit', true))
           ELSE 0.5 END) THEN
        PERFORM pg_notify('riskd_events', v_payload);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER alerts_announce AFTER INSERT ON riskd.alerts
    FOR EACH ROW EXECUTE FUNCTION riskd.announce_alert();
