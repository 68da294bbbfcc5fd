"""The version fence: a daemon of another revision stops at its next heartbeat.

Frozen with its release: alembic/versions/0002/ holds the SQL, never to be edited once released
(FROZEN_SHA256 is checked by tests/unit/test_revisions.py).

Revision ID: 0002
Revises: 0001
"""

from riskd.migrate import run_frozen

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

RELEASE = "0.2.0"
FROZEN_SHA256 = "21d79bd41394317dd963186ad70c0f589256954fd9ad070fda78031532dbf9de"


def upgrade() -> None:
    run_frozen(revision, "upgrade.sql")


def downgrade() -> None:
    run_frozen(revision, "downgrade.sql")
