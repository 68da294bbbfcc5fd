"""Prometheus metrics and a health probe for ``riskd run`` (``[daemon] metrics_port``).

Counters and gauges are read from the daemon's own stats at scrape time (one source of truth
with the heartbeat row); the histograms are observed where the work happens. The endpoint is
a small asyncio HTTP server inside the daemon's loop, so a scrape can never outlive a stuck
thread, and it listens on ``metrics_host`` (127.0.0.1 unless configured otherwise):

* ``GET /metrics``: the Prometheus text format;
* ``GET /healthz``: 200 ``ok`` while the loop and the listener are healthy, else 503 with the
  reason — for a load balancer or a Kubernetes probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from riskd.errors import ConfigError
from riskd.levels import LEVELS

if TYPE_CHECKING:
    from riskd.daemon.stats import Stats

log = logging.getLogger("riskd.metrics")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
SWEEP_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

# stats field -> (metric name, help) for the counters
_COUNTERS = {
    "notifications": ("riskd_notifications", "Wake-up notifications received on riskd_changes."),
    "drained_accounts": ("riskd_drained_accounts", "Accounts taken from the dirty set."),
    "checks": ("riskd_checks", "Accounts checked."),
    "check_batches": ("riskd_check_batches", "Check batches (one transaction each)."),
    "close_requests": ("riskd_close_requests", "Close requests made (or flattenings done)."),
    "sweeps": ("riskd_sweeps", "Full sweeps completed by this instance."),
    "reconnects": ("riskd_reconnects", "Listener reconnections."),
    "errors": ("riskd_errors", "Errors ridden out (connection losses, failed checks, ...)."),
    "malformed_payloads": (
        "riskd_malformed_payloads",
        "Notifications on riskd_changes that were not riskd's, counted and dropped.",
    ),
}


class _StatsCollector(Collector):
    def __init__(self, stats: Callable[[], Stats], healthy: Callable[[], bool]) -> None:
        self._stats = stats
        self._healthy = healthy

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        for field, (name, help_text) in _COUNTERS.items():
            counter = CounterMetricFamily(name, help_text)
            counter.add_metric([], float(getattr(s, field)))
            yield counter
        deliveries = CounterMetricFamily(
            "riskd_webhook_deliveries",
            "Webhook attempts by outcome: delivered, retry (waits for the next step), failed "
            "(the dead letter, or the endpoint gone).",
            labels=["outcome"],
        )
        for outcome, field in (
            ("delivered", "deliveries"),
            ("retry", "delivery_retries"),
            ("failed", "delivery_failures"),
        ):
            deliveries.add_metric([outcome], float(getattr(s, field)))
        yield deliveries
        events = CounterMetricFamily(
            "riskd_events", "Level transitions recorded, by new level.", labels=["level"]
        )
        for level in LEVELS:
            events.add_metric([level], float(s.events_by_level.get(level, 0)))
        yield events
        for name, help_text, value in (
            ("riskd_debouncer_accounts", "Dirty accounts waiting for their check.", s.dirty),
            ("riskd_lag_seconds", "Age of the oldest unchecked change.", s.lag),
            ("riskd_sweep_leader", "1 on the instance that sweeps.", float(s.leader)),
            (
                "riskd_webhook_backlog",
                "Webhook deliveries pending in the outbox (every instance's).",
                s.delivery_backlog,
            ),
            ("riskd_healthy", "1 while the loop and the listener are healthy.", self._healthy()),
        ):
            gauge = GaugeMetricFamily(name, help_text)
            gauge.add_metric([], float(value))
            yield gauge


class Metrics:
    """The daemon's metrics; observe_* are cheap and safe to call when the endpoint is off."""

    def __init__(self, stats: Callable[[], Stats], healthy: Callable[[], bool]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StatsCollector(stats, healthy))
        self.check_batch = Histogram(
            "riskd_check_batch_seconds",
            "Time of one check batch (one round trip, one transaction).",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.latency = Histogram(
            "riskd_change_to_check_seconds",
            "From a change's transaction to the end of its account's check.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.delivery = Histogram(
            "riskd_webhook_delivery_seconds",
            "One webhook attempt: the POST and the endpoint's answer (or its timeout).",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.sweep = Histogram(
            "riskd_sweep_seconds",
            "Duration of a full sweep.",
            buckets=SWEEP_BUCKETS,
            registry=self.registry,
        )
        self._healthy = healthy
        self._server: asyncio.Server | None = None

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def serve(self, host: str, port: int) -> None:
        try:
            self._server = await asyncio.start_server(self._handle, host, port)
        except OSError as exc:
            raise ConfigError(
                f"[daemon] metrics_port: cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from exc
        log.info("metrics.listening", extra={"url": f"http://{host}:{port}/metrics"})

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5.0)
            while (await asyncio.wait_for(reader.readline(), 5.0)) not in (b"\r\n", b"\n", b""):
                pass  # headers: nothing we need
            parts = request.decode("latin-1").split()
            method, path = (parts[0], parts[1]) if len(parts) >= 2 else ("", "")
            path = path.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            elif path == "/metrics":
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, self.render()
            elif path == "/healthz":
                ok = self._healthy()
                status = "200 OK" if ok else "503 Service Unavailable"
                ctype, body = "text/plain", b"ok\n" if ok else b"unhealthy: listener down\n"
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"/metrics or /healthz\n"
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode("latin-1")
            writer.write(head if method == "HEAD" else head + body)
            await asyncio.wait_for(writer.drain(), 5.0)
        except (
            TimeoutError,
            ConnectionError,
            UnicodeDecodeError,
            ValueError,
        ):  # ValueError: a line over the reader's limit
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
