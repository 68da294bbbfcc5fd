"""``riskd run`` as a real subprocess, for the daemon and fault-injection tests.

Settings go in through RISKD_* variables; stderr (the log) goes to a file the test can read.
Every wait is a condition polled against a deadline, never a bare sleep.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


class DaemonProcess:
    def __init__(
        self,
        dsn: str,
        log_path: Path,
        *,
        extra_env: dict[str, str] | None = None,
        cwd: Path | None = None,
        **daemon: str,
    ) -> None:
        """``cwd``: run the riskd found there first (a released one, tests/release.py)."""
        self.dsn = dsn
        self.cwd = cwd
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RISKD_", "NOTIFY_"))}
        env.pop("WATCHDOG_USEC", None)
        env.pop("DATABASE_URL", None)
        env["RISKD_DSN"] = dsn
        config = log_path.with_suffix(".toml")
        config.write_text("# settings come from RISKD_* variables\n")
        env["RISKD_CONFIG"] = str(config)
        defaults = {"debounce": "200ms", "max_delay": "1s", "sweep_interval": "60s"}
        for key, value in (defaults | daemon).items():
            env[f"RISKD_DAEMON_{key.upper()}"] = value
        env.update(extra_env or {})
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "riskd", "run", "--verbose"],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.cwd,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def heartbeat(self) -> dict[str, Any] | None:
        """This instance's stats from riskd.daemons (None while there is no row)."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT stats FROM riskd.daemons WHERE pid = %s", (self.pid,)
            ).fetchone()
        return None if row is None else dict(row[0])

    def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        def running() -> dict[str, Any] | None:
            assert self.alive(), f"daemon exited early:\n{self.log()}"
            stats = self.heartbeat()
            return stats if stats and stats.get("state") == "running" else None

        return wait_until(running, timeout, "the daemon to be running")

    def wait_stats(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            stats = self.heartbeat()
            return stats if stats is not None and predicate(stats) else None

        return wait_until(check, timeout, what, interval=0.2)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait for the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if hasattr(self, "_log"):
            self._log.close()
