"""I10, upgrades in place: whatever way a database reached a revision, it holds the same catalog.

For every revision R, with the reference mapping and with one unlike it: R installed and then
upgraded to head equals head installed from ``sql/``; head downgraded to R equals R installed;
head downgraded to base leaves nothing of riskd. "The same catalog" is tests/catalog.py: every
object that depends on schema riskd, found from the catalog rather than listed by hand. And the
database riskd 0.1.0 itself installed — by its released wheel — upgrades with `riskd migrate`.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from catalog import catalog
from conftest import Db, Server, _clone
from release import run as run_release
from release import unpack
from test_migrate import OTHER_MAPPING, OTHER_SCHEMA

from riskd import migrate
from riskd.config import SchemaMapping

HEAD = migrate.head()
REVISIONS = [r.revision for r in reversed(list(migrate._script().walk_revisions()))]
MAPPINGS = {"reference": None, "renamed": OTHER_MAPPING}


@contextmanager
def database(server: Server, mapping: str) -> Iterator[Db]:
    """A database with the platform's tables and nothing of riskd, its settings mapped."""
    with contextmanager(_clone)(server, "reference") as db:
        if MAPPINGS[mapping] is not None:
            db.conn.execute(OTHER_SCHEMA)  # type: ignore[arg-type]
            schema: SchemaMapping = MAPPINGS[mapping]  # type: ignore[assignment]
            db.settings = dataclasses.replace(db.settings, schema=schema)
        yield db


def assert_same(actual: dict[str, str], expected: dict[str, str], what: str) -> None:
    if actual == expected:
        return
    lines = []
    for key in sorted(actual.keys() | expected.keys()):
        if actual.get(key) != expected.get(key):
            lines.append(f"--- {key}")
            lines.extend(
                difflib.unified_diff(
                    (expected.get(key) or "<missing>").splitlines(),
                    (actual.get(key) or "<missing>").splitlines(),
                    "fresh install",
                    what,
                    lineterm="",
                )
            )
    raise AssertionError(f"{what} differs from a fresh install:\n" + "\n".join(lines[:200]))


_fresh: dict[tuple[str, str, str], dict[str, str]] = {}


def fresh(server: Server, mapping: str, revision: str) -> dict[str, str]:
    """The catalog of ``revision`` installed into an empty database (cached per server)."""
    key = (server.label, mapping, revision)
    if key not in _fresh:
        with database(server, mapping) as db:
            migrate.migrate(db.settings, revision)
            assert migrate.current(db.settings) == revision
            _fresh[key] = catalog(db.conn)
    return _fresh[key]


def test_there_is_more_than_one_revision_to_compare() -> None:
    assert REVISIONS[0] == "0001" and REVISIONS[-1] == HEAD and len(REVISIONS) >= 2


@pytest.mark.parametrize("mapping", MAPPINGS)
@pytest.mark.parametrize("revision", REVISIONS)
def test_installing_a_revision_then_upgrading_equals_installing_head(
    server: Server, mapping: str, revision: str
) -> None:
    with database(server, mapping) as db:
        assert migrate.migrate(db.settings, revision) == (None, revision)
        assert migrate.migrate(db.settings) == (revision, HEAD)
        assert_same(catalog(db.conn), fresh(server, mapping, HEAD), f"{revision} upgraded")


@pytest.mark.parametrize("mapping", MAPPINGS)
@pytest.mark.parametrize("revision", REVISIONS)
def test_downgrading_head_to_a_revision_equals_installing_it(
    server: Server, mapping: str, revision: str
) -> None:
    with database(server, mapping) as db:
        migrate.migrate(db.settings)
        assert migrate.migrate(db.settings, revision) == (HEAD, revision)
        assert_same(catalog(db.conn), fresh(server, mapping, revision), f"head down to {revision}")


@pytest.mark.parametrize("mapping", MAPPINGS)
def test_downgrading_head_to_base_leaves_nothing_of_riskd(server: Server, mapping: str) -> None:
    with database(server, mapping) as db:
        untouched = catalog(db.conn)
        migrate.migrate(db.settings)
        assert catalog(db.conn) != untouched
        assert migrate.migrate(db.settings, "base") == (HEAD, None)
        assert_same(catalog(db.conn), untouched, "head down to base")
        assert db.scalar("SELECT count(*) FROM pg_namespace WHERE nspname = 'riskd'") == 0


def test_what_riskd_0_1_0_installed_is_revision_0001_and_upgrades_to_head(
    server: Server, tmp_path: Path
) -> None:
    """The released wheel's own `riskd migrate`, then ours: the frozen 0001 is what 0.1.0
    installed, and `riskd migrate` alone takes that database to head."""
    old = unpack("0.1.0", tmp_path)
    with database(server, "reference") as db:
        done = run_release(old, "migrate", dsn=db.dsn)
        assert done.returncode == 0, done.stderr
        assert "0001" in done.stdout
        assert_same(catalog(db.conn), fresh(server, "reference", "0001"), "riskd 0.1.0's install")
        assert migrate.migrate(db.settings) == ("0001", HEAD)
        assert_same(catalog(db.conn), fresh(server, "reference", HEAD), "0.1.0 upgraded")


SWAP = "CREATE TABLE public.book (LIKE public.positions INCLUDING ALL)"


def _swapped(db: Db) -> Db:
    from riskd.config import TableName

    schema = dataclasses.replace(db.settings.schema, positions_table=TableName("public", "book"))
    return dataclasses.replace(db, settings=dataclasses.replace(db.settings, schema=schema))


@pytest.mark.parametrize("revision", REVISIONS[:-1])
def test_upgrading_with_a_changed_mapping_equals_installing_head_on_it(
    server: Server, revision: str
) -> None:
    """The platform moved its positions to a new table, and the operator upgrades riskd with
    the new [schema]: the upgrade and the repair run in one transaction and end where a fresh
    install on the new mapping does (no trigger left on either table calling what was made
    for the other: I1)."""
    key = (server.label, "swapped", HEAD)
    if key not in _fresh:
        with database(server, "reference") as db:
            db.conn.execute(SWAP)
            migrate.migrate(_swapped(db).settings)
            _fresh[key] = catalog(db.conn)
    with database(server, "reference") as db:
        migrate.migrate(db.settings, revision)
        db.conn.execute(SWAP)
        swapped = _swapped(db)
        outcome = migrate.run(swapped.settings)
        assert (outcome.before, outcome.after) == (revision, HEAD)
        assert_same(catalog(db.conn), _fresh[key], f"{revision} upgraded on a new mapping")
        db.conn.execute(
            'INSERT INTO public.book (id, "tradingAccountId", "instrumentId", quantity)'
            " SELECT 'x', id, (SELECT id FROM public.instruments LIMIT 1), 1"
            " FROM public.trading_accounts LIMIT 1"
        )
        # a downgrade on a mapping other than the installed one is refused in one line
        with pytest.raises(migrate.MigrationError, match="differs from the mapping"):
            migrate.run(db.settings, revision)
