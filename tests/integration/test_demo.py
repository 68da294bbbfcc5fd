"""``riskd demo`` as a user runs it: a subprocess, stdout not a terminal (plain progress lines).

The demo brings its own PostgreSQL, so these tests need no ``server`` fixture; they need the
embedded one (or Debian's), like the rest of the suite.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from daemonproc import wait_until

from riskd.sandbox.cluster import PgCluster, find_bindirs

CLUSTER_LINE = re.compile(r"^PostgreSQL (\d+) in (\S+), port \d+$", re.MULTILINE)
PROGRESS_LINE = re.compile(r"^\s*\d+\.\d s  accounts [\d,]+ ok, ", re.MULTILINE)
DASHBOARD_LINE = re.compile(r"^dashboard: http://127\.0\.0\.1:\d+/$", re.MULTILINE)
DSN_LINE = re.compile(r"^  DSN:\s+(\S+)$", re.MULTILINE)
FLATTENED_LINE = re.compile(
    r"^  flattened\s+([\d,]+) accounts by the market, ([\d,]+) in all", re.MULTILINE
)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RISKD_", "PG"))}
    env.pop("DATABASE_URL", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _demo(*args: str) -> list[str]:
    return [sys.executable, "-m", "riskd", "demo", *args]


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (the cluster's directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


@pytest.fixture
def kept_clusters() -> Iterator[list[tuple[int, Path]]]:
    """Clusters a --keep run left behind, stopped and removed whatever the test's outcome."""
    kept: list[tuple[int, Path]] = []
    yield kept
    for major, root in kept:
        if (root / "data" / "PG_VERSION").exists():
            PgCluster(find_bindirs()[major], root=root).cleanup()


def test_keep_leaves_a_database_with_real_events_and_flattened_accounts(
    kept_clusters: list[tuple[int, Path]],
) -> None:
    args = ("--duration", "4", "--accounts", "2000", "--positions", "20000", "--keep")
    result = subprocess.run(
        _demo(*args), capture_output=True, text=True, timeout=120, env=_env(), check=False
    )
    cluster = CLUSTER_LINE.search(result.stdout)
    if cluster:
        kept_clusters.append((int(cluster.group(1)), Path(cluster.group(2))))
    output = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, output
    assert cluster is not None, output
    assert len(PROGRESS_LINE.findall(result.stdout)) >= 3, output
    assert "Summary" in result.stdout, output
    assert DASHBOARD_LINE.search(result.stdout), output  # the dashboard beside the view
    assert "\x1b[" not in result.stdout, "no terminal, so no escape codes"
    dsn_line = DSN_LINE.search(result.stdout)
    assert dsn_line is not None, output
    flattened_line = FLATTENED_LINE.search(result.stdout)
    assert flattened_line is not None, output

    with psycopg.connect(dsn_line.group(1), autocommit=True, connect_timeout=10) as conn:

        def scalar(query: str) -> int:
            row = conn.execute(query).fetchone()  # type: ignore[arg-type]
            assert row is not None
            return int(row[0])

        # Accounts riskd had already checked at ok and that the market then pushed up.
        for level in ("warning", "critical"):
            pushed = scalar(
                "SELECT count(*) FROM riskd.risk_events WHERE from_level = 'ok'"
                f" AND to_level = '{level}' AND NOT (detail ->> 'first_check')::boolean"
            )
            assert pushed > 0, f"no account went ok -> {level} during the market\n{output}"
        # Flattened by the market: done close requests of accounts that went critical on a
        # later check than their first.
        by_market = scalar(
            """SELECT count(DISTINCT c.account_id) FROM riskd.close_requests AS c
               WHERE c.status = 'done' AND EXISTS (
                   SELECT FROM riskd.risk_events AS e
                   WHERE e.account_id = c.account_id AND e.to_level = 'critical'
                     AND NOT (e.detail ->> 'first_check')::boolean)"""
        )
        assert by_market > 0, output
        done_accounts = scalar(
            "SELECT count(DISTINCT account_id) FROM riskd.close_requests WHERE status = 'done'"
        )
        assert int(flattened_line.group(2).replace(",", "")) == done_accounts, output
        # What a close request says it closed is closed: the position is at zero.
        still_open = scalar(
            """SELECT count(*) FROM riskd.close_requests AS c,
                      jsonb_array_elements(c.detail -> 'closed') AS closed
               WHERE c.status = 'done' AND NOT EXISTS (
                   SELECT FROM public.positions AS p
                   WHERE p."tradingAccountId" = c.account_id
                     AND p."instrumentId" = closed ->> 'instrument' AND p.quantity = 0)"""
        )
        assert still_open == 0
        assert scalar("SELECT count(*) FROM riskd.close_requests WHERE status = 'done'") > 0
        # the kill switch: the book opened paused, the demo resumed it, both recorded
        kinds = conn.execute("SELECT kind FROM riskd.alerts ORDER BY id LIMIT 2").fetchall()
        assert [k for (k,) in kinds] == ["paused", "resumed"], output
    assert "  rails      kill switch: the book opened paused" in result.stdout, output
    assert "circuit breaker (" in result.stdout, output


@pytest.mark.parametrize(
    "stop", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: signal.Signals(s).name
)
def test_a_stop_signal_ends_cleanly_and_removes_the_cluster(stop: signal.Signals) -> None:
    """Ctrl-C, a `kill` and the terminal closing (SIGHUP) all end the demo with its summary,
    the server stopped and its directory removed."""
    args = ("--duration", "120", "--accounts", "500", "--positions", "5000")
    proc = subprocess.Popen(
        _demo(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
    )
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    root: Path | None = None
    try:

        def progressing() -> bool:
            assert proc.poll() is None, "".join(lines)
            return bool(PROGRESS_LINE.search("".join(lines)))

        wait_until(progressing, 60, "the first progress line")
        cluster = CLUSTER_LINE.search("".join(lines))
        assert cluster is not None
        root = Path(cluster.group(2))
        assert root.exists() and _processes_mentioning(str(root))
        proc.send_signal(stop)
        assert proc.wait(30) == 0, "".join(lines)
        reader.join(10)
        output = "".join(lines)
        said = "stopped by Ctrl-C" if stop == signal.SIGINT else f"stopped by {stop.name}"
        assert "Summary" in output and said in output, output
        assert not root.exists(), output
        assert _processes_mentioning(str(root)) == [], output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if root is not None and (root / "data" / "PG_VERSION").exists():
            major = int(CLUSTER_LINE.search("".join(lines)).group(1))  # type: ignore[union-attr]
            PgCluster(find_bindirs()[major], root=root).cleanup()
