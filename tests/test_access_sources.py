"""Access kept current from the sources (issue 11): a private Slack channel's membership
changes reach search through member_joined/left_channel events and, when an event is lost,
through the reconciler's membership refresh; GitHub private repositories are restricted to
their collaborators. Real receiver, worker, Postgres, Redis and simulators over loopback."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from core.runtime import SourceSet
from reconciler.reconcile import Reconciler
from tests.conftest import BASE_ENV, FAST_BUDGETS, make_settings, running_sandbox
from tests.test_search_access import (  # noqa: F401  (fixtures)
    ADMIN,
    bearer,
    cli,
    leadership_hits,
    new_key,
    reconcile,
    search,
    slack_sandbox,
    slack_settings,
    synced,
)

DEADLINE = 120.0


def wait_until(check, what: str, timeout: float = DEADLINE) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def person(sim, email: str) -> str:
    return next(u for u, info in sim.users.items() if info["profile"].get("email") == email)


def sees(receiver, token: str, synced) -> bool:
    hits = leadership_hits(search(receiver, bearer(token), q=synced["query"], top_k=20), synced["channel"].id)
    return bool(hits)


def control(slack_sandbox, method: str, path: str, **kwargs) -> httpx.Response:
    url = slack_sandbox.url("slack") + "/_sandbox/" + path
    response = httpx.request(method, url, **kwargs)
    assert response.status_code < 300, response.text
    return response


class TestSlackMembership:
    def test_events_remove_and_add_readers(self, synced, slack_sandbox):
        receiver, channel, sim = synced["receiver"], synced["channel"], synced["sim"]
        sim.webhooks.target = receiver.url + "/webhooks/slack"
        try:
            leaving, joining = synced["members"][0], synced["outsiders"][0]
            leaver_key = new_key(receiver, role="search", principal=leaving)
            joiner_key = new_key(receiver, role="search", principal=joining)
            assert sees(receiver, leaver_key, synced) and not sees(receiver, joiner_key, synced)

            control(slack_sandbox, "DELETE", f"channels/{channel.id}/members/{person(sim, leaving)}")
            wait_until(lambda: not sees(receiver, leaver_key, synced), "the removed member to stop seeing the channel")
            control(slack_sandbox, "POST", f"channels/{channel.id}/members", json={"user": person(sim, joining)})
            wait_until(lambda: sees(receiver, joiner_key, synced), "the added member to see the channel")
            # The others are unaffected.
            stayer = new_key(receiver, role="search", principal=synced["members"][1])
            assert sees(receiver, stayer, synced)
        finally:
            sim.webhooks.target = None

    def test_refresh_repairs_a_missed_event(self, synced, slack_sandbox, slack_settings, services):
        receiver, channel, sim = synced["receiver"], synced["channel"], synced["sim"]
        assert sim.webhooks.target is None  # events are dropped
        leaving = synced["members"][0]
        leaver_key = new_key(receiver, role="search", principal=leaving)
        assert sees(receiver, leaver_key, synced)
        control(slack_sandbox, "DELETE", f"channels/{channel.id}/members/{person(sim, leaving)}")
        synced["worker"].drain(60)
        assert sees(receiver, leaver_key, synced)  # nothing told us yet
        with services.pool.connection() as conn:
            conn.execute("UPDATE scopes SET next_due_at = now() WHERE source = 'slack'")
        reconcile(slack_settings, services)
        wait_until(lambda: not sees(receiver, leaver_key, synced), "the refresh to drop the removed member")


# --- GitHub private repositories ------------------------------------------------------------

PRIVATE, PUBLIC = "acme/api", "acme/web"


@pytest.fixture(scope="module")
def github_sandbox():
    with running_sandbox("github", seed=11) as server:
        yield server


def reconcile_github(settings, services) -> None:
    async def go() -> None:
        sources = SourceSet(settings, services.pool)
        try:
            reconciler = Reconciler(settings, services, sources, "test")
            await reconciler.discover(["github"], force=True)
            await reconciler.tick()
        finally:
            await sources.aclose()

    asyncio.run(go())


@pytest.fixture
def github_synced(github_sandbox, infra, services, receiver_factory, worker_factory):
    """acme/api private (alice-dev with a public email, bob-ops without; carol-pm not a
    collaborator), acme/web public; reconciled into the index."""
    sim = github_sandbox.sims["github"]
    repo = sim.repos[PRIVATE]
    repo.private, repo.collaborators_listable = True, True
    repo.collaborators = {"alice-dev": "write", "bob-ops": "admin"}
    sim.emails.update({"alice-dev": "alice@acme.test", "bob-ops": None, "carol-pm": "carol@acme.test"})
    env = {**github_sandbox.env(), **FAST_BUDGETS}
    settings = make_settings(infra, **env)
    worker = worker_factory(settings)
    receiver = receiver_factory(settings)
    return {"sim": sim, "settings": settings, "worker": worker, "receiver": receiver, "env": env}


def repo_hits(receiver, headers, repo: str, sim) -> list[dict]:
    titles = [i.title for i in sim.repos[repo].issues.values()]
    found: list[dict] = []
    for q in titles[:3]:
        response = search(receiver, headers, q=q, top_k=20)
        assert response.status_code == 200, response.text
        found += [r for r in response.json()["results"] if r["scope"] == repo]
    return found


def sync_github(github_synced, services) -> None:
    with services.pool.connection() as conn:
        conn.execute("UPDATE scopes SET next_due_at = now() WHERE source = 'github'")
    reconcile_github(github_synced["settings"], services)
    github_synced["worker"].drain(180)


class TestGitHubPrivateRepos:
    def test_private_repo_only_for_collaborators_public_for_all(self, github_synced, services):
        receiver, sim = github_synced["receiver"], github_synced["sim"]
        sync_github(github_synced, services)
        alice = new_key(receiver, role="search", principal="alice@acme.test")
        carol = new_key(receiver, role="search", principal="carol@acme.test")
        private = repo_hits(receiver, bearer(alice), PRIVATE, sim)
        assert private and all(r["access_type"] == "restricted" for r in private)
        assert repo_hits(receiver, bearer(carol), PRIVATE, sim) == []
        for key in (alice, carol):
            public = repo_hits(receiver, bearer(key), PUBLIC, sim)
            assert public and all(r["access_type"] == "public" for r in public)
        # bob-ops shows no email: kept as github:bob-ops, which no email key matches.
        [doc_id] = {r["document_id"] for r in private[:1]}
        shown = httpx.get(f"{receiver.url}/api/documents/{doc_id}", params={"include_restricted": "true"},
                          headers=ADMIN)
        assert shown.status_code == 200, shown.text
        assert sorted(shown.json()["access_list"]) == ["alice@acme.test", "github:bob-ops"]

    def test_unlistable_private_repo_is_closed_until_the_operator_sets_access(
            self, github_synced, services, infra):
        receiver, sim = github_synced["receiver"], github_synced["sim"]
        sim.repos[PRIVATE].collaborators_listable = False
        try:
            sync_github(github_synced, services)
            alice = new_key(receiver, role="search", principal="alice@acme.test")
            dana = new_key(receiver, role="search", principal="dana@acme.test")
            assert repo_hits(receiver, bearer(alice), PRIVATE, sim) == []
            assert repo_hits(receiver, bearer(dana), PRIVATE, sim) == []
            hidden = repo_hits(receiver, {**ADMIN}, PRIVATE, sim)
            assert hidden == []  # not public: the admin sees it only with include_restricted
            everything = search(receiver, ADMIN, q=sim.repos[PRIVATE].issues[1].title, top_k=20,
                                include_restricted="true").json()["results"]
            assert any(r["scope"] == PRIVATE and r["access_type"] == "restricted" for r in everything)

            done = cli({**BASE_ENV, **infra, **github_synced["env"]},
                       "scopes", "access", "github", PRIVATE, "--restrict", "dana@acme.test")
            assert done.returncode == 0, done.stderr
            github_synced["worker"].drain(180)
            wait_until(lambda: bool(repo_hits(receiver, bearer(dana), PRIVATE, sim)),
                       "the operator's access to open the repository to dana")
            assert repo_hits(receiver, bearer(alice), PRIVATE, sim) == []
        finally:
            sim.repos[PRIVATE].collaborators_listable = True

    def test_collaborator_pagination_and_refusals_in_the_simulator(self, github_sandbox):
        sim = github_sandbox.sims["github"]
        repo = sim.repos[PRIVATE]
        repo.collaborators = {f"user{n:03d}": "read" for n in range(35)}
        base, token = github_sandbox.url("github"), {"Authorization": f"Bearer {sim.token}"}
        try:
            first = httpx.get(f"{base}/repos/{PRIVATE}/collaborators?per_page=30", headers=token)
            assert first.status_code == 200 and len(first.json()) == 30 and 'rel="next"' in first.headers["link"]
            second = httpx.get(first.links["next"]["url"], headers=token)
            assert len(second.json()) == 5
            repo.collaborators_listable = False
            refused = httpx.get(f"{base}/repos/{PRIVATE}/collaborators", headers=token)
            assert refused.status_code == 403 and "push access" in refused.json()["message"]
            repo.collaborators_status = 404
            assert httpx.get(f"{base}/repos/{PRIVATE}/collaborators", headers=token).status_code == 404
        finally:
            repo.collaborators_listable, repo.collaborators_status = True, 403


class TestMembershipEventsParse:
    def test_slack_member_events_in_a_private_channel_resync_it(self):
        from core.sources.slack import parse_event

        for kind in ("member_joined_channel", "member_left_channel"):
            body = {"type": "event_callback", "event_id": "Ev1", "event_time": 1_700_000_000,
                    "event": {"type": kind, "user": "U1", "channel": "G1", "channel_type": "G", "team": "T1"}}
            result = parse_event(json.dumps(body).encode())
            assert result.scope_events == [("access", "G1")] and result.delivery_id == "Ev1"
            body["event"]["channel_type"] = "C"  # a public channel: readable by the workspace anyway
            assert parse_event(json.dumps(body).encode()).scope_events == []

    def test_github_member_and_visibility_events_resync_the_repo(self):
        from core.sources.github import parse_webhook

        for event, action in (("member", "added"), ("member", "removed"), ("repository", "privatized"),
                              ("repository", "publicized")):
            body = json.dumps({"action": action, "repository": {"full_name": "Acme/API"},
                               "member": {"login": "alice-dev"}}).encode()
            result = parse_webhook({"X-GitHub-Event": event, "X-GitHub-Delivery": "d1",
                                    "Content-Type": "application/json"}, body)
            assert result.scope_events == [("access", "acme/api")], (event, action)


class TestGitHubRepoAccess:
    """The connector against the simulator directly: every page of collaborators, emails
    cached, and an unlistable private repo closed (with one warning), never public."""

    def run(self, github_sandbox, body):
        from core.settings import Settings
        from core.sources.github import build

        async def main():
            async with httpx.AsyncClient(timeout=10) as client:
                return await body(build(Settings.from_environ(github_sandbox.env()).source("github"), client))

        return asyncio.run(main())

    def test_pages_emails_and_refusals(self, github_sandbox, caplog):
        sim = github_sandbox.sims["github"]
        repo = sim.repos[PRIVATE]
        saved = (repo.private, dict(repo.collaborators), repo.collaborators_listable, repo.collaborators_status)
        repo.private = True
        repo.collaborators = {f"dev{n:03d}": "read" for n in range(150)}  # two pages of 100
        sim.emails.update({"dev000": "Dev0@Acme.test", "dev149": "dev149@acme.test"})
        try:
            async def twice(source):
                first = await source.repo_access(PRIVATE, fresh=True)
                before = sim.requests
                second = await source.repo_access(PRIVATE, fresh=True)
                return first, second, sim.requests - before

            (kind, listed), again, calls = self.run(github_sandbox, twice)
            assert kind == "restricted" and len(listed) == 150
            assert "dev0@acme.test" in listed and "dev149@acme.test" in listed and "github:dev050" in listed
            assert again == (kind, listed) and calls == 3  # repo + 2 collaborator pages; emails cached

            repo.collaborators_listable = False
            for status in (403, 404):
                repo.collaborators_status = status

                async def closed(source):
                    return await source.repo_access(PRIVATE), await source.repo_access(PRIVATE, fresh=True)

                caplog.clear()
                with caplog.at_level("WARNING", logger="core.sources.github"):
                    first, second = self.run(github_sandbox, closed)
                assert first == second == ("restricted", ())
                warnings = [r.getMessage() for r in caplog.records if "could not be listed" in r.getMessage()]
                assert len(warnings) == 1 and PRIVATE in warnings[0] and "scopes access" in warnings[0]

            repo.private = False
            assert self.run(github_sandbox, lambda s: s.repo_access(PRIVATE)) == ("public", ())
        finally:
            repo.private, repo.collaborators, repo.collaborators_listable, repo.collaborators_status = saved
