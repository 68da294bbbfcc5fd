"""the check at the cost of a bare aggregate; the sweep keeps account_state current.

Issue 11: riskd.check_accounts reads through index lookups in every plan, writes account_state
only where something changed and builds evidence only for what keeps it; riskd.sweep hands the
accounts whose recorded figures are stale to the check.

Frozen with its release: alembic/versions/0006/ holds the SQL, never to be edited once released
(FROZEN_SHA256 is checked by tests/unit/test_revisions.py).

Revision ID: 0006
Revises: 0005
"""

from riskd.migrate import run_frozen

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

RELEASE = "0.2.0"
FROZEN_SHA256 = "41913cb836c3f996f4578ce3da2154acab69184bf9280d9bb0fd3c3ba3093456"


def upgrade() -> None:
    run_frozen(revision, "upgrade.sql")


def downgrade() -> None:
    run_frozen(revision, "downgrade.sql")
