"""The dashboard in a real browser (issue 15): headless Chromium from Debian's `chromium`
package, driven by Playwright (its own browser download cannot work on these machines). The
page renders, a breach made in the database appears in the live feed within 2 s without a
reload, the stream comes back after the server restarts, and pause works with the password and
is refused without it."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from conftest import Db
from daemonproc import wait_until
from playwright.sync_api import Browser, Page, expect, sync_playwright
from test_dashboard import PASSWORD, Dashboard
from test_metrics import free_port
from test_rails import book, check, checker, rails_settings

from riskd import rails
from riskd.dashboard.app import Options, create_app
from riskd.dashboard.serve import Server as DashboardServer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# what these machines need of a headless Chromium (no sandbox as root, no network of its own)
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


class Server:
    """The dashboard on a fixed port, which a test may stop and start again."""

    def __init__(self, db: Db, **options: Any) -> None:
        self.db = db
        self.options = options
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: DashboardServer | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> Server:
        app = create_app(Options(self.db.settings, **self.options))
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", timeout_graceful_shutdown=1
        )
        self.server = DashboardServer(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        dashboard = Dashboard(self.url, self.server)
        wait_until(lambda: _answers(dashboard), 20, "the dashboard to answer")
        return self

    def stop(self) -> None:
        if self.server is not None and self.thread is not None:
            self.server.stop()
            self.thread.join(15)
            assert not self.thread.is_alive(), "the dashboard did not stop"


def _answers(dashboard: Dashboard) -> bool:
    try:
        return bool(dashboard.get("/healthz").json().get("feed"))
    except Exception:  # noqa: BLE001 - not up yet, whatever the reason
        return False


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture
def site(db: Db) -> Iterator[Server]:
    started = Server(db, allow_actions=True, password=PASSWORD).start()
    try:
        yield started
    finally:
        started.stop()


def breach(db: Db, quantities: list[int], first: int = 0) -> None:
    settings = rails_settings(db)
    ids = book(db, quantities)
    with checker(db, settings) as conn:
        check(conn, settings, ids[first:])


def test_the_page_renders_and_a_breach_appears_live_within_two_seconds(
    db: Db, site: Server, page: Page
) -> None:
    page.goto(site.url)
    expect(page).to_have_title("riskd — overview")
    expect(page.get_by_role("heading", name="Accounts per level")).to_be_visible()
    expect(page.locator("#stream-state")).to_have_text("live", timeout=5000)
    breach(db, [96])
    expect(page.locator("ol#feed li.event").first).to_contain_text("a0", timeout=2000)
    expect(page.locator("ol#feed li.event").first).to_contain_text("critical")
    expect(page.locator("ol#feed li.event").first).to_contain_text("96.00 %")


def test_the_stream_comes_back_after_the_server_restarts(db: Db, site: Server, page: Page) -> None:
    page.goto(site.url)
    expect(page.locator("#stream-state")).to_have_text("live", timeout=5000)
    site.stop()
    expect(page.locator("#stream-state")).to_have_text("reconnecting…", timeout=5000)
    # the figures cannot be refreshed: the page says they are old (within one refresh)
    expect(page.locator("#stale")).to_contain_text("Not refreshed since", timeout=8000)
    breach(db, [95])  # made while the server was down: the browser gets it on its return
    site.start()
    expect(page.locator("#stream-state")).to_have_text("live", timeout=10000)
    expect(page.locator("ol#feed li.event").first).to_contain_text("a0", timeout=5000)
    expect(page.locator("#stale")).to_have_count(0, timeout=8000)


def test_pause_with_the_password_works_and_without_it_is_refused(
    db: Db, site: Server, page: Page
) -> None:
    page.goto(site.url)
    page.get_by_label("Who").fill("alice")
    page.get_by_label("Why").fill("bad tick")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Pause every auto-close").click()
    expect(page.locator("body")).to_contain_text("refused: wrong password")
    assert db.scalar("SELECT paused FROM riskd.controls") is False
    page.goto(site.url)
    page.get_by_label("Who").fill("alice")
    page.get_by_label("Why").fill("bad tick")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Pause every auto-close").click()
    expect(page.get_by_role("alert")).to_contain_text("PAUSED by alice (dashboard): bad tick")
    assert db.scalar("SELECT paused FROM riskd.controls") is True
    expect(page.get_by_role("button", name="Resume auto-close")).to_be_visible()
    # resumed elsewhere (riskd resume): the form follows at the next refresh
    rails.resume(db.settings, "checked")
    expect(page.get_by_role("button", name="Pause every auto-close")).to_be_visible(timeout=8000)


def test_on_a_phone_the_page_fits_its_width(db: Db, site: Server, browser: Browser) -> None:
    """390 x 844, a phone's viewport: the tables scroll inside their cards, the page does not
    scroll sideways, and the levels still read as words."""
    breach(db, [95, 85, 79])
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        phone = context.new_page()
        phone.goto(site.url)
        expect(phone.get_by_role("heading", name="Accounts per level")).to_be_visible()
        widths = phone.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert widths[0] <= widths[1], widths
        expect(phone.locator(".levels span.level-critical").first).to_have_text("critical")
        first_screen(phone, 844)
    finally:
        context.close()


def first_screen(page: Page, height: int) -> None:
    """What someone who has never seen riskd needs, on the first screen without scrolling:
    whether riskd is healthy, and which accounts are in trouble (the worst first, its level a
    word, what riskd does about it)."""
    verdict = page.locator("#health")
    expect(verdict).to_contain_text("riskd needs attention")  # no instance runs here
    expect(verdict).to_contain_text("no live riskd instance")
    worst = page.locator(".trouble tbody tr").first
    expect(worst).to_contain_text("a0")
    expect(worst).to_contain_text("critical")
    expect(worst).to_contain_text("close request")
    for shown in (verdict, worst):
        box = shown.bounding_box()
        assert box is not None and box["y"] + box["height"] <= height, box


def test_on_a_laptop_the_first_screen_says_which_accounts_and_whether_riskd_is_healthy(
    db: Db, site: Server, browser: Browser
) -> None:
    breach(db, [95, 85, 79])
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    try:
        laptop = context.new_page()
        laptop.goto(site.url)
        first_screen(laptop, 720)
    finally:
        context.close()
