"""The dashboard beside the demo's terminal view: `riskd dashboard` on the demo's database, in a
thread of its own (its own event loop, apart from the daemon's and the market's; uvicorn leaves
signals to the demo there)."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import uvicorn

from riskd.config import Settings
from riskd.dashboard.app import Options, create_app
from riskd.dashboard.serve import Server

PREFERRED_PORT = 8080
READY_TIMEOUT = 20.0


def _port(preferred: int) -> int:
    """``preferred`` when it is free on loopback, else any free port."""
    for port in (preferred, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise OSError("no free port on 127.0.0.1")


class Board:
    def __init__(self, settings: Settings, port: int = PREFERRED_PORT) -> None:
        self.port = _port(port)
        self.url = f"http://127.0.0.1:{self.port}/"
        config = uvicorn.Config(
            create_app(Options(settings)), host="127.0.0.1", port=self.port,
            log_level="warning", access_log=False, timeout_graceful_shutdown=1,
        )  # fmt: skip
        self.server = Server(config)
        self.thread = threading.Thread(target=self.server.run, name="dashboard", daemon=True)

    def start(self) -> Board:
        """Serving, once /healthz answers (or after a while: the demo goes on without it)."""
        self.thread.start()
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline and self.thread.is_alive():
            try:
                if httpx.get(self.url + "healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)  # polling the server's own health endpoint, with a deadline
        return self

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(5)
