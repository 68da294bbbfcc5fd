"""psycopg through tests/proxy.py: what a stall and a cut look like to a real client.

The slow tests pin the finding in tests/proxy.py's docstring: a stalled proxy is invisible
to TCP keepalives and ``tcp_user_timeout`` as long as the proxy's kernel buffers have room,
so only an application-level deadline notices it. They test the kernel, not the server, so
they run against one server only.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from conftest import Server
from proxy import TcpProxy
from psycopg.conninfo import conninfo_to_dict, make_conninfo

QUIET = 1.0  # how long "the query does not complete" is watched for
PROMPT = 5.0  # deadline for something that should happen at once
KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 1,
    "keepalives_interval": 1,
    "keepalives_count": 2,
    "tcp_user_timeout": 3000,
}
# Both give up after about 3 s on a dead peer; watch a stalled one for longer.
TCP_BOUND = 3.0
ONE_SERVER = pytest.mark.parametrize(
    "server", ["external" if os.environ.get("RISKD_TEST_DSN") else "pg18"], indirect=True
)


class _Query:
    """A statement run on its own thread, so the test can wait on it with a deadline."""

    def __init__(self, conn: psycopg.Connection[Any], query: str, params: Any = None) -> None:
        self.row: Any = None
        self.error: BaseException | None = None
        self.elapsed = 0.0
        self._thread = threading.Thread(target=self._run, args=(conn, query, params), daemon=True)
        self._thread.start()

    def _run(self, conn: psycopg.Connection[Any], query: str, params: Any) -> None:
        started = time.monotonic()
        try:
            self.row = conn.execute(query, params).fetchone()
        except BaseException as exc:  # handed to the test's thread
            self.error = exc
        self.elapsed = time.monotonic() - started

    def wait(self, timeout: float) -> bool:
        """True if the statement finished (either way) within ``timeout``."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


@pytest.fixture
def proxy(server: Server) -> Iterator[TcpProxy]:
    params = conninfo_to_dict(server.admin_dsn("postgres"))
    host = str(params.get("host") or "localhost")
    if host.startswith("/"):
        pytest.skip("the server is reached over a Unix socket")
    with TcpProxy(host, int(params.get("port") or 5432)) as p:
        yield p


@pytest.fixture
def dsn(server: Server, proxy: TcpProxy) -> str:
    """The server's DSN, through the proxy."""
    return make_conninfo(server.admin_dsn("postgres"), host="127.0.0.1", port=proxy.port)


def test_connections_through_the_proxy(proxy: TcpProxy, dsn: str) -> None:
    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(5)]
    try:
        for i, conn in enumerate(conns):
            assert conn.execute("SELECT %s::int", (i,)).fetchone() == (i,)
        big = conns[0].execute("SELECT repeat('x', 5000000)").fetchone()
        assert big is not None and len(big[0]) == 5_000_000
        assert proxy.connections == 5
    finally:
        for conn in conns:
            conn.close()
    assert proxy.wait_connections(0, PROMPT)


def test_listen_notify_through_the_proxy(dsn: str) -> None:
    with (
        psycopg.connect(dsn, autocommit=True) as listener,
        psycopg.connect(dsn, autocommit=True) as notifier,
    ):
        listener.execute("LISTEN proxy_test")
        notifier.execute("SELECT pg_notify('proxy_test', 'hello')")
        got = [n.payload for n in listener.notifies(timeout=PROMPT, stop_after=1)]
        assert got == ["hello"]


def test_stall_holds_a_query_until_resume(proxy: TcpProxy, dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT 1")
        proxy.stall()
        query = _Query(conn, "SELECT 42")
        assert not query.wait(QUIET), f"finished while stalled: {query.row!r} {query.error!r}"
        assert proxy.connections == 1
        proxy.resume()
        assert query.wait(PROMPT)
        assert query.error is None
        assert query.row == (42,)


def test_drop_all_breaks_the_connection_at_once(proxy: TcpProxy, dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT 1")
        proxy.drop_all()
        query = _Query(conn, "SELECT 1")
        assert query.wait(PROMPT)
        assert isinstance(query.error, psycopg.OperationalError)
        assert conn.broken
    with psycopg.connect(dsn, autocommit=True) as conn:  # the proxy still forwards
        assert conn.execute("SELECT 2").fetchone() == (2,)


@pytest.mark.slow
@ONE_SERVER
def test_keepalives_and_tcp_user_timeout_do_not_see_a_stall(proxy: TcpProxy, dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True, **KEEPALIVES) as conn:
        sock = socket.socket(fileno=conn.fileno())
        try:  # the options really are on the socket, so the test is not vacuous
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 3000
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 1
        finally:
            sock.detach()
        conn.execute("SELECT 1")
        proxy.stall()
        query = _Query(conn, "SELECT 42")
        # The proxy's kernel ACKs the query and answers every keepalive probe.
        assert not query.wait(TCP_BOUND + 2.0), f"{query.error!r} after {query.elapsed:.2f} s"
        proxy.resume()
        assert query.wait(PROMPT)
        assert query.error is None
        assert query.row == (42,)


@pytest.mark.slow
@ONE_SERVER
def test_tcp_user_timeout_fires_once_a_stall_fills_the_buffers(proxy: TcpProxy, dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True, **KEEPALIVES) as conn:
        conn.execute("SELECT 1")
        proxy.stall()
        # More than every socket buffer on the way holds: some of it stays unacknowledged.
        query = _Query(conn, "SELECT length(%s)", ("x" * (64 << 20),))
        assert query.wait(TCP_BOUND + 5.0)
        assert isinstance(query.error, psycopg.OperationalError)
        assert query.elapsed >= TCP_BOUND - 0.5
