"""``riskd dashboard``: serve the app with uvicorn on the configured address."""

from __future__ import annotations

import logging
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from riskd.config import Settings
from riskd.dashboard.app import Options, create_app
from riskd.errors import ConfigError

log = logging.getLogger(__name__)


def options(settings: Settings, allow_actions: bool) -> Options:
    """The app's options, or ConfigError: actions need the password ([dashboard] password,
    better RISKD_DASHBOARD_PASSWORD: never on a command line)."""
    password = settings.dashboard.password
    if allow_actions and not password:
        raise ConfigError(
            "--allow-actions: set RISKD_DASHBOARD_PASSWORD, the password pause and resume ask for"
        )
    return Options(settings, allow_actions=allow_actions, password=password)


class Server(uvicorn.Server):
    """uvicorn, which on Ctrl-C or SIGTERM first ends every open event stream: a stream never
    ends by itself, and uvicorn waits for every response before it stops (then cancels them,
    with a traceback, once ``timeout_graceful_shutdown`` has passed)."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._end_streams()
        super().handle_exit(sig, frame)

    def stop(self) -> None:
        """Stop serving, from another thread (the demo's, a test's): as on SIGTERM."""
        self._end_streams()
        self.should_exit = True

    def _end_streams(self) -> None:
        app = self.config.app
        if isinstance(app, Starlette):
            app.state.feed.close_threadsafe()


def serve(opts: Options, host: str, port: int) -> None:
    """Until stopped (Ctrl-C, SIGTERM): the streams end, then uvicorn stops."""
    log.info("dashboard.listening", extra={"url": f"http://{host}:{port}/"})
    config = uvicorn.Config(
        create_app(opts), host=host, port=port, log_level="warning", access_log=False,
        lifespan="on", timeout_graceful_shutdown=3,
    )  # fmt: skip
    Server(config).run()
