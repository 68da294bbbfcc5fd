"""Standard output whose reader may go away: ``riskd status | head -1``.

Python ignores SIGPIPE, so a write to a pipe nobody reads any more raises BrokenPipeError, and
click ends the command with exit 1 — a healthy ``riskd status | head -1`` under ``set -o
pipefail`` would fail. Instead, the first write that finds the reader gone points standard
output at /dev/null (the Python documentation's recipe, so that nothing raises again, not even
the flush at exit) and the command goes on to the end it would have had: ``status`` still
exits 1 when unhealthy and 0 when healthy, a sweep finishes its batches. Only ``events
--follow`` has no end of its own: it stops when it sees :func:`reader_gone`, as ``tail -f``
dies on SIGPIPE.
"""

from __future__ import annotations

import io
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

_gone = False


def reader_gone() -> bool:
    """True once a write to standard output found its reader gone."""
    return _gone


def _to_devnull(fd: int) -> None:
    global _gone
    _gone = True
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


class _Stdout(io.BufferedIOBase):
    """File descriptor 1, buffered: a write or a flush that finds the reader gone sends what
    is held, and every write after it, to /dev/null.

    The guard sits above the C buffer, not below it: a KeyboardInterrupt raised in Python code
    between a write that went out and the buffer hearing of it would make the buffer send the
    same bytes again (a line printed twice as Ctrl-C ends ``--follow``).
    """

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._out = io.BufferedWriter(io.FileIO(fd, "wb", closefd=False))

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._out.fileno()

    def isatty(self) -> bool:
        return self._out.isatty()

    def write(self, data: ReadableBuffer, /) -> int:
        try:
            return self._out.write(data)
        except BrokenPipeError:
            self._reader_gone()
            return memoryview(data).nbytes

    def flush(self) -> None:
        try:
            self._out.flush()
        except BrokenPipeError:
            self._reader_gone()

    def _reader_gone(self) -> None:
        _to_devnull(self._out.fileno())
        self._out.flush()  # what it still holds goes to /dev/null


def guard_stdout() -> None:
    """Make ``sys.stdout`` survive its reader (idempotent). Only the process's own standard
    output is replaced: a stream a test harness put there (click's CliRunner, pytest's
    capture) is left alone."""
    out = sys.stdout
    if out is None or out is not sys.__stdout__ or not isinstance(out, io.TextIOWrapper):
        return
    try:
        fd = out.fileno()
    except (OSError, ValueError):
        return
    try:
        out.flush()
    except BrokenPipeError:
        _to_devnull(fd)
    sys.stdout = io.TextIOWrapper(
        _Stdout(fd),
        encoding=out.encoding,
        errors=out.errors,
        line_buffering=out.line_buffering,
    )
