"""The risk levels (DESIGN §1), lowest first: the one spelling of them on the Python side (the
SQL side decides them, sql/check.sql)."""

from __future__ import annotations

from typing import Final

LEVELS: Final = ("ok", "warning", "critical")
