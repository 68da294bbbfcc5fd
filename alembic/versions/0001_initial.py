"""riskd 0.1: state, events, close requests, the dirty set, capture triggers, check and sweep.

Revision ID: 0001
Revises:
"""

from riskd.migrate import record_installation, run_template

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_template("schema.sql")
    run_template("check.sql")
    run_template("sweep.sql")
    run_template("capture.sql")
    run_template("privileges.sql")
    record_installation()


def downgrade() -> None:
    run_template("capture_drop.sql")
    run_template("drop.sql")
