from conftest import Db

from riskd.check import check_accounts, sweep
from riskd.sandbox.seed import seed


def test_seeded_sweep_then_check(db: Db) -> None:
    seed(db.conn, accounts=200, positions=1000)
    result = sweep(db.conn, db.settings)
    assert result.accounts == 200
    assert set(result.levels) == {"ok", "warning", "critical"}
    again = sweep(db.conn, db.settings)
    assert again.transitions == []
    first = check_accounts(db.conn, db.settings, ["acc-000001"])
    assert len(first) == 1 and first[0].account_id == "acc-000001"
