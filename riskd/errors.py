"""The errors riskd raises on purpose.

Each carries a one-line message meant for an operator; only the CLI maps them to exit codes.
"""


class RiskdError(Exception):
    """Base class: ``str(error)`` is a complete, one-line message."""

    exit_code = 1


class ConfigError(RiskdError):
    """Invalid configuration: unknown key, wrong type, inconsistent values."""

    exit_code = 2


class SchemaMappingError(ConfigError):
    """The ``[schema]`` mapping names a table or column that does not exist."""


class NotInstalled(ConfigError):
    """A command that needs riskd's schema met a database without it."""

    def __init__(self) -> None:
        super().__init__("riskd is not installed in this database (run `riskd migrate`)")


class DatabaseUnavailable(RiskdError):
    """The database cannot be reached (refused, timed out, authentication failed)."""

    exit_code = 2


def flat(text: str) -> str:
    """``text`` on one line: every run of whitespace (libpq's messages span lines) one space."""
    return " ".join(text.split())


def message(exc: BaseException) -> str:
    """An exception's message on one line (its type's name when it has none)."""
    return flat(str(exc)) or type(exc).__name__


def reason(exc: BaseException) -> str:
    """An exception as one line, its type first: ``OperationalError: connection refused``."""
    text = flat(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
