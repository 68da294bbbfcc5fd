"""``riskd dashboard``: serve the app with uvicorn on the configured address."""

from __future__ import annotations

import logging

import uvicorn

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


def serve(opts: Options, host: str, port: int) -> None:
    """Until stopped (Ctrl-C, SIGTERM): uvicorn handles the signals and closes the streams."""
    log.info("dashboard.listening", extra={"url": f"http://{host}:{port}/"})
    config = uvicorn.Config(
        create_app(opts), host=host, port=port, log_level="warning", access_log=False,
        lifespan="on", timeout_graceful_shutdown=3,
    )  # fmt: skip
    uvicorn.Server(config).run()
