"""What ``riskd migrate --revision base`` asks before it drops riskd's records.

A removal drops every event, close request and account limit riskd holds, for good. The
:class:`Guard` that the CLI hands to riskd.migrate says how many, before anything is dropped,
and refuses the removal while a riskd instance is alive (a heartbeat as recent as those
``riskd status`` calls live) unless forced: an instance under which riskd vanishes stops (exit
2), and the platform waiting on its pending close requests loses them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy as sa

from riskd.errors import RiskdError
from riskd.sqlfiles import queries


class RemovalRefused(RiskdError):
    """A removal that would drop riskd's records while a riskd instance is alive."""

    exit_code = 1  # as every migration that does not happen (DESIGN §4: migrate exits 0 / 1)


@dataclass(frozen=True, slots=True)
class Records:
    """riskd's records, as a removal would drop them."""

    events: int
    close_requests: int
    pending_close_requests: int
    account_limits: int

    def __str__(self) -> str:
        return (
            f"{_count(self.events, 'risk event')}, "
            f"{_count(self.close_requests, 'close request')} "
            f"({self.pending_close_requests} pending) and "
            f"{_count(self.account_limits, 'account limit')}"
        )


@dataclass(frozen=True, slots=True)
class LiveInstance:
    """A riskd instance whose heartbeat is recent enough for ``riskd status`` to call it live."""

    instance: str
    host: str
    pid: int
    heartbeat_age: float

    def __str__(self) -> str:
        return (
            f"{self.instance} (host {self.host}, pid {self.pid}, heartbeat "
            f"{self.heartbeat_age:.1f} s ago)"
        )


@dataclass(slots=True)
class Guard:
    """What the CLI asks of a move that drops riskd's records.

    ``live_within``: a heartbeat at most this many seconds old is a live instance (the CLI
    passes riskd status's limit); ``say`` gets the line saying what is dropped, once, before
    anything is; ``force``: go on even with live instances (they stop, exit 2).
    """

    live_within: float
    say: Callable[[str], None]
    force: bool = False
    _said: set[str] = field(default_factory=set)

    def check(self, conn: sa.Connection, target: str) -> None:
        """Under the migration lock, before the move: say what it drops, or refuse it."""
        what = "removing riskd" if target == "base" else f"migrating down to {target}"
        records = _records(conn)
        live = _live_instances(conn, self.live_within)
        if live and not self.force:
            more = f" and {_count(len(live) - 1, 'more')}" if len(live) > 1 else ""
            raise RemovalRefused(
                f"migrate --revision {target}: refused: riskd instance {live[0]}{more} is "
                f"alive; {what} would drop {records}; stop every instance first, or add --force"
            )
        forced = (
            f" under {_count(len(live), 'live instance')} (--force: they stop, exit 2)"
            if live
            else ""
        )
        self._tell(f"{what}{forced}: dropping {records}")

    def _tell(self, line: str) -> None:
        if line not in self._said:  # an attempt retried after a lock timeout says it once
            self._said.add(line)
            self.say(line)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _records(conn: sa.Connection) -> Records:
    row = conn.exec_driver_sql(queries()["riskd_records"]).one()
    return Records(*(int(n) for n in row))


def _live_instances(conn: sa.Connection, within: float) -> list[LiveInstance]:
    rows = conn.exec_driver_sql(queries()["live_instances"], {"within": within})
    return [LiveInstance(str(i), str(h), int(p), float(a)) for i, h, p, a in rows]
