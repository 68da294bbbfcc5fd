"""A TCP proxy the fault tests control: forward, stall silently, cut abruptly.

One background thread runs a ``selectors`` loop over the listening socket, a wake-up
socket pair and both sockets of every proxied connection; the test's thread talks to it
only through commands that the loop runs between two ``select`` calls, so when
``stall()``, ``resume()`` or ``drop_all()`` returns the change is in force (no byte is
forwarded after ``stall()`` returns). Nothing polls: a stalled proxy watches only the
listening and wake-up sockets and sleeps in ``select``.

Semantics:

- ``stall()`` is a silent partition. No socket is closed, no FIN or RST is sent; the proxy
  simply stops reading and writing on every connection, existing and new, so a FIN or RST
  from one peer reaches the other only after ``resume()``. New connections
  are accepted (the kernel completes the handshake anyway) but the upstream side is not
  dialled until ``resume()``, as if the SYN had been lost.
- ``resume()`` delivers, late, whatever was held: bytes already read into the proxy's
  buffers and bytes waiting in the kernel's socket buffers. Nothing is dropped. That is
  what the peers would see once a real partition heals, since their TCP retransmits.
- ``drop_all()`` closes both sockets of every current connection with ``SO_LINGER`` 0,
  so each peer gets an RST: an abrupt cut, noticed at once.
- A half-close (``shutdown(SHUT_WR)``) is forwarded as one once the bytes before it are
  delivered; the connection closes when both directions have ended. A reset or error on
  one side resets the other.

What a stalled proxy does *not* look like: a dead peer. Measured on loopback (Linux 6.18,
libpq 18) with ``keepalives_idle=1, keepalives_interval=1, keepalives_count=2,
tcp_user_timeout=3000`` (both give up on a dead peer after about 3 s):

- a query sent during the stall got no error in 30 s, and completed at once on resume;
- a connection idle through the stall: its socket reported nothing (no readability,
  ``SO_ERROR`` 0) in 30 s;
- a 64 MB statement sent during the stall failed with ``OperationalError`` ("server closed
  the connection unexpectedly") after 3.5 s.

The proxy's *kernel* ACKs every segment it receives and answers every keepalive probe,
whatever the proxy process does. While its buffers have room (any ordinary query) no data
stays unacknowledged, so ``tcp_user_timeout`` never starts counting, and keepalives see a
live peer. Only once the stall has filled every buffer on the way does data stay unacked
(zero-window probes), and ``tcp_user_timeout`` fires. A real middlebox that stops
forwarding but keeps its TCP state (a proxy, a pgbouncer, a load balancer whose backend
froze) behaves the same. (A partition that drops packets is different: nothing ACKs,
so ``tcp_user_timeout`` bounds any query and keepalives an idle connection.) So a stall
is only detectable end to end: an application-level ping with a deadline (``SELECT 1``
awaited with a timeout), which is what the daemon does. The integration tests in
``test_proxy_pg.py`` pin these findings.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import struct
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

_CHUNK = 64 * 1024
_BUFFER_LIMIT = 256 * 1024  # per direction; reading stops above it (back-pressure)
_COMMAND_TIMEOUT = 10.0


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` so that the peer gets an RST rather than a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _Pipe:
    """One direction of a connection: bytes read from ``src`` waiting to go to ``dst``."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.eof = False  # src sent FIN
        self.shut = False  # FIN forwarded to dst


class _Conn:
    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.connecting = False
        self.closed = False
        self.up = _Pipe()  # client -> upstream
        self.down = _Pipe()  # upstream -> client

    def sockets(self) -> list[socket.socket]:
        return [self.client] if self.upstream is None else [self.client, self.upstream]

    def done(self) -> bool:
        return self.up.shut and self.down.shut


class TcpProxy:
    """Forward ``listen_host:<ephemeral port>`` to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1") -> None:
        self._target = (target_host, target_port)
        self._target_family = socket.AF_INET
        self._target_address: Any = self._target  # a sockaddr for _target_family
        self._listen_host = listen_host
        self._listener: socket.socket | None = None
        self._port = 0
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._commands: list[tuple[Callable[[], None], threading.Event]] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._conns: dict[socket.socket, _Conn] = {}  # both sockets of each connection
        self._count = 0
        self._stalled = False
        self._running = False
        self._closed = False

    # --- the test's side -------------------------------------------------------------

    def start(self) -> None:
        """Listen on an ephemeral port and forward from a background thread."""
        family, _, _, _, address = socket.getaddrinfo(*self._target, type=socket.SOCK_STREAM)[0]
        self._target_family, self._target_address = family, address
        listen_family = socket.AF_INET6 if ":" in self._listen_host else socket.AF_INET
        listener = socket.create_server((self._listen_host, 0), family=listen_family, backlog=128)
        listener.setblocking(False)
        self._listener = listener
        self._port = listener.getsockname()[1]
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="tcp-proxy", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("TcpProxy not started")
        return self._port

    @property
    def connections(self) -> int:
        """Client connections currently open (accepted and not yet closed)."""
        return self._count

    def wait_connections(self, count: int, timeout: float) -> bool:
        """Wait until exactly ``count`` client connections are open; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self._count == count, timeout)

    def stall(self) -> None:
        """Stop forwarding on every connection, closing nothing (see the module doc)."""
        self._call(self._set_stalled, True)

    def resume(self) -> None:
        """Forward again, delivering late whatever was held during the stall."""
        self._call(self._set_stalled, False)

    def drop_all(self) -> None:
        """Reset both sides of every current connection; new ones are still accepted."""
        self._call(self._drop_all)

    def close(self) -> None:
        """Stop accepting, reset every connection, join the thread. Idempotent."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._call(self._stop)
            thread.join(_COMMAND_TIMEOUT)
        self._thread = None
        self._close_everything()

    def __enter__(self) -> TcpProxy:
        if self._listener is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, fn: Callable[..., None], *args: object) -> None:
        """Run ``fn`` on the loop thread and wait until it has run."""
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("TcpProxy is not running")
        done = threading.Event()
        with self._lock:
            self._commands.append((lambda: fn(*args), done))
        with contextlib.suppress(BlockingIOError):
            self._wake_w.send(b"x")
        if not done.wait(_COMMAND_TIMEOUT):
            raise RuntimeError("TcpProxy loop did not answer")

    # --- the loop thread -------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while self._running:
                events = self._selector.select()
                self._run_commands()
                for key, mask in events:
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._listener:
                        self._accept()
                    elif sock in self._conns:  # not closed by an earlier event
                        self._service(self._conns[sock], sock, mask)
                self._update_interest()
        finally:
            self._running = False
            self._run_commands()  # release any waiter

    def _run_commands(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass
        with self._lock:
            commands, self._commands = self._commands, []
        for fn, done in commands:
            try:
                if self._running:
                    fn()
            finally:
                done.set()

    def _set_stalled(self, stalled: bool) -> None:
        self._stalled = stalled
        if not stalled:
            for conn in self._each_conn():
                if conn.upstream is None and not conn.closed:
                    self._dial(conn)
        self._update_interest()

    def _drop_all(self) -> None:
        for conn in self._each_conn():
            self._close(conn, reset=True)

    def _stop(self) -> None:
        self._running = False

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. EMFILE, or the client gave up already
                return
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(client)
            self._conns[client] = conn
            self._set_count(+1)
            if not self._stalled:
                self._dial(conn)

    def _dial(self, conn: _Conn) -> None:
        upstream = socket.socket(self._target_family, socket.SOCK_STREAM)
        upstream.setblocking(False)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = upstream.connect_ex(self._target_address)
        conn.upstream = upstream
        conn.connecting = err in (errno.EINPROGRESS, errno.EWOULDBLOCK)
        self._conns[upstream] = conn
        if err and not conn.connecting:
            self._close(conn, reset=True)

    def _service(self, conn: _Conn, sock: socket.socket, mask: int) -> None:
        try:
            if conn.connecting and sock is conn.upstream:
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, "upstream connect failed")
                conn.connecting = False
            if self._stalled:
                return
            if sock is conn.client:
                src_pipe, dst_pipe, dst = conn.up, conn.down, conn.upstream
            else:
                src_pipe, dst_pipe, dst = conn.down, conn.up, conn.client
            if mask & selectors.EVENT_READ and not src_pipe.eof:
                data = sock.recv(_CHUNK)
                if data:
                    src_pipe.buf += data
                else:
                    src_pipe.eof = True
            if mask & selectors.EVENT_WRITE and dst_pipe.buf:
                sent = sock.send(dst_pipe.buf)
                del dst_pipe.buf[:sent]
            if dst is not None and not conn.connecting:
                self._flush(src_pipe, dst)
            self._finish_half_close(dst_pipe, sock)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close(conn, reset=True)
            return
        if conn.done():
            self._close(conn, reset=False)

    def _flush(self, pipe: _Pipe, dst: socket.socket) -> None:
        """Send what ``pipe`` holds straight away (the usual case: ``dst`` has room)."""
        if pipe.buf:
            sent = dst.send(pipe.buf)
            del pipe.buf[:sent]
        self._finish_half_close(pipe, dst)

    @staticmethod
    def _finish_half_close(pipe: _Pipe, dst: socket.socket) -> None:
        if pipe.eof and not pipe.buf and not pipe.shut:
            dst.shutdown(socket.SHUT_WR)
            pipe.shut = True

    def _update_interest(self) -> None:
        for conn in self._each_conn():
            for sock in conn.sockets():
                self._watch(sock, self._interest(conn, sock))

    def _watch(self, sock: socket.socket, events: int) -> None:
        """Select ``sock`` for ``events``; for none, unregister it.

        A socket left registered with no events would still report hang-ups and errors
        (epoll always does), and a stalled proxy must sleep, not spin on them.
        """
        try:
            key = self._selector.get_key(sock)
        except KeyError:
            if events:
                self._selector.register(sock, events)
            return
        if not events:
            self._selector.unregister(sock)
        elif key.events != events:
            self._selector.modify(sock, events)

    def _each_conn(self) -> list[_Conn]:
        """Every connection once (``_conns`` maps both of its sockets to it)."""
        return list({id(c): c for c in self._conns.values()}.values())

    def _interest(self, conn: _Conn, sock: socket.socket) -> int:
        if sock is conn.upstream and conn.connecting:
            return selectors.EVENT_WRITE  # writable once connected, stalled or not
        if self._stalled or conn.upstream is None:
            return 0
        src_pipe, dst_pipe = (conn.up, conn.down) if sock is conn.client else (conn.down, conn.up)
        events = 0
        if not src_pipe.eof and len(src_pipe.buf) < _BUFFER_LIMIT:
            events |= selectors.EVENT_READ
        if dst_pipe.buf or (dst_pipe.eof and not dst_pipe.shut):
            events |= selectors.EVENT_WRITE
        return events

    def _close(self, conn: _Conn, *, reset: bool) -> None:
        if conn.closed:
            return
        conn.closed = True
        for sock in conn.sockets():
            self._conns.pop(sock, None)
            self._watch(sock, 0)
            if reset:
                _reset(sock)
            else:
                sock.close()
        self._set_count(-1)

    def _set_count(self, delta: int) -> None:
        with self._changed:
            self._count += delta
            self._changed.notify_all()

    def _close_everything(self) -> None:
        if self._closed:
            return
        self._closed = True
        for conn in self._each_conn():
            self._close(conn, reset=True)
        if self._listener is not None:
            self._watch(self._listener, 0)
            self._listener.close()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
