"""riskd as it was released, for the upgrade tests: the wheel of each release is kept in
tests/releases/ exactly as built from its tag, and run from a folder of its own with this
interpreter (its dependencies are a subset of ours)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

RELEASES = Path(__file__).resolve().parent / "releases"


def unpack(version: str, into: Path) -> Path:
    """Unpack riskd ``version``'s wheel under ``into``; the folder to run it from."""
    wheel = RELEASES / f"riskd-{version}-py3-none-any.whl"
    target = into / f"riskd-{version}"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    return target


def environment(dsn: str, **extra: str) -> dict[str, str]:
    """A clean environment: no RISKD_* of the caller's, the DSN given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RISKD_", "NOTIFY_"))}
    env.pop("DATABASE_URL", None)
    env.pop("WATCHDOG_USEC", None)
    env.update(RISKD_DSN=dsn, RISKD_CONFIG="", **extra)
    return env


def run(
    folder: Path, *args: str, dsn: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``riskd ARGS`` of the release unpacked in ``folder`` (``-m`` puts the folder first on
    sys.path, ahead of the riskd under test)."""
    return subprocess.run(
        [sys.executable, "-m", "riskd", *args],
        cwd=folder,
        env=environment(dsn),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
