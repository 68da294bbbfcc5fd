"""`riskd dashboard` over HTTP (issue 15): every route, against a real uvicorn server on a free
port and a real PostgreSQL; the live stream read as a browser's EventSource reads it."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from click.testing import CliRunner
from conftest import Db
from daemonproc import wait_until
from test_metrics import free_port
from test_rails import book, check, checker, rails_settings

from riskd import migrate, rails
from riskd.cli import main
from riskd.config import Settings
from riskd.dashboard import app as dashboard_app
from riskd.dashboard.app import Options, create_app
from riskd.dashboard.serve import Server

PASSWORD = "correct horse battery staple"


@dataclass
class Dashboard:
    url: str
    server: Server

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(self.url + path, timeout=10, follow_redirects=False, **kwargs)


Serve = Callable[..., Dashboard]


@pytest.fixture
def serve(db: Db) -> Iterator[Serve]:
    """Start the dashboard on a free port, in a thread, until the test ends."""
    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(settings: Settings | None = None, ready: bool = True, **options: Any) -> Dashboard:
        port = free_port()
        app = create_app(Options(settings or db.settings, **options))
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=10
        )
        server = Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        running.append((server, thread))
        dashboard = Dashboard(f"http://127.0.0.1:{port}", server)

        def up() -> bool:
            """Its feed listening; or, with ``ready=False``, answering at all (a database
            without riskd, or none)."""
            try:
                health = dashboard.get("/healthz").json()
            except httpx.HTTPError:
                return False
            return health.get("feed") is True or not ready

        wait_until(up, 20, "the dashboard to answer")
        return dashboard

    yield start
    for server, thread in running:
        server.stop()
        thread.join(10)


class Stream:
    """/events/stream as EventSource reads it: id, event and data fields, messages apart."""

    def __init__(self, dashboard: Dashboard, last_event_id: str | None = None) -> None:
        headers = {"last-event-id": last_event_id} if last_event_id else {}
        self.client = httpx.Client(timeout=httpx.Timeout(10, read=30))
        self.response = self.client.send(
            self.client.build_request("GET", dashboard.url + "/events/stream", headers=headers),
            stream=True,
        )
        self.lines = self.response.iter_lines()
        self.hello: str | None = None

    def next(self) -> dict[str, Any]:
        """The next message with data (comments and keep-alives skipped)."""
        fields: dict[str, str] = {}
        for line in self.lines:
            if line == "":
                if fields.get("event") == "hello":  # the cursor as the stream starts
                    self.hello = fields["id"]
                elif "data" in fields:
                    return {**fields, "data": json.loads(fields["data"])}
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
        raise AssertionError("the stream ended")

    def next_hello(self) -> str:
        """Read up to the stream's hello (its cursor as it starts)."""
        fields: dict[str, str] = {}
        for line in self.lines:
            if line == "":
                if fields.get("event") == "hello":
                    self.hello = fields["id"]
                    return self.hello
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
        raise AssertionError("the stream ended")

    def close(self) -> None:
        self.response.close()
        self.client.close()


def breach(db: Db, quantities: list[int]) -> list[str]:
    settings = rails_settings(db)
    ids = book(db, quantities)
    with checker(db, settings) as conn:
        check(conn, settings, ids)
    return ids


def test_healthz_says_riskd_is_there(serve: Serve) -> None:
    answer = serve().get("/healthz")
    assert answer.status_code == 200 and answer.json() == {
        "ok": True,
        "installed": True,
        "feed": True,
    }


def section(html: str, title: str) -> str:
    """The part of a page from a heading to the next one."""
    start = html.index(title)
    end = html.find("<h2>", start)
    return html[start : end if end >= 0 else len(html)]


def test_the_overview_shows_the_accounts_in_trouble_first(db: Db, serve: Serve) -> None:
    breach(db, [95, 85, 79, 40])
    page = serve().get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    trouble = section(html, "Accounts in trouble")
    # the worst first, each level a word as well as a colour, what riskd does about it
    assert trouble.index(">a0</a>") < trouble.index(">a1</a>")
    assert '<span class="level level-critical">critical</span>' in trouble
    assert "95.00 %" in trouble and "85.00 %" in trouble  # utilisation as people read it
    assert "close request 1 sent, waiting" in trouble and "auto-close at 90.00 %" in trouble
    assert ">1 critical</span>" in trouble and ">1 warning</span>" in trouble
    nearest = section(html, "Next to watch")
    assert nearest.index(">a2</a>") < nearest.index(">a3</a>")  # 79 % before 40 %
    assert ">a0</a>" not in nearest and ">a1</a>" not in nearest
    assert "Accounts per level" in html
    assert "Pending close requests" in html and ">a0</a>" in section(html, "Pending close")
    assert "/static/dashboard.js" in html and "cdn" not in html.lower()
    assert "PAUSED" not in html
    assert "Kill switch" not in html  # no actions unless allowed
    # no instance runs: the page says riskd is not checking, above everything else
    assert html.index("riskd needs attention") < html.index("Accounts in trouble")
    assert "no live riskd instance" in html


def test_the_page_says_riskd_is_healthy_when_it_is(db: Db, serve: Serve) -> None:
    heartbeat(db, lag=0.25)
    html = serve().get("/").text
    verdict = html[html.index('id="health"') : html.index("Accounts in trouble")]
    assert "riskd is healthy." in verdict and "1 instance checking accounts" in verdict
    assert "changes checked within 0.2 s" in verdict
    heartbeat(db, lag=95.0, instance="host-2:7")  # a second one, far behind
    doc = serve().get("/api/overview").json()
    assert doc["health"]["healthy"] is False
    (problem,) = doc["health"]["problems"]
    assert problem.startswith("instance host-2:7: lag 1 min 35 s") or "host-2:7" in problem


def test_the_page_says_when_its_thresholds_are_not_the_daemons(db: Db, serve: Serve) -> None:
    heartbeat(db, lag=0.1, risk={"warning_threshold": "0.80", "auto_close_threshold": "0.9"})
    assert serve().get("/api/overview").json()["health"]["healthy"] is True  # 0.80 is 0.8
    db.conn.execute("DELETE FROM riskd.daemons")
    heartbeat(db, lag=0.1, risk={"warning_threshold": "0.7", "auto_close": "off"})
    doc = serve().get("/api/overview").json()
    (problem,) = doc["health"]["problems"]
    assert problem.startswith("this dashboard's risk settings are not the daemon's: ")
    assert "[risk] auto_close off on host-1:42, request here" in problem
    assert "[risk] warning_threshold 0.7 on host-1:42, 0.80 here" in problem


def test_a_capture_trigger_switched_off_makes_riskd_need_attention(db: Db, serve: Serve) -> None:
    heartbeat(db, lag=0.1)
    db.conn.execute("ALTER TABLE positions DISABLE TRIGGER USER")
    html = serve().get("/").text
    verdict = html[html.index('id="health"') : html.index("Accounts in trouble")]
    assert "riskd needs attention" in verdict and "disabled" in verdict and "positions" in verdict


def test_the_ranking_over_every_account_is_made_seldom_and_its_figures_kept_current(
    db: Db, serve: Serve
) -> None:
    settings = rails_settings(db)
    ids = breach(db, [70, 60])
    dashboard = serve()
    ranking = dashboard.server.config.app.state.ranking  # type: ignore[attr-defined]
    overview = dashboard.server.config.app.state.overview  # type: ignore[attr-defined]
    first = dashboard.get("/api/overview").json()
    assert [a["utilization"] for a in first["nearest"]] == ["0.7000000000", "0.6000000000"]
    # a1's position grows: the next read shows it without ranking every account again
    db.conn.execute("UPDATE positions SET quantity = 75 WHERE \"tradingAccountId\" = 'a1'")
    with checker(db, settings) as conn:
        check(conn, settings, ids)
    overview.forget()
    again = dashboard.get("/api/overview").json()
    assert [(a["account_id"], a["utilization"]) for a in again["nearest"]] == [
        ("a1", "0.7500000000"),
        ("a0", "0.7000000000"),
    ]
    assert ranking.reads == 1 and ranking.kept_for >= 30.0


def heartbeat(
    db: Db, lag: float, instance: str = "host-1:42", risk: dict[str, str] | None = None
) -> None:
    stats = {"schema_revision": migrate.head(), "state": "running", "lag": lag, "checks": 10}
    if risk is not None:
        stats["risk"] = risk
    db.conn.execute(
        "INSERT INTO riskd.daemons (instance, host, pid, version, started_at, stats)"
        " VALUES (%s, 'host', 42, '0.2.0', now() - interval '60 s', %s)",
        (instance, json.dumps(stats)),
    )


def test_the_overview_lists_instances_from_their_heartbeats(db: Db, serve: Serve) -> None:
    stats = {
        "schema_revision": migrate.head(), "state": "running", "lag": 0.25, "leader": True,
        "checks": 1200, "paused": False,
    }  # fmt: skip
    db.conn.execute(
        "INSERT INTO riskd.daemons (instance, host, pid, version, started_at, stats)"
        " VALUES ('host-1:42', 'host-1', 42, '0.2.0', now() - interval '60 s', %s)",
        (json.dumps(stats),),
    )
    html = serve().get("/").text
    assert "host-1:42" in html and "running" in html and "0.2 s" in html
    assert ">20</td>" in html  # 1 200 checks in 60 s
    doc = serve().get("/api/overview").json()
    (instance,) = doc["instances"]
    assert instance["leader"] is True and not instance["stale"]


def test_api_overview_is_the_same_in_json(db: Db, serve: Serve) -> None:
    breach(db, [95, 85, 79])
    doc = serve().get("/api/overview").json()
    assert doc["levels"] == {"ok": 1, "warning": 1, "critical": 1}
    assert doc["level_changes"] == {"ok": -2, "warning": 1, "critical": 1}
    assert [a["account_id"] for a in doc["in_trouble"]] == ["a0", "a1"]
    assert [a["account_id"] for a in doc["nearest"]] == ["a2"]
    assert doc["nearest"][0]["utilization"] == "0.7900000000"  # decimals as strings
    assert doc["health"]["healthy"] is False  # no instance runs
    assert doc["pending_close_requests_total"] == 1
    assert doc["switch"]["paused"] is False
    kinds = [m["kind"] for m in doc["feed"]]
    assert kinds.count("event") == 2 and doc["cursor"].count("-") == 1


def test_the_account_page_has_figures_positions_evidence_and_requests(db: Db, serve: Serve) -> None:
    breach(db, [95])
    dashboard = serve()
    html = dashboard.get("/accounts/a0").text
    assert "Account a0" in html and "95.00 %" in html
    assert "auto-close at" in html and "90.00 %" in html
    assert "<td>p0</td>" in html  # the position, as the event's check saw it
    assert 'ok</span> → <span class="level level-critical">' in html
    assert '"positions": [' in html and '"quantity": "95"' in html  # the evidence, exact
    assert "pending" in html  # its close request
    missing = dashboard.get("/accounts/no-such-account")
    assert missing.status_code == 404 and "No account no-such-account" in missing.text


def test_paused_says_so_across_the_top(db: Db, serve: Serve) -> None:
    heartbeat(db, lag=0.1)
    rails.pause(db.settings, "feed incident")
    html = serve().get("/").text
    assert '<div class="paused" role="alert">' in html
    # not "healthy" under a red banner: running, and what the pause means
    verdict = html[html.index('id="health"') : html.index("Accounts in trouble")]
    assert "riskd is running, but closes nothing while paused." in verdict
    assert "riskd is healthy" not in html
    assert "feed incident" in html and "no account is closed until someone resumes" in html
    assert "riskd resume" in html
    assert html.index("PAUSED") < html.index("Accounts in trouble")


def test_a_breach_reaches_the_stream_within_two_seconds_and_a_lost_stream_resumes(
    db: Db, serve: Serve
) -> None:
    dashboard = serve()
    stream = Stream(dashboard)
    try:
        settings = rails_settings(db)
        ids = book(db, [95, 96])
        made = time.monotonic()
        with checker(db, settings) as conn:
            check(conn, settings, ids[:1])
        first = stream.next()
        assert time.monotonic() - made < 2.0
        assert stream.hello is not None  # a browser that hears nothing comes back from there
        assert first["event"] == "event" and first["data"]["account_id"] == "a0"
        assert first["data"]["to_level"] == "critical"
        assert first["data"]["utilization_text"] == "95.00 %"
    finally:
        stream.close()
    # meanwhile (no stream open): another event and an alert
    with checker(db, settings) as conn:
        check(conn, settings, ids[1:])
    rails.pause(settings, "drill")
    again = Stream(dashboard, last_event_id=first["id"])
    try:
        missed = [again.next(), again.next()]
    finally:
        again.close()
    assert [(m["event"], m["data"].get("account_id")) for m in missed] == [
        ("event", "a1"),
        ("alert", None),
    ]
    assert missed[1]["data"]["alert"] == "paused" and "drill" in missed[1]["data"]["text"]


def test_pause_and_resume_only_when_allowed_and_with_the_password(db: Db, serve: Serve) -> None:
    form = {"by": "alice", "reason": "bad tick", "password": PASSWORD}
    read_only = serve()
    refused = read_only.post("/actions/pause", data=form)
    assert refused.status_code == 403 and "--allow-actions" in refused.text
    acting = serve(allow_actions=True, password=PASSWORD)
    assert "Kill switch" in acting.get("/").text
    wrong = acting.post("/actions/pause", data=form | {"password": "guess"})
    assert wrong.status_code == 403 and db.scalar("SELECT paused FROM riskd.controls") is False
    other_site = acting.post(
        "/actions/pause", data=form, headers={"origin": "https://evil.example"}
    )
    assert other_site.status_code == 403
    unsaid = acting.post("/actions/pause", data=form | {"reason": " "})
    assert unsaid.status_code == 400 and "why" in unsaid.text  # who and why are recorded
    assert db.scalar("SELECT paused FROM riskd.controls") is False
    # behind a reverse proxy: the browser's origin is the host the proxy forwards
    proxied = {
        "origin": "https://risk.example", "host": "127.0.0.1", "x-forwarded-host": "risk.example"
    }  # fmt: skip
    done = acting.post("/actions/pause", data=form, headers=proxied)
    assert done.status_code == 303 and done.headers["location"] == "/"
    twice = acting.post("/actions/pause", data=form)  # a page from before the pause
    assert twice.status_code == 409 and "already paused" in twice.text
    paused_by, reason = db.conn.execute(
        "SELECT paused_by, reason FROM riskd.controls"
    ).fetchone() or (None, None)
    assert (paused_by, reason) == ("alice (dashboard)", "bad tick")
    assert "Resume auto-close" in acting.get("/").text
    resumed = acting.post("/actions/resume", data=form | {"reason": "fixed"})
    assert resumed.status_code == 303 and db.scalar("SELECT paused FROM riskd.controls") is False
    kinds = db.conn.execute("SELECT kind, detail ->> 'by' FROM riskd.alerts ORDER BY id").fetchall()
    assert kinds == [("paused", "alice (dashboard)"), ("resumed", "alice (dashboard)")]


def test_actions_without_a_password_are_refused_at_start(db: Db) -> None:
    env = {"RISKD_CONFIG": "", "RISKD_DSN": db.dsn, "RISKD_DASHBOARD_PASSWORD": ""}
    out = CliRunner().invoke(main, ["dashboard", "--allow-actions"], env=env)
    assert out.exit_code == 2
    assert out.output.strip().endswith("set RISKD_DASHBOARD_PASSWORD, the password pause and "
                                       "resume ask for")  # fmt: skip


def test_money_keeps_the_accounts_scale(db: Db, serve: Serve) -> None:
    breach(db, [85])
    db.conn.execute("UPDATE riskd.account_state SET equity = 1234567.50, used_margin = 0.125")
    html = serve().get("/").text
    # equity as kept; used margin (a computed product) at the same scale
    assert "1,234,567.50" in html and ">0.13</td>" in html


def test_a_database_without_riskd_says_so(bare_db: Db, serve: Serve) -> None:
    dashboard = serve(bare_db.settings, ready=False)
    page = dashboard.get("/")
    assert page.status_code == 503 and "riskd is not installed in this database" in page.text
    assert dashboard.get("/api/overview").status_code == 503
    health = dashboard.get("/healthz")
    assert health.status_code == 503 and health.json()["installed"] is False


def test_pages_asking_together_share_one_read_of_the_overview(db: Db, serve: Serve) -> None:
    dashboard = serve()
    shared = dashboard.server.config.app.state.overview  # type: ignore[attr-defined]
    before = shared.reads
    for _ in range(5):  # five open pages refreshing at once
        assert dashboard.get("/?partial=1").status_code == 200
    assert shared.reads - before == 1
    wait_until(lambda: dashboard.get("/api/overview") and shared.reads - before == 2, 10,
               "a read once the shared one is older than its time")  # fmt: skip


def test_an_event_committed_after_a_later_one_still_reaches_the_stream(
    db: Db, serve: Serve
) -> None:
    """Two instances check at once: the event that took the lower id commits last. The feed
    waits for it (a moment) instead of moving its cursor past it for good."""
    dashboard = serve()
    feed = dashboard.server.config.app.state.feed  # type: ignore[attr-defined]
    settings = rails_settings(db)
    ids = book(db, [85, 86])  # warnings: no close, so no lock between the two checks
    stream = Stream(dashboard)
    slow, quick = checker(db, settings), checker(db, settings)
    try:
        stream.next_hello()
        with slow.transaction():
            check(slow, settings, ids[:1])  # event 1, not committed yet
            check(quick, settings, ids[1:])  # event 2, committed
            wait_until(lambda: feed._gaps["event"], 10, "the feed to see event 2 past a gap")
            assert feed.cursor.event_id == 0  # event 2 held: event 1 may still come
        got = {stream.next()["data"]["account_id"], stream.next()["data"]["account_id"]}
        assert got == {"a0", "a1"}
    finally:
        stream.close()
        slow.close()
        quick.close()


def test_a_cursor_from_another_database_goes_on_from_now(db: Db, serve: Serve) -> None:
    """A tab left open across two demos comes back with a cursor this database never had:
    it is given what happens from now on, not nothing."""
    stream = Stream(serve(), last_event_id="999999-999999")
    try:
        assert stream.next_hello() == "0-0"
        breach(db, [95])
        assert stream.next()["data"]["account_id"] == "a0"
    finally:
        stream.close()


def test_stopping_ends_the_open_streams_at_once(serve: Serve) -> None:
    """An event stream never ends by itself: stopping the server ends them first, so that it
    stops gracefully, well before uvicorn would cancel them (10 s here) with a traceback."""
    dashboard = serve()
    stream = Stream(dashboard)
    try:
        stream.next_hello()
        started = time.monotonic()
        dashboard.server.stop()
        with pytest.raises(AssertionError, match="the stream ended"):
            stream.next()
        wait_until(lambda: dashboard_down(dashboard), 5, "the server to stop")
        assert time.monotonic() - started < 5
    finally:
        stream.close()


def dashboard_down(dashboard: Dashboard) -> bool:
    try:
        dashboard.get("/healthz")
    except httpx.HTTPError:
        return True
    return False


def test_a_database_that_does_not_answer_gives_a_503_page_not_a_500(
    db: Db, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No database behind the dashboard (down, or every connection busy): within WAIT seconds
    each page says so, with a 503 the open page's refresh turns into its stale note."""
    monkeypatch.setattr(dashboard_app, "WAIT", 1.0)
    gone = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres?connect_timeout=1"
    settings = dataclasses.replace(
        db.settings, database=dataclasses.replace(db.settings.database, dsn=gone)
    )
    dashboard = serve(settings, ready=False)
    for path in ("/", "/?partial=1", "/accounts/a0"):
        answer = dashboard.get(path)
        assert answer.status_code == 503, path
        assert "The dashboard cannot read the database" in answer.text
    api = dashboard.get("/api/overview")
    assert api.status_code == 503 and api.json()["error"]
