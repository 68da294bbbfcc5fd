"""``riskd … | head -1``: a command whose reader has gone ends quietly, with the exit code it
would have had (riskd.pipes), and ``events --follow`` ends as ``tail -f`` does.

The reader is made to go before riskd writes (the read end of the pipe closed first), so
that every write finds it gone, whatever the timing; one test goes through a real ``| head
-1`` with more output than a pipe holds."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import Db
from test_daemon import Start, start

__all__ = ["start"]  # the fixture, shared with test_daemon


def riskd_env(db: Db) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKD_")}
    env.update(RISKD_DSN=db.dsn, RISKD_CONFIG="", DATABASE_URL="")
    return env


def reader_gone(db: Db, *args: str) -> subprocess.CompletedProcess[str]:
    """riskd ARGS writing into a pipe whose reader has already gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "riskd", *args],
            env=riskd_env(db),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)


def test_status_exits_as_it_would_have_when_its_reader_has_gone(db: Db, start: Start) -> None:
    gone = reader_gone(db, "status", "--json")
    assert (gone.returncode, gone.stderr) == (1, "")  # no live daemon: unhealthy, as ever
    daemon = start()
    daemon.wait_ready()
    gone = reader_gone(db, "status")
    assert (gone.returncode, gone.stderr) == (0, "")  # healthy: 0, not click's 1 for EPIPE
    assert daemon.stop() == 0


def test_events_end_quietly_when_their_reader_has_gone(db: Db) -> None:
    db.conn.execute(
        "INSERT INTO riskd.risk_events (account_id, user_id, from_level, to_level,"
        " utilization, equity, used_margin, detail, instance)"
        " SELECT 'a' || i, 'u', 'ok', 'warning', 0.85, 1000, 850, '{}', 'test'"
        " FROM generate_series(1, 3000) AS i"
    )
    gone = reader_gone(db, "events", "--follow")  # would follow for ever: ends, as tail -f
    assert (gone.returncode, gone.stderr) == (0, "")
    # through a real head, under pipefail: 3000 lines, far more than a pipe holds
    head = subprocess.run(
        [
            "bash",
            "-c",
            'set -o pipefail; "$0" -m riskd events --json --limit 3000 | head -1',
            sys.executable,
        ],
        env=riskd_env(db),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (head.returncode, head.stderr, len(head.stdout.splitlines())) == (0, "", 1)
