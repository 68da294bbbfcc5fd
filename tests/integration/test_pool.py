"""The daemon's pool (riskd/db.py): what every connection it hands out is set up with."""

from __future__ import annotations

import asyncio

from conftest import Db

from riskd.db import apool, session_values


def test_pool_connections_use_generic_plans_from_the_first_call(db: Db) -> None:
    """The check and the drain are written to plan well without the batch's values, and are
    measured so (bench/check_cost.py); PostgreSQL would otherwise re-plan them on every call."""

    async def settings() -> tuple[str, str, bool]:
        pool = apool(db.dsn, 10.0, session_values(db.settings))
        await pool.open(wait=True)
        try:
            async with pool.connection() as conn:
                cur = await conn.execute("SHOW plan_cache_mode")
                row = await cur.fetchone()
                assert row is not None
                return row[0], str(conn.info.parameter_status("application_name")), conn.autocommit
        finally:
            await pool.close()

    assert asyncio.run(settings()) == ("force_generic_plan", "riskd", True)
