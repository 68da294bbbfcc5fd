"""`riskd systemd`: the systemd units and environment file, printed from the package.

The wheel carries ``systemd/`` inside the package (``riskd/systemd``, see pyproject.toml), so
an installed riskd prints the units of its own release and no checkout is needed. Printing,
not installing: the operator reviews the text and puts it where it goes (``> file``), as with
``riskd migrate --sql`` and ``riskd grants``. The environment file is the one piece that
differs from site to site: it is printed with the DSN riskd is configured with.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from riskd.config import Settings, mask_dsn
from riskd.db import require_dsn
from riskd.errors import ConfigError
from riskd.resources import resource_dir


@dataclass(frozen=True, slots=True)
class Unit:
    name: str  # what `riskd systemd NAME` takes
    source: str  # the file under systemd/
    path: str  # where it is installed
    does: str


UNITS = (
    Unit("riskd.service", "riskd.service", "/etc/systemd/system/riskd.service", "the daemon"),
    Unit(
        "riskd-sweep.service",
        "riskd-sweep.service",
        "/etc/systemd/system/riskd-sweep.service",
        "one sweep and exit (the fallback where no daemon may run)",
    ),
    Unit(
        "riskd-sweep.timer",
        "riskd-sweep.timer",
        "/etc/systemd/system/riskd-sweep.timer",
        "starts riskd-sweep.service every minute",
    ),
    Unit(
        "riskd.env",
        "riskd.env.example",
        "/etc/riskd/riskd.env",
        "the units' environment, with this DSN (mode 0600)",
    ),
)
NAMES = tuple(u.name for u in UNITS)

# The one active RISKD_DSN= line of riskd.env.example, and its PGPASSFILE= line (commented).
_DSN_LINE = re.compile(r"^RISKD_DSN=.*$", re.MULTILINE)
_PGPASSFILE_LINE = re.compile(r"^#PGPASSFILE=.*$", re.MULTILINE)
# Characters an EnvironmentFile= value would not keep as they are (quotes and backslashes are
# parsed, $ is expanded, a newline ends the value) or would trim (surrounding whitespace).
_UNSAFE = re.compile(r"""['"\\$\n\r]|^\s|\s$""")


def listing() -> str:
    """What `riskd systemd` prints without a name: each file, where it goes, what it does."""
    width = max(len(u.name) for u in UNITS)
    path_width = max(len(u.path) for u in UNITS)
    return "\n".join(f"{u.name:{width}}  {u.path:{path_width}}  {u.does}" for u in UNITS) + "\n"


def text(name: str) -> str:
    """The file ``name`` (one of NAMES) as the package carries it."""
    unit = next(u for u in UNITS if u.name == name)
    return (resource_dir("systemd") / unit.source).read_text(encoding="utf-8")


def _value(what: str, value: str) -> str:
    if _UNSAFE.search(value):
        raise ConfigError(
            f"riskd.env: {what} holds a quote, a backslash, a $, a line break or surrounding "
            "blanks, which an EnvironmentFile= would change"
        )
    return value


def _set(pattern: re.Pattern[str], line: str, content: str) -> str:
    content, n = pattern.subn(lambda _: line, content)
    if n != 1:
        raise RuntimeError(f"systemd/riskd.env.example: no single line for {line.split('=')[0]}")
    return content


def env_file(settings: Settings, pgpassfile: str | None = None) -> str:
    """riskd.env with the DSN riskd is configured with (and the pgpass file, if given):
    nothing left to edit by hand."""
    dsn = require_dsn(settings)
    if mask_dsn(dsn) != dsn:
        raise ConfigError(
            "riskd.env: the DSN holds a password, which riskd does not print; give one "
            "without it and the password in a pgpass file (--pgpassfile)"
        )
    content = _set(_DSN_LINE, f"RISKD_DSN={_value('the DSN', dsn)}", text("riskd.env"))
    if pgpassfile is not None:
        line = f"PGPASSFILE={_value('--pgpassfile', pgpassfile)}"
        content = _set(_PGPASSFILE_LINE, line, content)
    return content
