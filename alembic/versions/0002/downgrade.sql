-- Back to revision 0001: no version fence.
DROP TRIGGER IF EXISTS riskd_version_fence ON riskd.daemons;
DROP FUNCTION IF EXISTS riskd.fence_heartbeat();
