"""Revisions are frozen with their release: their SQL is never edited, every one of them
renders, and the chain is a line from 0001 to head (tests/integration/test_upgrades.py proves
what they install)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from riskd import __version__, migrate
from riskd.config import SchemaMapping
from riskd.migrate import Action, plan
from riskd.resources import resource_dir
from riskd.sqlfiles import FRAGMENTS, render, template_params

VERSIONS = resource_dir("alembic") / "versions"


def _modules() -> list[ModuleType]:
    modules = []
    for path in sorted(VERSIONS.glob("[0-9]*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        modules.append(module)
    return modules


MODULES = _modules()


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.revision)
def test_a_revisions_frozen_sql_is_what_its_release_recorded(module: ModuleType) -> None:
    """Editing a released revision's SQL fails here: write a new revision instead."""
    assert migrate.frozen_digest(module.revision) == module.FROZEN_SHA256


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.revision)
def test_every_frozen_template_renders(module: ModuleType) -> None:
    params = template_params(SchemaMapping(), "bigint")
    files = [
        p
        for p in sorted(migrate.frozen_dir(module.revision).glob("*.sql"))
        if p.stem not in FRAGMENTS
    ]
    assert files
    for path in files:
        text = render(path.name, params, folder=path.parent)
        assert text.strip() and "{account_id_type}" not in text


def test_the_revisions_form_one_line_from_0001_to_head() -> None:
    by_down = {m.down_revision: m for m in MODULES}
    assert len(by_down) == len(MODULES)
    chain, down = [], None
    while down in by_down:
        chain.append(by_down[down].revision)
        down = by_down[down].revision
    assert chain == [m.revision for m in MODULES]
    assert chain[0] == "0001" and chain[-1] == migrate.head()


def test_head_belongs_to_this_release() -> None:
    assert __version__ == MODULES[-1].RELEASE
    assert MODULES[0].RELEASE == "0.1.0"


def test_sql_holds_what_head_installs_and_nothing_of_a_removal() -> None:
    sql_dir = resource_dir("sql")
    for name in migrate.HEAD_INSTALL:
        assert (sql_dir / name).is_file()
    assert not (sql_dir / "drop.sql").exists()


@pytest.mark.parametrize(
    ("before", "target", "expected"),
    [
        (None, "0002", Action.INSTALL),
        (None, "0001", Action.UPGRADE),
        (None, "base", Action.NONE),
        ("0002", "0002", Action.NONE),
        ("0001", "0002", Action.UPGRADE),
        ("0002", "0001", Action.DOWNGRADE),
        ("0002", "base", Action.REMOVE),
    ],
)
def test_plan(before: str | None, target: str, expected: Action) -> None:
    below = {"0001"} if before == "0002" else set()
    assert plan(before, target, "0002", below) is expected


def test_revision_files_sit_beside_their_frozen_folder() -> None:
    for module in MODULES:
        assert Path(module.__file__ or "").name.startswith(module.revision + "_")
        assert migrate.frozen_dir(module.revision).is_dir()


def test_no_installed_sql_holds_a_percent_sign() -> None:
    """The driver reads ``%`` as a placeholder when it runs a script (it turned a format()
    in a function body into ``$1``): installed SQL concatenates instead."""
    folders = [resource_dir("sql"), *(migrate.frozen_dir(m.revision) for m in MODULES)]
    for folder in folders:
        for path in folder.glob("*.sql"):
            if path.name in {
                "queries.sql",
                "migrate.sql",
                "simulator.sql",
                "seed.sql",
                "dashboard.sql",
            }:
                continue  # run with parameters, by name
            assert "%" not in path.read_text(), path


def test_migrate_says_what_two_phase_commit_needs_only_when_it_is_on() -> None:
    assert migrate.prepared_transactions_note(0) is None
    note = migrate.prepared_transactions_note(5)
    assert note is not None and "SET riskd.notify_queue_limit = '0'" in note
