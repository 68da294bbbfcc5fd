-- Deterministic seed data for the reference trading schema (reference_schema.sql), which the
-- demo, the tests and the benchmarks run on. riskd.seed runs this file in one transaction with
-- client-side parameter binding (psycopg ClientCursor), so it may hold several statements; for
-- the same reason the modulo operator is written mod() and no percent sign appears here.
--
-- Parameters: seed, accounts, positions, instruments.
--
-- Every value derives from hashtextextended(<tag> || row number, seed) and never from random():
-- the same seed gives the same rows on every run (and every server major, hash functions being
-- stable), another seed gives other rows. One 64-bit hash feeds several values through its
-- bit fields; "h & 9223372036854775807" clears the sign so that mod() stays non-negative.
--
-- Seeding replaces whatever the reference tables held.

-- One-shot bulk statements: compiling them (JIT) costs more than it saves.
SET LOCAL jit = off;

-- The rows are consistent by construction, so where the role may (a superuser: the test,
-- demo and benchmark clusters) the per-row foreign-key checks are skipped for this transaction:
-- they are about half the load time. Every other trigger is skipped with them, riskd's capture
-- triggers included; seeding replaces the data wholesale (TRUNCATE fires no row trigger
-- either), and riskd's sweep is what takes such a change in.
SELECT set_config('session_replication_role', 'replica', true)
WHERE (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user);

TRUNCATE public.positions, public.executions, public.trading_accounts, public.instruments
    RESTART IDENTITY;

-- Instruments: price 1.00 .. 1000.00, margin rate one of 0.02, 0.05, 0.1, 0.2.
INSERT INTO public.instruments (id, symbol, price, "marginRate")
SELECT 'ins-' || lpad(i::text, greatest(4, length(i::text)), '0'),
       'SYM' || lpad(i::text, greatest(4, length(i::text)), '0'),
       round((100 + mod(h & 9223372036854775807, 99901)) / 100.0, 2),
       (ARRAY[0.02, 0.05, 0.1, 0.2])[1 + mod((h >> 32) & 255, 4)]
FROM generate_series(1, %(instruments)s) AS i
CROSS JOIN LATERAL (SELECT hashtextextended('instrument:' || i, %(seed)s) AS h) AS r;

-- Positions, built once here because each account's balance is derived from them.
-- Account a0 (0-based) holds per_account positions, one more when a0 < remainder, numbered
-- consecutively; its instruments are consecutive from a hashed offset, so they are distinct
-- as long as no account holds more positions than there are instruments (riskd.seed checks).
-- Quantity: 1 .. 100, one in eight fractional (x.0001 .. x.9999), either sign. The average
-- price is within 5 in 100 of the price, and the unrealised PnL follows from both.
CREATE TEMP TABLE seed_positions AS
WITH shape AS (
    SELECT %(positions)s / %(accounts)s AS per_account,
           mod(%(positions)s, %(accounts)s) AS remainder
),
holders AS MATERIALIZED (  -- one row per account, so its hash is computed once
    SELECT a0 + 1 AS acc_no,
           a0 * shape.per_account + least(a0, shape.remainder) AS pos_before,
           shape.per_account + (a0 < shape.remainder)::int AS held,
           mod(hashtextextended('account:' || (a0 + 1), %(seed)s) & 9223372036854775807,
               %(instruments)s) AS ins_offset
    FROM shape
    CROSS JOIN generate_series(0, %(accounts)s - 1) AS a0
),
hashed AS (
    SELECT holders.pos_before + k + 1 AS pos_no,
           holders.acc_no,
           1 + mod(holders.ins_offset + k, %(instruments)s) AS ins_no,
           hashtextextended('position:' || (holders.pos_before + k + 1), %(seed)s) AS h
    FROM holders
    CROSS JOIN LATERAL generate_series(0, holders.held - 1) AS k
),
sized AS (
    SELECT h.pos_no, h.acc_no, h.ins_no, ins.price, ins.margin_rate,
           CASE WHEN (h.h >> 40) & 1 = 0 THEN 1 ELSE -1 END
           * CASE WHEN mod((h.h >> 16) & 255, 8) = 0
                  THEN round(1 + mod(h.h & 65535, 99)
                             + (1 + mod((h.h >> 24) & 65535, 9999)) / 10000.0, 4)
                  ELSE 1 + mod(h.h & 65535, 100)
             END AS quantity,
           round(ins.price * (1 + (mod((h.h >> 41) & 65535, 1001) - 500) / 10000.0), 2)
               AS avg_price,
           timestamptz '2025-01-01 00:00:00+00'
               + make_interval(secs => mod((h.h >> 20) & 16777215, 2592000)) AS updated_at
    FROM hashed AS h
    JOIN (SELECT substr(id, 5)::int AS ins_no, price, "marginRate" AS margin_rate
          FROM public.instruments) AS ins
      ON ins.ins_no = h.ins_no
)
SELECT pos_no, acc_no, ins_no, price, margin_rate, quantity, avg_price, updated_at,
       round(quantity * (price - avg_price), 2) AS pnl
FROM sized;

-- Accounts: the balance is chosen so that the account lands at a target utilisation,
-- used margin / (balance + sum of PnL): 3 in 100 accounts at 0.92 .. 1.30 (critical),
-- 4 in 100 at 0.81 .. 0.89 (warning), the rest at 0.05 .. 0.70. An account without
-- positions gets 1 000 .. 100 000 of idle cash.
INSERT INTO public.trading_accounts (id, "userId", balance)
SELECT 'acc-' || lpad(a::text, greatest(6, length(a::text)), '0'),
       'user-' || lpad(a::text, greatest(6, length(a::text)), '0'),
       CASE WHEN p.used_margin IS NULL THEN 1000 + mod(r.h & 9223372036854775807, 99001)
            ELSE round(p.used_margin / t.target - p.pnl, 2)
       END
FROM generate_series(1, %(accounts)s) AS a
CROSS JOIN LATERAL (SELECT hashtextextended('account:' || a, %(seed)s) AS h) AS r
CROSS JOIN LATERAL (
    SELECT CASE WHEN mod((r.h >> 32) & 65535, 100) < 3 THEN 0.92 + 0.38 * u
                WHEN mod((r.h >> 32) & 65535, 100) < 7 THEN 0.81 + 0.08 * u
                ELSE 0.05 + 0.65 * u
           END AS target
    FROM (SELECT ((r.h >> 48) & 32767) / 32767.0 AS u) AS fraction
) AS t
LEFT JOIN (
    SELECT acc_no, sum(abs(quantity) * price * margin_rate) AS used_margin, sum(pnl) AS pnl
    FROM seed_positions
    GROUP BY acc_no
) AS p ON p.acc_no = a;

INSERT INTO public.positions
    (id, "tradingAccountId", "instrumentId", quantity, "averagePrice", "unrealizedPnL", "updatedAt")
SELECT 'pos-' || lpad(pos_no::text, greatest(7, length(pos_no::text)), '0'),
       'acc-' || lpad(acc_no::text, greatest(6, length(acc_no::text)), '0'),
       'ins-' || lpad(ins_no::text, greatest(4, length(ins_no::text)), '0'),
       quantity, avg_price, pnl, updated_at
FROM seed_positions;

DROP TABLE seed_positions;

ANALYZE public.instruments, public.trading_accounts, public.positions;
