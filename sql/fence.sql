-- The version fence: a daemon runs only against the schema revision it was built for (I10).
-- Every heartbeat (riskd.daemons, every 2 s) carries the revision the daemon runs in
-- stats.schema_revision; once `riskd migrate` has moved the schema elsewhere, the heartbeat is
-- refused and the daemon stops with this one line, handing its work back, whatever release it
-- is: riskd 0.1.0, which knows nothing of the fence, stops on the insufficient_privilege
-- error as on a revoked grant (exit 2). Under systemd it then restarts with the release
-- installed now. The heartbeat is the only write the fence watches; it costs nothing else.
CREATE FUNCTION riskd.fence_heartbeat() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, riskd AS $fn$
DECLARE
    installed text := (SELECT v.version_num FROM riskd.alembic_version AS v LIMIT 1);
    runs text := NEW.stats ->> 'schema_revision';
BEGIN
    IF runs IS DISTINCT FROM installed THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = 'riskd schema is at revision ' || coalesce(installed, 'none')
                || ', this daemon (riskd ' || NEW.version || ') runs revision '
                || coalesce(runs, '0001')
                || ': stopping; start the riskd release that ran `riskd migrate`';
    END IF;
    RETURN NEW;
END
$fn$;

CREATE TRIGGER riskd_version_fence BEFORE INSERT OR UPDATE ON riskd.daemons
    FOR EACH ROW EXECUTE FUNCTION riskd.fence_heartbeat();
