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
