"""A non-editable install carries sql/ and alembic/, so `riskd migrate` works from a wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import Db

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = Path(__file__).resolve().parents[2]
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(root)],
        check=True,
        timeout=300,
    )
    (built,) = out.glob("riskd-*.whl")
    return built


def test_the_wheel_carries_sql_and_migrations(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "riskd/sql/check.sql",
        "riskd/sql/capture.sql",
        "riskd/sql/queries.sql",
        "riskd/alembic/env.py",
        "riskd/alembic/versions/0001_initial.py",
        "riskd/alembic/versions/0001/check.sql",
        "riskd/alembic/versions/0001/wake_up.sql",
        "riskd/alembic/versions/0002/upgrade.sql",
    ):
        assert needed in names


def test_migrate_from_the_installed_wheel(wheel: Path, bare_db: Db, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    env = {**os.environ, "PYTHONPATH": str(target), "RISKD_DSN": bare_db.dsn}
    env.pop("RISKD_CONFIG", None)

    def riskd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "riskd", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    where = subprocess.run(
        [sys.executable, "-c", "import riskd; print(riskd.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.strip().startswith(str(target))
    migrated = riskd("migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert riskd("migrate", "--check").returncode == 0
    swept = riskd("sweep", "--json")
    assert swept.returncode == 0, swept.stderr
    assert '"accounts": 0' in swept.stdout
