-- The SQL of ``riskd demo``: the market simulator (riskd.simulator) and the demo's own set-up,
-- feed, sampling and summary (riskd.demo). Loaded by riskd.sqlfiles.query(name,
-- file="simulator.sql"). Parameters: %(name)s. Table and column names are those of the
-- reference schema (reference_schema.sql, seed.sql); the demo always runs on it.

-- name: market_instruments
SELECT id FROM public.instruments ORDER BY id

-- name: market_accounts
SELECT id FROM public.trading_accounts ORDER BY id

-- name: market_open_positions
SELECT count(*) FROM public.positions WHERE quantity <> 0

-- name: mark_to_market
-- Move the prices of some instruments and mark the positions in them to market (the
-- unrealised PnL follows the price), in one statement: (instruments moved, positions marked).
WITH moves AS (
    SELECT m.id, m.step FROM unnest(%(ids)s::text[], %(steps)s::numeric[]) AS m (id, step)
), priced AS (
    UPDATE public.instruments AS i
    SET price = greatest(0.01, round(i.price * (1 + moves.step), 2))
    FROM moves WHERE i.id = moves.id
    RETURNING i.id, i.price
), marked AS (
    UPDATE public.positions AS p
    SET "unrealizedPnL" = round(p.quantity * (priced.price - p."averagePrice"), 2)
    FROM priced WHERE p."instrumentId" = priced.id AND p.quantity <> 0
    RETURNING 1
)
SELECT (SELECT count(*) FROM priced), (SELECT count(*) FROM marked)

-- name: fill
-- A fill on one open position per order (chosen by pick), sized so that the margin it adds
-- (removes, when size < 0; never more than the position) is size times the equity; booked in
-- executions, a reduction realising its part of the PnL into the balance: (added, reduced).
WITH orders AS (
    SELECT o.account_id, o.size, o.pick
    FROM unnest(%(accounts)s::text[], %(sizes)s::numeric[], %(picks)s::float8[])
        AS o (account_id, size, pick)
), book AS (
    SELECT p.id, p."tradingAccountId" AS account_id, p."instrumentId" AS instrument,
           p.quantity, p."averagePrice" AS avg_price, i.price, i."marginRate" AS margin_rate,
           row_number() OVER account - 1 AS n,
           count(*) OVER account AS held,
           sum(COALESCE(p."unrealizedPnL", 0)) OVER account AS account_pnl
    FROM public.positions AS p
    JOIN public.instruments AS i ON i.id = p."instrumentId"
    WHERE p."tradingAccountId" IN (SELECT account_id FROM orders) AND p.quantity <> 0
    WINDOW account AS (PARTITION BY p."tradingAccountId" ORDER BY p.id
                       ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
), sized AS (
    SELECT b.*, sign(b.quantity) * greatest(
               round(o.size * (a.balance + b.account_pnl) / (b.price * b.margin_rate), 4),
               -abs(b.quantity)) AS delta
    FROM book AS b
    JOIN orders AS o ON o.account_id = b.account_id AND b.n = floor(o.pick * b.held)
    JOIN public.trading_accounts AS a ON a.id = b.account_id
    WHERE a.balance + b.account_pnl > 0 AND b.price > 0 AND b.margin_rate > 0
), fills AS (
    SELECT s.*,
           CASE WHEN abs(s.quantity + s.delta) > abs(s.quantity)
                THEN round((s.quantity * s.avg_price + s.delta * s.price)
                           / (s.quantity + s.delta), 2)
                ELSE s.avg_price END AS new_avg,
           CASE WHEN abs(s.quantity + s.delta) > abs(s.quantity) THEN 0
                ELSE round(-s.delta * (s.price - s.avg_price), 2) END AS realised
    FROM sized AS s WHERE s.delta <> 0
), moved AS (
    UPDATE public.positions AS p
    SET quantity = p.quantity + f.delta, "averagePrice" = f.new_avg,
        "unrealizedPnL" = round((p.quantity + f.delta) * (f.price - f.new_avg), 2),
        "updatedAt" = now()
    -- a position changed since it was read (riskd flattened it meanwhile): the order is void
    FROM fills AS f WHERE p.id = f.id AND p.quantity = f.quantity
    RETURNING f.account_id, f.instrument, f.delta, f.price, f.realised, f.quantity
), booked AS (
    INSERT INTO public.executions ("tradingAccountId", "instrumentId", quantity, price)
    SELECT account_id, instrument, delta, price FROM moved
), settled AS (
    UPDATE public.trading_accounts AS a SET balance = a.balance + m.realised
    FROM moved AS m WHERE a.id = m.account_id AND m.realised <> 0
)
SELECT count(*) FILTER (WHERE sign(delta) = sign(quantity)),
       count(*) FILTER (WHERE sign(delta) <> sign(quantity))
FROM moved

-- name: open
-- A new position in an instrument the account does not hold open, sized like a fill.
WITH orders AS (
    SELECT o.position_id, o.account_id, o.instrument, o.size, o.side
    FROM unnest(%(ids)s::text[], %(accounts)s::text[], %(instruments)s::text[],
                %(sizes)s::numeric[], %(sides)s::int[])
        AS o (position_id, account_id, instrument, size, side)
), sized AS (
    SELECT o.position_id, o.account_id, o.instrument, i.price,
           o.side * round(o.size * e.equity / (i.price * i."marginRate"), 4) AS quantity
    FROM orders AS o
    JOIN public.instruments AS i ON i.id = o.instrument
    CROSS JOIN LATERAL (
        SELECT a.balance + COALESCE((
                   SELECT sum(p."unrealizedPnL") FROM public.positions AS p
                   WHERE p."tradingAccountId" = a.id AND p.quantity <> 0), 0) AS equity
        FROM public.trading_accounts AS a WHERE a.id = o.account_id
    ) AS e
    WHERE e.equity > 0 AND i.price > 0 AND i."marginRate" > 0
      AND NOT EXISTS (
          SELECT 1 FROM public.positions AS p
          WHERE p."tradingAccountId" = o.account_id AND p."instrumentId" = o.instrument
            AND p.quantity <> 0)
), opened AS (
    INSERT INTO public.positions
        (id, "tradingAccountId", "instrumentId", quantity, "averagePrice", "unrealizedPnL")
    SELECT position_id, account_id, instrument, quantity, price, 0
    FROM sized WHERE quantity <> 0
    RETURNING "tradingAccountId", "instrumentId", quantity, "averagePrice"
), booked AS (
    INSERT INTO public.executions ("tradingAccountId", "instrumentId", quantity, price)
    SELECT * FROM opened
)
SELECT count(*) FROM opened

-- name: create_database
-- The name is filled in by psycopg.sql as a quoted identifier, never pasted.
CREATE DATABASE {database}

-- name: dirty_accounts_exist
SELECT EXISTS (SELECT FROM riskd.dirty_accounts)

-- name: first_sweep_events
-- What the first sweep found, by level; every later event is the market's doing.
SELECT to_level, count(*), max(id) FROM riskd.risk_events GROUP BY to_level

-- name: next_close_request
SELECT COALESCE(max(id), 0) + 1 FROM riskd.close_requests

-- name: listen_events
LISTEN riskd_events

-- name: flattened_accounts
SELECT count(DISTINCT account_id) FROM riskd.close_requests WHERE status = 'done'

-- name: latest_flattened
-- The latest close requests done since the market opened (from_id), newest first.
SELECT account_id::text, jsonb_array_length(detail -> 'closed'),
       detail ->> 'realised_pnl', detail ->> 'equity',
       detail ->> 'used_margin_before', detail ->> 'used_margin_after'
FROM riskd.close_requests WHERE status = 'done' AND id >= %(from_id)s
ORDER BY id DESC LIMIT 20

-- name: summary_events
SELECT to_level, count(*) FROM riskd.risk_events WHERE id >= %(from_id)s GROUP BY to_level

-- name: summary_close_requests
-- Close requests done: all, their accounts, the accounts flattened since the market opened
-- (from_id), positions closed and realised PnL.
SELECT count(*), count(DISTINCT account_id),
       count(DISTINCT account_id) FILTER (WHERE id >= %(from_id)s),
       COALESCE(sum(jsonb_array_length(detail -> 'closed')), 0),
       COALESCE(sum((detail ->> 'realised_pnl')::numeric), 0)
FROM riskd.close_requests WHERE status = 'done'

-- name: critical_accounts
-- The accounts the first sweep (paused) found critical: the seeded book's breaches.
SELECT count(*) FROM riskd.account_state WHERE level = 'critical'

-- name: demo_alerts
-- The safety rails' latest alerts, newest first (the view's banner and lines).
SELECT id, kind, detail FROM riskd.alerts ORDER BY id DESC LIMIT 5

-- name: summary_rails
-- The safety rails at the end: paused now, the breaker's trips (the first one's detail), and
-- the accounts left critical.
SELECT (SELECT paused FROM riskd.controls),
       (SELECT count(*) FROM riskd.alerts WHERE kind = 'circuit_open'),
       (SELECT detail FROM riskd.alerts WHERE kind = 'circuit_open' ORDER BY id LIMIT 1),
       (SELECT count(*) FROM riskd.account_state WHERE level = 'critical')
