"""tests/proxy.py against local servers: forwarding, half-close, stall, resume, cuts."""

from __future__ import annotations

import contextlib
import os
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from proxy import TcpProxy

QUIET = 0.3  # how long "nothing happens" is watched for
PROMPT = 5.0  # deadline for something that should happen at once


class _Upstream(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # the default 5 drops SYNs under 50 quick connects

    def __init__(self, handler: type[socketserver.BaseRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.changed = threading.Condition()
        self.accepted = 0
        self.received = bytearray()
        self.ended: list[str] = []  # "eof" or "reset", one per finished connection

    @property
    def port(self) -> int:
        port: int = self.server_address[1]
        return port

    def note(self, data: bytes = b"", accepted: int = 0, ended: str | None = None) -> None:
        with self.changed:
            self.received += data
            self.accepted += accepted
            if ended:
                self.ended.append(ended)
            self.changed.notify_all()

    def wait(self, predicate: object, timeout: float = PROMPT) -> bool:
        with self.changed:
            return self.changed.wait_for(predicate, timeout)  # type: ignore[arg-type]  # a callable


class _Echo(socketserver.BaseRequestHandler):
    """Echo everything; on EOF echo what is left, then half-close."""

    server: _Upstream

    def handle(self) -> None:
        sock: socket.socket = self.request
        self.server.note(accepted=1)
        try:
            while data := sock.recv(65536):
                self.server.note(data)
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            self.server.note(ended="eof")
        except OSError:
            self.server.note(ended="reset")


class _Banner(socketserver.BaseRequestHandler):
    """Send a banner and half-close at once, then read until the client's EOF."""

    server: _Upstream

    def handle(self) -> None:
        sock: socket.socket = self.request
        self.server.note(accepted=1)
        sock.sendall(b"banner")
        sock.shutdown(socket.SHUT_WR)
        try:
            while data := sock.recv(65536):
                self.server.note(data)
            self.server.note(ended="eof")
        except OSError:
            self.server.note(ended="reset")


def _serve(handler: type[socketserver.BaseRequestHandler]) -> Iterator[_Upstream]:
    server = _Upstream(handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(PROMPT)


@pytest.fixture
def echo() -> Iterator[_Upstream]:
    yield from _serve(_Echo)


@pytest.fixture
def banner() -> Iterator[_Upstream]:
    yield from _serve(_Banner)


@pytest.fixture
def proxy(echo: _Upstream) -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", echo.port) as p:
        yield p


def _connect(proxy: TcpProxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=PROMPT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _recv_exactly(sock: socket.socket, size: int, timeout: float = PROMPT) -> bytes:
    sock.settimeout(timeout)
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"EOF after {len(data)} of {size} bytes"
        data += chunk
    return bytes(data)


def _recv_to_eof(sock: socket.socket, timeout: float = PROMPT) -> bytes:
    sock.settimeout(timeout)
    data = bytearray()
    while chunk := sock.recv(1 << 20):
        data += chunk
    return bytes(data)


def _send_then_eof(sock: socket.socket, payload: bytes) -> None:
    with contextlib.suppress(OSError):  # the test closed the socket: it has failed already
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)


def _roundtrip(sock: socket.socket, payload: bytes = b"ping") -> None:
    sock.sendall(payload)
    assert _recv_exactly(sock, len(payload)) == payload


def _assert_silent(sock: socket.socket) -> None:
    """Neither data, nor EOF, nor an error reaches ``sock`` for QUIET seconds."""
    sock.settimeout(QUIET)
    with pytest.raises(TimeoutError):
        got = sock.recv(1)
        pytest.fail(f"expected silence, got {got!r}")


def _thread_cpu(thread: threading.Thread) -> float:
    """User + system CPU seconds of ``thread`` (Linux /proc)."""
    stat = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_large_payload_both_ways_intact(proxy: TcpProxy) -> None:
    payload = os.urandom(16 * 1024 * 1024)
    with _connect(proxy) as sock:
        sender = threading.Thread(target=_send_then_eof, args=(sock, payload), daemon=True)
        sender.start()
        echoed = _recv_to_eof(sock)  # the echo's half-close, forwarded after the last byte
        sender.join(PROMPT)
    assert len(echoed) == len(payload)
    assert echoed == payload
    assert proxy.wait_connections(0, PROMPT)


def test_half_close_each_way(banner: _Upstream) -> None:
    with TcpProxy("127.0.0.1", banner.port) as proxy, _connect(proxy) as sock:
        assert _recv_to_eof(sock) == b"banner"  # upstream's FIN reached the client
        sock.sendall(b"still writing")  # and the client's side is still open
        sock.shutdown(socket.SHUT_WR)
        assert banner.wait(lambda: banner.ended == ["eof"])
        assert bytes(banner.received) == b"still writing"
        assert proxy.wait_connections(0, PROMPT)


def test_many_connections(proxy: TcpProxy, echo: _Upstream) -> None:
    socks = [_connect(proxy) for _ in range(50)]
    try:
        for i, sock in enumerate(socks):
            _roundtrip(sock, f"conn {i}".encode())
        assert proxy.connections == 50
        assert echo.accepted == 50
    finally:
        for sock in socks:
            sock.close()
    assert proxy.wait_connections(0, PROMPT)


def test_stall_holds_bytes_without_closing_and_resume_delivers_them(
    proxy: TcpProxy, echo: _Upstream
) -> None:
    with _connect(proxy) as sock:
        _roundtrip(sock)
        proxy.stall()
        sock.sendall(b"during stall")  # the write itself succeeds: nothing looks wrong
        _assert_silent(sock)
        assert bytes(echo.received) == b"ping"  # not delivered upstream either
        assert echo.ended == []
        assert proxy.connections == 1

        proxy.resume()
        assert _recv_exactly(sock, len(b"during stall")) == b"during stall"  # late, intact
        _roundtrip(sock, b"after")


def _held_for_client(proxy: TcpProxy) -> int:
    """Bytes the proxy read from upstream and could not yet write to the client.

    Asked on the proxy's own thread. Once the client's buffers are full and it does not
    read, this only grows: nothing but a drop can take bytes out of it.
    """
    held: list[int] = []
    proxy._call(lambda: held.append(sum(len(c.down.buf) for c in proxy._each_conn())))
    return held[0]


def test_stall_mid_transfer_loses_nothing(proxy: TcpProxy) -> None:
    payload = os.urandom(24 * 1024 * 1024)
    with socket.socket() as sock:
        # A small fixed receive buffer: the proxy cannot drain its own into it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        sock.connect(("127.0.0.1", proxy.port))
        sender = threading.Thread(target=_send_then_eof, args=(sock, payload), daemon=True)
        sender.start()  # and nothing reads: the echo backs up into the proxy's own buffers
        deadline = time.monotonic() + PROMPT
        while _held_for_client(proxy) < 64 * 1024:
            assert time.monotonic() < deadline, "the proxy never held any bytes"
            threading.Event().wait(0.01)
        proxy.stall()
        assert _held_for_client(proxy) >= 64 * 1024  # held, not dropped, while stalled
        proxy.resume()
        echoed = _recv_to_eof(sock)
        sender.join(PROMPT)
    assert len(echoed) == len(payload)
    assert echoed == payload


def test_stall_accepts_new_connections_but_dials_upstream_only_on_resume(
    proxy: TcpProxy, echo: _Upstream
) -> None:
    proxy.stall()
    with _connect(proxy) as sock:
        sock.sendall(b"hello")
        assert proxy.wait_connections(1, PROMPT)
        _assert_silent(sock)
        assert echo.accepted == 0
        proxy.resume()
        assert _recv_exactly(sock, 5) == b"hello"
        assert echo.accepted == 1


def test_stall_hides_hang_ups_and_does_not_spin(proxy: TcpProxy, echo: _Upstream) -> None:
    with _connect(proxy) as sock, _connect(proxy) as doomed:
        _roundtrip(sock)
        _roundtrip(doomed)
        proxy.stall()
        sock.sendall(b"x" * 100_000)
        sock.shutdown(socket.SHUT_WR)  # a FIN waiting on the proxy
        doomed.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        doomed.close()  # an RST: epoll reports it on any registered socket, asked or not
        thread = proxy._thread
        assert thread is not None
        cpu_before = _thread_cpu(thread)
        _assert_silent(sock)
        assert _thread_cpu(thread) - cpu_before < 0.05  # slept in select the whole time
        assert echo.ended == []
        assert proxy.connections == 2
        proxy.resume()
        assert _recv_to_eof(sock) == b"x" * 100_000
    assert echo.wait(lambda: sorted(echo.ended) == ["eof", "reset"])


def test_drop_all_resets_both_sides_promptly(proxy: TcpProxy, echo: _Upstream) -> None:
    socks = [_connect(proxy) for _ in range(3)]
    for sock in socks:
        _roundtrip(sock)
    proxy.drop_all()
    assert proxy.connections == 0  # done when drop_all returns
    for sock in socks:
        sock.settimeout(PROMPT)
        with pytest.raises(ConnectionResetError):
            sock.recv(1)
        sock.close()
    assert echo.wait(lambda: echo.ended == ["reset"] * 3)
    with _connect(proxy) as sock:  # still accepting
        _roundtrip(sock)


def test_drop_all_while_stalled(proxy: TcpProxy) -> None:
    with _connect(proxy) as sock:
        _roundtrip(sock)
        proxy.stall()
        started = time.monotonic()
        proxy.drop_all()
        sock.settimeout(PROMPT)
        with pytest.raises(ConnectionResetError):
            sock.recv(1)
        assert time.monotonic() - started < 1.0


def test_upstream_refusing_resets_the_client() -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]
    with TcpProxy("127.0.0.1", port) as proxy:
        with pytest.raises(ConnectionResetError), _connect(proxy) as sock:  # or at connect()
            sock.settimeout(PROMPT)
            sock.recv(1)
        assert proxy.wait_connections(0, PROMPT)


def test_close_cuts_everything_and_stops_listening(proxy: TcpProxy) -> None:
    sock = _connect(proxy)
    _roundtrip(sock)
    thread = proxy._thread
    assert thread is not None
    proxy.close()
    assert not thread.is_alive()
    sock.settimeout(PROMPT)
    with pytest.raises(ConnectionResetError):
        sock.recv(1)
    sock.close()
    with pytest.raises(ConnectionRefusedError):
        _connect(proxy)
    proxy.close()  # idempotent
