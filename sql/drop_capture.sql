-- The capture triggers off, wherever they sit, found by their function rather than by either
-- mapping's names: first step of `riskd migrate`'s repair at head (before unmap.sql), and of an
-- upgrade with a [schema] other than the installed one (the platform moved a mapped table),
-- before the revisions run (rendered from the new mapping, they would not find them) and the
-- repair installs the capture again, all in one transaction.
DO $drop$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT t.tgname, t.tgrelid::pg_catalog.regclass::text AS rel
        FROM pg_catalog.pg_trigger AS t
        JOIN pg_catalog.pg_proc AS p ON p.oid = t.tgfoid
        JOIN pg_catalog.pg_class AS c ON c.oid = t.tgrelid
        WHERE p.pronamespace = 'riskd'::pg_catalog.regnamespace
          AND c.relnamespace <> 'riskd'::pg_catalog.regnamespace
          AND NOT t.tgisinternal AND t.tgparentid = 0
    LOOP
        EXECUTE 'DROP TRIGGER ' || pg_catalog.quote_ident(r.tgname) || ' ON ' || r.rel;
    END LOOP;
END
$drop$;
