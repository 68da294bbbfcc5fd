"""A deterministic dump of everything installed in a schema, to compare two databases.

``catalog(conn, "riskd")`` collects what ``DROP SCHEMA riskd CASCADE`` would drop: the
transitive closure over pg_depend of the objects that depend on the namespace (its tables,
their columns, defaults, constraints, indexes, triggers, rules and policies; the triggers on
other schemas' tables that call its functions; event triggers on its functions; ...), plus
the namespace itself and the rows of ``<schema>.alembic_version``. Keys are
``pg_identify_object`` type and schema-qualified identity; values are definitions made of
names and deparsed SQL only, never OIDs, storage, sequence positions or statistics, so two
installs compare equal exactly when their definitions are equal. An object of a catalog not
handled below still shows up, with a placeholder definition.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg import sql

# The closure follows pg_depend from referenced to dependent object, and back up from an
# internal part or an extension member to its owner (dropping a view's rule drops the view).
# Dependents of a whole object (objsubid 0) include what depends on one of its columns
# (refobjsubid = attnum); a dependent column (e.g. a platform column of one of the schema's
# types) brings only what depends on that column, not its whole table.
OBJECTS = """
WITH RECURSIVE edges(refclassid, refobjid, refobjsubid, classid, objid, objsubid) AS (
    SELECT refclassid, refobjid, refobjsubid, classid, objid, objsubid FROM pg_depend
  UNION ALL
    SELECT classid, objid, objsubid, refclassid, refobjid, refobjsubid FROM pg_depend
    WHERE deptype IN ('i', 'e')
), closure(classid, objid, objsubid) AS (
    SELECT 'pg_namespace'::regclass::oid, n.oid, 0 FROM pg_namespace n WHERE n.nspname = %(schema)s
  UNION
    SELECT e.classid, e.objid, e.objsubid
    FROM closure c JOIN edges e ON e.refclassid = c.classid AND e.refobjid = c.objid
     AND (c.objsubid = 0 OR e.refobjsubid = c.objsubid)
), objs AS (
    SELECT * FROM closure
  UNION
    SELECT 'pg_class'::regclass::oid, a.attrelid, a.attnum
    FROM closure c JOIN pg_attribute a ON c.classid = 'pg_class'::regclass AND c.objsubid = 0
     AND a.attrelid = c.objid AND a.attnum > 0 AND NOT a.attisdropped
), defs(classid, objid, objsubid, ident, def) AS (
    SELECT o.classid, r.oid, 0, NULL::text, format(
        'relkind=%%s persistence=%%s owner=%%s acl=%%s options=%%s am=%%s tablespace=%%s'
        ' rls=%%s force_rls=%%s replident=%%s partkey=%%s partbound=%%s%%s%%s%%s',
        r.relkind, r.relpersistence, pg_get_userbyid(r.relowner),
        ACL(r.relacl, CASE r.relkind WHEN 'S' THEN 's' ELSE 'r' END, r.relowner),
        SORTED(r.reloptions),
        am.amname, ts.spcname, r.relrowsecurity, r.relforcerowsecurity, r.relreplident,
        CASE r.relkind WHEN 'p' THEN pg_get_partkeydef(r.oid) END,
        pg_get_expr(r.relpartbound, r.oid),
        E'\\n' || pg_get_indexdef(i.indexrelid) || ' clustered=' || i.indisclustered,
        E'\\n' || CASE WHEN r.relkind IN ('v', 'm') THEN pg_get_viewdef(r.oid) END,
        CASE WHEN s.seqrelid IS NOT NULL THEN format(
            E'\\nsequence as %%s start %%s increment %%s min %%s max %%s cache %%s cycle %%s',
            s.seqtypid::regtype, s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcache,
            s.seqcycle) END)
    FROM objs o JOIN pg_class r ON o.classid = 'pg_class'::regclass AND o.objsubid = 0
     AND r.oid = o.objid
    LEFT JOIN pg_am am ON am.oid = r.relam
    LEFT JOIN pg_tablespace ts ON ts.oid = r.reltablespace
    LEFT JOIN pg_index i ON i.indexrelid = r.oid
    LEFT JOIN pg_sequence s ON s.seqrelid = r.oid
  UNION ALL
    SELECT o.classid, a.attrelid, a.attnum, NULL, format(
        'position=%%s type=%%s notnull=%%s default=%%s identity=%%s generated=%%s collation=%%s'
        ' acl=%%s storage=%%s compression=%%s options=%%s fdwoptions=%%s statistics=%%s',
        a.position, format_type(a.atttypid, a.atttypmod), a.attnotnull,
        pg_get_expr(ad.adbin, ad.adrelid), a.attidentity, a.attgenerated,
        CASE WHEN a.attcollation <> 0 THEN a.attcollation::regcollation END, SORTED(a.attacl),
        a.attstorage, a.attcompression, SORTED(a.attoptions), a.attfdwoptions, a.attstattarget)
    FROM objs o JOIN (
        SELECT *, row_number() OVER (PARTITION BY attrelid ORDER BY attnum) AS position
        FROM pg_attribute WHERE attnum > 0 AND NOT attisdropped
          AND attrelid IN (SELECT objid FROM objs WHERE objsubid > 0)
    ) a ON o.classid = 'pg_class'::regclass AND a.attrelid = o.objid AND a.attnum = o.objsubid
    LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
  UNION ALL
    SELECT o.classid, ad.oid, 0, NULL, pg_get_expr(ad.adbin, ad.adrelid)
    FROM objs o JOIN pg_attrdef ad ON o.classid = 'pg_attrdef'::regclass AND ad.oid = o.objid
  UNION ALL
    SELECT o.classid, p.oid, 0, NULL, format(E'owner=%%s acl=%%s\\n%%s',
        pg_get_userbyid(p.proowner), ACL(p.proacl, 'f', p.proowner),
        CASE WHEN p.prokind = 'a' THEN format(
            'aggregate %%s(%%s) kind=%%s sfunc=%%s stype=%%s finalfunc=%%s combinefunc=%%s'
            ' initcond=%%s sortop=%%s', p.oid::regproc, pg_get_function_arguments(p.oid),
            g.aggkind, g.aggtransfn, g.aggtranstype::regtype, g.aggfinalfn, g.aggcombinefn,
            g.agginitval, g.aggsortop::regoperator)
        ELSE pg_get_functiondef(p.oid) END)
    FROM objs o JOIN pg_proc p ON o.classid = 'pg_proc'::regclass AND p.oid = o.objid
    LEFT JOIN pg_aggregate g ON g.aggfnoid = p.oid
  UNION ALL
    -- an internal (foreign key) trigger's name holds an OID: name it by its constraint
    SELECT o.classid, t.oid, 0, CASE WHEN t.tgisinternal THEN format(
            'internal trigger on %%s for %%s calling %%s', t.tgrelid::regclass,
            pg_describe_object('pg_constraint'::regclass, t.tgconstraint, 0), t.tgfoid::regproc)
        END, format(E'%%s\\nenabled=%%s', CASE WHEN t.tgisinternal THEN 'type=' || t.tgtype
            ELSE pg_get_triggerdef(t.oid) END, t.tgenabled)
    FROM objs o JOIN pg_trigger t ON o.classid = 'pg_trigger'::regclass AND t.oid = o.objid
  UNION ALL
    SELECT o.classid, c.oid, 0, NULL, pg_get_constraintdef(c.oid)
    FROM objs o JOIN pg_constraint c ON o.classid = 'pg_constraint'::regclass AND c.oid = o.objid
  UNION ALL
    SELECT o.classid, t.oid, 0, NULL, format(
        'typtype=%%s owner=%%s acl=%%s base=%%s notnull=%%s default=%%s labels=%%s range=%%s',
        t.typtype, pg_get_userbyid(t.typowner), ACL(t.typacl, 'T', t.typowner),
        CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod) END,
        t.typnotnull, t.typdefault,
        (SELECT array_agg(e.enumlabel ORDER BY e.enumsortorder) FROM pg_enum e
         WHERE e.enumtypid = t.oid),
        (SELECT format('%%s canonical=%%s diff=%%s', g.rngsubtype::regtype, g.rngcanonical,
                       g.rngsubdiff) FROM pg_range g WHERE g.rngtypid = t.oid))
    FROM objs o JOIN pg_type t ON o.classid = 'pg_type'::regclass AND t.oid = o.objid
  UNION ALL
    SELECT o.classid, p.oid, 0, NULL, format(
        'cmd=%%s permissive=%%s roles=%%s using=%%s check=%%s', p.polcmd, p.polpermissive,
        (SELECT array_agg(CASE r WHEN 0 THEN 'public' ELSE pg_get_userbyid(r) END
                          ORDER BY pg_get_userbyid(r)) FROM unnest(p.polroles) r),
        pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid))
    FROM objs o JOIN pg_policy p ON o.classid = 'pg_policy'::regclass AND p.oid = o.objid
  UNION ALL
    SELECT o.classid, w.oid, 0, NULL,
        format(E'%%s\\nenabled=%%s', pg_get_ruledef(w.oid), w.ev_enabled)
    FROM objs o JOIN pg_rewrite w ON o.classid = 'pg_rewrite'::regclass AND w.oid = o.objid
  UNION ALL
    SELECT o.classid, e.oid, 0, NULL, format(
        'event=%%s function=%%s tags=%%s enabled=%%s owner=%%s', e.evtevent,
        e.evtfoid::regprocedure, e.evttags, e.evtenabled, pg_get_userbyid(e.evtowner))
    FROM objs o JOIN pg_event_trigger e
      ON o.classid = 'pg_event_trigger'::regclass AND e.oid = o.objid
  UNION ALL
    SELECT o.classid, n.oid, 0, NULL,
        format('owner=%%s acl=%%s', pg_get_userbyid(n.nspowner), ACL(n.nspacl, 'n', n.nspowner))
    FROM objs o JOIN pg_namespace n ON o.classid = 'pg_namespace'::regclass AND n.oid = o.objid
  UNION ALL
    SELECT o.classid, a.oid, 0, NULL, format('acl=%%s', SORTED(a.defaclacl))
    FROM objs o JOIN pg_default_acl a
      ON o.classid = 'pg_default_acl'::regclass AND a.oid = o.objid
  UNION ALL
    SELECT o.classid, x.oid, 0, NULL, format('owner=%%s %%s', pg_get_userbyid(x.stxowner),
        pg_get_statisticsobjdef(x.oid))
    FROM objs o JOIN pg_statistic_ext x
      ON o.classid = 'pg_statistic_ext'::regclass AND x.oid = o.objid
)
SELECT coalesce(d.ident, id.type || ' ' || id.identity) AS key,
       coalesce(d.def, 'object of ' || o.classid::regclass::text || ' (no definition dumped)')
       || coalesce(E'\\ncomment=' || ds.description, '')
       || coalesce((SELECT string_agg(E'\\nlabel ' || l.provider || '=' || l.label, ''
                                      ORDER BY l.provider) FROM pg_seclabel l
                    WHERE (l.objoid, l.classoid, l.objsubid) = (o.objid, o.classid, o.objsubid)),
                   '') AS def
FROM objs o
CROSS JOIN LATERAL pg_identify_object(o.classid, o.objid, o.objsubid) id
LEFT JOIN defs d USING (classid, objid, objsubid)
LEFT JOIN pg_description ds
  ON (ds.objoid, ds.classoid, ds.objsubid) = (o.objid, o.classid, o.objsubid)
WHERE id.schema IS DISTINCT FROM 'pg_toast'  -- a toast table's name holds its table's OID
ORDER BY 1, 2
"""


def _expand(macro: re.Match[str]) -> str:
    """ACLs and options compare as sets (their order follows the history of GRANTs and SETs),
    and a NULL ACL as the default it stands for."""
    array = macro.group(2)
    if macro.group(1) == "ACL":
        acl, kind, owner = array.split(", ")
        array = f'coalesce({acl}, acldefault(({kind})::"char", {owner}))'
    return f"(SELECT array_agg(x::text ORDER BY x::text) FROM unnest({array}) x)"


OBJECTS = re.sub(r"\b(SORTED|ACL)\(([^()]*)\)", _expand, OBJECTS)


def catalog(conn: psycopg.Connection[Any], schema: str = "riskd") -> dict[str, str]:
    """Every object ``DROP SCHEMA schema CASCADE`` would drop, and the version rows.

    Runs in a transaction (a savepoint if one is open) with search_path = pg_catalog, so
    that every name in keys and definitions is schema-qualified whatever the caller's path.
    """
    dump: dict[str, str] = {}
    with conn.transaction():
        path = conn.execute("SELECT current_setting('search_path')").fetchone()
        conn.execute("SELECT set_config('search_path', 'pg_catalog', true)")
        for key, definition in conn.execute(OBJECTS, {"schema": schema}).fetchall():
            dump[key] = f"{dump[key]}\n---\n{definition}" if key in dump else definition
        version = conn.execute(
            "SELECT to_regclass(format('%%I.alembic_version', %s::text)) IS NOT NULL", (schema,)
        ).fetchone()
        if version is not None and version[0]:
            query = sql.SQL("SELECT version_num::text FROM {}.alembic_version ORDER BY 1")
            rows = conn.execute(query.format(sql.Identifier(schema))).fetchall()
            dump["data alembic_version"] = "\n".join(row[0] for row in rows)
        conn.execute("SELECT set_config('search_path', %s, true)", path)
    return dump
