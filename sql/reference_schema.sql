-- The reference trading schema (DESIGN §4): what the demo, the tests and the benchmarks run on.
-- riskd itself never creates these tables on a real platform; they stand for the platform's own.

CREATE TABLE IF NOT EXISTS public.trading_accounts (
    id        text PRIMARY KEY,
    "userId"  text NOT NULL,
    balance   numeric NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS public.instruments (
    id           text PRIMARY KEY,
    symbol       text NOT NULL,
    price        numeric,
    "marginRate" numeric
);

CREATE TABLE IF NOT EXISTS public.positions (
    id                 text PRIMARY KEY,
    "tradingAccountId" text NOT NULL REFERENCES public.trading_accounts (id),
    "instrumentId"     text NOT NULL REFERENCES public.instruments (id),
    quantity           numeric NOT NULL DEFAULT 0,
    "averagePrice"     numeric,
    "unrealizedPnL"    numeric,
    "updatedAt"        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS positions_account_idx ON public.positions ("tradingAccountId");
CREATE INDEX IF NOT EXISTS positions_instrument_idx ON public.positions ("instrumentId");

-- Executions are part of a fill transaction in the benchmarks; riskd does not watch them.
CREATE TABLE IF NOT EXISTS public.executions (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    "tradingAccountId" text NOT NULL,
    "instrumentId"     text NOT NULL,
    quantity           numeric NOT NULL,
    price              numeric NOT NULL,
    "executedAt"       timestamptz NOT NULL DEFAULT now()
);
