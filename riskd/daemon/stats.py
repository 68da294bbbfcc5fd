"""The heartbeat row's contract (``riskd.daemons.stats``): the counters every part of the daemon
keeps, which ``riskd status``, the metrics and the demo read. Light on purpose: ``riskd status``
imports it without loading the daemon."""

from __future__ import annotations

from dataclasses import dataclass, field

HEARTBEAT_INTERVAL = 2.0  # seconds between heartbeats
STALE_ROW_TTL = 300.0  # a dead instance's heartbeat row stays visible (stale) this long


@dataclass(slots=True)
class Stats:
    """The counters the heartbeat row carries (riskd.daemons.stats)."""

    notifications: int = 0
    pings: int = 0
    drains: int = 0
    drained_accounts: int = 0
    checks: int = 0
    check_batches: int = 0
    events: int = 0
    close_requests: int = 0
    deliveries: int = 0  # webhook deliveries made (2xx)
    delivery_retries: int = 0  # webhook attempts that failed and wait for the next step
    delivery_failures: int = 0  # webhook deliveries given up (the dead letter, or 410)
    delivery_backlog: int = 0  # the outbox's pending deliveries, as of the last idle pass
    errors: int = 0
    malformed_payloads: int = 0
    reconnects: int = 0
    sweeps: int = 0
    leader: bool = False
    last_sweep_at: str | None = None
    last_sweep_duration: float | None = None
    lag: float = 0.0
    dirty: int = 0
    last_check_latency: float | None = None
    state: str = "starting"
    # the revision this daemon runs: the version fence (sql/fence.sql) refuses the heartbeat
    # once the database holds another
    schema_revision: str = ""
    capture_problems: list[str] = field(default_factory=list)  # I8, riskd/capture.py
    events_by_level: dict[str, int] = field(default_factory=dict)
    # warning, auto-close, hysteresis, auto_close mode: `riskd status` compares instances
    risk: dict[str, str] = field(default_factory=dict)
    # the kill switch as the last heartbeat read it (riskd.controls): who paused, and why
    paused: bool = False
    paused_by: str | None = None
    paused_reason: str | None = None
