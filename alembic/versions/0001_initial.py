"""riskd 0.1.0: state, events, close requests, the dirty set, capture triggers, check and sweep.

Frozen with the release: alembic/versions/0001/ holds the SQL riskd 0.1.0 installed, never to
be edited (FROZEN_SHA256 is checked by tests/unit/test_revisions.py).

Revision ID: 0001
Revises:
"""

from riskd.migrate import record_installation, run_frozen

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

RELEASE = "0.1.0"
FROZEN_SHA256 = "0954a0932195f4d399e01c01dc021963be2d7cc7443013a243faa909e8371522"


def upgrade() -> None:
    for name in ("schema.sql", "check.sql", "sweep.sql", "capture.sql", "privileges.sql"):
        run_frozen(revision, name)
    record_installation()


def downgrade() -> None:
    run_frozen(revision, "capture_drop.sql")
    run_frozen(revision, "drop.sql")
