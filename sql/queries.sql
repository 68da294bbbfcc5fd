-- Named queries riskd runs (loaded once by riskd.sqlfiles.queries). Parameters: %(name)s.

-- name: describe_table
-- The kind of a mapped relation and its columns with their SQL types.
SELECT c.relkind::text AS relkind, a.attname::text AS column_name,
       format_type(a.atttypid, a.atttypmod) AS column_type, a.atttypid::int AS type_oid
FROM pg_catalog.pg_class AS c
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_attribute AS a
       ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname = %(schema)s AND c.relname = %(table)s

-- name: installed_mapping
SELECT mapping FROM riskd.installation

-- name: check_accounts
SELECT account_id::text, user_id, level, previous_level, utilization, equity, used_margin,
       event_id, close_request_id
FROM riskd.check_accounts(%(ids)s::text[], %(instance)s, %(warning)s, %(auto_close)s,
                          %(hysteresis)s, %(mode)s)

-- name: sweep
SELECT account_id::text, level, previous_level
FROM riskd.sweep(%(warning)s, %(auto_close)s, %(hysteresis)s)

-- name: level_counts
SELECT level, count(*) AS accounts FROM riskd.account_state GROUP BY level

-- name: account_count
SELECT count(*) FROM riskd.account_state

-- name: assignable
-- Whether a value of the first type can be stored in a column of the second without an
-- explicit cast (the capture triggers store position account ids as account ids).
SELECT %(source)s::oid = %(target)s::oid OR EXISTS (
    SELECT 1 FROM pg_catalog.pg_cast
    WHERE castsource = %(source)s::oid AND casttarget = %(target)s::oid
      AND castcontext IN ('a', 'i'))
