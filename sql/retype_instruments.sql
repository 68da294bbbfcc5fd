-- `riskd migrate` with a mapping whose instrument id has another type than riskd's table of
-- instrument marks holds (the platform moved to another key column): run after unmap.sql, which
-- took off the function reading the marks. The marks not yet fanned out cannot be matched to
-- the new ids, so they become a sweep request (no change is lost), and the column takes the
-- new type.
INSERT INTO riskd.sweep_requests (reason)
SELECT 'riskd migrate: the instrument id changed type' FROM riskd.dirty_instruments LIMIT 1;
DELETE FROM riskd.dirty_instruments;
ALTER TABLE riskd.dirty_instruments
    ALTER COLUMN instrument_id TYPE {instrument_id_type} USING NULL;
