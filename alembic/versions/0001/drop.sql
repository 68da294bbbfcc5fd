-- Removes riskd's own objects (what schema.sql, check.sql and sweep.sql created). The
-- triggers on the platform's tables go first, through capture_drop.sql.
DROP FUNCTION IF EXISTS riskd.sweep(numeric, numeric, numeric);
DROP FUNCTION IF EXISTS riskd.check_accounts(text[], text, numeric, numeric, numeric, text);
DROP FUNCTION IF EXISTS riskd.flatten(riskd.check_result[], numeric);
DROP TYPE IF EXISTS riskd.check_result;
DROP FUNCTION IF EXISTS riskd.utilization(bigint, numeric, numeric);
DROP FUNCTION IF EXISTS riskd.decide_level(bigint, numeric, numeric, numeric, numeric, numeric, text);
DROP TABLE IF EXISTS riskd.installation;
DROP SEQUENCE IF EXISTS riskd.wakeup;
DROP TABLE IF EXISTS riskd.dirty_accounts;
DROP TABLE IF EXISTS riskd.daemons;
DROP TABLE IF EXISTS riskd.account_limits;
DROP TABLE IF EXISTS riskd.close_requests;
DROP TABLE IF EXISTS riskd.risk_events;
DROP TABLE IF EXISTS riskd.account_state;
