-- Back to revision 0008: no index on the accounts in trouble.
DROP INDEX riskd.account_state_trouble_idx;
