-- Back to revision 0008: no index on the accounts in trouble, nor on the requests by account.
DROP INDEX riskd.close_requests_account_idx;
DROP INDEX riskd.account_state_trouble_idx;
