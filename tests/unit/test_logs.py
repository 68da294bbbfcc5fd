"""riskd.logs: one event, one line, in text and in JSON — whatever the message or the exception
holds — and psycopg.pool's duplicates of riskd's own retry lines left out."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime

import pytest

from riskd import logs

# What libpq says when the server is down, as psycopg.pool quotes it during an outage.
REFUSED = (
    'connection failed: connection to server at "127.0.0.1", port 5432 failed: '
    "Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?"
)


@pytest.fixture(params=["text", "json"])
def log_format(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def captured(log_format: str) -> Iterator[io.StringIO]:
    """Logging configured as `riskd run` does, into a buffer instead of stderr."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logs.configure("json" if log_format == "json" else "text")
    stream = io.StringIO()
    (handler,) = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    try:
        yield stream
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def records(stream: io.StringIO, log_format: str) -> list[str]:
    """The lines written; each must be one whole record."""
    lines = stream.getvalue().splitlines()
    for line in lines:
        if log_format == "json":
            json.loads(line)
        else:
            datetime.fromisoformat(" ".join(line.split(" ", 2)[:2]).replace(",", "."))
    return lines


def failing() -> None:
    try:
        raise OSError("the cause\nover two lines")
    except OSError as exc:
        raise RuntimeError("the failure") from exc


def test_every_record_is_one_line(captured: io.StringIO, log_format: str) -> None:
    log = logging.getLogger("riskd.test")
    log.warning("listener.lost", extra={"reason": REFUSED, "retry_in": 0.2})
    try:
        failing()
    except RuntimeError:
        log.exception("checker failed")
    log.info("account %s: ok -> critical", "forged\n2026-01-01 00:00:00,000 INFO fake: \x1b[2J")
    log.info("stack", stack_info=True)
    lines = records(captured, log_format)
    assert len(lines) == 4
    if log_format == "json":
        lost, failed, forged, _ = (json.loads(line) for line in lines)
        assert lost["event"] == "listener.lost" and lost["retry_in"] == 0.2
        assert lost["reason"] == REFUSED  # a field keeps its value: JSON escapes the break
        assert failed["exception"] == (
            "RuntimeError: the failure; from OSError: the cause over two lines"
        )
        assert [f.split(":")[0] for f in failed["traceback"]] == ["unit/test_logs.py"] * 2
        assert failed["traceback"][-1].endswith(" failing")
        assert forged["event"] == (
            "account forged 2026-01-01 00:00:00,000 INFO fake: \\x1b[2J: ok -> critical"
        )
    else:
        lost, failed, forged, _ = lines
        assert lost.endswith(
            "WARNING riskd.test: listener.lost reason="
            '"connection failed: connection to server at \\"127.0.0.1\\", port 5432 failed: '
            "Connection refused\\n\\tIs the server running on that host and accepting TCP/IP "
            'connections?" retry_in=0.2'
        )
        assert (
            "checker failed | exception RuntimeError: the failure; from OSError: the cause over "
            "two lines | traceback unit/test_logs.py:" in failed
        )
        assert failed.endswith(" failing")
        assert forged.endswith(
            ": account forged 2026-01-01 00:00:00,000 INFO fake: \\x1b[2J: ok -> critical"
        )


def test_pool_duplicates_of_riskds_retry_lines_are_left_out(
    captured: io.StringIO, log_format: str
) -> None:
    pool = logging.getLogger("psycopg.pool")
    pool.warning("error connecting in %r: %s", "riskd", REFUSED)
    pool.warning("discarding broken connection: %s", "<psycopg.AsyncConnection [BAD]>")
    pool.warning("discarding closed connection: %s", "<psycopg.AsyncConnection [BAD]>")
    pool.info("connection requested from %r", "riskd")  # psycopg logs warnings and up only
    pool.warning("reconnection attempt in pool %r failed after %s sec", "riskd", 300)
    lines = records(captured, log_format)
    assert (
        len(lines) == 1 and "reconnection attempt in pool 'riskd' failed after 300 sec" in lines[0]
    )
    logs.configure("text")  # configured again: one filter, not two
    assert logging.getLogger("psycopg.pool").filters.count(logs.drop_pool_duplicates) == 1


def test_one_line() -> None:
    assert logs.one_line("a\n\tb\r\nc\u2028d\n\n") == "a b c d"
    assert logs.one_line("tab\tkept, \x00 escaped") == "tab\tkept, \\x00 escaped"
    assert logs.one_line("é ü 💸") == "é ü 💸"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (3, "3"),
        (0.25, "0.25"),
        (True, "true"),
        (None, "null"),
        ("critical", "critical"),
        ("acc-1:x", "acc-1:x"),
        ("", '""'),
        ("two words", '"two words"'),
        ('say "x"', '"say \\"x\\""'),
        ("a=b", '"a=b"'),
        ("line\nbreak", '"line\\nbreak"'),
        (["a", 1], '["a", 1]'),
        ({"k": "v"}, '{"k": "v"}'),
    ],
)
def test_a_field_is_one_value_in_text(value: object, shown: str) -> None:
    assert logs.field_text(value) == shown


def test_text_renders_the_fields_after_the_event(captured: io.StringIO, log_format: str) -> None:
    logging.getLogger("riskd.test").info(
        "daemon.stopped", extra={"left": 3, "handed_back": True, "note": "a b"}
    )
    (line,) = records(captured, log_format)
    if log_format == "json":
        assert json.loads(line)["left"] == 3
    else:
        assert line.endswith('INFO riskd.test: daemon.stopped left=3 handed_back=true note="a b"')
