-- Removes what capture.sql installed on the platform's tables.
DROP TRIGGER IF EXISTS riskd_positions_insert ON {positions};
DROP TRIGGER IF EXISTS riskd_positions_update ON {positions};
DROP TRIGGER IF EXISTS riskd_positions_delete ON {positions};
DROP TRIGGER IF EXISTS riskd_account_balance ON {accounts};
DROP TRIGGER IF EXISTS riskd_instruments_update ON {instruments};
DROP FUNCTION IF EXISTS riskd.mark_positions_inserted();
DROP FUNCTION IF EXISTS riskd.mark_positions_updated();
DROP FUNCTION IF EXISTS riskd.mark_positions_deleted();
DROP FUNCTION IF EXISTS riskd.mark_account_balance();
DROP FUNCTION IF EXISTS riskd.mark_instrument_holders();
