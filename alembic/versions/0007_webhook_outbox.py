"""the webhook outbox: riskd.deliveries, one row per risk event, written with the event.

Issue 13: a session configured with a [webhook] url (riskd.webhook = 'on') gets a pending
delivery for every event it writes, in the event's transaction; the delivery task POSTs them.

Frozen with its release: alembic/versions/0007/ holds the SQL, never to be edited once released
(FROZEN_SHA256 is checked by tests/unit/test_revisions.py).

Revision ID: 0007
Revises: 0006
"""

from riskd.migrate import run_frozen

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

RELEASE = "0.2.0"
FROZEN_SHA256 = "63f4ad5b63cbb09176e81f0e3ba09df4b1bf168aa821e65e8fb1fd931822ad60"


def upgrade() -> None:
    run_frozen(revision, "upgrade.sql")


def downgrade() -> None:
    run_frozen(revision, "downgrade.sql")
