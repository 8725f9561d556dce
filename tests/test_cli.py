"""The ``vector-sync`` command (cli/): help and version, exit codes for unknown sources, scopes
and ids, Slack channels by name, the backfill's progress (issue 13), ``check`` against the
simulators, ``--url`` mode against a real receiver, and ``status --watch``.

Most run the command in-process (``cli.main.main``) with the environment it reads; the
``up``/``status`` subprocess paths are covered by test_up.py and test_status.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest
import redis.asyncio

from cli.backfill import BackfillView
from cli.main import app, main
from core import scopes
from core.ratelimit import RedisRateLimiter
from core.runs import create_run, owner_name
from core.settings import Rate
from sandbox.server import SandboxServer, create_simulators
from tests.conftest import ADMIN_KEY, BASE_ENV, FAST_BUDGETS, make_settings, run_backfill, running_sandbox


def vector_sync(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: dict[str, str],
                *args: str) -> tuple[int, str, str]:
    """Run ``vector-sync ARGS`` in this process with exactly ``env`` set; (exit code, out, err)."""
    for name in list(os.environ):
        if name.startswith(("JIRA_", "SLACK_", "GITHUB_", "NOTION_", "TEMPO_", "FIREFLIES_", "VECTOR_SYNC_")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    capsys.readouterr()
    try:
        with pytest.raises(SystemExit) as stopped:
            main(list(args))
    finally:
        root.handlers[:], root.level = handlers, level
    out = capsys.readouterr()
    code = stopped.value.code
    return (code if isinstance(code, int) else 1), out.out, out.err


@pytest.fixture
def cli(monkeypatch, capsys):
    return lambda env, *args: vector_sync(monkeypatch, capsys, env, *args)


def all_commands(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for name, sub in (getattr(command, "commands", None) or {}).items():
        found += all_commands(sub, (*path, name))
    return found


# --- help, version, usage -----------------------------------------------------------------


class TestHelpAndUsage:
    def test_every_command_has_help(self, cli):
        import typer

        commands = all_commands(typer.main.get_command(app))
        assert ("sandbox",) in commands and ("scopes", "list") in commands and ("check",) in commands
        for path in commands:
            code, out, err = cli({}, *path, "--help")
            assert code == 0, (path, err)
            assert "Usage" in out or "usage" in out, path

    def test_sandbox_help_shows_the_simulators_options(self, cli):
        """Issue 13: `vector-sync sandbox --help` failed (argparse REMAINDER swallowed nothing)."""
        code, out, _ = cli({}, "sandbox", "--help")
        assert code == 0 and "--port-base" in out and "vector-sync sandbox" in out

    def test_version(self, cli):
        from importlib.metadata import version

        code, out, _ = cli({}, "--version")
        assert code == 0 and out.strip() == f"vector-sync {version('vector-sync')}"

    def test_unknown_source_and_option_are_usage_errors(self, cli):
        code, _, err = cli({}, "scopes", "list", "nosuch")
        assert code == 2 and "'nosuch' is not one of" in err and "Traceback" not in err
        assert cli({}, "backfill", "nosuch")[0] == 2
        assert cli({}, "status", "--bogus")[0] == 2
        assert cli({}, "check", "nosuch")[0] == 2

    def test_commands_that_need_this_machine_refuse_url_mode(self, cli):
        code, _, err = cli({"VECTOR_SYNC_URL": "http://127.0.0.1:9"}, "keys", "list")
        assert code == 2 and "works on this machine only" in err


# --- unknown scopes and ids, names --------------------------------------------------------


class TestScopesAndIds:
    @pytest.fixture
    def env(self, infra):
        return {**BASE_ENV, **infra}

    @pytest.fixture
    def channels(self, services):
        scopes.ensure_scope(services.pool, "slack", "C0GENERAL", "general", active=False)
        scopes.ensure_scope(services.pool, "slack", "C0RANDOM", "random", active=False)
        return services

    def test_scopes_list_of_an_unknown_scope_exits_1(self, cli, env, channels):
        code, out, err = cli(env, "scopes", "list", "slack", "C0NOPE")
        assert code == 1 and "unknown scope(s): C0NOPE" in err
        code, out, _ = cli(env, "scopes", "list", "slack", "#general")
        assert code == 0 and "C0GENERAL" in out and "C0RANDOM" not in out

    def test_slack_channels_are_accepted_by_name(self, cli, env, channels):
        """Issue 13: Slack scopes were accepted only as channel ids."""
        code, out, err = cli(env, "scopes", "activate", "slack", "#general", "random")
        assert code == 0, err
        assert "activated slack C0GENERAL" in out and "activated slack C0RANDOM" in out
        active = {r["key"]: r["active"] for r in scopes.list_scopes(channels.pool, "slack")}
        assert active == {"C0GENERAL": True, "C0RANDOM": True}
        code, _, err = cli(env, "scopes", "deactivate", "slack", "#nosuch")
        assert code == 1 and "unknown scope(s): #nosuch" in err

    def test_replaying_an_unknown_dead_letter_exits_1(self, cli, env, services):
        """Issue 13: `dead-letters replay bogus-id` exited 0 and said nothing."""
        code, out, err = cli(env, "dead-letters", "replay", "bogus-id")
        assert code == 1
        assert "replayed 0 message(s)" in out and "no dead letter 'bogus-id'" in err

    def test_runs_lists_the_newest_runs(self, cli, env, services):
        run_id = create_run(services.pool, "jira", ["ENG"], None, owner="test")
        code, out, _ = cli(env, "runs", "--kind", "backfill")
        assert code == 0 and f"{run_id:>6} backfill  jira" in out and "1 run(s)" in out


# --- backfill progress --------------------------------------------------------------------


@pytest.fixture(scope="module")
def jira_sandbox():
    with running_sandbox("jira", seed=3) as server:
        yield server


class TestBackfillProgress:
    def test_scopes_done_counts_up_while_the_backfill_runs(self, services, infra, jira_sandbox):
        """Issue 13: the bar stayed at 0/N scopes (scopes_done was set only after the loop)."""
        settings = make_settings(infra, **jira_sandbox.env(), **FAST_BUDGETS)
        services.settings = settings
        run_id = create_run(services.pool, "jira", [], None, owner=owner_name())
        events: list[dict[str, Any]] = []
        stream = io.StringIO()
        view = BackfillView("jira", stream=stream, tty=False)

        def progress(info: dict[str, Any]) -> None:
            events.append(dict(info))
            view(info)

        counters = run_backfill(settings, services, run_id, progress)
        total = counters["scopes_total"]
        assert total >= 2
        finished = [e["scopes_done"] for e in events if e.get("scope_done")]
        assert finished == list(range(1, total + 1))
        assert events[0]["targets"] and events[0]["scopes_done"] == 0
        lines = stream.getvalue().splitlines()
        assert f"1/{total} scopes done" in lines[0] or any(f"1/{total} scopes done" in line for line in lines)
        assert lines[-1].endswith("(scope done)") and f"{total}/{total} scopes done" in lines[-1]
        assert "\r" not in stream.getvalue()

    def test_the_view_says_when_the_rate_budget_holds_the_listing_back(self, infra):
        stream = io.StringIO()

        async def go() -> str:
            client = redis.asyncio.from_url(infra["REDIS_URL"])
            limiter = RedisRateLimiter(client, f"test-cli-{os.getpid()}", Rate(1, 3600.0), max_wait=7200)
            await client.delete(limiter.key)
            view = BackfillView("jira", stream=stream, tty=False,
                                budget_wait=lambda: max(0.0, limiter.waiting_until - time.monotonic()))
            view({"scope": None, "targets": ["ENG"], "listed": 0, "pages": 0, "scopes_total": 1})
            view({"scope": "ENG", "scope_listed": 10, "scope_pages": 1, "listed": 10, "pages": 1, "scopes_total": 1})
            await limiter.acquire()  # the hour's one slot
            waiter = asyncio.create_task(limiter.acquire())
            try:
                for _ in range(600):
                    if limiter.waiting_until:
                        break
                    await asyncio.sleep(0.05)
                view.tick()
            finally:
                waiter.cancel()
                await client.delete(limiter.key)
                await client.aclose()
            return stream.getvalue()

        text = asyncio.run(go())
        assert "jira scope ENG: waiting for the rate budget (next request in" in text

    def test_in_a_terminal_the_view_is_a_live_table(self):
        stream = io.StringIO()
        view = BackfillView("jira", stream=stream, tty=True, budget_wait=lambda: 12.0)
        view({"scope": None, "targets": ["ENG", "OPS"], "listed": 0, "pages": 0, "scopes_total": 2})
        view({"scope": "ENG", "scope_listed": 40, "scope_pages": 2, "scope_done": True, "listed": 40, "pages": 2,
              "scopes_total": 2, "scopes_done": 1})
        view({"scope": "OPS", "scope_listed": 5, "scope_pages": 1, "listed": 45, "pages": 3,
              "scopes_total": 2, "scopes_done": 1})
        view.end_line()
        text = stream.getvalue()
        assert "1/2 scopes" in text and "waiting for the rate budget" in text and "ETA" in text
        assert "ENG" in text and "OPS" in text and "done" in text


    def test_a_remote_run_is_followed_from_its_checkpoint(self):
        from cli.backfill import follow_remote

        stream = io.StringIO()
        view = BackfillView("jira", stream=stream, tty=False, rates=False)
        running = {"status": "running", "counters": {"listed": 7, "pages": 2, "scopes_total": 2, "scopes_done": 1},
                   "checkpoint": {"scopes": {"ENG": {"listed": 7, "pages": 2, "done": True},
                                             "OPS": {"listed": 0, "pages": 0, "done": False}}}}
        follow_remote(view, running)
        finished = {**running, "status": "succeeded",
                    "checkpoint": {"scopes": {"ENG": {"listed": 7, "pages": 2, "done": True},
                                              "OPS": {"listed": 3, "pages": 1, "done": True}}},
                    "verification": {"ENG": {"listed": 7, "pending": 0}, "OPS": {"listed": 3, "pending": 1}}}
        follow_remote(view, finished)
        lines = stream.getvalue().splitlines()
        assert lines[0].startswith("jira scope ENG: 7 documents listed, 2 pages; total 7 documents")
        assert lines[0].endswith("(scope done)")
        assert any(line.startswith("jira scope OPS: 3 documents listed") for line in lines)


# --- check ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saas():
    server = SandboxServer(create_simulators(["jira", "slack", "github", "notion", "tempo", "fireflies"],
                                             profile="small")).start()
    yield server
    server.stop()


def control(saas: SandboxServer, source: str, path: str, body: dict[str, Any]) -> None:
    response = httpx.put(f"{saas.url(source)}/_sandbox/{path}", json=body, timeout=10)
    assert response.status_code == 200, response.text


class TestCheck:
    @pytest.mark.parametrize("source", ["jira", "slack", "github", "notion", "tempo", "fireflies"])
    def test_working_credentials_say_who_and_what(self, cli, saas, source):
        code, out, err = cli({**BASE_ENV, **saas.env()}, "check", source)
        assert code == 0, out + err
        assert f"{source}: ok: authenticated as" in out or f"{source}: ok: the token reads worklogs" in out
        assert out.strip().endswith(f"{source}: usable")

    def test_a_refused_token_is_a_problem_naming_the_setting(self, cli, saas):
        code, out, _ = cli({**BASE_ENV, **saas.env(), "SLACK_BOT_TOKEN": "xoxb-wrong"}, "check", "slack")
        assert code == 1 and "slack: PROBLEM:" in out and "SLACK_BOT_TOKEN" in out
        code, out, _ = cli({**BASE_ENV, **saas.env(), "GITHUB_TOKEN": "ghp_wrong"}, "check", "github")
        assert code == 1 and "GITHUB_TOKEN" in out

    def test_the_github_hook_for_gap_repair_is_checked(self, cli, saas):
        env = {**BASE_ENV, **saas.env()}
        code, out, _ = cli({**env, "GITHUB_HOOK": "orgs/acme/hooks/424242"}, "check", "github")
        assert code == 0 and "GITHUB_HOOK orgs/acme/hooks/424242: deliveries readable" in out
        code, out, _ = cli({**env, "GITHUB_HOOK": "orgs/acme/hooks/1"}, "check", "github")
        assert code == 1 and "GITHUB_HOOK names orgs/acme/hooks/1, whose deliveries the token cannot read" in out

    def test_missing_slack_scopes_are_named(self, cli, saas):
        control(saas, "slack", "config", {"scopes": ["channels:read", "users:read"]})
        try:
            code, out, _ = cli({**BASE_ENV, **saas.env()}, "check", "slack")
        finally:
            control(saas, "slack", "config", {"scopes": ["channels:history", "channels:join", "channels:read",
                                                               "groups:history", "groups:read", "users:read",
                                                               "users:read.email"]})
        assert code == 1
        assert "slack: PROBLEM: missing scope channels:history" in out
        assert "missing optional scope groups:read" in out

    def test_configured_scopes_the_token_cannot_see_are_problems(self, cli, saas):
        env = {**BASE_ENV, **saas.env()}
        code, out, _ = cli({**env, "GITHUB_REPOS": "acme/api,acme/nope"}, "check", "github")
        assert code == 1 and "GITHUB_REPOS names acme/nope" in out and "acme/api: public, readable" in out
        code, out, _ = cli({**env, "JIRA_PROJECTS": "SUBS,ENGG"}, "check", "jira")
        assert code == 1 and "JIRA_PROJECTS names ENGG" in out
        code, out, _ = cli({**env, "SLACK_CHANNELS": "#general,#nope"}, "check", "slack")
        assert code == 1 and "SLACK_CHANNELS names #nope" in out and "#general" not in out.split("PROBLEM")[1]

    def test_a_jira_account_without_browse_permission(self, cli, saas):
        control(saas, "jira", "jira/settings", {"permissions": []})
        try:
            code, out, _ = cli({**BASE_ENV, **saas.env()}, "check", "jira")
        finally:
            control(saas, "jira", "jira/settings", {"permissions": ["BROWSE_PROJECTS", "ADD_COMMENTS"]})
        assert code == 1 and "no 'Browse projects' permission" in out and "sees 0 project(s)" in out

    def test_a_classic_github_token_without_repo_cannot_see_private_repositories(self, cli, saas):
        env = {**BASE_ENV, **saas.env()}
        repo = env["GITHUB_REPOS"].split(",")[0]
        control(saas, "github", f"repos/{repo}/access", {"private": True})
        control(saas, "github", "token", {"scopes": ["read:org"]})
        try:
            code, out, _ = cli(env, "check", "github")
        finally:
            control(saas, "github", "token", {"scopes": ["read:org", "repo"]})
            control(saas, "github", f"repos/{repo}/access", {"private": False})
        assert code == 1 and f"GITHUB_REPOS names {repo}" in out and "add the 'repo' scope" in out

    def test_an_unconfigured_source_exits_2(self, cli):
        code, _, err = cli(BASE_ENV, "check", "notion")
        assert code == 2 and "notion is not configured" in err


# --- --url mode -----------------------------------------------------------------------------


class TestRemote:
    @pytest.fixture
    def deployment(self, receiver, services):
        scopes.ensure_scope(services.pool, "slack", "C0GENERAL", "general", active=False)
        return {"VECTOR_SYNC_URL": receiver.url, "VECTOR_SYNC_KEY": ADMIN_KEY}

    def test_scopes_runs_and_dead_letters_through_the_admin_api(self, cli, deployment, services):
        code, out, _ = cli(deployment, "scopes", "list")
        assert code == 0 and "C0GENERAL" in out and "inactive" in out
        code, out, err = cli(deployment, "scopes", "activate", "slack", "#general")
        assert code == 0 and "activated slack C0GENERAL" in out, err
        assert scopes.list_scopes(services.pool, "slack")[0]["active"] is True
        assert cli(deployment, "scopes", "activate", "slack", "#nope")[0] == 1
        code, out, err = cli(deployment, "dead-letters", "replay", "bogus-id")
        assert code == 1 and "no dead letter 'bogus-id'" in err
        code, out, _ = cli(deployment, "dead-letters", "list")
        assert code == 0 and "0 dead letter(s)" in out

    def test_backfill_is_queued_and_listed_in_runs(self, cli, deployment, services, receiver_factory, infra,
                                                   jira_sandbox):
        receiver = receiver_factory(make_settings(infra, **jira_sandbox.env(), **FAST_BUDGETS))
        remote = {**deployment, "VECTOR_SYNC_URL": receiver.url}
        code, out, err = cli(remote, "backfill", "jira", "--days", "3", "--detach")
        assert code == 0, err
        assert "queued on" in err
        code, out, _ = cli(remote, "runs", "--kind", "backfill", "--json")
        runs = json.loads(out)
        assert code == 0 and runs[0]["status"] == "queued" and runs[0]["source"] == "jira"
        code, _, err = cli(remote, "backfill", "slack")
        assert code == 2 and "slack is not configured" in err

    def test_status_and_search_through_the_api(self, cli, deployment):
        code, out, _ = cli(deployment, "status", "--json")
        assert code == 1 and json.loads(out)["healthy"] is False  # nothing alive
        code, out, err = cli(deployment, "search", "anything")
        assert code == 0 and "no results" in out, err

    def test_the_key_may_come_from_a_file(self, cli, deployment, tmp_path):
        key_file = tmp_path / "key"
        key_file.write_text(ADMIN_KEY + "\n")
        env = {"VECTOR_SYNC_URL": deployment["VECTOR_SYNC_URL"], "VECTOR_SYNC_KEY_FILE": str(key_file)}
        code, out, err = cli(env, "scopes", "list", "slack")
        assert code == 0 and "C0GENERAL" in out, err

    def test_a_wrong_key_or_no_deployment_is_one_line(self, cli, deployment):
        code, _, err = cli({**deployment, "VECTOR_SYNC_KEY": "wrong"}, "scopes", "list")
        assert code == 2 and "refused the key (401)" in err and "Traceback" not in err
        code, _, err = cli({**deployment, "VECTOR_SYNC_URL": "http://127.0.0.1:9"}, "runs")
        assert code == 1 and "cannot reach http://127.0.0.1:9" in err


# --- status --watch ---------------------------------------------------------------------------


def test_status_watch_prints_one_report_per_interval(cli, infra, services):
    code, out, _ = cli({**BASE_ENV, **infra}, "status", "--watch", "--interval", "0.1", "--count", "2")
    assert code == 1  # nothing alive: not healthy
    assert out.count("--- ") == 2 and out.count("NOT HEALTHY") == 2


def test_the_installed_command_runs():
    """The console script is cli.main:main (pyproject), as a real process."""
    done = subprocess.run([sys.executable, "-m", "cli.main", "--version"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.startswith("vector-sync ")
