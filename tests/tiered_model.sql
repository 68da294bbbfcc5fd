-- The tiered maintenance-margin model the tests (tests/integration/test_model.py, the
-- differential test) and bench/rails.py give riskd as the platform's own: a position's margin
-- rate is its instrument's, times 1 under 5 000 of notional, 1.5 under 20 000, 2 above
-- (tests/model.py tiered_margin holds the same tiers); equity is the balance and the
-- unrealised PnL; only accounts with something open.
CREATE SCHEMA IF NOT EXISTS risk_model;
CREATE OR REPLACE FUNCTION risk_model.tiered(p_ids text[])
RETURNS TABLE (account_id text, equity numeric, used_margin numeric)
LANGUAGE sql STABLE AS $$
    SELECT a.id,
           COALESCE(a.balance, 0) + COALESCE(sum(p."unrealizedPnL"), 0),
           COALESCE(sum(abs(p.quantity) * i.price * i."marginRate"
                        * CASE WHEN abs(p.quantity) * i.price < 5000 THEN 1
                               WHEN abs(p.quantity) * i.price < 20000 THEN 1.5
                               ELSE 2 END), 0)
    FROM public.trading_accounts AS a
    JOIN public.positions AS p ON p."tradingAccountId" = a.id AND p.quantity <> 0
    LEFT JOIN public.instruments AS i ON i.id = p."instrumentId"
    WHERE a.id = ANY (p_ids)
    GROUP BY a.id, a.balance
$$;
