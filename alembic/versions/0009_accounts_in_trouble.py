"""the accounts in trouble: a partial index on the level of the accounts over a threshold.

Issue 15: the dashboard lists and counts the accounts at warning or critical at every refresh
without reading every account, and without costing the check a HOT update (the index's key and
predicate change only with the level). And an index on the close requests by account, for an
account's page.

Frozen with its release: alembic/versions/0009/ holds the SQL, never to be edited once released
(FROZEN_SHA256 is checked by tests/unit/test_revisions.py).

Revision ID: 0009
Revises: 0008
"""

from riskd.migrate import run_frozen

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

RELEASE = "0.2.0"
FROZEN_SHA256 = "d824bc6573336d5a98820d3bcf0ea30dbb4c8651ec4d75daa686f8b9446ad628"


def upgrade() -> None:
    run_frozen(revision, "upgrade.sql")


def downgrade() -> None:
    run_frozen(revision, "downgrade.sql")
