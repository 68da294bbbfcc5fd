"""Capture reads nothing but the transition rows; every layout's writes are captured.

Issue 9 (layouts): instrument marks fanned out by the daemon after commit (SERIALIZABLE fills,
FORCE row-level security, a price racing a new position); row triggers on partitioned tables,
copies on inheritance children; instruments inserted and deleted; TRUNCATE asks for a sweep;
capture fires under session_replication_role = replica too.

Frozen with its release: alembic/versions/0004/ holds the SQL, never to be edited once released
(FROZEN_SHA256 is checked by tests/unit/test_revisions.py).

Revision ID: 0004
Revises: 0003
"""

from riskd.migrate import run_frozen

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

RELEASE = "0.2.0"
FROZEN_SHA256 = "3c13143cebaa66dbe88e83e0301af75eeb5ec4e343b0bb73f7db262c608e59ad"


def upgrade() -> None:
    run_frozen(revision, "upgrade.sql")


def downgrade() -> None:
    run_frozen(revision, "downgrade.sql")
