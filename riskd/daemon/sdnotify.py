"""The sd_notify protocol, spoken directly: READY, STATUS, WATCHDOG and STOPPING to systemd.

systemd names an AF_UNIX datagram socket in ``$NOTIFY_SOCKET`` (a leading ``@`` means the
abstract namespace); each message is one datagram of ``KEY=value`` lines. Without the variable
every call is a no-op, so the daemon calls these unconditionally. The protocol is this small,
so it is implemented here rather than pulled in as a dependency.

A failed send never reaches the daemon: systemd being restarted or its socket being full must
not stop risk checks. The first failure is logged at warning, later ones at debug. The socket
is non-blocking so that a full receive queue drops a message instead of stalling the event
loop; a lost WATCHDOG=1 is followed by another half a watchdog interval later.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Mapping

log = logging.getLogger("riskd.sdnotify")

_NEWLINES = re.compile(r"\r\n|[\r\n]")


def _address(name: str) -> bytes | None:
    """The socket address for ``$NOTIFY_SOCKET``, or None when it names no AF_UNIX socket."""
    if name.startswith("@"):
        return b"\0" + os.fsencode(name[1:])
    if name.startswith("/"):
        return os.fsencode(name)
    return None  # e.g. systemd's "vsock:" form, for virtual machines: not ours to speak


class SdNotifier:
    """Messages to the service manager; every method does nothing outside systemd.

    ``environ`` is read for ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` (default
    ``os.environ``); the values are taken once, here.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env: Mapping[str, str] = os.environ if environ is None else environ
        self._socket_name = env.get("NOTIFY_SOCKET", "")
        self._watchdog_usec = env.get("WATCHDOG_USEC", "")
        self._watchdog_pid = env.get("WATCHDOG_PID", "")
        self._address = _address(self._socket_name) if self._socket_name else None
        self._sock: socket.socket | None = None
        self._warned = False
        if self._socket_name and self._address is None:
            log.warning("sdnotify.unsupported_socket", extra={"notify_socket": self._socket_name})

    @property
    def enabled(self) -> bool:
        """True when there is a notify socket to send to."""
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings: half of ``$WATCHDOG_USEC``.

        None when no watchdog is configured, when it is meant for another process
        (``$WATCHDOG_PID`` set and not ours), when a value is malformed, or when there is no
        notify socket to ping.
        """
        if not self.enabled or not self._watchdog_usec:
            return None
        if self._watchdog_pid and self._watchdog_pid != str(os.getpid()):
            return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            return None
        if usec <= 0:
            return None
        return usec / 2 / 1_000_000

    def send(self, *fields: str) -> None:
        """Send ``KEY=value`` fields as one message, one field a line.

        A field holding a newline or no ``=`` is a programming error (ValueError, raised even
        when disabled so that tests catch it); a failure to deliver is logged, never raised.
        """
        for field in fields:
            if "=" not in field or "\n" in field:
                raise ValueError(f"not a KEY=value line: {field!r}")
        if self._address is None or not fields:
            return
        message = "\n".join(fields).encode("utf-8", errors="replace")
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(message, self._address)
        except OSError as exc:
            self._send_failed(exc)

    def _send_failed(self, exc: OSError) -> None:
        level = logging.DEBUG if self._warned else logging.WARNING
        self._warned = True
        log.log(
            level,
            "sdnotify.send_failed",
            extra={"notify_socket": self._socket_name, "error": str(exc)},
        )

    def ready(self, status: str | None = None) -> None:
        """READY=1: start-up is complete (with a STATUS line in the same message if given)."""
        self.send("READY=1", *self._status_field(status))

    def status(self, text: str) -> None:
        """STATUS=<text> on one line, shown by ``systemctl status``."""
        self.send(*self._status_field(text))

    def watchdog(self) -> None:
        """WATCHDOG=1: the loop is healthy. Send every ``watchdog_interval()`` seconds."""
        self.send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> None:
        """STOPPING=1: shutdown has begun (with a STATUS line in the same message if given)."""
        self.send("STOPPING=1", *self._status_field(status))

    def close(self) -> None:
        """Release the socket. Idempotent; a later send opens a new one."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    @staticmethod
    def _status_field(text: str | None) -> tuple[str, ...]:
        if text is None:
            return ()
        return ("STATUS=" + _NEWLINES.sub(" ", text),)
