"""sd_notify against real datagram sockets the tests bind, as systemd would."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from riskd.daemon.sdnotify import SdNotifier

RECV_TIMEOUT = 2.0  # seconds; a message that is not there by then is not coming


class Receiver:
    """The service manager's end: a bound AF_UNIX datagram socket."""

    def __init__(self, notify_socket: str, address: str | bytes) -> None:
        self.notify_socket = notify_socket  # what goes into $NOTIFY_SOCKET
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(RECV_TIMEOUT)

    def recv(self) -> bytes:
        return self.sock.recv(65536)

    def assert_empty(self) -> None:
        self.sock.setblocking(False)
        try:
            with pytest.raises(BlockingIOError):
                self.sock.recv(65536)
        finally:
            self.sock.settimeout(RECV_TIMEOUT)

    def close(self) -> None:
        self.sock.close()


def _path_receiver(tmp_path: Path) -> Receiver:
    path = tmp_path / "notify"
    assert len(os.fsencode(path)) < 100, "tmp_path too long for an AF_UNIX address"
    return Receiver(str(path), str(path))


def _abstract_receiver(tmp_path: Path) -> Receiver:
    name = f"riskd-test-{uuid.uuid4().hex}"
    return Receiver("@" + name, b"\0" + name.encode())


@pytest.fixture(params=[_path_receiver, _abstract_receiver], ids=["path", "abstract"])
def receiver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Receiver]:
    make: Callable[[Path], Receiver] = request.param
    r = make(tmp_path)
    yield r
    r.close()


@pytest.fixture
def notifier(receiver: Receiver) -> Iterator[SdNotifier]:
    n = SdNotifier({"NOTIFY_SOCKET": receiver.notify_socket})
    yield n
    n.close()


def test_messages_arrive_as_exact_datagrams_in_order(
    receiver: Receiver, notifier: SdNotifier
) -> None:
    assert notifier.enabled
    notifier.ready("listening on riskd_changes")
    notifier.status("checking 12 accounts")
    notifier.watchdog()
    notifier.watchdog()
    notifier.stopping("draining in-flight checks")
    notifier.send("READY=1", "STATUS=listening")

    assert receiver.recv() == b"READY=1\nSTATUS=listening on riskd_changes"
    assert receiver.recv() == b"STATUS=checking 12 accounts"
    assert receiver.recv() == b"WATCHDOG=1"
    assert receiver.recv() == b"WATCHDOG=1"
    assert receiver.recv() == b"STOPPING=1\nSTATUS=draining in-flight checks"
    assert receiver.recv() == b"READY=1\nSTATUS=listening"
    receiver.assert_empty()


def test_ready_and_stopping_without_status(receiver: Receiver, notifier: SdNotifier) -> None:
    notifier.ready()
    notifier.stopping()
    assert receiver.recv() == b"READY=1"
    assert receiver.recv() == b"STOPPING=1"
    receiver.assert_empty()


def test_status_is_one_line_and_utf8(receiver: Receiver, notifier: SdNotifier) -> None:
    notifier.status("lag 3 ms\nerrors: 0\r\nlevel=warning\rend – ok")
    assert receiver.recv() == "STATUS=lag 3 ms errors: 0 level=warning end – ok".encode()
    notifier.status("bad \udcff surrogate")  # never an exception, whatever the text
    assert receiver.recv() == b"STATUS=bad ? surrogate"


def test_close_is_idempotent_and_a_later_send_still_arrives(
    receiver: Receiver, notifier: SdNotifier
) -> None:
    notifier.watchdog()
    notifier.close()
    notifier.close()
    notifier.stopping()
    assert receiver.recv() == b"WATCHDOG=1"
    assert receiver.recv() == b"STOPPING=1"


def test_a_field_that_would_break_the_protocol_is_refused(notifier: SdNotifier) -> None:
    with pytest.raises(ValueError, match="KEY=value"):
        notifier.send("READY=1", "STATUS=two\nlines")
    with pytest.raises(ValueError, match="KEY=value"):
        notifier.send("READY")
    with pytest.raises(ValueError, match="KEY=value"):  # a bug shows without systemd too
        SdNotifier({}).send("STATUS=a\nb")


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}], ids=["unset", "empty"])
def test_disabled_without_notify_socket(
    environ: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_socket(*args: object, **kwargs: object) -> socket.socket:
        raise AssertionError("a disabled notifier must not open a socket")

    monkeypatch.setattr(socket, "socket", no_socket)  # undone after the test
    n = SdNotifier({**environ, "WATCHDOG_USEC": "30000000"})
    assert not n.enabled
    assert n.watchdog_interval() is None
    n.ready("x")
    n.status("x")
    n.watchdog()
    n.stopping("x")
    n.send("READY=1")
    n.close()


def test_unsupported_socket_kind_is_disabled_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="riskd.sdnotify"):
        n = SdNotifier({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not n.enabled
    assert [r.getMessage() for r in caplog.records] == ["sdnotify.unsupported_socket"]
    n.ready()


def test_default_environ_is_os_environ(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.notify_socket)
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    n = SdNotifier()
    n.watchdog()
    n.close()
    assert receiver.recv() == b"WATCHDOG=1"
    assert n.watchdog_interval() == 2.0


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 15.0),
        ("30000000", "self", 15.0),
        ("1", None, 0.0000005),
        ("30000000", "other", None),
        ("30000000", "not-a-pid", None),
        (None, None, None),
        ("", None, None),
        ("0", None, None),
        ("-30000000", None, None),
        ("30s", None, None),
        ("3e7", None, None),
        ("30000000.5", None, None),
    ],
)
def test_watchdog_interval(usec: str | None, pid: str | None, expected: float | None) -> None:
    environ = {"NOTIFY_SOCKET": "/run/systemd/notify"}
    if usec is not None:
        environ["WATCHDOG_USEC"] = usec
    if pid == "self":
        environ["WATCHDOG_PID"] = str(os.getpid())
    elif pid == "other":
        environ["WATCHDOG_PID"] = str(os.getpid() + 1)
    elif pid is not None:
        environ["WATCHDOG_PID"] = pid
    assert SdNotifier(environ).watchdog_interval() == expected


def test_watchdog_interval_needs_a_notify_socket() -> None:
    assert SdNotifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval() is None


def _failures(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "riskd.sdnotify"]


def test_a_vanished_socket_is_logged_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = _path_receiver(tmp_path)
    n = SdNotifier({"NOTIFY_SOCKET": receiver.notify_socket})
    n.ready()
    assert receiver.recv() == b"READY=1"
    receiver.close()
    (tmp_path / "notify").unlink()  # the service manager went away

    with caplog.at_level(logging.DEBUG, logger="riskd.sdnotify"):
        n.watchdog()
        n.status("still checking")
        n.stopping()
    assert _failures(caplog) == [
        (logging.WARNING, "sdnotify.send_failed"),
        (logging.DEBUG, "sdnotify.send_failed"),
        (logging.DEBUG, "sdnotify.send_failed"),
    ]
    failure = caplog.records[0]
    assert failure.notify_socket == receiver.notify_socket  # type: ignore[attr-defined]

    # the manager comes back on the same address (re-exec): messages flow again
    back = _path_receiver(tmp_path)
    try:
        n.watchdog()
        assert back.recv() == b"WATCHDOG=1"
    finally:
        back.close()
        n.close()


def test_a_never_bound_abstract_socket_does_not_raise(caplog: pytest.LogCaptureFixture) -> None:
    n = SdNotifier({"NOTIFY_SOCKET": f"@riskd-test-nobody-{uuid.uuid4().hex}"})
    with caplog.at_level(logging.DEBUG, logger="riskd.sdnotify"):
        n.ready("up")
        n.watchdog()
    n.close()
    assert [level for level, _ in _failures(caplog)] == [logging.WARNING, logging.DEBUG]


def test_a_full_receive_queue_drops_messages_instead_of_blocking(
    receiver: Receiver, notifier: SdNotifier, caplog: pytest.LogCaptureFixture
) -> None:
    # Nobody reads: a blocking socket would hang here once the kernel queue is full
    # (net.unix.max_dgram_qlen, 10 by default); pytest-timeout would then fail the test.
    with caplog.at_level(logging.WARNING, logger="riskd.sdnotify"):
        for _ in range(10_000):
            notifier.watchdog()
            if caplog.records:
                break
    assert _failures(caplog) == [(logging.WARNING, "sdnotify.send_failed")]
    assert receiver.recv() == b"WATCHDOG=1"  # what was queued is intact
