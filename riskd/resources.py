"""Where riskd's SQL and migrations are, in a source checkout and in an installed wheel.

The wheel packages the top-level ``sql/`` and ``alembic/`` folders inside the package
(``riskd/sql``, ``riskd/alembic``, see pyproject.toml) so that ``riskd migrate`` works from
``pip install .``; a source checkout keeps them beside the package. Looking in the package
first and the checkout second serves both without configuration.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def _locate(relative: Path) -> Path:
    installed = _PACKAGE_DIR / relative
    if installed.exists():
        return installed
    return _PACKAGE_DIR.parent / relative


def resource_dir(name: str) -> Path:
    """A whole resource folder, such as ``"sql"`` or ``"alembic"``."""
    return _locate(Path(name))


def sql_path(name: str) -> Path:
    """One file under ``sql/``, such as ``"seed.sql"``."""
    return _locate(Path("sql") / name)
