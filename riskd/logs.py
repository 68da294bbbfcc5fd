"""Logging for ``riskd run``: text by default, one JSON object per line with log_format = json.

One event, one line, in both formats: a message that spans lines (libpq's errors do, and so
do the psycopg.pool warnings that quote them) is flattened, and a traceback is folded into
the same line (text) or into fields (JSON), so that a log reader never takes the second half
of an event for another. Other control characters are escaped: an account id or a payload
quoted in a message cannot forge a line either.

Nothing riskd logs carries a DSN password (config.mask_dsn is applied where a DSN is logged).
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from datetime import UTC, datetime
from pathlib import PurePath
from types import TracebackType
from typing import Literal

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# psycopg.pool's warnings that repeat what riskd itself logs during an outage: each failed
# connection attempt of the pool ("error connecting in 'riskd': …", once per pooled
# connection per backoff step) and each connection it throws away ("discarding broken
# connection"); riskd's own lines say the same once per retry (``<what>.retry``, with the
# reason and ``retry_in``). The pool's other warnings (it gave up reconnecting, a task of its
# own failed) still show.
POOL_DUPLICATES = ("error connecting in ", "discarding broken connection", "discarding closed")


def one_line(text: str) -> str:
    """``text`` on one line: each line break, with the indentation around it, becomes one
    space; any other control character but a tab is escaped (``\\x1b``)."""
    parts = [part.strip() for part in text.splitlines()]
    flat = " ".join(part for part in parts if part)
    if flat.isprintable():
        return flat
    return "".join(
        c if c.isprintable() or c == "\t" else c.encode("unicode_escape").decode() for c in flat
    )


def _describe(exc: BaseException) -> str:
    """``Type: message``, the message on one line (``format_exception_only`` adds notes)."""
    return one_line("".join(traceback.format_exception_only(type(exc), exc)))


def exception_summary(exc: BaseException) -> str:
    """The exception and its causes, outermost first: ``A: x; from B: y``."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(parts) < 5:
        seen.add(id(current))
        parts.append(_describe(current))
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    return "; from ".join(parts)


def _where(filename: str) -> str:
    """A frame's file as ``package/module.py``: enough to find it, short enough to read."""
    return "/".join(PurePath(filename).parts[-2:])


def frames(tb: TracebackType | None) -> list[str]:
    """The traceback's frames, outermost first, each ``package/module.py:line function``."""
    return [f"{_where(f.filename)}:{f.lineno} {f.name}" for f in traceback.extract_tb(tb)]


def _exc_info(record: logging.LogRecord) -> tuple[BaseException, TracebackType | None] | None:
    """The record's exception and its traceback, if it carries one."""
    if not record.exc_info or record.exc_info[1] is None:
        return None
    return record.exc_info[1], record.exc_info[2]


def fields(record: logging.LogRecord) -> dict[str, object]:
    """What a record carries beside its message: the ``extra=`` fields."""
    return {k: v for k, v in vars(record).items() if k not in _RESERVED}


def _bare(value: str) -> bool:
    return bool(value) and value.isprintable() and not any(c in value for c in ' "=\\')


def field_text(value: object) -> str:
    """A field's value as ``key=value`` shows it: numbers and plain words as they are, any
    other text quoted as JSON (so a reason with spaces or quotes stays one value), other
    values as JSON."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return value if _bare(value) else json.dumps(value, ensure_ascii=False)
    return json.dumps(value, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: event key=value …``, and when there is an exception
    `` | exception A: x; from B: y | traceback a/b.py:1 f > c/d.py:2 g``, on one line."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.getMessage())
        record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        extra = fields(record)
        if extra:
            line = one_line(line + "".join(f" {k}={field_text(v)}" for k, v in extra.items()))
        info = _exc_info(record)
        if info is not None:
            exc, tb = info
            line += f" | exception {exception_summary(exc)}"
            if tb is not None:
                line += f" | traceback {' > '.join(frames(tb))}"
        if record.stack_info:
            line += f" | stack {one_line(record.stack_info)}"
        return line


class JsonFormatter(logging.Formatter):
    """timestamp, level, logger, event (the message) and any ``extra=`` fields; with an
    exception, ``exception`` (``A: x; from B: y``) and ``traceback`` (its frames, a list)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": one_line(record.getMessage()),
        }
        out.update(fields(record))
        info = _exc_info(record)
        if info is not None:
            exc, tb = info
            out["exception"] = exception_summary(exc)
            out["traceback"] = frames(tb)
        if record.stack_info:
            out["stack"] = one_line(record.stack_info)
        # json.dumps escapes every control character: a JSON record is always one line
        return json.dumps(out, default=str)


def drop_pool_duplicates(record: logging.LogRecord) -> bool:
    """The filter on psycopg.pool: False for the warnings POOL_DUPLICATES names."""
    return not (isinstance(record.msg, str) and record.msg.startswith(POOL_DUPLICATES))


def formatter(log_format: Literal["text", "json"]) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure(log_format: Literal["text", "json"], level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("psycopg").setLevel(logging.WARNING)
    # httpx logs every request at INFO: the delivery task's own delivery.* events say it once
    logging.getLogger("httpx").setLevel(logging.WARNING)
    pool = logging.getLogger("psycopg.pool")
    if drop_pool_duplicates not in pool.filters:
        pool.addFilter(drop_pool_duplicates)
