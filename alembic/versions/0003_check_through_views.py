"""The check through views; flatten by the position's key, NOWAIT, on every critical check.

Issue 9 (layouts): flatten addresses a position by key, account and table (partitioned and
inherited positions), never waits for a trade's lock, leaves a generated PnL column alone,
books what the balance column can hold; NaN, infinite and NULL figures never decide an action;
a per-account limit with one threshold keeps the warning under auto-close; a critical account
with positions open is acted on again at every check and found by the sweep. The mapping gains
`position_id`, recorded here.

Frozen with its release: alembic/versions/0003/ holds the SQL, never to be edited once released
(FROZEN_SHA256 is checked by tests/unit/test_revisions.py).

Revision ID: 0003
Revises: 0002
"""

from riskd.migrate import record_installation, run_frozen

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

RELEASE = "0.2.0"
FROZEN_SHA256 = "ff0f294b59b1322e9750acc9d235245867cbe318cb4f6bcae5ef3107c1c4bf6f"


def upgrade() -> None:
    run_frozen(revision, "upgrade.sql")
    record_installation()


def downgrade() -> None:
    run_frozen(revision, "downgrade.sql")
