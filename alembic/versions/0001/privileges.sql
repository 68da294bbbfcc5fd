-- riskd's functions are executable by the roles docs/grants.sql names, not by PUBLIC (which
-- PostgreSQL allows by default). The capture trigger functions need no EXECUTE grant: a
-- trigger's function is checked when the trigger is created, not each time it fires.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA riskd FROM PUBLIC;
