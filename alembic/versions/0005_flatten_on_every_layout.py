"""flatten through dependency-tracked functions; capture reads the row as stored.

Issue 9 (layouts): flatten reads and writes the platform's tables through SQL-standard
functions, so a platform's RENAME of a mapped column or table carries it along (I9); row
triggers fire AFTER (the platform's BEFORE triggers applied, generated columns computed);
each partition gets a copy of the TRUNCATE trigger.

Frozen with its release: alembic/versions/0005/ holds the SQL, never to be edited once released
(FROZEN_SHA256 is checked by tests/unit/test_revisions.py).

Revision ID: 0005
Revises: 0004
"""

from riskd.migrate import run_frozen

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

RELEASE = "0.2.0"
FROZEN_SHA256 = "2d939b47f3ec9fac641fc67a5000f6d885d95e8dab00b21c069a6f635e6a47f5"


def upgrade() -> None:
    run_frozen(revision, "upgrade.sql")


def downgrade() -> None:
    run_frozen(revision, "downgrade.sql")
