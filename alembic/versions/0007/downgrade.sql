-- Back to revision 0006: no webhook outbox.
DROP TRIGGER risk_events_outbox ON riskd.risk_events;
DROP FUNCTION riskd.enqueue_event_deliveries();
DROP TABLE riskd.deliveries;
