"""Configuration: one frozen, validated settings object, built once at start.

riskd runs unattended under systemd, so a bad setting must stop it at start with one line
naming the key (``[section] key``) and where the value came from, never surface later as a
traceback inside the loop. Everything else receives these typed values and never reads the
environment or a raw dict. Sources, lowest first: the defaults of DESIGN §4, the TOML file,
``RISKD_<SECTION>_<KEY>`` environment variables; the DSN has its own chain (``load_settings``).
Ratios are ``Decimal`` made from the text of the number (TOML ``0.8`` is ``Decimal("0.8")``,
not the nearest binary float); durations are seconds as ``float``.

Plain mistakes are refused at load, not left to the loop: a threshold written as a percentage
(``80``: "did you mean 0.80?"), a hysteresis that does not fit inside the gap it separates,
a DSN that libpq cannot read or would split in the wrong places (riskd.dsn; the message names
the DSN's source and quotes none of it).
"""

from __future__ import annotations

import base64
import binascii
import difflib
import math
import os
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from riskd.dsn import dsn_problem
from riskd.dsn import mask_dsn as mask_dsn  # re-exported: wherever a DSN is shown, masked
from riskd.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/riskd/riskd.toml")
_MAX_IDENTIFIER_BYTES = 63  # PostgreSQL silently truncates longer names (NAMEDATALEN - 1)

_DURATION = re.compile(r"(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[A-Za-z]*)", re.ASCII)
_UNIT_SECONDS = {"ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600)}


def parse_duration(value: str | int | float) -> float:
    """Seconds from ``"500ms"``, ``"5s"``, ``"2m"``, ``"1h"``, or a bare number of seconds."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"expected a duration such as '5s', got {type(value).__name__}")
    if not isinstance(value, str):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"duration must be a finite number >= 0, got {value!r}")
        return float(value)
    text = value.strip()
    if not text:
        raise ValueError("empty duration")
    if text.startswith("-"):
        raise ValueError(f"negative duration {_show(value)}")
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid duration {_show(value)}, expected e.g. '500ms', '5s', '2m'")
    unit = match["unit"] or "s"
    if unit not in _UNIT_SECONDS:
        raise ValueError(f"unknown unit {unit!r} in duration {_show(value)}, use ms, s, m or h")
    return float(Decimal(match["number"]) * _UNIT_SECONDS[unit])


@dataclass(frozen=True, slots=True)
class TableName:
    """A table as exact, case-sensitive identifiers; riskd quotes them itself."""

    schema: str
    name: str

    @classmethod
    def parse(cls, text: str) -> TableName:
        """``"schema.table"`` or ``"table"`` (in ``public``); no quoting, no case folding."""
        parts = text.split(".")
        if len(parts) > 2:
            raise ValueError(f"expected 'table' or 'schema.table', got {_show(text)}")
        for part in parts:
            _identifier(part)
        return cls(*parts) if len(parts) == 2 else cls("public", parts[0])

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True, slots=True, repr=False)
class DatabaseSettings:
    dsn: str | None = None
    # where the DSN came from, as an error names it: --dsn, RISKD_DSN, DATABASE_URL,
    # RISKD_DATABASE_DSN or "[database] dsn (from file PATH)"
    source: str = field(default="", compare=False)

    def __repr__(self) -> str:  # settings get logged; the password must not be
        return f"DatabaseSettings(dsn={None if self.dsn is None else mask_dsn(self.dsn)!r})"


BUILTIN_MODEL = "builtin"


def model_function(risk: RiskSettings) -> TableName | None:
    """The platform's margin model as schema and name; None for the built-in model."""
    return None if risk.model == BUILTIN_MODEL else TableName.parse(risk.model)


@dataclass(frozen=True, slots=True)
class RiskSettings:
    warning_threshold: Decimal = Decimal("0.80")
    auto_close_threshold: Decimal = Decimal("0.90")
    auto_close: Literal["request", "flatten", "off"] = "request"
    hysteresis: Decimal = Decimal("0.02")
    # the platform's own margin model, "schema.function" (DESIGN §1), or the built-in one
    model: str = BUILTIN_MODEL
    # the safety rails (DESIGN §1): 0 = off
    max_closes_per_minute: int = 0  # the circuit breaker, across all instances
    max_price_age: float = 0.0  # seconds: the stale-price guard (needs instrument_price_time)


@dataclass(frozen=True, slots=True)
class DaemonSettings:
    debounce: float = 1.0
    max_delay: float = 5.0
    sweep_interval: float = 60.0
    batch_size: int = 500
    shutdown_timeout: float = 10.0
    metrics_port: int = 0
    log_format: Literal["text", "json"] = "text"
    metrics_host: str = "127.0.0.1"  # where /metrics and /healthz listen; loopback by default


# Standard Webhooks' retry schedule: the first attempt at once, then these waits.
RETRY_SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)


@dataclass(frozen=True, slots=True, repr=False)
class WebhookSettings:
    """The platform's endpoint for risk events (DESIGN §4 "Webhooks"); url "" = off."""

    url: str = ""
    secret: str = field(default="", compare=False)  # whsec_<base64>: never in a repr or a log
    timeout: float = 15.0
    retry_schedule: tuple[float, ...] = RETRY_SCHEDULE
    concurrency: int = 4

    def __repr__(self) -> str:
        return (
            f"WebhookSettings(url={self.url!r}, secret={'***' if self.secret else ''!r}, "
            f"timeout={self.timeout:g}, retry_schedule={self.retry_schedule!r}, "
            f"concurrency={self.concurrency})"
        )


@dataclass(frozen=True, slots=True)
class DashboardSettings:
    """`riskd dashboard` (DESIGN §4 "Dashboard"): where it listens; loopback by default."""

    host: str = "127.0.0.1"
    port: int = 8080
    # what pause and resume ask for (--allow-actions); RISKD_DASHBOARD_PASSWORD: never shown
    password: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class SchemaMapping:
    """Where the platform keeps its data; the defaults are the reference schema."""

    accounts_table: TableName = TableName("public", "trading_accounts")
    account_id: str = "id"
    account_user: str = "userId"
    account_balance: str = "balance"
    positions_table: TableName = TableName("public", "positions")
    position_id: str = "id"  # the position's key: flatten addresses a row by it and its account
    position_account: str = "tradingAccountId"
    position_instrument: str = "instrumentId"
    position_quantity: str = "quantity"
    position_pnl: str = "unrealizedPnL"
    instruments_table: TableName = TableName("public", "instruments")
    instrument_id: str = "id"
    instrument_price: str = "price"
    instrument_margin_rate: str = "marginRate"
    instrument_price_time: str = ""  # optional: when the price was set ("" = not mapped)


@dataclass(frozen=True, slots=True)
class Settings:
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    risk: RiskSettings = field(default_factory=RiskSettings)
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    schema: SchemaMapping = field(default_factory=SchemaMapping)
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    dashboard: DashboardSettings = field(default_factory=DashboardSettings)
    config_path: Path | None = None


# Converters take a value as found (TOML value or environment string) and return it typed,
# or raise ValueError with a short message; the caller adds the key and the source.
Converter = Callable[[Any], Any]


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _name(text: object) -> str:
    """A path or variable name for a one-line message: as is when printable, else repr."""
    return str(text) if str(text).isprintable() else repr(str(text))


def _string(value: object) -> str:  # never echoes the value: a DSN may hold a password
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


def _host(value: object) -> str:
    text = _string(value).strip()
    if not text or any(c.isspace() or c == "\x00" for c in text):
        raise ValueError(f"expected a host name or address, got {_show(text)}")
    return text


def _identifier(value: object) -> str:
    text = _string(value)
    if not text:
        raise ValueError("empty identifier")
    if "\x00" in text:
        raise ValueError(f"NUL byte in identifier {_show(text)}")
    if len(text.encode()) > _MAX_IDENTIFIER_BYTES:
        raise ValueError(f"identifier longer than {_MAX_IDENTIFIER_BYTES} bytes: {_show(text)}")
    return text


# [schema] keys that may stay unmapped ("")
OPTIONAL_COLUMNS = ("instrument_price_time",)


def _optional_identifier(value: object) -> str:
    return _identifier(value) if _string(value) else ""


def _decimal(value: object) -> Decimal:
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        try:
            number = Decimal(str(value).strip())  # str(): TOML 0.8 is Decimal("0.8")
        except InvalidOperation:
            pass
        else:
            if number.is_finite():
                return number
    raise ValueError(f"expected a number, got {_show(value)}")


def _integer(value: object) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value, re.ASCII):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {_show(value)}")
    return value


def _bounded(parse: Converter, low: Any, high: Any = None, *, above: bool = False) -> Converter:
    """``parse``, then ``low <= x <= high`` (``low < x`` when ``above``)."""

    def convert(value: object) -> Any:
        number = parse(value)
        if high is not None and not low <= number <= high:
            raise ValueError(f"must be between {low} and {high}, got {_show(value)}")
        if number < low or (above and number == low):
            raise ValueError(f"must be {'>' if above else '>='} {low}, got {_show(value)}")
        return number

    return convert


def _fraction(*, zero_ok: bool = False) -> Converter:
    """A share of equity: above 0 (or at 0 when ``zero_ok``), at most 1. A percentage written
    where a fraction belongs (80, "80%") is the mistake this catches: every account would look
    ``ok``."""

    def convert(value: object) -> Decimal:
        percent = isinstance(value, str) and value.strip().endswith("%")
        number = _decimal(value.strip()[:-1] if percent and isinstance(value, str) else value)
        if percent or number > 1:
            written = f"{number}%" if percent else str(number)
            hint = f" (did you mean {_as_fraction(number)}?)" if 0 < number <= 100 else ""
            raise ValueError(f"{written} is not a fraction between 0 and 1{hint}")
        if number < 0 or (number == 0 and not zero_ok):
            raise ValueError(f"must be {'>=' if zero_ok else '>'} 0, got {_show(value)}")
        return number

    return convert


def _as_fraction(percent: Decimal) -> str:
    """80 -> "0.80", 85.5 -> "0.855": at least two decimals, as thresholds are written."""
    fraction = percent / 100
    return f"{fraction:.2f}" if fraction == round(fraction, 2) else str(fraction.normalize())


def _choice(*options: str) -> Converter:
    def convert(value: object) -> str:
        text = _string(value).strip()
        if text not in options:
            raise ValueError(f"must be one of {' | '.join(options)}, got {_show(value)}")
        return text

    return convert


def _model(value: object) -> str:
    """ "builtin", or the platform's function as "schema.function" (or "function", in public)."""
    text = _string(value).strip()
    if text == BUILTIN_MODEL:
        return text
    try:
        return str(TableName.parse(text))
    except ValueError as exc:
        raise ValueError(f"expected builtin or schema.function: {exc}") from None


def _webhook_url(value: object) -> str:
    text = _string(value).strip()
    if not text:
        return ""
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or not text.isprintable():
        raise ValueError(f"expected an http:// or https:// URL, got {_show(url_shown(text))}")
    if " " in text:
        raise ValueError("a URL holds no spaces (percent-encode them)")
    try:
        _ = parts.port  # urllib checks the port only when asked
    except ValueError as exc:
        raise ValueError(f"{exc} in {_show(url_shown(text))}") from None
    return text


def url_shown(url: str) -> str:
    """A webhook URL as riskd shows it: without user info or query, which may hold tokens."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]  # host and port, without user info
    return f"{parts.scheme}://{host}{parts.path}" if parts.scheme else url[:20]


def webhook_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret (``whsec_`` and the base64 of 24 to 64 random
    bytes), or ValueError; the message never quotes the secret."""
    encoded = secret.strip().removeprefix("whsec_")
    try:
        key = base64.b64decode(encoded, validate=True)
    except (ValueError, binascii.Error):
        raise ValueError("expected whsec_ and a base64 key (the value is not shown)") from None
    if not 24 <= len(key) <= 64:
        raise ValueError(f"the key must be 24 to 64 bytes, this one is {len(key)}")
    return key


def _webhook_secret(value: object) -> str:
    text = _string(value).strip()
    if text:
        webhook_key(text)
    return text


def _retry_schedule(value: object) -> tuple[float, ...]:
    """A list of durations (TOML), or the same comma-separated (an environment variable)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        raise ValueError('expected a non-empty list of durations, e.g. ["5s", "5m"]')
    if len(items) > 20:
        raise ValueError(f"at most 20 steps, got {len(items)}")
    steps = tuple(_bounded(parse_duration, 0, above=True)(item) for item in items)
    return steps


_SECTIONS: dict[str, dict[str, Converter]] = {
    "database": {"dsn": _string},
    "risk": {
        "warning_threshold": _fraction(),
        "auto_close_threshold": _fraction(),
        "auto_close": _choice("request", "flatten", "off"),
        "hysteresis": _fraction(zero_ok=True),
        "model": _model,
        "max_closes_per_minute": _bounded(_integer, 0, 1_000_000),
        "max_price_age": parse_duration,
    },
    "daemon": {
        "debounce": parse_duration,  # parse_duration refuses negative values itself
        "max_delay": _bounded(parse_duration, 0, above=True),
        "sweep_interval": _bounded(parse_duration, 0, above=True),
        "batch_size": _bounded(_integer, 1, 100_000),
        "shutdown_timeout": parse_duration,
        "metrics_port": _bounded(_integer, 0, 65_535),
        "metrics_host": _host,
        "log_format": _choice("text", "json"),
    },
    "schema": {
        key: (
            (lambda v: TableName.parse(_string(v)))
            if key.endswith("_table")
            else _optional_identifier
            if key in OPTIONAL_COLUMNS
            else _identifier
        )
        for key in (f.name for f in fields(SchemaMapping))
    },
    "webhook": {
        "url": _webhook_url,
        "secret": _webhook_secret,
        "secret_file": lambda v: Path(_string(v).strip()) if _string(v).strip() else None,
        "timeout": _bounded(parse_duration, 0, 300, above=True),
        "retry_schedule": _retry_schedule,
        "concurrency": _bounded(_integer, 1, 64),
    },
    "dashboard": {"host": _host, "port": _bounded(_integer, 1, 65_535), "password": _string},
}

# (section, key) -> (value as found, where it was found: "from file PATH" or "from env NAME")
_Raw = dict[tuple[str, str], tuple[object, str]]


def _unknown(section: str, key: str, where: str, env_prefix: str = "") -> ConfigError:
    guess = difflib.get_close_matches(key.lower(), _SECTIONS[section], n=1)
    spelled = [f"{env_prefix}{g.upper()}" if env_prefix else g for g in guess]
    hint = f"; did you mean {spelled[0]}?" if spelled else ""
    return ConfigError(f"[{section}] {_name(key)}: unknown key ({where}){hint}")


def _read_file(path: Path, raw: _Raw) -> None:
    where = f"from file {_name(path)}"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {_name(path)}: {exc}") from None
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # TOMLDecodeError, not UTF-8, absurd nesting
        raise ConfigError(f"invalid TOML in {_name(path)}: {exc}") from None
    for section, table in document.items():
        if section not in _SECTIONS:
            known = ", ".join(_SECTIONS)
            raise ConfigError(f"[{_name(section)}] unknown section ({where}); known: {known}")
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] expected a table, got {type(table).__name__} ({where})")
        for key, value in table.items():
            if key not in _SECTIONS[section]:
                raise _unknown(section, key, where)
            raw[section, key] = (value, where)


def _read_env(env: Mapping[str, str], raw: _Raw) -> None:
    for name in sorted(env):
        for section, keys in _SECTIONS.items():
            prefix = f"RISKD_{section.upper()}_"
            if not name.startswith(prefix):
                continue
            by_upper = {key.upper(): key for key in keys}
            suffix = name.removeprefix(prefix)
            if suffix not in by_upper:
                raise _unknown(section, suffix.lower(), f"from env {_name(name)}", prefix)
            raw[section, by_upper[suffix]] = (env[name], f"from env {name}")


def _convert(section: str, raw: _Raw) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, convert in _SECTIONS[section].items():
        if (section, key) in raw:
            value, where = raw[section, key]
            try:
                values[key] = convert(value)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"[{section}] {key}: {exc} ({where})") from None
    return values


def _described(raw: _Raw, section: str, key: str, value: object) -> str:
    where = raw[section, key][1] if (section, key) in raw else "default"
    return f"[{section}] {key} ({value}, {where})"


def _order_error(
    raw: _Raw, section: str, low: tuple[str, object], relation: str, high: tuple[str, object]
) -> ConfigError:
    return ConfigError(
        f"{_described(raw, section, *low)} must be {relation} {_described(raw, section, *high)}"
    )


def _validate(risk: RiskSettings, daemon: DaemonSettings, schema: SchemaMapping, raw: _Raw) -> None:
    """Rules that involve two keys; single-key rules live in the converters.

    Hysteresis holds an account at a level until it is ``hysteresis`` below that level's
    threshold (DESIGN §1), so it must fit inside the band under each threshold: below
    ``warning_threshold`` (else a warning never ends), and below the gap between the two
    thresholds (else a critical account stays critical under the warning threshold, where a
    fresh check would call it ok).
    """
    warning, auto_close = risk.warning_threshold, risk.auto_close_threshold
    low: tuple[str, object]
    high: tuple[str, object]
    if warning >= auto_close:
        low, high = ("warning_threshold", warning), ("auto_close_threshold", auto_close)
        raise _order_error(raw, "risk", low, "below", high)
    if risk.hysteresis >= warning:
        low, high = ("hysteresis", risk.hysteresis), ("warning_threshold", warning)
        raise _order_error(raw, "risk", low, "below", high)
    if risk.hysteresis >= auto_close - warning:
        raise ConfigError(
            f"{_described(raw, 'risk', 'hysteresis', risk.hysteresis)} must be below the gap "
            f"between {_described(raw, 'risk', 'warning_threshold', warning)} and "
            f"{_described(raw, 'risk', 'auto_close_threshold', auto_close)}, "
            f"{auto_close - warning}: a wider one keeps a critical account critical under the "
            "warning threshold"
        )
    if risk.max_price_age > 0 and not schema.instrument_price_time:
        raise ConfigError(
            f"{_described(raw, 'risk', 'max_price_age', f'{risk.max_price_age:g}s')} needs "
            "[schema] instrument_price_time: the column that says when a price was set"
        )
    if daemon.debounce > daemon.max_delay:
        low, high = ("debounce", f"{daemon.debounce:g}s"), ("max_delay", f"{daemon.max_delay:g}s")
        raise _order_error(raw, "daemon", low, "at most", high)


def _config_file(config_path: Path | None, env: Mapping[str, str]) -> Path | None:
    if config_path is None and env.get("RISKD_CONFIG"):
        config_path = Path(env["RISKD_CONFIG"])
    if config_path is None:
        return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None
    if not Path(config_path).is_file():  # is_file() is False, not an error, for a NUL byte
        raise ConfigError(f"config file not found (or not a file): {_name(config_path)}")
    return Path(config_path)


def load_settings(
    config_path: Path | None = None,
    env: Mapping[str, str] | None = None,
    dsn: str | None = None,
) -> Settings:
    """Build the settings from defaults, the TOML file and the environment, or ConfigError.

    The file is ``config_path``, else ``$RISKD_CONFIG``, else ``/etc/riskd/riskd.toml`` when
    it exists. The DSN is ``dsn`` (the --dsn flag), else ``RISKD_DSN``, else ``DATABASE_URL``,
    else ``RISKD_DATABASE_DSN``, else ``[database] dsn``; empty values are skipped. The DSN
    chosen must be one libpq reads as written (riskd.dsn.dsn_problem), else ConfigError naming
    its source and quoting none of it.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    path = _config_file(config_path, environ)
    raw: _Raw = {}
    if path is not None:
        _read_file(path, raw)
    _read_env(environ, raw)
    values = {section: _convert(section, raw) for section in _SECTIONS}
    risk = RiskSettings(**values["risk"])
    daemon = DaemonSettings(**values["daemon"])
    schema = SchemaMapping(**values["schema"])
    _validate(risk, daemon, schema, raw)
    webhook = _webhook(values["webhook"], raw)
    return Settings(
        database=_database(dsn, environ, values["database"].get("dsn"), raw),
        risk=risk,
        daemon=daemon,
        schema=schema,
        webhook=webhook,
        dashboard=DashboardSettings(**values["dashboard"]),
        config_path=path,
    )


def _webhook(values: dict[str, Any], raw: _Raw) -> WebhookSettings:
    """[webhook]: the secret from ``secret`` (or RISKD_WEBHOOK_SECRET) or ``secret_file``, and
    required once ``url`` is set."""
    path = values.pop("secret_file", None)
    if path is not None:
        if values.get("secret"):
            raise ConfigError("[webhook] secret and secret_file: set one of them, not both")
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
            raise ConfigError(
                f"[webhook] secret_file: cannot read {_name(path)}: {reason}"
            ) from None
        try:
            values["secret"] = _webhook_secret(text)
        except ValueError as exc:
            raise ConfigError(f"[webhook] secret_file: {exc} ({_name(path)})") from None
    if values.get("url") and not values.get("secret"):
        where = raw["webhook", "url"][1]
        raise ConfigError(
            f"[webhook] secret: required once [webhook] url is set ({where}); give it in "
            "RISKD_WEBHOOK_SECRET or [webhook] secret_file"
        )
    return WebhookSettings(**values)


def _database(
    flag: str | None, env: Mapping[str, str], file_or_env: str | None, raw: _Raw
) -> DatabaseSettings:
    """The first DSN given, checked; RISKD_DATABASE_DSN has already beaten the file."""
    where = raw["database", "dsn"][1] if ("database", "dsn") in raw else ""
    if where.startswith("from env "):
        last = where.removeprefix("from env ")  # RISKD_DATABASE_DSN
    else:
        last = f"[database] dsn ({where})"
    chain = (
        (flag, "--dsn"),
        (env.get("RISKD_DSN"), "RISKD_DSN"),
        (env.get("DATABASE_URL"), "DATABASE_URL"),
        (file_or_env, last),
    )
    for dsn, source in chain:
        if dsn:
            problem = dsn_problem(dsn)
            if problem is not None:
                raise ConfigError(f"{source}: invalid DSN: {problem}")
            return DatabaseSettings(dsn=dsn, source=source)
    return DatabaseSettings()


RISK_KEYS = (
    "warning_threshold",
    "auto_close_threshold",
    "hysteresis",
    "auto_close",
    "model",
    "max_closes_per_minute",
    "max_price_age",
)


def risk_fingerprint(risk: RiskSettings) -> dict[str, str]:
    """The risk settings that decide levels and actions, as the heartbeat carries them
    (numbers as written, compared as numbers): instances that differ fight each other."""
    shown = {key: str(getattr(risk, key)) for key in RISK_KEYS}
    shown["max_price_age"] = f"{risk.max_price_age:g}s"
    return shown


def effective(settings: Settings) -> dict[str, object]:
    """What a daemon runs with, for its start line: never the DSN's password."""
    risk, daemon = settings.risk, settings.daemon
    return {
        "database": mask_dsn(settings.database.dsn or ""),
        **risk_fingerprint(risk),
        "debounce": f"{daemon.debounce:g}s",
        "max_delay": f"{daemon.max_delay:g}s",
        "sweep_interval": f"{daemon.sweep_interval:g}s",
        "batch_size": daemon.batch_size,
    }
