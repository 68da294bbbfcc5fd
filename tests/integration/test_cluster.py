"""The throwaway cluster, on every PostgreSQL major installed here (15 and 18 on CI)."""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from riskd.sandbox.cluster import ClusterError, PgCluster, find_bindirs

BINDIRS = find_bindirs()


def test_two_server_majors_are_found() -> None:
    if os.environ.get("RISKD_TEST_DSN"):
        pytest.skip("RISKD_TEST_DSN names the server to test against")
    assert len(BINDIRS) >= 2, f"need PostgreSQL 15 and 18 binaries, found {BINDIRS}"


@pytest.fixture(params=sorted(BINDIRS), ids=lambda major: f"pg{major}")
def major(request: pytest.FixtureRequest) -> int:
    value: int = request.param
    return value


@pytest.fixture
def bindir(major: int) -> Path:
    return BINDIRS[major]


@pytest.fixture(scope="module", params=sorted(BINDIRS), ids=lambda major: f"pg{major}")
def shared(request: pytest.FixtureRequest) -> Iterator[PgCluster]:
    """One cluster per major for the tests that leave it running: initdb is the slow part."""
    with PgCluster(BINDIRS[request.param], settings={"max_connections": "37"}) as cluster:
        yield cluster


@pytest.fixture
def cluster(shared: PgCluster) -> PgCluster:
    shared.start()  # in case a failed test left it stopped
    return shared


def _show(dsn: str, name: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(f"SHOW {name}").fetchone()
    assert row is not None
    return str(row[0])


def test_start_serves_its_major_on_loopback(cluster: PgCluster) -> None:
    assert int(_show(cluster.dsn(), "server_version_num")) // 10000 == cluster.major
    assert cluster.major == next(m for m, b in BINDIRS.items() if b == cluster.bindir)
    assert _show(cluster.dsn(), "listen_addresses") == "127.0.0.1"
    assert _show(cluster.dsn(), "unix_socket_directories") == str(cluster.socket_dir)
    assert cluster.socket_dir.parent == cluster.root
    for name in ("fsync", "synchronous_commit", "full_page_writes"):
        assert _show(cluster.dsn(), name) == "off"
    # Over the unix socket as well, as the superuser "postgres", without a password.
    with psycopg.connect(host=str(cluster.socket_dir), port=cluster.port, user="postgres",
                         dbname="postgres") as conn:  # fmt: skip
        row = conn.execute("SELECT current_user, usesuper FROM pg_user"
                           " WHERE usename = current_user").fetchone()  # fmt: skip
    assert row == ("postgres", True)


def test_settings_survive_restart(cluster: PgCluster) -> None:
    assert _show(cluster.dsn(), "max_connections") == "37"
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        # ALTER SYSTEM still has the last word over the cluster's own settings file.
        conn.execute("ALTER SYSTEM SET max_connections = 41")
        before = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
    port = cluster.port

    cluster.restart()

    assert cluster.port == port
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT pg_postmaster_start_time()").fetchone() != before
        assert _show(cluster.dsn(), "max_connections") == "41"
        conn.execute("ALTER SYSTEM RESET max_connections")
    cluster.restart()
    assert _show(cluster.dsn(), "max_connections") == "37"


def test_kill_then_start_recovers(cluster: PgCluster) -> None:
    conn = psycopg.connect(cluster.dsn(), autocommit=True)
    # Made durable before the crash: the cluster defaults to synchronous_commit=off.
    conn.execute("SET synchronous_commit = on")
    conn.execute("CREATE TABLE kept AS SELECT generate_series(1, 1000) AS n")

    cluster.kill()

    assert not cluster.running
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()
    cluster.start()
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM kept").fetchone() == (1000,)
        conn.execute("DROP TABLE kept")
    assert "automatic recovery in progress" in cluster.log_path.read_text()


def test_a_given_root_is_used_then_cleanup_removes_it(bindir: Path) -> None:
    # Under the temp dir itself: when we are root the server runs as "nobody", who cannot
    # enter pytest's tmp_path.
    root = Path(tempfile.gettempdir()) / f"riskd-test-{uuid.uuid4().hex[:8]}"
    cluster = PgCluster(bindir, root=root)
    cluster.start()
    dsn = cluster.dsn()
    assert _show(dsn, "data_directory") == str(root / "data")

    cluster.cleanup()

    assert not root.exists()
    assert not cluster.running
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)
    cluster.cleanup()  # a second time is harmless


def test_a_foreign_directory_is_refused(bindir: Path, tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("not a cluster")
    with pytest.raises(ClusterError, match="neither empty nor"):
        PgCluster(bindir, root=tmp_path)
    assert (tmp_path / "precious.txt").exists()


def test_a_taken_port_is_replaced(bindir: Path) -> None:
    cluster = PgCluster(bindir)
    taken = cluster.port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        try:
            cluster.start()
            assert cluster.port != taken
            assert _show(cluster.dsn(), "port") == str(cluster.port)
        finally:
            cluster.cleanup()


def test_a_taken_explicit_port_fails_with_the_server_log(bindir: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        cluster = PgCluster(bindir, port=squatter.getsockname()[1])
        try:
            with pytest.raises(ClusterError, match="Address already in use"):
                cluster.start()
        finally:
            cluster.cleanup()


def test_a_failed_start_reports_the_server_log(bindir: Path) -> None:
    cluster = PgCluster(bindir, settings={"shared_buffers": "plenty"})
    try:
        with pytest.raises(ClusterError, match='invalid value for parameter "shared_buffers"'):
            cluster.start()
        assert not cluster.running
    finally:
        cluster.cleanup()
    assert not cluster.root.exists()


def test_the_network_settings_are_the_clusters_own(bindir: Path) -> None:
    with pytest.raises(ClusterError, match="port="):
        PgCluster(bindir, settings={"port": "5432"})
