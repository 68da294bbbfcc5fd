"""The privileges the daemon probes at start and docs/grants.sql stay in step."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from riskd.config import Settings
from riskd.privileges import daemon_needs, describe

GRANTS = (Path(__file__).resolve().parents[2] / "docs" / "grants.sql").read_text()


def test_every_probed_privilege_is_granted_by_the_script() -> None:
    settings = Settings()
    flatten = dataclasses.replace(
        settings, risk=dataclasses.replace(settings.risk, auto_close="flatten")
    )
    needs = daemon_needs(flatten)
    assert len(needs) > len(daemon_needs(settings))  # the flatten block adds
    for need in needs:
        name = need.target.replace('"', "").split("(")[0]
        assert name in GRANTS, describe(need)
        if need.column:
            assert need.column in GRANTS, describe(need)
        assert need.privilege in GRANTS, describe(need)


def test_descriptions_name_the_object() -> None:
    texts = [describe(n) for n in daemon_needs(Settings())]
    assert "UPDATE on sequence riskd.wakeup" in texts
    assert 'SELECT on table "public"."positions" (quantity)' in texts
