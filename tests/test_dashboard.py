"""The dashboard at ``/``, rendered by a real headless Chromium against a real receiver on
loopback, over a realistic state in Postgres (and a real message waiting in Redis).

Chromium renders with ``--dump-dom`` after a ``--virtual-time-budget`` (virtual time stands
still while a fetch is pending, so the page's first fetch always completes inside the budget and
its 5 s refresh timer fires exactly when the budget passes 5 s). A screenshot is kept in
``test-artifacts/dashboard.png``.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from core import queue, state
from core.documents import Ref
from core.heartbeat import Heartbeat
from core.runtime import SourceSet, open_services
from reconciler.reconcile import Reconciler, claim_due
from sandbox.server import SandboxServer, create_simulators
from tests.browser import Browser, Page
from tests.conftest import (ADMIN_KEY, FAST_BUDGETS, reconcile_tick, ReceiverHandle, WorkerHandle, make_settings, reset_state,
                            wait_for)

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
]

# Untrusted text in an error message: it must show as text and never become markup.
HOSTILE_ERROR = ('Slack said <script>window.__pwned = 1</script><img src=x onerror="window.__pwned=2">'
                 ' & "token_revoked"')


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    pytest.fail("Chromium is not installed: the dashboard test needs a real headless browser. "
                "Install it with `apt-get install -y chromium` (.ci/run does this in CI).")


def run_chromium(url: str, tmp_path: Path, *args: str, budget_ms: int = 3000) -> str:
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    profile.mkdir()
    result = subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
         f"--virtual-time-budget={budget_ms}", *args, url],
        capture_output=True, text=True, timeout=90,
    )
    assert result.returncode == 0, f"chromium failed ({result.returncode}): {result.stderr[-2000:]}"
    return result.stdout


# --- a small DOM built from Chromium's serialised DOM ----------------------------------------


class Node:
    def __init__(self, tag: str, attrs: dict[str, str], parent: Node | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node | str] = []

    def text(self) -> str:
        parts = [c if isinstance(c, str) else c.text() for c in self.children]
        return " ".join(" ".join(parts).split())

    def iter(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.iter()

    def find_all(self, tag: str | None = None, **attrs: str) -> list[Node]:
        return [n for n in self.iter()
                if (tag is None or n.tag == tag)
                and all(n.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())]

    def find(self, tag: str | None = None, **attrs: str) -> Node:
        found = self.find_all(tag, **attrs)
        assert found, f"no <{tag or '*'}> with {attrs} in the rendered page"
        return found[0]


VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class DomBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {}, None)
        self.current = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.current.children.append(Node(tag, {k: v or "" for k, v in attrs}, self.current))

    def handle_endtag(self, tag: str) -> None:
        node: Node | None = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.current.children.append(data)


def parse_dom(html: str) -> Node:
    builder = DomBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


# --- a realistic state -------------------------------------------------------------------------


def seed_state(services: Any) -> None:
    with services.pool.connection() as conn:
        conn.execute(
            """INSERT INTO scopes (source, key, name, active, last_success_at, last_attempt_at,
                                   last_error, last_error_at) VALUES
               ('github', 'acme/api', 'acme/api', true, now() - interval '2 minutes', now(), NULL, NULL),
               ('github', 'acme/web', 'acme/web', true, now() - interval '1 minute', now(), NULL, NULL),
               ('jira', 'SUBS', 'Subscriptions', true, now() - interval '3 days', now() - interval '3 days', NULL, NULL),
               ('slack', 'C0123', 'delivery', true, now() - interval '2 hours', now(), %s, now() - interval '1 minute')""",
            (HOSTILE_ERROR,),
        )
        conn.execute(
            """INSERT INTO documents (document_id, source, scope, title, chunk_count, indexed_at) VALUES
               ('github:acme/api/issues/1', 'github', 'acme/api', 'One', 2, now()),
               ('github:acme/api/issues/2', 'github', 'acme/api', 'Two', 3, now()),
               ('github:acme/web/pulls/7', 'github', 'acme/web', 'Seven', 1, now()),
               ('jira:10001', 'jira', 'SUBS', 'SUBS-1', 4, now()),
               ('api:handbook', 'api', '', 'Handbook', 5, now()),
               ('api:faq', 'api', '', 'FAQ', 2, now())"""
        )
        conn.execute(
            """INSERT INTO source_stats (source, synced, webhooks_received, webhooks_rejected,
                                         last_webhook_at, last_rejection, last_rejection_at)
               VALUES ('github', 3, 12, 1, now(), 'bad signature', now())"""
        )
        conn.execute(
            """INSERT INTO runs (kind, source, scope, status, error, started_at, progress_at, finished_at) VALUES
               ('reconcile', 'github', 'acme/api', 'running', NULL, now(), now(), NULL),
               ('reconcile', 'slack', 'C0123', 'failed', %s, now() - interval '2 minutes',
                now() - interval '1 minute', now() - interval '1 minute')""",
            (HOSTILE_ERROR,),
        )
        # A reconciler that stopped beating ten minutes ago.
        conn.execute(
            """INSERT INTO heartbeats (process, kind, pid, host, started_at, beat_at)
               VALUES ('reconciler@old-host:4242', 'reconciler', 4242, 'old-host',
                       now() - interval '1 hour', now() - interval '10 minutes')"""
        )
        # Notion sent a verification token nobody has configured yet; its value is a secret.
        conn.execute("""INSERT INTO kv (key, value) VALUES ('notion.verification_token', '"secret_tok_XYZ"')""")
    # One real message waiting in Redis (no worker runs in this test).
    queue.enqueue(services.broker, [Ref(source="github", id="acme/api/issues/3", scope="acme/api")])


@pytest.fixture
def dashboard_settings(infra: dict[str, str]) -> Any:
    return make_settings(infra, GITHUB_TOKEN="ghp_secret_value", SLACK_BOT_TOKEN="xoxb-secret-value",
                         JIRA_URL="https://jira.example", JIRA_EMAIL="a@example.com",
                         JIRA_API_TOKEN="jira-secret-value", HEARTBEAT_TIMEOUT="60")


@pytest.fixture
def live_worker(services: Any, dashboard_settings: Any) -> Iterator[Heartbeat]:
    """A real heartbeat writer for a worker process."""
    beat = Heartbeat(services.pool, "worker", 1.0).start()
    yield beat
    beat.stop()


class TestDashboardInChromium:
    def test_renders_the_status_report(self, services, receiver_factory, dashboard_settings, live_worker, tmp_path):
        seed_state(services)
        receiver = receiver_factory(dashboard_settings)
        # The page renders what the status API says; read it to know what to expect.
        report = httpx.get(f"{receiver.url}/api/status").json()
        assert report["sources"]["github"]["state"] == "fresh"
        assert report["sources"]["jira"]["state"] == "stale"
        assert report["sources"]["slack"]["state"] == "failing"

        dom_html = run_chromium(f"{receiver.url}/", tmp_path, "--dump-dom")
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "dashboard.html").write_text(dom_html)
        dom = parse_dom(dom_html)

        main = dom.find("main", id="report")
        assert main.attrs["data-loaded"] == "true", "the status report never rendered"
        assert dom.find("a", id="search-link").attrs["href"] == "/search"  # the search box, a click away
        banner = dom.find("p", id="banner")
        assert "hidden" in banner.attrs and "data-script-error" not in banner.attrs, banner.text()
        verdict = dom.find(id="verdict")
        assert verdict.text() == "Not healthy" and verdict.attrs["class"] == "verdict bad"
        assert verdict.attrs["data-healthy"] == "false"
        # The reasons are the report's, listed under the header.
        reasons = [li.text() for li in dom.find("ul", id="reasons").find_all("li")]
        def no_numbers(text: str) -> str:  # ages move on between the two reads
            return re.sub(r"\d+(\.\d+)?", "N", " ".join(text.split()))

        assert [no_numbers(r) for r in reasons] == [no_numbers(r) for r in report["reasons"]]
        assert any(r.startswith("slack: scope C0123 (delivery): listing failed") for r in reasons), reasons
        assert any(r.startswith("no live reconciler process") for r in reasons), reasons
        assert dom.find(id="refreshed").text().startswith("Last refreshed ")

        # One card per source, coloured by state.
        cards = {n.attrs["data-source"]: n for n in dom.find_all("article")}
        assert list(cards) == ["jira", "slack", "github", "notion", "tempo", "fireflies"]
        states = {name: card.attrs["data-state"] for name, card in cards.items()}
        assert states == {"jira": "stale", "slack": "failing", "github": "fresh",
                          "notion": "not configured", "tempo": "not configured", "fireflies": "not configured"}
        assert "state-fresh" in cards["github"].attrs["class"]
        assert "state-stale" in cards["jira"].attrs["class"]
        assert "state-failing" in cards["slack"].attrs["class"]
        assert "state-not-configured" in cards["notion"].attrs["class"]

        github = cards["github"].text()
        assert "Documents 3" in github and "Vectors 6" in github
        assert "Scopes 2 active of 2" in github
        assert "Runs 1 in flight" in github
        assert re.search(r"Webhooks 12 received \(last [\d.]+[smh] ago\), 1 rejected", github), github
        assert re.search(r"Last rejection verification: bad signature \([\d.]+[smh] ago\)", github), github
        assert re.search(r"Last success \d+(\.\d)?m ago \(stale after ", github), github
        assert "Last error none" in github
        jira = cards["jira"].text()
        assert re.search(r"Last success 3\.\dd ago", jira) and "Documents 1" in jira and "Vectors 4" in jira
        assert "No credentials set" in cards["tempo"].text()

        # The scopes that need attention, worst first, each with its reason in words.
        behind = dom.find("tr", data_scope="jira/SUBS")
        assert re.fullmatch(r"jira SUBS \(Subscriptions\) stale stale since \d{4}-\d\d-\d\d \d\d:\d\d UTC "
                            r"\(last successful pass 3\.\dd ago, stale after 1\.1h\) 3\.\dd ago \(.+\) 1", behind.text()), \
            behind.text()
        states = [tr.attrs["data-state"] for tr in dom.find(id="scopes").find("table").find_all("tr")
                  if "data-state" in tr.attrs]
        assert states == ["failing", "stale"], states  # the two fresh GitHub repositories are folded
        assert dom.find("details", id="fresh-scopes").find("summary").text() == "2 fresh scopes"

        # The hostile error message shows verbatim, as text: no element came out of it.
        slack = cards["slack"].text()
        assert "listing failed 1 time since " in slack and HOSTILE_ERROR in slack, slack
        assert "Last error" not in slack  # the reason already quotes it
        assert "1 failing" in slack and "1 failed (24h)" in slack
        assert len(dom.find_all("script")) == 1, "report text became a <script> element"
        assert not dom.find_all("img"), "report text became an <img> element"
        assert "<script>window.__pwned" not in dom_html  # serialised escaped, as text

        assert dom.find(data_part="push-api").text() == "Push API Documents 2 Vectors 7"
        assert dom.find(data_part="queue").text() == "Queue Depth 1 Dead letters 0"
        assert dom.find(data_part="index").text() == "Vector index Backend pgvector"

        kinds = {n.attrs["data-kind"]: n for n in dom.iter() if "data-kind" in n.attrs}
        assert {k: n.attrs["data-alive"] for k, n in kinds.items()} == \
            {"web": "true", "worker": "true", "reconciler": "false"}
        assert re.search(r"reconciler@old-host:4242 dead heartbeat 1\d\.\dm ago", kinds["reconciler"].text())
        assert "alive heartbeat" in kinds["worker"].text() and "worker@" in kinds["worker"].text()

        failures = dom.find(id="failures")
        rows = failures.find_all("tr")
        assert len(rows) == 2  # header + one failed run
        assert re.fullmatch(f"\\d{{4}}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d UTC reconcile slack C0123 {re.escape(HOSTILE_ERROR)}",
                            rows[1].text()), rows[1].text()

        tokens = dom.find("section", id="tokens-section")
        assert "hidden" not in tokens.attrs
        assert [li.text() for li in tokens.find_all("li")] == ["notion"]
        for secret in ("secret_tok_XYZ", "ghp_secret_value", "xoxb-secret-value", "jira-secret-value"):
            assert secret not in dom_html

        # A screenshot for people to look at.
        shot = ARTIFACTS / "dashboard.png"
        shot.unlink(missing_ok=True)
        run_chromium(f"{receiver.url}/", tmp_path, f"--screenshot={shot}", "--window-size=1280,1400")
        assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def test_refreshes_and_shows_a_banner_when_status_is_unreachable(
        self, services, receiver_factory, dashboard_settings, tmp_path
    ):
        """The page behind a loopback proxy that forwards the first /api/status to the real
        receiver and then loses it: the page refreshes on its own, keeps the last report and
        says the status API cannot be reached."""
        seed_state(services)
        receiver = receiver_factory(dashboard_settings)
        requests: list[str] = []

        class Proxy(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                requests.append(self.path)
                if self.path == "/api/status" and requests.count("/api/status") > 1:
                    self.send_response(502)
                    self.send_header("Content-Type", "text/plain")
                    self.end_headers()
                    self.wfile.write(b"receiver unreachable")
                    return
                upstream = httpx.get(f"{receiver.url}{self.path}")
                self.send_response(upstream.status_code)
                for name in ("content-type", "content-security-policy"):
                    if name in upstream.headers:
                        self.send_header(name, upstream.headers[name])
                self.end_headers()
                self.wfile.write(upstream.content)

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            # 5 s refresh: a 7 s budget sees the first load and exactly one refresh.
            dom_html = run_chromium(f"http://127.0.0.1:{server.server_address[1]}/", tmp_path,
                                    "--dump-dom", budget_ms=7000)
        finally:
            server.shutdown()
            server.server_close()
        assert requests.count("/api/status") == 2, requests
        dom = parse_dom(dom_html)
        banner = dom.find("p", id="banner")
        assert "hidden" not in banner.attrs
        assert banner.text().startswith("Cannot reach /api/status: answered HTTP 502. Showing the report from ")
        # The last good report stays on screen.
        assert dom.find("main", id="report").attrs["data-loaded"] == "true"
        assert dom.find(id="verdict").text() == "Not healthy"
        assert dom.find("article", data_source="slack").attrs["data-state"] == "failing"

    def test_banner_when_status_never_answers(self, services, receiver, tmp_path):
        """Nothing to show yet and the API is down: the verdict says unknown, not fresh."""
        page = httpx.get(f"{receiver.url}/").text

        class Down(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.end_headers()
                    self.wfile.write(page.encode())
                else:
                    self.send_response(503)
                    self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Down)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            dom = parse_dom(run_chromium(f"http://127.0.0.1:{server.server_address[1]}/", tmp_path, "--dump-dom"))
        finally:
            server.shutdown()
            server.server_close()
        assert dom.find("p", id="banner").text() == "Cannot reach /api/status: answered HTTP 503."
        assert dom.find(id="verdict").text() == "Status unknown"
        assert dom.find("main", id="report").attrs["data-loaded"] == "false"


class TestHealthHeader:
    """The header is green only when the report is healthy; a source failing while its last
    success is recent (the observed case: every Jira call failing behind a green "All fresh")
    turns it red, with the reasons, the scope and the failed document listed."""

    def test_green_only_when_healthy_red_with_a_failing_source(self, services, receiver_factory, infra, tmp_path):
        settings = make_settings(infra, GITHUB_TOKEN="ghp_secret_value", HEARTBEAT_TIMEOUT="600")
        with services.pool.connection() as conn:
            conn.execute("""INSERT INTO scopes (source, key, name, active, last_success_at)
                            VALUES ('github', 'acme/api', 'acme/api', true, now() - interval '1 minute')""")
        for kind in ("worker", "reconciler"):
            state.beat(services.pool, kind, f"{kind}@test:1")
        receiver = receiver_factory(settings)
        assert httpx.get(f"{receiver.url}/api/status").json()["healthy"] is True

        dom = parse_dom(run_chromium(f"{receiver.url}/", tmp_path, "--dump-dom"))
        verdict = dom.find(id="verdict")
        assert verdict.text() == "Healthy" and verdict.attrs["class"] == "verdict ok"
        assert "hidden" in dom.find("ul", id="reasons").attrs
        assert dom.find("article", data_source="github").attrs["data-state"] == "fresh"

        # A new scope not synced yet: behind, not failing: amber.
        with services.pool.connection() as conn:
            conn.execute("INSERT INTO scopes (source, key, name) VALUES ('github', 'acme/new', 'acme/new')")
        dom = parse_dom(run_chromium(f"{receiver.url}/", tmp_path, "--dump-dom"))
        verdict = dom.find(id="verdict")
        assert verdict.text() == "Not healthy" and verdict.attrs["class"] == "verdict warn"
        assert [li.text() for li in dom.find("ul", id="reasons").find_all("li")] == [
            "github: 1 scope never synced (acme/new)"]
        assert dom.find("tr", data_scope="github/acme/new").attrs["data-state"] == "never synced"
        with services.pool.connection() as conn:
            conn.execute("DELETE FROM scopes WHERE key = 'acme/new'")

        # The last pass failed a moment ago (the last success is still recent), and a document
        # has been failing at the embedding stage for five minutes.
        with services.pool.connection() as conn:
            conn.execute("""UPDATE scopes SET last_error = '500 Internal Server Error', last_error_at = now()
                            WHERE source = 'github'""")
        state.record_document_error(services.pool, "github:acme/api/issues/7", "github",
                                    "embedding failed: 429 Too Many Requests", stage="embed", scope="acme/api")
        with services.pool.connection() as conn:
            conn.execute("UPDATE documents SET error_since = now() - interval '5 minutes'")

        dom_html = run_chromium(f"{receiver.url}/", tmp_path, "--dump-dom")
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "dashboard-failing.html").write_text(dom_html)
        dom = parse_dom(dom_html)
        verdict = dom.find(id="verdict")
        assert verdict.text() == "Not healthy" and verdict.attrs["class"] == "verdict bad"
        reasons = [li.text() for li in dom.find("ul", id="reasons").find_all("li")]
        assert len(reasons) == 1 and reasons[0].startswith(
            "github: scope acme/api: listing failed 1 time since "), reasons
        assert "500 Internal Server Error" in reasons[0]
        assert "1 document failing for over 5" in reasons[0] and "(embed: embedding failed: 429" in reasons[0]
        card = dom.find("article", data_source="github")
        assert card.attrs["data-state"] == "failing" and "state-failing" in card.attrs["class"]
        assert card.find("p").text() == reasons[0].removeprefix("github: ")  # the card is titled github
        assert re.search(r"Docs with errors 1 \(1 failing too long\)", card.text()), card.text()
        assert "Failures by stage" not in card.text()  # no pipeline counter was bumped
        row = dom.find("tr", data_scope="github/acme/api")
        assert row.attrs["data-state"] == "failing" and "500 Internal Server Error" in row.text()
        doc = dom.find("tr", data_document="github:acme/api/issues/7")
        assert re.fullmatch(r"github:acme/api/issues/7 embed 5(\.\d)?m 1 embedding failed: 429 Too Many Requests",
                            doc.text()), doc.text()
        assert "ghp_secret_value" not in dom_html

        shot = ARTIFACTS / "dashboard-failing.png"
        shot.unlink(missing_ok=True)
        run_chromium(f"{receiver.url}/", tmp_path, f"--screenshot={shot}", "--window-size=1280,1100")
        assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def test_postgres_down_says_not_healthy_and_why(self, services, receiver_factory, infra, tmp_path):
        from core.embedded import EmbeddedPostgres

        home = Path(tempfile.mkdtemp(prefix="vs-dash-pg-"))
        home.chmod(0o755)
        pg = EmbeddedPostgres(home / "pg")
        try:
            settings = make_settings(infra, DATABASE_URL=pg.start())
            receiver = receiver_factory(settings)
            pg.stop()
            dom = parse_dom(run_chromium(f"{receiver.url}/", tmp_path, "--dump-dom", budget_ms=4000))
        finally:
            pg.stop()
            shutil.rmtree(home, ignore_errors=True)
        verdict = dom.find(id="verdict")
        assert verdict.text() == "Not healthy" and verdict.attrs["class"] == "verdict bad"
        [reason] = [li.text() for li in dom.find("ul", id="reasons").find_all("li")]
        assert reason.startswith("postgres unreachable: ")
        assert dom.find("p", id="banner").text().startswith(
            "Cannot reach /api/status: answered HTTP 503: postgres unreachable: ")


class TestDashboardPage:
    def test_page_is_self_contained_and_locked_down(self, services, receiver):
        response = httpx.get(f"{receiver.url}/")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        html = response.text
        # No CDN, no remote fonts or scripts: nothing leaves this origin.
        for needle in ("http://", "https://", "//cdn", "src=\"//"):
            assert needle not in html
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp
        assert "script-src 'sha256-" in csp and "unsafe-inline" not in csp
        # The status API it reads is there and is JSON.
        status = httpx.get(f"{receiver.url}/api/status")
        assert status.status_code == 200 and json.loads(status.text)["sources"]


# --- on-call: one source failing, one scope never synced, driven in one real browser ---------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the module, driven over the DevTools protocol."""
    b = Browser(chromium())
    yield b
    b.close()


class OnCall:
    """A real run: the sandbox's Jira and GitHub, a reconciler pass and a worker; then GitHub's
    token is revoked (its next pass fails, a webhook's document is dead-lettered) and Jira gets
    a new project that is discovered but not synced yet."""

    def __init__(self, infra: dict[str, str]) -> None:
        sims = create_simulators(["jira", "github"], profile="small", seed=11)
        for sim in sims.values():
            sim.knobs.rate_limit = 0  # not a test of budgets
        self.sandbox = SandboxServer(sims).start()
        env = self.sandbox.env()
        self.repo = env["GITHUB_REPOS"].split(",")[0]
        good = make_settings(infra, **env, **FAST_BUDGETS, HEARTBEAT_TIMEOUT="600")
        self.settings = make_settings(infra, **{**env, "GITHUB_TOKEN": "ghp_revoked_by_an_admin"},
                                      **FAST_BUDGETS, HEARTBEAT_TIMEOUT="600")
        self.services = open_services(self.settings)
        reset_state(self.services)
        # A healthy first pass over both sources, indexed by a real worker.
        worker = WorkerHandle(good)
        try:
            self.tick(good)
            worker.drain()
        finally:
            worker.stop()
        # The token is revoked: GitHub's next pass fails, and a webhook's document cannot be fetched.
        with self.services.pool.connection() as conn:
            conn.execute("UPDATE scopes SET next_due_at = now() WHERE source = 'github'")
        self.tick(self.settings)
        worker = WorkerHandle(self.settings)
        try:
            queue.enqueue(self.services.broker, [Ref("github", f"{self.repo}/issues/1", scope=self.repo)])
            wait_for(lambda: queue.dead_letter_count(self.services.broker) == 1, timeout=90)
            worker.drain()
        finally:
            worker.stop()
        # A new Jira project, discovered (as the reconciler's discovery does) but not polled yet.
        with httpx.Client(base_url=self.sandbox.url("jira") + "/_sandbox/jira", timeout=30) as ctl:
            ctl.post("/projects", json={"key": "LAUNCH", "name": "Launch plan"}).raise_for_status()

        async def discover() -> None:
            sources = SourceSet(self.settings, self.services.pool)
            try:
                await Reconciler(self.settings, self.services, sources, "test-reconciler").discover(["jira"], force=True)
            finally:
                await sources.aclose()

        asyncio.run(discover())
        for kind in ("worker", "reconciler"):  # alive, so the page is about the sources
            state.beat(self.services.pool, kind, f"{kind}@test:1")
        self.receiver = ReceiverHandle(self.settings)

    def tick(self, settings: Any) -> int:
        return reconcile_tick(settings, self.services)

    def close(self) -> None:
        self.receiver.stop()
        self.services.close()
        self.sandbox.stop()


@pytest.fixture(scope="class")
def oncall(infra: dict[str, str]) -> Iterator[OnCall]:
    world = OnCall(infra)
    yield world
    world.close()


def open_dashboard(browser: Browser, url: str, height: int = 900) -> Page:
    page = browser.page(1280, height)
    page.goto(url)
    page.wait_js("document.getElementById('report').getAttribute('data-loaded') === 'true'")
    return page


class TestOnCall:
    def test_says_which_source_fails_and_which_scope_never_synced_and_why(self, oncall, browser):
        report = httpx.get(f"{oncall.receiver.url}/api/status").json()
        github, jira = report["sources"]["github"], report["sources"]["jira"]
        assert github["state"] == "failing" and jira["state"] == "stale", (github["reason"], jira["reason"])
        error = next(s["last_error"] for s in github["scope_list"] if s["key"] == oncall.repo)
        assert "401" in error, error

        page = open_dashboard(browser, f"{oncall.receiver.url}/")
        try:
            assert page.text("#verdict") == "Not healthy"
            # The header's reasons name the failing source and the scope never synced.
            reasons = page.text("#reasons")
            assert f"github: scope {oncall.repo}: listing failed 1 time since " in reasons, reasons
            assert "jira: 1 scope never synced (LAUNCH)" in reasons, reasons
            # The cards say it in words.
            card = page.text("article[data-source='github']")
            assert card.startswith("github FAILING scope "), card
            assert "listing failed" in card and error.split(":")[0] in card, card
            assert page.text("article[data-source='jira']").startswith(
                "jira STALE 1 scope never synced (LAUNCH)")
            # The per-scope table: the failing scopes first, with the time and the error, then
            # the one never synced; fresh ones are folded.
            rows = page.js("Array.from(document.querySelectorAll('#scopes > table tbody tr'))"
                           ".map(function (r) { return r.getAttribute('data-scope') + ' | ' + r.innerText; })")
            assert len(rows) == 3, rows  # GitHub's two repositories, then Jira's new project
            failing = page.text(f"tr[data-scope='github/{oncall.repo}']")
            assert re.search(r"FAILING failing since \d\d:\d\d UTC \(listing failed 1 time\): ", failing), failing
            assert error[:60] in failing, failing
            assert rows[2].startswith("jira/LAUNCH | jira\tLAUNCH (Launch plan)\tNEVER SYNCED\tnever synced\tnever\t0"), rows
            assert page.text("#fresh-scopes > summary") == "3 fresh scopes"  # SUBS, OPS, WEB
            folded = " ".join(page.js("document.getElementById('fresh-scopes').textContent").split())
            assert re.search(r"jiraSUBS \(.+?\)freshsynced \d+(\.\d)?[sm] ago", folded), folded
            # Failed documents and dead letters: listed / counted, with the way to act on them.
            doc = page.text(f"tr[data-document='github:{oncall.repo}/issues/1']")
            assert doc.startswith(f"github:{oncall.repo}/issues/1 fetch "), doc
            assert "Enter an admin key at the top of the page to re-sync a document." in page.text("#failed-docs")
            assert page.text("#dead-letters") == ("1 dead letter: jobs that exhausted their retries. "
                                                  "Enter an admin key at the top of the page to list and replay them.")
            assert page.js("document.querySelectorAll('button[data-action]').length") == 0
            assert page.text("#admin-state") == "No admin key: read only"
            assert page.js("document.getElementById('search-link').getAttribute('href')") == "/search"
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(ARTIFACTS / "dashboard-oncall.png")
        finally:
            page.close()

    def test_an_admin_key_lists_dead_letters_and_replays_and_resyncs(self, oncall, browser):
        svc, url = oncall.services, oncall.receiver.url
        doc_id = f"github:{oncall.repo}/issues/1"
        [letter] = queue.dead_letters(svc.broker)
        assert queue.queue_depth(svc.broker) == 0
        with svc.pool.connection() as conn:  # LAUNCH's first pass is scheduled an hour from now
            conn.execute("UPDATE scopes SET next_due_at = now() + interval '1 hour' WHERE key = 'LAUNCH'")

        page = open_dashboard(browser, f"{url}/", height=1000)
        try:
            # A wrong key is refused, in words.
            page.type("#admin-key", "not-a-key")
            page.press_enter()
            assert page.wait_text("#admin-state", "Admin key refused").startswith("Admin key refused (HTTP 401")
            page.click("#admin-forget")
            page.wait_text("#admin-state", "No admin key: read only")
            # The admin key: kept for this tab only, never in the URL.
            page.type("#admin-key", ADMIN_KEY)
            page.click("#admin-use")
            page.wait_text("#admin-state", "Admin key in use (this tab only)")
            assert page.js("sessionStorage.getItem('vector-sync-admin-key')") == ADMIN_KEY
            assert ADMIN_KEY not in page.js("location.href")
            assert page.js("document.getElementById('admin-key').value") == ""

            # The dead letter is listed: its document and the error that finished it.
            row = page.wait_text(f"tr[data-message='{letter['message_id']}']", doc_id)
            assert "401" in row and row.endswith("Replay"), row
            assert page.text("#dead-letters").startswith("1 dead letter, newest first Replay all")
            page.screenshot(ARTIFACTS / "dashboard-oncall-admin.png")

            # Replay: back in the queue (no worker runs here, so it waits there).
            page.click(f"tr[data-message='{letter['message_id']}'] button[data-action='replay']")
            assert page.wait_text("#action-result", "Replayed") == \
                f"Replayed dead letter {letter['message_id']}: it is back in the queue."
            assert queue.dead_letter_count(svc.broker) == 0 and queue.queue_depth(svc.broker) == 1
            page.wait_text("#dead-letters", "No dead letters.")

            # Re-sync the failed document: one more message, carrying its ref.
            page.click(f"tr[data-document='{doc_id}'] button[data-action='resync-doc']")
            assert page.wait_text("#action-result", "Re-sync") == \
                f"Re-sync of {doc_id} queued: a worker fetches it again from its source."
            assert queue.queue_depth(svc.broker) == 2

            # Sync the never-synced scope now: the reconciler will claim it on its next tick.
            page.click("tr[data-scope='jira/LAUNCH'] button[data-action='sync-scope']")
            assert page.wait_text("#action-result", "due now") == \
                "jira scope LAUNCH is due now: the reconciler runs its pass on its next tick."
            with svc.pool.connection() as conn:
                assert conn.execute("SELECT next_due_at <= now() FROM scopes WHERE key = 'LAUNCH'").fetchone()[0]
            assert [c.key for c in claim_due(svc.pool, ["jira"], owner="test")] == ["LAUNCH"]
        finally:
            page.close()


    # The two admin routes the page's buttons need that the API lacked, on the same receiver:
    # bad input is a 4xx with a message and changes nothing; what is accepted lands in Redis or
    # Postgres.

    def test_resync_documents_route(self, oncall):
        svc = oncall.services
        with svc.pool.connection() as conn:
            conn.execute("""INSERT INTO documents (document_id, source, scope, title, chunk_count, indexed_at)
                            VALUES ('api:handbook', 'api', '', 'Handbook', 2, now()),
                                   ('slack:C0123:1.0', 'slack', 'C0123', 'Thread', 1, now())
                            ON CONFLICT DO NOTHING""")
            jira_doc = conn.execute("SELECT min(document_id) FROM documents WHERE source = 'jira'").fetchone()[0]
        url, admin = f"{oncall.receiver.url}/api/admin/resync", {"Authorization": f"Bearer {ADMIN_KEY}"}

        def post(body: Any, headers: dict[str, str] = admin) -> httpx.Response:
            if isinstance(body, bytes):
                return httpx.post(url, content=body, headers={**headers, "Content-Type": "application/json"})
            return httpx.post(url, json=body, headers=headers)

        depth = queue.queue_depth(svc.broker)
        assert post({"document_ids": [jira_doc]}, {}).status_code == 401
        bad = [
            (b"{not json", 400, None),
            ({}, 400, "'document_ids' must be a non-empty list"),
            ({"document_ids": []}, 400, "'document_ids' must be a non-empty list"),
            ({"document_ids": [7]}, 400, "'document_ids' must be a non-empty list"),
            ({"document_ids": ["x" * 600]}, 400, "at most 512 characters"),
            ({"document_ids": [jira_doc], "force": True}, 400, "unknown field(s): force"),
            ({"document_ids": [jira_doc, "github:nope/1"]}, 404, "unknown document(s): github:nope/1"),
            ({"document_ids": [jira_doc, "api:handbook"]}, 400, "api:handbook was pushed through the API"),
            ({"document_ids": ["slack:C0123:1.0"]}, 400, "slack is not configured"),
        ]
        for body, code, message in bad:
            response = post(body)
            assert response.status_code == code, (body, response.text)
            assert response.json()["error"] and (message is None or message in response.json()["error"]), response.text
        assert queue.queue_depth(svc.broker) == depth  # all or nothing: none of those enqueued

        ok = post({"document_ids": [jira_doc, jira_doc]})
        assert ok.status_code == 202, ok.text
        assert ok.json() == {"enqueued": 1, "document_ids": [jira_doc]}
        assert queue.queue_depth(svc.broker) == depth + 1

    def test_sync_scopes_route(self, oncall):
        svc = oncall.services
        with svc.pool.connection() as conn:
            conn.execute("""INSERT INTO scopes (source, key, name, active, next_due_at) VALUES
                            ('github', 'acme/old', 'acme/old', false, now() + interval '1 hour'),
                            ('slack', 'C0123', 'delivery', true, now() + interval '1 hour')
                            ON CONFLICT DO NOTHING""")
            conn.execute("UPDATE scopes SET next_due_at = now() + interval '1 hour' WHERE key = 'WEB'")

        def post(path: str, body: Any) -> httpx.Response:
            return httpx.post(f"{oncall.receiver.url}/api/scopes/{path}", json=body,
                              headers={"Authorization": f"Bearer {ADMIN_KEY}"})

        def due(key: str) -> bool:
            with svc.pool.connection() as conn:
                return bool(conn.execute("SELECT next_due_at <= now() FROM scopes WHERE key = %s", (key,)).fetchone()[0])

        bad = [
            ("jira/sync", {}, 400, "'keys' must be a non-empty list"),
            ("jira/sync", {"keys": ["NOPE"]}, 404, "unknown scope(s): NOPE"),
            ("github/sync", {"keys": [oncall.repo, "acme/old"]}, 409, "deactivated scope(s): acme/old"),
            ("slack/sync", {"keys": ["C0123"]}, 400, "slack is not configured"),
            ("nosuch/sync", {"keys": ["x"]}, 404, "unknown source"),
            ("jira/resync", {"keys": ["WEB"]}, 404, "activate, deactivate or sync"),
        ]
        for path, body, code, message in bad:
            response = post(path, body)
            assert response.status_code == code and message in response.json()["error"], (path, response.text)
        assert not due("WEB") and not due("C0123")
        assert httpx.post(f"{oncall.receiver.url}/api/scopes/jira/sync", json={"keys": ["WEB"]}).status_code == 401

        ok = post("jira/sync", {"keys": ["WEB"]})
        assert ok.status_code == 202 and ok.json() == {"source": "jira", "due_now": ["WEB"]}, ok.text
        assert due("WEB") and not due("acme/old")
