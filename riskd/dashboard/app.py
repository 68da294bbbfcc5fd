"""The dashboard as an ASGI app (Starlette): the pages, the JSON, the live stream, the one
action. Every asset comes from the package (templates/, static/): no CDN, no build step.

It reads riskd's tables only, as the monitoring role of `riskd grants`, through a small pool;
the live feed is one LISTEN for every open browser (riskd.dashboard.feed). Pause and resume,
the kill switch, are refused unless the dashboard was started with them allowed and the form
carries the password (RISKD_DASHBOARD_PASSWORD); each is recorded with who and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import jinja2
import psycopg
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from riskd import __version__
from riskd.config import Settings
from riskd.dashboard import present, reads
from riskd.dashboard.feed import Feed
from riskd.db import APPLICATION_NAME, CONNECT_TIMEOUT, KEEPALIVES, aconnect, require_dsn
from riskd.errors import reason
from riskd.sqlfiles import query

HERE = Path(__file__).resolve().parent
KEEPALIVE = 15.0  # seconds between SSE comments on a quiet stream (proxies close idle ones)
WAIT = 5.0  # seconds a page waits for a database connection before it says it has none
REPLAY = 500  # what a reconnecting browser is sent of what it missed, a batch at a time
REPLAY_BATCHES = 20  # at most: one further behind goes on from there (its figures are current)
REFRESH = 5  # seconds between the page's refreshes of its figures
SHARED_FOR = 2.0  # seconds one read of the overview serves every page
RANK_EVERY = 30.0  # seconds, at least, between two rankings of every account at ok
RANK_SHARE = 0.02  # and at most this share of the time spent ranking them
T = TypeVar("T")
NOT_INSTALLED = "riskd is not installed in this database (run `riskd migrate`)"


@dataclass(frozen=True, slots=True)
class Options:
    settings: Settings
    allow_actions: bool = False
    password: str = ""  # RISKD_DASHBOARD_PASSWORD; never logged, never on a page


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    # decimals as strings (money is never a float), times in ISO 8601
    env.policies["json.dumps_kwargs"] = {"sort_keys": True, "default": present.json_default}
    env.filters |= {
        "pct": present.pct,
        "money": present.money,
        "money_as": present.money_as,
        "ago": present.ago,
        "lasted": present.lasted,
        "points": present.points,
        "rate": present.rate,
        "alert_text": present.alert_text,
        "trouble_action": present.trouble_action,
        "signed": present.signed,
    }
    return env


def create_app(options: Options) -> Starlette:
    """The dashboard for this configuration (the pool and the feed start with the app)."""
    dsn = require_dsn(options.settings)
    templates = _environment()
    pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
        dsn,
        min_size=1,
        max_size=4,
        open=False,
        kwargs={
            "autocommit": True,
            "application_name": f"{APPLICATION_NAME}-dashboard",
            "connect_timeout": CONNECT_TIMEOUT,
            **KEEPALIVES,
        },
        check=AsyncConnectionPool.check_connection,
        name="riskd-dashboard",
    )
    feed = Feed(lambda: aconnect(dsn))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await pool.open(wait=False)
        task = asyncio.create_task(feed.run(), name="dashboard-feed")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await pool.close()

    def page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
        context |= {"version": __version__, "allow_actions": options.allow_actions}
        return HTMLResponse(templates.get_template(name).render(**context), status_code=status)

    async def read_ranking() -> reads.Ranking:
        async with pool.connection(timeout=WAIT) as conn:
            return await reads.ranking(conn, options.settings)

    # the one read over every account, seldom: at most RANK_SHARE of the time, and never
    # more often than every RANK_EVERY seconds, whatever the number of pages
    ranking = Shared(read_ranking, RANK_EVERY, share=RANK_SHARE)

    async def read_overview() -> dict[str, Any]:
        ranked = await ranking.get()
        async with pool.connection(timeout=WAIT) as conn:
            return await reads.overview(conn, options.settings, ranked)

    cache = Shared(read_overview, SHARED_FOR)

    async def overview_data() -> dict[str, Any]:
        return await cache.get()

    async def home(request: Request) -> Response:
        try:
            data = await overview_data()
        except psycopg.errors.UndefinedTable:
            return page("missing_riskd.html", 503)
        except psycopg.OperationalError as exc:  # the database is down, or the pool waits
            return page("unavailable.html", 503, why=reason(exc))
        name = "figures.html" if request.query_params.get("partial") else "overview.html"
        return page(name, o=data, refresh=REFRESH, settings=options.settings)

    async def api_overview(request: Request) -> Response:
        try:
            data = await overview_data()
        except psycopg.errors.UndefinedTable:
            return JSONResponse({"error": NOT_INSTALLED}, status_code=503)
        except psycopg.OperationalError as exc:
            return JSONResponse({"error": reason(exc)}, status_code=503)
        return Response(present.dumps(data), media_type="application/json")

    async def account(request: Request) -> Response:
        account_id = request.path_params["account_id"]
        try:
            async with pool.connection(timeout=WAIT) as conn:
                data = await reads.account(conn, options.settings, account_id)
        except psycopg.errors.UndefinedTable:
            return page("missing_riskd.html", 503)
        except psycopg.OperationalError as exc:
            return page("unavailable.html", 503, why=reason(exc))
        if data is None:
            return page("missing.html", 404, account_id=account_id)
        return page("account.html", a=data, account_id=account_id, settings=options.settings)

    async def stream(request: Request) -> Response:
        # where the browser is: the last message it had (EventSource says so when it
        # reconnects), else the cursor the page was rendered with
        header, rendered = request.headers.get("last-event-id"), request.query_params.get("after")
        last = present.Cursor.parse(header) or present.Cursor.parse(rendered)
        return StreamingResponse(
            _events(last),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    async def _events(last: present.Cursor | None) -> AsyncIterator[str]:
        async with feed.subscribe() as subscription:
            async with pool.connection(timeout=WAIT) as conn:
                now = await reads.cursors(conn)
            if last is None or not now.covers_cursor(last):
                # a new page, or a cursor from another database (a tab left open across
                # demos): from now on
                seen = now
            else:  # what the browser missed, from the tables, a batch at a time
                seen = last
                for _ in range(REPLAY_BATCHES):
                    # the connection is not held while the browser reads
                    async with pool.connection(timeout=WAIT) as conn:
                        missed = await reads.feed_rows(conn, seen, REPLAY)
                    for message, cursor in missed:
                        seen = cursor
                        yield present.sse(message, cursor)
                    if len(missed) < REPLAY:
                        break
            # the cursor now, so that a browser that hears nothing still comes back from here
            yield f"retry: 2000\nid: {seen}\nevent: hello\ndata: {{}}\n\n"
            while not subscription.cut:
                item = await subscription.next(KEEPALIVE)
                if item is None:
                    if subscription.cut:  # too far behind, or the server stops
                        break
                    yield ": keep-alive\n\n"
                    continue
                message, cursor = item
                if seen is not None and seen.covers(message["kind"], message["id"]):
                    continue
                yield present.sse(message, cursor)

    async def healthz(request: Request) -> Response:
        try:
            async with pool.connection(timeout=WAIT) as conn:
                cur = await conn.execute(query("riskd_installed"))
                row = await cur.fetchone()
        except (psycopg.Error, OSError, TimeoutError) as exc:
            return JSONResponse({"ok": False, "reason": reason(exc)}, status_code=503)
        installed = bool(row and row[0])
        body = {"ok": installed, "installed": installed, "feed": feed.listening}
        return JSONResponse(body, status_code=200 if installed else 503)

    async def pause(request: Request) -> Response:
        return await action(request, "pause")

    async def resume(request: Request) -> Response:
        return await action(request, "resume")

    async def action(request: Request, name: str) -> Response:
        if not options.allow_actions:
            return PlainTextResponse(
                "actions are off: start riskd dashboard with --allow-actions", status_code=403
            )
        if not _same_origin(request):
            return PlainTextResponse("refused: the form came from another site", 403)
        body = await _form_body(request)
        if body is None:
            return PlainTextResponse("refused: the form is too large", status_code=413)
        # an urlencoded form, read with the standard library (no multipart parser needed)
        fields = urllib.parse.parse_qs(body.decode(errors="replace"))
        form = {key: values[0] for key, values in fields.items()}
        given = form.get("password", "")
        if not hmac.compare_digest(given.encode(), options.password.encode()):
            return PlainTextResponse("refused: wrong password", status_code=403)
        who = str(form.get("by", "")).strip()[:100]
        why = str(form.get("reason", "")).strip()[:500]
        if not who or not why:
            return PlainTextResponse(
                f"refused: say who you are and why you {name} (both are recorded)", 400
            )
        try:
            async with pool.connection(timeout=WAIT) as conn:
                cur = await conn.execute(query(name), {"by": f"{who} (dashboard)", "reason": why})
                row = await cur.fetchone()
        except psycopg.OperationalError as exc:
            return PlainTextResponse(f"not done: {reason(exc)}", status_code=503)
        cache.forget()  # the page it redirects to shows the switch as it is now
        if not (row and row[0]):  # another page, or riskd pause, did it first
            already = "paused" if name == "pause" else "running (not paused)"
            return PlainTextResponse(
                f"nothing changed: auto-close was already {already}; reload the page", 409
            )
        return RedirectResponse("/", status_code=303)

    routes = [
        Route("/", home),
        Route("/api/overview", api_overview),
        Route("/accounts/{account_id:path}", account),
        Route("/events/stream", stream),
        Route("/healthz", healthz),
        Route("/actions/pause", pause, methods=["POST"]),
        Route("/actions/resume", resume, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.feed = feed
    app.state.overview = cache
    app.state.ranking = ranking
    return app


class Shared(Generic[T]):
    """One read serves every page that asks within ``ttl`` seconds (each open page refreshes
    every REFRESH seconds): the database's cost stops growing with the number of pages.
    Concurrent askers wait for the one read in flight. With ``share``, a read that took longer
    is kept longer: read again no sooner than its duration / ``share``, so that it takes no
    more than that share of the time however large the book."""

    def __init__(
        self, read: Callable[[], Awaitable[T]], ttl: float, share: float | None = None
    ) -> None:
        self.read = read
        self.ttl = ttl
        self.share = share
        self.reads = 0  # how many times the database was asked (the tests count them)
        self.kept_for = ttl  # how long the value in hand is kept
        self._value: T | None = None
        self._at = 0.0
        self._generation = 0
        self._lock = asyncio.Lock()

    def forget(self) -> None:
        """What is in hand, or being read now, is out of date: the next get() reads again."""
        self._value = None
        self._generation += 1

    async def get(self) -> T:
        async with self._lock:
            while self._value is None or time.monotonic() - self._at >= self.kept_for:
                generation, now = self._generation, time.monotonic()
                value = await self.read()
                self.reads += 1
                if generation != self._generation:
                    continue  # forgotten while it was read: read again
                self._value, self._at = value, time.monotonic()
                took = self._at - now
                self.kept_for = max(self.ttl, took / self.share) if self.share else self.ttl
            return self._value


def _same_origin(request: Request) -> bool:
    """A form posted from this page, not from another site (the browser says Origin). Behind
    a reverse proxy the page's host is the one the proxy forwards (``X-Forwarded-Host``, or
    ``Host`` when the proxy passes the browser's on)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    here = {request.headers.get("host", "")}
    here |= {h.strip() for h in request.headers.get("x-forwarded-host", "").split(",")}
    return origin.split("://", 1)[-1] in here - {""}


FORM_LIMIT = 16 * 1024  # bytes: a name, a reason, a password


async def _form_body(request: Request) -> bytes | None:
    """The posted form, or None when it is larger than any form of this page."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_LIMIT:
            return None
    return body
