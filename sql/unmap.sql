-- Takes off what head renders from the [schema] mapping, so that `riskd migrate` with a changed
-- mapping (a platform's migration renamed a table or a column, or swapped a table) can install
-- it again in place, keeping every row of riskd's tables (I9): riskd's views, its functions but
-- the triggers' on riskd's own tables (the version fence, the webhook outbox), which no
-- mapping renders, and the check's row types. Run in the migration's transaction after
-- drop_capture.sql (the capture triggers, wherever they sit now), followed by check.sql,
-- sweep.sql, capture.sql and privileges.sql.
-- the model's figures read the views (a recorded dependency): first
DROP FUNCTION IF EXISTS riskd.model_figures;
DO $unmap$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT c.oid::pg_catalog.regclass::text AS view
        FROM pg_catalog.pg_class AS c
        WHERE c.relnamespace = 'riskd'::pg_catalog.regnamespace AND c.relkind = 'v'
    LOOP
        EXECUTE 'DROP VIEW ' || r.view;
    END LOOP;
    FOR r IN
        SELECT p.oid::pg_catalog.regprocedure::text AS fn
        FROM pg_catalog.pg_proc AS p
        WHERE p.pronamespace = 'riskd'::pg_catalog.regnamespace
          -- kept: the functions of triggers on riskd's own tables (the version fence, the
          -- webhook outbox); drop_capture.sql took the triggers on the platform's tables off
          AND NOT EXISTS (
              SELECT FROM pg_catalog.pg_trigger AS t
              JOIN pg_catalog.pg_class AS c ON c.oid = t.tgrelid
              WHERE t.tgfoid = p.oid
                AND c.relnamespace = 'riskd'::pg_catalog.regnamespace)
    LOOP
        EXECUTE 'DROP FUNCTION ' || r.fn;
    END LOOP;
END
$unmap$;
DROP TYPE riskd.check_result;
DROP TYPE riskd.checked_account;
DROP TYPE IF EXISTS riskd.position_ref;
