-- riskd 0.2.0, revision 0009: the accounts in trouble, found without reading every account
-- (issue 15, the dashboard). A partial index on the level of the accounts over a threshold:
-- the dashboard lists and counts them through it at every refresh. Its key and its predicate
-- change only with the level, which changes only at a transition (a check that writes an event
-- anyway), so every other rewrite of an account's figures stays a HOT update. An index on the
-- utilisation would make every one of them a non-HOT update, which the check pays in time and
-- in WAL (measured: docs/benchmarks.md, "State index").
-- An account's page lists its close requests newest first: by an index on (account_id, id),
-- not a read of every request (only the pending ones had an index by account).
-- (sql/schema.sql at this revision.)
CREATE INDEX account_state_trouble_idx ON riskd.account_state (level) WHERE level <> 'ok';
CREATE INDEX close_requests_account_idx ON riskd.close_requests (account_id, id);
