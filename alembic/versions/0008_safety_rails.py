"""the safety rails: alerts, the kill switch, the circuit breaker, the stale-price guard, the
per-account auto-close mode.

Issue 14: riskd.alerts and riskd.controls; riskd.pause / riskd.resume; riskd.act, where the
check's auto-close now happens and the rails hold it back; account_limits.auto_close; the price's
time in riskd.platform_positions.

Frozen with its release: alembic/versions/0008/ holds the SQL, never to be edited once released
(FROZEN_SHA256 is checked by tests/unit/test_revisions.py).

Revision ID: 0008
Revises: 0007
"""

from riskd.migrate import run_frozen

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

RELEASE = "0.2.0"
FROZEN_SHA256 = "30f0908bbf581d0b89a4af6380097e8e1b21aca22e410735ad23edeb022a95cb"


def upgrade() -> None:
    run_frozen(revision, "upgrade.sql")


def downgrade() -> None:
    run_frozen(revision, "downgrade.sql")
