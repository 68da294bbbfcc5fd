"""The check and flatten on the layouts platforms really have (issue 9; I7, I8): partitioned
and inherited positions, a generated PnL column, a balance of limited scale, other number
types, data riskd cannot trust, a trade holding a row, a limit with one threshold, row-level
security, a mapped column dropped. (Capture on these layouts: test_layouts.py.)"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from catalog import catalog
from conftest import Db, _clone
from test_migrate import cli

from riskd import migrate
from riskd.check import check_accounts, sweep
from riskd.config import SchemaMapping, TableName
from riskd.errors import SchemaMappingError
from riskd.mapping import check_visibility

MAPPING = SchemaMapping(
    accounts_table=TableName("lay", "accounts"),
    positions_table=TableName("lay", "positions"),
    instruments_table=TableName("lay", "instruments"),
)

MAPPING_ENV = {
    "RISKD_SCHEMA_ACCOUNTS_TABLE": "lay.accounts",
    "RISKD_SCHEMA_POSITIONS_TABLE": "lay.positions",
    "RISKD_SCHEMA_INSTRUMENTS_TABLE": "lay.instruments",
}

ACCOUNTS = 'CREATE TABLE lay.accounts (id text PRIMARY KEY, "userId" text, balance {balance});'
INSTRUMENTS = (
    "CREATE TABLE lay.instruments (id text PRIMARY KEY, symbol text, price {number},"
    ' "marginRate" {number});'
)
POSITION_COLUMNS = (
    'id text NOT NULL, "tradingAccountId" text NOT NULL, "instrumentId" text NOT NULL,'
    ' quantity {number} NOT NULL, "unrealizedPnL" {number}'
)

LAYOUTS: dict[str, str] = {
    "plain": f"CREATE TABLE lay.positions ({POSITION_COLUMNS}, PRIMARY KEY (id));",
    # a position id is unique only together with its account: the partition key must be in it
    "hash-partitioned": (
        f'CREATE TABLE lay.positions ({POSITION_COLUMNS}, PRIMARY KEY (id, "tradingAccountId"))'
        ' PARTITION BY HASH ("tradingAccountId");'
        + "".join(
            f"CREATE TABLE lay.positions_{i} PARTITION OF lay.positions"
            f" FOR VALUES WITH (MODULUS 4, REMAINDER {i});"
            for i in range(4)
        )
    ),
    # the partition key is no part of the position's key: each partition keeps its own
    "list-partitioned": (
        f'CREATE TABLE lay.positions ({POSITION_COLUMNS}) PARTITION BY LIST ("instrumentId");'
        "CREATE TABLE lay.positions_i1 PARTITION OF lay.positions FOR VALUES IN ('i1');"
        "CREATE TABLE lay.positions_rest PARTITION OF lay.positions DEFAULT;"
        'ALTER TABLE lay.positions_i1 ADD PRIMARY KEY (id, "tradingAccountId");'
        'ALTER TABLE lay.positions_rest ADD PRIMARY KEY (id, "tradingAccountId");'
    ),
    # a child holds rows of its own (its key is not unique across parent and child)
    "inherited": (
        f'CREATE TABLE lay.positions ({POSITION_COLUMNS}, PRIMARY KEY (id, "tradingAccountId"));'
        'CREATE TABLE lay.positions_archive (PRIMARY KEY (id, "tradingAccountId"))'
        " INHERITS (lay.positions);"
    ),
}


@dataclasses.dataclass
class Layout:
    db: Db
    settings: Any
    name: str

    def rows(self) -> dict[tuple[str, str], tuple[Decimal, Decimal | None]]:
        rows = self.db.conn.execute(
            'SELECT "tradingAccountId", id, quantity, "unrealizedPnL" FROM lay.positions'
        ).fetchall()
        return {(a, i): (q, p) for a, i, q, p in rows}

    def balance(self, account: str) -> Decimal:
        return Decimal(self.db.scalar("SELECT balance FROM lay.accounts WHERE id = %s", (account,)))

    def check(self, *accounts: str, mode: str = "flatten") -> dict[str, Any]:
        settings = dataclasses.replace(
            self.settings, risk=dataclasses.replace(self.settings.risk, auto_close=mode)
        )
        return {r.account_id: r for r in check_accounts(self.db.conn, settings, list(accounts))}


def make_platform(
    db: Db, positions: str, *, balance: str = "numeric", number: str = "numeric"
) -> None:
    """The platform's tables in schema ``lay``, nothing of riskd yet."""
    db.conn.execute("CREATE SCHEMA lay")
    db.conn.execute(ACCOUNTS.format(balance=balance))  # type: ignore[arg-type]
    db.conn.execute(INSTRUMENTS.format(number=number))  # type: ignore[arg-type]
    db.conn.execute(positions.replace("{number}", number))  # type: ignore[arg-type]


def make_layout(
    db: Db,
    layout: str,
    *,
    balance: str = "numeric",
    number: str = "numeric",
    positions: str | None = None,
) -> Layout:
    ddl = positions if positions is not None else LAYOUTS[layout]
    make_platform(db, ddl, balance=balance, number=number)
    settings = dataclasses.replace(db.settings, schema=MAPPING)
    migrate.migrate(settings)
    return Layout(db, settings, layout)


@pytest.fixture(params=list(LAYOUTS))
def layout(request: pytest.FixtureRequest, bare_db: Db) -> Iterator[Layout]:
    yield make_layout(bare_db, request.param)


def seed_book(lay: Layout) -> None:
    """One breached account ('hot') and three healthy ones, every account's first position
    called 'p1' (a key unique only with its account), in rows that share ctids across
    partitions and children."""
    conn = lay.db.conn
    conn.execute(
        "INSERT INTO lay.instruments VALUES ('i1', 'I1', 100, 0.1), ('i2', 'I2', 100, 0.1)"
    )
    for account, balance in (("hot", 1000), ("h1", 100000), ("h2", 100000), ("h3", 100000)):
        conn.execute("INSERT INTO lay.accounts VALUES (%s, 'u', %s)", (account, balance))
    # hot: margins 600 + 400, PnL -30 and -20: equity 950, used 1000 (105 %)
    insert = (
        'INSERT INTO {} (id, "tradingAccountId", "instrumentId", quantity, "unrealizedPnL")'
        " VALUES (%s, %s, %s, %s, %s)"
    )
    child = "lay.positions_archive" if lay.name == "inherited" else "lay.positions"
    conn.execute(insert.format("lay.positions"), ("p1", "hot", "i1", 60, -30))  # type: ignore[arg-type]
    conn.execute(insert.format(child), ("p2", "hot", "i2", -40, -20))  # type: ignore[arg-type]
    for account in ("h1", "h2", "h3"):
        conn.execute(insert.format(child), ("p1", account, "i1", 10, -5))  # type: ignore[arg-type]
        conn.execute(insert.format("lay.positions"), ("p2", account, "i2", 10, 7))  # type: ignore[arg-type]


SHARED_KEYS = [name for name in LAYOUTS if name != "plain"]  # 'p1' may repeat across accounts


@pytest.mark.parametrize("name", SHARED_KEYS)
def test_flatten_touches_only_the_breached_accounts_own_positions_once(
    bare_db: Db, name: str
) -> None:
    layout = make_layout(bare_db, name)
    seed_book(layout)
    before = layout.rows()
    result = layout.check("hot")["hot"]
    assert result.level == "critical" and result.close_request_id is not None
    after = layout.rows()
    # the largest loss (p1, -30, margin 600) goes first: used 400 < 0.8 x 950 — done
    assert after[("hot", "p1")] == (0, 0)
    assert after[("hot", "p2")] == before[("hot", "p2")]
    assert {k: v for k, v in after.items() if k[0] != "hot"} == {
        k: v for k, v in before.items() if k[0] != "hot"
    }
    assert layout.balance("hot") == Decimal("970")
    assert all(layout.balance(a) == 100000 for a in ("h1", "h2", "h3"))
    detail = layout.db.scalar("SELECT detail FROM riskd.close_requests WHERE account_id = 'hot'")
    assert [c["position"] for c in detail["closed"]] == ["p1"]
    assert (detail["realised_pnl"], detail["booked_pnl"]) == (-30, -30)


def test_flatten_by_key_on_a_plain_table(bare_db: Db) -> None:
    layout = make_layout(bare_db, "plain")
    conn = layout.db.conn
    conn.execute("INSERT INTO lay.instruments VALUES ('i1', 'I1', 100, 0.1)")
    conn.execute("INSERT INTO lay.accounts VALUES ('hot', 'u', 100), ('calm', 'u', 100000)")
    conn.execute(
        "INSERT INTO lay.positions VALUES ('a', 'hot', 'i1', 20, -1), ('b', 'calm', 'i1', 20, -1)"
    )
    layout.check("hot")
    assert layout.rows() == {("hot", "a"): (0, 0), ("calm", "b"): (20, -1)}


# --- the position's key: flatten closes each position at most once (I7) ------------------------
# flatten addresses a position by (tableoid, [schema] position_id, [schema] position_account):
# `riskd migrate` refuses a layout where a table holding positions does not keep that unique.

KEYED = 'PRIMARY KEY (id, "tradingAccountId")'
ANY_ID_POSITIONS = (
    'CREATE TABLE lay.positions (id {id}, "tradingAccountId" text NOT NULL,'
    ' "instrumentId" text NOT NULL, quantity numeric NOT NULL, "unrealizedPnL" numeric);'
)

KEYS_ACCEPTED = {
    # the parent's key is each partition's, a partition partitioned in turn included
    "partitioned-keyed": (
        f"CREATE TABLE lay.positions ({POSITION_COLUMNS}, {KEYED})"
        ' PARTITION BY HASH ("tradingAccountId");'
        "CREATE TABLE lay.positions_0 PARTITION OF lay.positions"
        " FOR VALUES WITH (MODULUS 2, REMAINDER 0) PARTITION BY HASH (id);"
        "CREATE TABLE lay.positions_00 PARTITION OF lay.positions_0"
        " FOR VALUES WITH (MODULUS 1, REMAINDER 0);"
        "CREATE TABLE lay.positions_1 PARTITION OF lay.positions"
        " FOR VALUES WITH (MODULUS 2, REMAINDER 1);"
    ),
    "uuid-id": ANY_ID_POSITIONS.format(id="uuid PRIMARY KEY DEFAULT gen_random_uuid()"),
    "bigint-id": ANY_ID_POSITIONS.format(id="bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY"),
    # a unique constraint, its columns in another order, a column it only includes
    "unique-constraint": (
        f"CREATE TABLE lay.positions ({POSITION_COLUMNS},"
        ' UNIQUE ("tradingAccountId", id) INCLUDE (quantity));'
    ),
    # an inheritance child with its own key, and a grandchild with its own
    "inherited-keyed": (
        f"CREATE TABLE lay.positions ({POSITION_COLUMNS}, PRIMARY KEY (id));"
        f"CREATE TABLE lay.positions_archive ({KEYED}) INHERITS (lay.positions);"
        "CREATE TABLE lay.positions_archive_2025 () INHERITS (lay.positions_archive);"
        "CREATE UNIQUE INDEX ON lay.positions_archive_2025 (id);"
    ),
}


def key_refusal(table: str, nearest: str = "") -> str:
    return (
        f'[schema] position_id: "lay"."{table}" has no unique index on ("id") or'
        f' ("id", "tradingAccountId"){nearest}: flatten could close a position twice'
    )


def migrate_cli(db: Db, mode: str = "flatten") -> Any:
    """`riskd migrate` on the lay mapping; the position key is required where flatten runs."""
    return cli("migrate", dsn=db.dsn, env={**MAPPING_ENV, "RISKD_RISK_AUTO_CLOSE": mode})


@pytest.mark.parametrize("name", list(KEYS_ACCEPTED))
def test_a_layout_keyed_on_id_or_id_and_account_is_accepted_and_flattened(
    bare_db: Db, name: str
) -> None:
    make_platform(bare_db, KEYS_ACCEPTED[name])
    done = migrate_cli(bare_db)
    assert done.exit_code == 0, done.output
    conn = bare_db.conn
    conn.execute("INSERT INTO lay.instruments VALUES ('i1', 'I1', 100, 0.1)")
    conn.execute("INSERT INTO lay.accounts VALUES ('hot', 'u', 100), ('calm', 'u', 100000)")
    # into the mapped table, whatever the id column makes of a missing id
    insert = (
        'INSERT INTO lay.positions ("tradingAccountId", "instrumentId", quantity,'
        ' "unrealizedPnL"{id_column}) VALUES (%s, %s, %s, %s{id_value})'
    )
    generated = name in ("uuid-id", "bigint-id")
    statement = insert.format(
        id_column="" if generated else ", id", id_value="" if generated else ", %s"
    )
    for n, (account, pnl) in enumerate((("hot", -1), ("hot", -2), ("calm", -1)), 1):
        conn.execute(statement, (account, "i1", 20, pnl) + (() if generated else (f"p{n}",)))  # type: ignore[arg-type]
    settings = dataclasses.replace(bare_db.settings, schema=MAPPING)
    result = Layout(bare_db, settings, name).check("hot")["hot"]
    assert result.level == "critical" and result.close_request_id is not None
    rows = conn.execute(
        'SELECT "tradingAccountId", quantity FROM lay.positions ORDER BY 1, 2'
    ).fetchall()
    assert rows == [("calm", 20), ("hot", 0), ("hot", 0)]
    detail = bare_db.scalar("SELECT detail FROM riskd.close_requests WHERE account_id = 'hot'")
    assert len(detail["closed"]) == 2 and detail["realised_pnl"] == -3


KEYS_REFUSED = {
    "inherited-child-unkeyed": (
        f"CREATE TABLE lay.positions ({POSITION_COLUMNS}, {KEYED});"
        "CREATE TABLE lay.positions_archive () INHERITS (lay.positions);",
        key_refusal("positions_archive"),
    ),
    "inherited-grandchild-unkeyed": (
        f"CREATE TABLE lay.positions ({POSITION_COLUMNS}, {KEYED});"
        f"CREATE TABLE lay.positions_archive ({KEYED}) INHERITS (lay.positions);"
        "CREATE TABLE lay.positions_archive_2025 () INHERITS (lay.positions_archive);",
        key_refusal("positions_archive_2025"),
    ),
    "partition-unkeyed": (
        f'CREATE TABLE lay.positions ({POSITION_COLUMNS}) PARTITION BY LIST ("instrumentId");'
        f"CREATE TABLE lay.positions_i1 PARTITION OF lay.positions ({KEYED})"
        " FOR VALUES IN ('i1');"
        "CREATE TABLE lay.positions_rest PARTITION OF lay.positions DEFAULT;",
        key_refusal("positions_rest"),
    ),
    "partial-unique-index": (
        f"CREATE TABLE lay.positions ({POSITION_COLUMNS});"
        "CREATE UNIQUE INDEX positions_open ON lay.positions (id) WHERE quantity <> 0;",
        key_refusal("positions", ' (its unique index "positions_open" is partial)'),
    ),
    "unique-on-another-column": (
        f'CREATE TABLE lay.positions ({POSITION_COLUMNS}, UNIQUE (id, "instrumentId"));',
        key_refusal("positions"),
    ),
    "unique-on-an-expression": (
        f"CREATE TABLE lay.positions ({POSITION_COLUMNS});"
        "CREATE UNIQUE INDEX positions_lower_id ON lay.positions (lower(id));",
        key_refusal("positions", ' (its unique index "positions_lower_id" is on an expression)'),
    ),
    "no-index": (f"CREATE TABLE lay.positions ({POSITION_COLUMNS});", key_refusal("positions")),
}


@pytest.mark.parametrize("name", list(KEYS_REFUSED))
def test_a_layout_whose_position_key_is_not_unique_is_refused_in_one_line(
    bare_db: Db, name: str
) -> None:
    ddl, line = KEYS_REFUSED[name]
    make_platform(bare_db, ddl)
    refused = migrate_cli(bare_db)
    assert refused.exit_code == 2, refused.output
    assert refused.stderr == f"riskd: {line}\n"
    assert bare_db.scalar("SELECT to_regclass('riskd.alembic_version')") is None
    flatten = dataclasses.replace(
        bare_db.settings,
        schema=MAPPING,
        risk=dataclasses.replace(bare_db.settings.risk, auto_close="flatten"),
    )
    with pytest.raises(SchemaMappingError, match="flatten could close a position twice"):
        migrate.migrate(flatten)
    # where flatten does not run, the layout is installed and the operator told
    done = migrate_cli(bare_db, mode="request")
    assert done.exit_code == 0, done.output
    assert f"{line} (refused with auto_close = flatten)" in done.stderr


def test_an_inherited_child_is_accepted_once_it_has_its_own_key(bare_db: Db) -> None:
    ddl, line = KEYS_REFUSED["inherited-child-unkeyed"]
    make_platform(bare_db, ddl)
    assert migrate_cli(bare_db).stderr == f"riskd: {line}\n"
    bare_db.conn.execute(f"ALTER TABLE lay.positions_archive ADD {KEYED}")  # type: ignore[arg-type]
    done = migrate_cli(bare_db)
    assert done.exit_code == 0, done.output


def test_a_unique_index_left_invalid_is_no_key(bare_db: Db) -> None:
    """A CREATE UNIQUE INDEX CONCURRENTLY that failed leaves an index that enforces nothing."""
    make_platform(bare_db, f"CREATE TABLE lay.positions ({POSITION_COLUMNS});")
    conn = bare_db.conn
    conn.execute(
        "INSERT INTO lay.positions VALUES ('p1', 'a', 'i1', 1, 0), ('p1', 'a', 'i1', 2, 0)"
    )
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("CREATE UNIQUE INDEX CONCURRENTLY positions_id ON lay.positions (id)")
    conn.execute("DELETE FROM lay.positions")
    refused = migrate_cli(bare_db)
    assert refused.exit_code == 2, refused.output
    line = key_refusal("positions", ' (its unique index "positions_id" is not valid)')
    assert refused.stderr == f"riskd: {line}\n"
    conn.execute("REINDEX INDEX CONCURRENTLY lay.positions_id")
    assert migrate_cli(bare_db).exit_code == 0


def test_a_generated_pnl_column_is_left_to_the_table(bare_db: Db) -> None:
    lay = make_layout(
        bare_db,
        "generated",
        positions=(
            'CREATE TABLE lay.positions (id text PRIMARY KEY, "tradingAccountId" text,'
            ' "instrumentId" text, quantity numeric, "averagePrice" numeric, "markPrice" numeric,'
            ' "unrealizedPnL" numeric GENERATED ALWAYS AS'
            ' (quantity * ("markPrice" - "averagePrice")) STORED)'
        ),
    )
    conn = bare_db.conn
    conn.execute("INSERT INTO lay.instruments VALUES ('i1', 'I1', 100, 0.1)")
    conn.execute("INSERT INTO lay.accounts VALUES ('hot', 'u', 100)")
    conn.execute(
        'INSERT INTO lay.positions (id, "tradingAccountId", "instrumentId", quantity,'
        " \"averagePrice\", \"markPrice\") VALUES ('a', 'hot', 'i1', 20, 101, 100)"
    )
    result = lay.check("hot")["hot"]
    assert result.close_request_id is not None
    assert lay.rows() == {("hot", "a"): (0, 0)}  # quantity 0: the table computes PnL 0
    assert lay.balance("hot") == 80


def test_what_is_booked_fits_the_balance_columns_scale(bare_db: Db) -> None:
    lay = make_layout(bare_db, "plain", balance="numeric(18,2)")
    conn = bare_db.conn
    conn.execute("INSERT INTO lay.instruments VALUES ('i1', 'I1', 100, 0.1)")
    conn.execute("INSERT INTO lay.accounts VALUES ('hot', 'u', 100)")
    conn.execute("INSERT INTO lay.positions VALUES ('a', 'hot', 'i1', 20, -10.005)")
    lay.check("hot")
    detail = bare_db.scalar("SELECT detail FROM riskd.close_requests")
    assert Decimal(str(detail["realised_pnl"])) == Decimal("-10.005")
    assert Decimal(str(detail["booked_pnl"])) == Decimal("-10.01")
    assert lay.balance("hot") == Decimal("89.99")


@pytest.mark.parametrize("number", ["double precision", "real", "integer", "bigint"])
def test_other_number_types_are_checked_as_numeric(bare_db: Db, number: str) -> None:
    lay = make_layout(bare_db, "plain", balance=number, number=number)
    conn = bare_db.conn
    conn.execute("INSERT INTO lay.instruments VALUES ('i1', 'I1', 100, 1)")
    conn.execute("INSERT INTO lay.accounts VALUES ('hot', 'u', 1000), ('calm', 'u', 1000)")
    conn.execute(
        "INSERT INTO lay.positions VALUES ('a', 'hot', 'i1', 9, 0), ('b', 'calm', 'i1', 1, 0)"
    )
    results = lay.check("hot", "calm", mode="request")
    assert (results["hot"].level, results["calm"].level) == ("critical", "ok")
    assert [r.level for r in sweep(conn, lay.settings).transitions] == []


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ("UPDATE lay.instruments SET price = 'NaN' WHERE id = 'i2'", {"price": "NaN"}),
        ("UPDATE lay.instruments SET price = NULL WHERE id = 'i2'", {"price": "NULL"}),
        (
            "UPDATE lay.instruments SET \"marginRate\" = 'Infinity' WHERE id = 'i2'",
            {"margin_rate": "Infinity"},
        ),
        (
            "UPDATE lay.positions SET \"unrealizedPnL\" = '-Infinity' WHERE id = 'b'",
            {"pnl": "-Infinity"},
        ),
        ("UPDATE lay.accounts SET balance = 'NaN' WHERE id = 'hot'", {"balance": "NaN"}),
    ],
)
def test_data_riskd_cannot_trust_decides_no_close_and_is_named(
    bare_db: Db, bad: str, named: dict[str, str]
) -> None:
    lay = make_layout(bare_db, "plain", balance="double precision", number="double precision")
    conn = bare_db.conn
    conn.execute("INSERT INTO lay.instruments VALUES ('i1', 'I1', 100, 0.1), ('i2', 'I2', 1, 0.1)")
    conn.execute("INSERT INTO lay.accounts VALUES ('hot', 'u', 1000)")
    # i1 alone makes the account critical (95 %); i2 is a small position
    conn.execute(
        "INSERT INTO lay.positions VALUES ('a', 'hot', 'i1', 95, 0), ('b', 'hot', 'i2', 1, 0)"
    )
    conn.execute(bad)  # type: ignore[arg-type]
    for mode in ("flatten", "request"):
        result = lay.check("hot", mode=mode)["hot"]
        assert result.level == "critical"
        assert result.close_request_id is None
    assert lay.rows() == {("hot", "a"): (95, 0), ("hot", "b"): lay.rows()[("hot", "b")]}
    assert bare_db.scalar("SELECT count(*) FROM riskd.close_requests") == 0
    detail = bare_db.scalar("SELECT detail FROM riskd.risk_events WHERE account_id = 'hot'")
    (error,) = detail["data_errors"]
    assert named.items() <= error.items()


def test_a_healthy_account_with_one_nan_price_is_not_made_critical(bare_db: Db) -> None:
    lay = make_layout(bare_db, "plain")
    conn = bare_db.conn
    conn.execute(
        "INSERT INTO lay.instruments VALUES ('i1', 'I1', 100, 0.1), ('i2', 'I2', 'NaN', 0.1)"
    )
    conn.execute("INSERT INTO lay.accounts VALUES ('calm', 'u', 1000)")
    conn.execute(
        "INSERT INTO lay.positions VALUES ('a', 'calm', 'i1', 10, 0), ('b', 'calm', 'i2', 1, 0)"
    )
    result = lay.check("calm")["calm"]
    assert result.level == "ok" and result.used_margin == 100
    assert lay.rows()[("calm", "a")] == (10, 0)


def test_flatten_never_waits_for_a_trade_holding_a_position(bare_db: Db) -> None:
    lay = make_layout(bare_db, "plain")
    conn = bare_db.conn
    conn.execute("INSERT INTO lay.instruments VALUES ('i1', 'I1', 100, 0.1)")
    conn.execute("INSERT INTO lay.accounts VALUES ('hot', 'u', 100)")
    conn.execute("INSERT INTO lay.positions VALUES ('a', 'hot', 'i1', 20, -1)")
    with bare_db.connect(autocommit=False) as trade:
        trade.execute("UPDATE lay.positions SET \"unrealizedPnL\" = -2 WHERE id = 'a'")
        # NOWAIT: refused at once ("could not obtain lock"), not after a lock timeout, so a
        # flatten is never in a lock queue that a trade could join behind it (finding 5)
        with pytest.raises(psycopg.errors.LockNotAvailable, match="could not obtain lock"):
            lay.check("hot")
        trade.rollback()
    conn.execute("ROLLBACK") if conn.info.transaction_status else None
    assert lay.check("hot")["hot"].close_request_id is not None
    assert lay.rows() == {("hot", "a"): (0, 0)}


def test_a_limit_with_one_threshold_keeps_the_warning_under_auto_close(bare_db: Db) -> None:
    lay = make_layout(bare_db, "plain")
    conn = bare_db.conn
    conn.execute(
        "INSERT INTO lay.instruments VALUES ('i1', 'I1', 100, 0.1), ('i2', 'I2', 100, 0.1)"
    )
    conn.execute("INSERT INTO lay.accounts VALUES ('hot', 'u', 1000)")
    conn.execute("INSERT INTO riskd.account_limits VALUES ('hot', NULL, 0.5)")
    # 60 % used: critical under auto-close 0.5; closing the larger loss leaves 30 % < 0.5
    conn.execute(
        "INSERT INTO lay.positions VALUES ('a', 'hot', 'i1', 30, -2), ('b', 'hot', 'i2', 30, -1)"
    )
    assert lay.check("hot")["hot"].level == "critical"
    assert lay.rows()[("hot", "a")] == (0, 0) and lay.rows()[("hot", "b")] == (30, -1)
    detail = bare_db.scalar("SELECT detail FROM riskd.close_requests")
    assert [c["position"] for c in detail["closed"]] == ["a"]


def test_a_critical_account_with_positions_open_is_never_left_so(bare_db: Db) -> None:
    """Request mode: the platform marks the request done without reducing exposure; the next
    sweep asks again. Then flatten is switched on: the next sweep flattens."""
    lay = make_layout(bare_db, "plain")
    conn = bare_db.conn
    conn.execute("INSERT INTO lay.instruments VALUES ('i1', 'I1', 100, 0.1)")
    conn.execute("INSERT INTO lay.accounts VALUES ('hot', 'u', 1000)")
    conn.execute("INSERT INTO lay.positions VALUES ('a', 'hot', 'i1', 95, 0)")
    assert lay.check("hot", mode="request")["hot"].close_request_id is not None
    conn.execute("UPDATE riskd.close_requests SET status = 'done', completed_at = now()")
    sweep(conn, lay.settings)
    assert [s for (s,) in conn.execute("SELECT status FROM riskd.close_requests ORDER BY id")] == [
        "done",
        "pending",
    ]
    assert bare_db.scalar("SELECT count(*) FROM riskd.risk_events") == 1  # no new transition
    conn.execute("UPDATE riskd.close_requests SET status = 'cancelled' WHERE status = 'pending'")
    flatten = dataclasses.replace(
        lay.settings, risk=dataclasses.replace(lay.settings.risk, auto_close="flatten")
    )
    sweep(conn, flatten)
    assert lay.rows() == {("hot", "a"): (0, 0)}
    statuses = [s for (s,) in conn.execute("SELECT status FROM riskd.close_requests ORDER BY id")]
    assert statuses == ["done", "cancelled", "done"]
    sweep(conn, flatten)  # nothing left to close: no empty audit row
    assert bare_db.scalar("SELECT count(*) FROM riskd.close_requests") == 3


def test_dropping_a_mapped_column_is_refused_naming_riskd(layout: Layout) -> None:
    with pytest.raises(psycopg.errors.DependentObjectsStillExist) as refused:
        layout.db.conn.execute('ALTER TABLE lay.positions DROP COLUMN "unrealizedPnL"')
    assert "riskd.platform_positions" in str(refused.value)


def _role_connection(db: Db, role: str) -> psycopg.Connection[Any]:
    return psycopg.connect(psycopg.conninfo.make_conninfo(db.dsn, user=role), autocommit=True)


def test_row_level_security_that_hides_rows_is_refused_in_one_line(bare_db: Db) -> None:
    """I8: a policy the checking role does not pass would make it compute on a subset."""
    make_layout(bare_db, "plain")
    conn = bare_db.conn
    conn.execute("INSERT INTO lay.instruments VALUES ('i1', 'I1', 100, 0.1)")
    conn.execute("INSERT INTO lay.accounts VALUES ('hot', 'u', 1000)")
    conn.execute("INSERT INTO lay.positions VALUES ('a', 'hot', 'i1', 95, 0)")
    conn.execute("CREATE ROLE rls_checker LOGIN")
    try:
        conn.execute("GRANT USAGE ON SCHEMA lay, riskd TO rls_checker")
        conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA lay, riskd TO rls_checker")
        conn.execute("ALTER TABLE lay.positions ENABLE ROW LEVEL SECURITY")
        conn.execute(
            "CREATE POLICY mine ON lay.positions USING"
            " (\"tradingAccountId\" = current_setting('app.account', true))"
        )
        with _role_connection(bare_db, "rls_checker") as checker:
            with pytest.raises(SchemaMappingError) as refused:
                check_visibility(checker, MAPPING)
            assert str(refused.value).startswith(
                "row-level security on lay.positions hides rows from role rls_checker:"
            )
            # the CLI says it in one line, exit 2, before checking anything
            result = cli(
                "check",
                "hot",
                dsn=psycopg.conninfo.make_conninfo(bare_db.dsn, user="rls_checker"),
                env=MAPPING_ENV,
            )
            assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
            assert "row-level security on lay.positions" in result.stderr
            # a policy that lets the role see every row, and nothing restrictive: accepted
            conn.execute(
                "CREATE POLICY riskd_sees_all ON lay.positions FOR SELECT TO rls_checker"
                " USING (true)"
            )
            check_visibility(checker, MAPPING)
            conn.execute(
                "CREATE POLICY narrow ON lay.positions AS RESTRICTIVE USING (quantity < 10)"
            )
            with pytest.raises(SchemaMappingError):
                check_visibility(checker, MAPPING)
        # the owner passes, unless FORCE applies the policies to it too
        check_visibility(conn, MAPPING)  # a superuser
        conn.execute("ALTER ROLE rls_checker BYPASSRLS")
        with _role_connection(bare_db, "rls_checker") as checker:
            check_visibility(checker, MAPPING)
    finally:
        conn.execute("DROP OWNED BY rls_checker CASCADE")
        conn.execute("DROP ROLE rls_checker")


def test_forced_row_level_security_binds_the_owner_too(bare_db: Db) -> None:
    make_layout(bare_db, "plain")
    conn = bare_db.conn
    conn.execute("CREATE ROLE rls_owner LOGIN")
    try:
        conn.execute("GRANT USAGE ON SCHEMA lay TO rls_owner")
        conn.execute("ALTER TABLE lay.positions OWNER TO rls_owner")
        conn.execute("ALTER TABLE lay.positions ENABLE ROW LEVEL SECURITY")
        with _role_connection(bare_db, "rls_owner") as owner:
            check_visibility(owner, MAPPING)
            conn.execute("ALTER TABLE lay.positions FORCE ROW LEVEL SECURITY")
            with pytest.raises(SchemaMappingError, match="hides rows from role rls_owner"):
                check_visibility(owner, MAPPING)
    finally:
        conn.execute("DROP OWNED BY rls_owner CASCADE")
        conn.execute("DROP ROLE rls_owner")


def test_migrate_with_a_changed_mapping_installs_the_capture_again_keeping_riskds_rows(
    server: Any, bare_db: Db
) -> None:
    """I9: the platform's migration renamed a table and a column; `riskd migrate` with the new
    [schema] says so, installs what head renders from the mapping again in place, keeps every
    row of riskd's tables, and ends with the catalog of a fresh install on that mapping."""
    lay = make_layout(bare_db, "plain")
    conn = bare_db.conn
    conn.execute("INSERT INTO lay.instruments VALUES ('i1', 'I1', 100, 0.1)")
    conn.execute("INSERT INTO lay.accounts VALUES ('hot', 'u', 1000), ('calm', 'u', 1000)")
    conn.execute(
        "INSERT INTO lay.positions VALUES ('a', 'hot', 'i1', 95, 0), ('b', 'calm', 'i1', 1, 0)"
    )
    conn.execute("INSERT INTO riskd.account_limits VALUES ('calm', 0.5, 0.6)")
    lay.check("hot", "calm", mode="request")
    kept = {
        t: conn.execute(f"SELECT * FROM riskd.{t} ORDER BY 1").fetchall()  # type: ignore[arg-type]
        for t in ("risk_events", "close_requests", "account_limits", "account_state")
    }
    conn.execute('ALTER TABLE lay.positions RENAME COLUMN "unrealizedPnL" TO unrealized_pnl')
    conn.execute("ALTER TABLE lay.positions RENAME TO book")
    renamed = {
        **MAPPING_ENV,
        "RISKD_SCHEMA_POSITIONS_TABLE": "lay.book",
        "RISKD_SCHEMA_POSITION_PNL": "unrealized_pnl",
    }
    # I1: between the platform's rename and `riskd migrate`, trading writes go on, captured
    conn.execute("TRUNCATE riskd.dirty_accounts")
    conn.execute("UPDATE lay.book SET unrealized_pnl = -1 WHERE id = 'b'")
    conn.execute("UPDATE lay.accounts SET balance = balance + 1 WHERE id = 'calm'")
    assert bare_db.scalar("SELECT array_agg(DISTINCT account_id) FROM riskd.dirty_accounts") == [
        "calm"
    ]
    assert cli("migrate", "--check", dsn=bare_db.dsn, env=renamed).exit_code == 1
    done = cli("migrate", dsn=bare_db.dsn, env=renamed)
    assert done.exit_code == 0, done.output
    assert "installed again for this [schema] mapping" in done.stdout
    assert cli("migrate", "--check", dsn=bare_db.dsn, env=renamed).exit_code == 0
    for table, rows in kept.items():
        assert conn.execute(f"SELECT * FROM riskd.{table} ORDER BY 1").fetchall() == rows  # type: ignore[arg-type]
    # a trade on the renamed table is captured
    conn.execute("TRUNCATE riskd.dirty_accounts")
    conn.execute("UPDATE lay.book SET quantity = 2 WHERE id = 'b'")
    assert bare_db.scalar("SELECT array_agg(DISTINCT account_id) FROM riskd.dirty_accounts") == [
        "calm"
    ]
    # the same catalog as riskd installed fresh on the renamed platform
    with contextmanager(_clone)(server, "reference") as fresh:
        fresh.conn.execute("CREATE SCHEMA lay")
        fresh.conn.execute(ACCOUNTS.format(balance="numeric"))  # type: ignore[arg-type]
        fresh.conn.execute(INSTRUMENTS.format(number="numeric"))  # type: ignore[arg-type]
        fresh.conn.execute(
            LAYOUTS["plain"]
            .replace("{number}", "numeric")
            .replace('"unrealizedPnL"', "unrealized_pnl")
            .replace("lay.positions", "lay.book")  # type: ignore[arg-type]
        )
        mapping = dataclasses.replace(
            MAPPING, positions_table=TableName("lay", "book"), position_pnl="unrealized_pnl"
        )
        migrate.migrate(dataclasses.replace(fresh.settings, schema=mapping))
        expected = catalog(fresh.conn)
    assert catalog(conn) == expected


def test_a_sweep_only_deployment_keeps_no_marks(db: Db) -> None:
    """Finding 12: with no daemon, `riskd sweep` (from a timer) takes the marks it covers."""
    conn = db.conn
    conn.execute("INSERT INTO instruments VALUES ('i1', 'I1', 100, 0.1)")
    conn.execute("INSERT INTO trading_accounts VALUES ('a1', 'u', 1000)")
    conn.execute(
        'INSERT INTO positions (id, "tradingAccountId", "instrumentId", quantity)'
        " VALUES ('p1', 'a1', 'i1', 95)"
    )
    for _ in range(50):
        conn.execute("UPDATE positions SET quantity = quantity + 1")
    conn.execute("UPDATE instruments SET price = price + 1")
    assert db.scalar("SELECT count(*) FROM riskd.dirty_accounts") >= 50
    result = cli("sweep", dsn=db.dsn)
    assert result.exit_code == 0, result.output
    assert db.scalar("SELECT count(*) FROM riskd.dirty_accounts") == 0
    assert db.scalar("SELECT count(*) FROM riskd.dirty_instruments") == 0
    assert db.scalar("SELECT level FROM riskd.account_state WHERE account_id = 'a1'") == "critical"


def test_an_integer_balance_books_whole_units_and_the_audit_says_so(bare_db: Db) -> None:
    lay = make_layout(bare_db, "plain", balance="bigint")
    conn = bare_db.conn
    conn.execute("INSERT INTO lay.instruments VALUES ('i1', 'I1', 100, 0.1)")
    conn.execute("INSERT INTO lay.accounts VALUES ('hot', 'u', 100)")
    conn.execute("INSERT INTO lay.positions VALUES ('a', 'hot', 'i1', 20, -10.5)")
    lay.check("hot")
    detail = bare_db.scalar("SELECT detail FROM riskd.close_requests")
    assert Decimal(str(detail["booked_pnl"])) == Decimal("-11")
    assert lay.balance("hot") == 89


def test_a_close_request_opened_again_is_announced(bare_db: Db) -> None:
    """An account still critical after its request was done gets a new one at its next
    check, and the platform hears of it on riskd_events though no level changed."""
    lay = make_layout(bare_db, "plain")
    conn = bare_db.conn
    conn.execute("INSERT INTO lay.instruments VALUES ('i1', 'I1', 100, 0.1)")
    conn.execute("INSERT INTO lay.accounts VALUES ('hot', 'u', 1000)")
    conn.execute("INSERT INTO lay.positions VALUES ('a', 'hot', 'i1', 95, 0)")
    lay.check("hot", mode="request")
    conn.execute("UPDATE riskd.close_requests SET status = 'done', completed_at = now()")
    with bare_db.connect() as listener:
        listener.execute("LISTEN riskd_events")
        again = lay.check("hot", mode="request")["hot"]
        assert again.event_id is None and again.close_request_id is not None
        (notice,) = list(listener.notifies(timeout=5, stop_after=1))
    assert json.loads(notice.payload)["close_request_id"] == again.close_request_id


@pytest.mark.parametrize("hidden", ["lay.accounts", "lay.positions"])
def test_a_flatten_the_platforms_policies_refuse_becomes_a_close_request(
    bare_db: Db, hidden: str
) -> None:
    """A policy lets the daemon's role read every row (riskd accepts it) but update none: the
    flatten cannot close or book, so it is undone for that account, and the account, still
    recorded critical with its event, gets a pending close request saying why."""
    lay = make_layout(bare_db, "plain")
    conn = bare_db.conn
    conn.execute("INSERT INTO lay.instruments VALUES ('i1', 'I1', 100, 0.1)")
    conn.execute("INSERT INTO lay.accounts VALUES ('hot', 'u', 1000), ('calm', 'u', 1000)")
    conn.execute("INSERT INTO lay.positions VALUES ('a', 'hot', 'i1', 95, -5)")
    conn.execute("INSERT INTO lay.positions VALUES ('b', 'calm', 'i1', 10, 0)")
    conn.execute("CREATE ROLE rls_flattener LOGIN")
    try:
        conn.execute("GRANT USAGE ON SCHEMA lay, riskd TO rls_flattener")
        conn.execute("GRANT ALL ON ALL TABLES IN SCHEMA lay, riskd TO rls_flattener")
        conn.execute("GRANT ALL ON ALL SEQUENCES IN SCHEMA riskd TO rls_flattener")
        conn.execute("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA riskd TO rls_flattener")
        conn.execute(f"ALTER TABLE {hidden} ENABLE ROW LEVEL SECURITY")  # type: ignore[arg-type]
        conn.execute(
            f"CREATE POLICY reads_all ON {hidden} FOR SELECT TO rls_flattener USING (true)"  # type: ignore[arg-type]
        )
        settings = dataclasses.replace(
            lay.settings, risk=dataclasses.replace(lay.settings.risk, auto_close="flatten")
        )
        with _role_connection(bare_db, "rls_flattener") as daemon:
            check_visibility(daemon, MAPPING)  # riskd sees every row: accepted
            results = {r.account_id: r for r in check_accounts(daemon, settings, ["hot", "calm"])}
        assert results["hot"].level == "critical" and results["hot"].event_id is not None
        assert results["hot"].close_request_id is not None
        assert results["calm"].close_request_id is None
        status, detail = conn.execute(
            "SELECT status, detail FROM riskd.close_requests WHERE account_id = 'hot'"
        ).fetchone()  # type: ignore[misc]
        assert status == "pending" and detail["mode"] == "flatten", detail
        assert detail["flatten_failed"], detail
        assert lay.rows()[("hot", "a")] == (Decimal(95), Decimal(-5))  # nothing closed
        assert lay.balance("hot") == 1000  # nothing booked
    finally:
        conn.execute("DROP OWNED BY rls_flattener CASCADE")
        conn.execute("DROP ROLE rls_flattener")


def test_a_domain_balance_is_booked_as_the_column_holds_it_and_the_audit_says_so(
    bare_db: Db,
) -> None:
    bare_db.conn.execute("CREATE DOMAIN public.money2 AS numeric(18, 2)")
    lay = make_layout(bare_db, "plain", balance="public.money2")
    conn = bare_db.conn
    conn.execute("INSERT INTO lay.instruments VALUES ('i1', 'I1', 100, 0.1)")
    conn.execute("INSERT INTO lay.accounts VALUES ('hot', 'u', 100)")
    conn.execute("INSERT INTO lay.positions VALUES ('a', 'hot', 'i1', 20, -10.505)")
    lay.check("hot")
    detail = bare_db.scalar("SELECT detail FROM riskd.close_requests")
    assert Decimal(str(detail["realised_pnl"])) == Decimal("-10.505")
    assert Decimal(str(detail["booked_pnl"])) == lay.balance("hot") - 100
