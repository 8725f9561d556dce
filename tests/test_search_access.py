"""API keys with roles, and permission-aware search over the Slack simulator's private channels,
on real Postgres, Redis, a real worker and the receiver over loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import httpx
import pytest

from core import apikeys
from core.runtime import SourceSet
from reconciler.reconcile import Reconciler
from tests.conftest import ADMIN_KEY, BASE_ENV, FAST_BUDGETS, make_settings, running_sandbox

ADMIN = {"X-Admin-Key": ADMIN_KEY}

#: Every admin route with a request that would otherwise be valid enough to reach its handler.
ADMIN_REQUESTS = [
    ("GET", "/api/scopes", None),
    ("POST", "/api/scopes/slack/activate", {"keys": ["C1"]}),
    ("POST", "/api/scopes/slack/deactivate", {"keys": ["C1"]}),
    ("POST", "/api/scopes/slack/sync", {"keys": ["C1"]}),
    ("POST", "/api/admin/resync", {"document_ids": ["slack:C1:1.000001"]}),
    ("POST", "/api/scopes/slack/access", {"keys": ["C1"], "public": True}),
    ("POST", "/api/backfill/slack", {}),
    ("GET", "/api/runs", None),
    ("GET", "/api/runs/1", None),
    ("GET", "/api/dead-letters", None),
    ("POST", "/api/dead-letters/replay", {}),
    ("GET", "/api/admin/verification-token/notion", None),
    ("DELETE", "/api/admin/verification-token/notion", None),
    ("POST", "/api/admin/verify", {}),
    ("GET", "/api/admin/runs/1", None),
    ("POST", "/api/documents", {"id": "x", "title": "t", "text": "x"}),
    ("DELETE", "/api/documents/x", None),
    ("GET", "/api/keys", None),
    ("POST", "/api/keys", {"role": "admin"}),
    ("DELETE", "/api/keys/key_000000000000", None),
]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def new_key(receiver, **body) -> str:
    response = httpx.post(f"{receiver.url}/api/keys", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    return response.json()["token"]


def search(receiver, headers, **params) -> httpx.Response:
    return httpx.get(f"{receiver.url}/api/search", params=params, headers=headers)


class TestKeys:
    def test_search_key_is_refused_on_every_admin_route(self, services, receiver):
        token = new_key(receiver, role="search", principal="bot@example.com")
        for method, path, body in ADMIN_REQUESTS:
            response = httpx.request(method, f"{receiver.url}{path}", json=body, headers=bearer(token))
            assert response.status_code == 403, (method, path, response.text)
            assert "search key" in response.json()["error"]
        # ...and the same key searches.
        assert search(receiver, bearer(token), q="anything").status_code == 200

    def test_every_admin_route_of_the_app_is_in_the_list(self, services, receiver):
        """The list above is the real admin surface: a new admin route must be added to it."""
        from receiver.app import create_app

        listed = [(m, p) for m, p, _ in ADMIN_REQUESTS]
        public = {"/healthz", "/readyz", "/api/status", "/metrics", "/api/search", "/webhooks/{source}",
                  "/api/documents/{id:path}", "/", "/search", "/openapi.json", "/mcp"}
        for route in create_app(services.settings).routes:
            path = getattr(route, "path", "")
            for method in sorted((getattr(route, "methods", None) or {"GET"}) - {"HEAD"}):
                if path in public and not (method == "DELETE" and path == "/api/documents/{id:path}"):
                    continue
                if path.startswith("/static"):
                    continue
                assert any(m == method and _matches(path, p) for m, p in listed), (method, path)

    def test_revoked_key_is_locked_out_at_once_and_tokens_are_stored_hashed(self, services, receiver):
        created = httpx.post(f"{receiver.url}/api/keys", headers=ADMIN,
                             json={"role": "search", "principal": "Bot@Example.com", "name": "bot"}).json()
        token, key_id = created["token"], created["id"]
        assert created["principal"] == "bot@example.com"
        assert search(receiver, bearer(token), q="x").status_code == 200
        assert search(receiver, {"X-Admin-Key": token}, q="x").status_code == 200
        listed = httpx.get(f"{receiver.url}/api/keys", headers=ADMIN).json()["keys"]
        assert [k["id"] for k in listed] == [key_id]
        assert token not in str(listed)
        with services.pool.connection() as conn:
            stored = conn.execute("SELECT token_hash FROM api_keys WHERE id = %s", (key_id,)).fetchone()[0]
        assert stored == apikeys.token_hash(token) and token not in stored
        assert httpx.delete(f"{receiver.url}/api/keys/{key_id}", headers=ADMIN).status_code == 200
        assert search(receiver, bearer(token), q="x").status_code == 401
        assert httpx.delete(f"{receiver.url}/api/keys/{key_id}", headers=ADMIN).status_code == 404

    def test_stored_admin_key_works_and_env_key_takes_bearer(self, services, receiver):
        admin = new_key(receiver, role="admin", name="ops")
        assert httpx.get(f"{receiver.url}/api/runs", headers=bearer(admin)).status_code == 200
        assert httpx.get(f"{receiver.url}/api/runs", headers=bearer(ADMIN_KEY)).status_code == 200
        assert httpx.get(f"{receiver.url}/api/runs", headers=bearer("vsk_nope")).status_code == 401

    def test_bad_key_requests_get_400(self, services, receiver):
        for body in ({"role": "root"}, {"role": "search"}, {"role": "search", "principal": "not-an-email"},
                     {"role": "search", "trusted": "yes"}, {"role": "admin", "colour": "red"}):
            response = httpx.post(f"{receiver.url}/api/keys", json=body, headers=ADMIN)
            assert response.status_code == 400, body
            assert response.json()["error"]


def _matches(route_path: str, concrete: str) -> bool:
    """Whether a concrete path from ADMIN_REQUESTS is an instance of a route path."""
    a, b = route_path.strip("/").split("/"), concrete.strip("/").split("/")
    if route_path.endswith(":path}"):
        return b[: len(a) - 1] == a[:-1] and len(b) >= len(a)
    return len(a) == len(b) and all(x == y or x.startswith("{") for x, y in zip(a, b))


# --- permission-aware search on the Slack simulator ------------------------------------------


@pytest.fixture(scope="module")
def slack_sandbox():
    with running_sandbox("slack", seed=11) as server:
        yield server


@pytest.fixture
def slack_settings(infra, slack_sandbox):
    return make_settings(infra, **slack_sandbox.env(), **FAST_BUDGETS)


def reconcile(settings, services) -> None:
    async def go() -> None:
        sources = SourceSet(settings, services.pool)
        try:
            reconciler = Reconciler(settings, services, sources, "test")
            await reconciler.discover(["slack"], force=True)
            await reconciler.tick()
        finally:
            await sources.aclose()

    asyncio.run(go())


@pytest.fixture
def synced(slack_sandbox, slack_settings, services, receiver_factory, worker_factory):
    """Slack reconciled into the index; the receiver and the simulator's private channel."""
    worker = worker_factory(slack_settings)
    receiver = receiver_factory(slack_settings)
    reconcile(slack_settings, services)
    worker.drain(120)
    sim = slack_sandbox.sims["slack"]
    leadership = next(c for c in sim.channels.values() if c.name == "leadership")
    emails = {u: info["profile"].get("email") for u, info in sim.users.items()}
    members = sorted(emails[u] for u in leadership.members if emails.get(u))
    outsiders = sorted(e for u, e in emails.items() if e and u not in leadership.members)
    assert members and outsiders
    root = next(iter(leadership.messages.values()))
    return {"receiver": receiver, "worker": worker, "channel": leadership, "members": members,
            "outsiders": outsiders, "query": root["text"], "sim": sim}


def leadership_hits(response: httpx.Response, channel_id: str) -> list[dict]:
    assert response.status_code == 200, response.text
    return [r for r in response.json()["results"] if r["scope"] == channel_id]


class TestPermissionAwareSearch:
    def test_non_member_never_sees_a_private_channel_member_does(self, synced):
        receiver, channel = synced["receiver"], synced["channel"]
        member = new_key(receiver, role="search", principal=synced["members"][0])
        outsider = new_key(receiver, role="search", principal=synced["outsiders"][0])
        anonymous_bot = new_key(receiver, role="search", trusted=True)
        q = synced["query"]
        seen = leadership_hits(search(receiver, bearer(member), q=q, top_k=20), channel.id)
        assert seen and all(r["access_type"] == "restricted" for r in seen)
        assert leadership_hits(search(receiver, bearer(outsider), q=q, top_k=20), channel.id) == []
        assert leadership_hits(search(receiver, bearer(anonymous_bot), q=q, top_k=20), channel.id) == []
        # The admin key sees restricted documents only when it asks to.
        assert leadership_hits(search(receiver, ADMIN, q=q, top_k=20), channel.id) == []
        assert leadership_hits(search(receiver, ADMIN, q=q, top_k=20, include_restricted="true"), channel.id)
        # POST takes the same rules.
        posted = httpx.post(f"{receiver.url}/api/search", json={"q": q, "top_k": 20}, headers=bearer(outsider))
        assert leadership_hits(posted, channel.id) == []

    def test_filtering_happens_in_the_index_so_top_k_stays_full(self, synced):
        receiver = synced["receiver"]
        outsider = new_key(receiver, role="search", principal=synced["outsiders"][0])
        everything = search(receiver, ADMIN, q=synced["query"], top_k=10, include_restricted="true").json()
        public = search(receiver, bearer(outsider), q=synced["query"], top_k=10).json()["results"]
        assert any(r["access_type"] == "restricted" for r in everything["results"])
        assert len(public) == 10 and all(r["access_type"] == "public" for r in public)

    def test_trusted_key_searches_on_behalf_of_a_user_untrusted_may_not(self, synced):
        receiver, channel = synced["receiver"], synced["channel"]
        trusted = new_key(receiver, role="search", principal="answer-bot@example.com", trusted=True)
        plain = new_key(receiver, role="search", principal="plain-bot@example.com")
        q = synced["query"]
        assert leadership_hits(search(receiver, bearer(trusted), q=q, top_k=20, as_user=synced["members"][0]), channel.id)
        assert leadership_hits(search(receiver, bearer(trusted), q=q, top_k=20, as_user=synced["outsiders"][0]), channel.id) == []
        assert search(receiver, bearer(plain), q=q, as_user=synced["members"][0]).status_code == 403
        assert search(receiver, bearer(plain), q=q, include_restricted="true").status_code == 403

    def test_results_say_how_fresh_they_are_and_stale_follows_a_failing_scope(self, synced, services):
        receiver, channel = synced["receiver"], synced["channel"]
        member = new_key(receiver, role="search", principal=synced["members"][0])
        [hit, *_] = leadership_hits(search(receiver, bearer(member), q=synced["query"], top_k=20), channel.id)
        for field in ("document_id", "title", "url", "source", "scope", "text", "score", "access_type",
                      "source_updated_at", "as_of", "stale"):
            assert field in hit, field
        assert hit["as_of"] and hit["stale"] is False and hit["source"] == "slack"
        with services.pool.connection() as conn:
            conn.execute("""UPDATE scopes SET last_error = 'boom', last_error_at = last_success_at + interval '1 second'
                            WHERE source = 'slack' AND key = %s""", (channel.id,))
        [again, *_] = leadership_hits(search(receiver, bearer(member), q=synced["query"], top_k=20), channel.id)
        assert again["stale"] is True
        others = [r for r in search(receiver, bearer(member), q=synced["query"], top_k=20).json()["results"]
                  if r["scope"] != channel.id]
        assert others and not any(r["stale"] for r in others)
        with services.pool.connection() as conn:
            conn.execute("UPDATE scopes SET last_error_at = NULL, active = false WHERE source = 'slack' AND key = %s",
                         (channel.id,))
        [third, *_] = leadership_hits(search(receiver, bearer(member), q=synced["query"], top_k=20), channel.id)
        assert third["stale"] is True

    def test_get_document_honours_access(self, synced):
        receiver, channel = synced["receiver"], synced["channel"]
        member = new_key(receiver, role="search", principal=synced["members"][0])
        outsider = new_key(receiver, role="search", principal=synced["outsiders"][0])
        [hit, *_] = leadership_hits(search(receiver, bearer(member), q=synced["query"], top_k=20), channel.id)
        url = f"{receiver.url}/api/documents/{hit['document_id']}"
        got = httpx.get(url, headers=bearer(member))
        assert got.status_code == 200, got.text
        body = got.json()
        assert body["state"] == "indexed" and body["chunk_count"] >= 1 and body["content_hash"]
        assert body["indexed_at"] and body["checked_at"] and body["access_type"] == "restricted"
        assert "access_list" not in body
        assert httpx.get(url, headers=bearer(outsider)).status_code == 404
        assert httpx.get(url, headers=ADMIN).status_code == 404
        full = httpx.get(url, params={"include_restricted": "true"}, headers=ADMIN).json()
        assert synced["members"][0] in full["access_list"]
        assert httpx.get(f"{receiver.url}/api/documents/slack:nope", headers=bearer(member)).status_code == 404
        assert httpx.get(url, params={"colour": "red"}, headers=bearer(member)).status_code == 400

    def test_operator_restricts_a_public_channel(self, synced, services):
        receiver, worker, sim = synced["receiver"], synced["worker"], synced["sim"]
        general = next(c for c in sim.channels.values() if c.name == "general")
        q = next(iter(general.messages.values()))["text"]
        insider = new_key(receiver, role="search", principal="ceo@example.com")
        outsider = new_key(receiver, role="search", principal=synced["outsiders"][0])
        assert leadership_hits(search(receiver, bearer(outsider), q=q, top_k=20), general.id)
        response = httpx.post(f"{receiver.url}/api/scopes/slack/access", headers=ADMIN,
                              json={"keys": [general.id], "restrict": ["CEO@example.com"]})
        assert response.status_code == 200, response.text
        assert response.json()["resyncing"] > 0
        worker.drain(120)
        assert leadership_hits(search(receiver, bearer(outsider), q=q, top_k=20), general.id) == []
        assert leadership_hits(search(receiver, bearer(insider), q=q, top_k=20), general.id)
        # Back to what Slack says.
        assert httpx.post(f"{receiver.url}/api/scopes/slack/access", headers=ADMIN,
                          json={"keys": [general.id], "inherit": True}).status_code == 200
        worker.drain(120)
        assert leadership_hits(search(receiver, bearer(outsider), q=q, top_k=20), general.id)
        bad = httpx.post(f"{receiver.url}/api/scopes/slack/access", headers=ADMIN,
                         json={"keys": [general.id], "restrict": []})
        assert bad.status_code == 400


class TestQueryValidation:
    def test_unknown_parameters_and_fields_are_400_naming_them(self, services, receiver):
        response = search(receiver, ADMIN, q="x", scoap="SUBS")
        assert response.status_code == 400 and "scoap" in response.json()["error"]
        posted = httpx.post(f"{receiver.url}/api/search", json={"q": "x", "filters": {}}, headers=ADMIN)
        assert posted.status_code == 400 and "filters" in posted.json()["error"]
        cases = [{"q": "x", "top_k": "many"}, {"q": "x", "updated_after": "last week"},
                 {"q": "x", "metadata": {"text": "y"}}, {"q": "x", "metadata": {"channel": {"$ne": 1}}},
                 {"q": "x", "updated_after": 10, "updated_before": 5}, {"q": ""}, {"q": "x", "mode": "magic"},
                 {"q": "x", "as_user": "nobody"}]
        for body in cases:
            got = httpx.post(f"{receiver.url}/api/search", json=body, headers=ADMIN)
            assert got.status_code == 400, body
            assert got.json()["error"]

    def test_scope_and_date_filters_apply(self, services, receiver, worker):
        # Epoch seconds the push API accepts (1990 onwards): T0 and an hour later.
        t0 = 1_700_000_000
        for n, (scope, at) in enumerate([("SUBS", t0), ("SUBS", t0 + 3600), ("OPS", t0 + 3600)]):
            assert httpx.post(f"{receiver.url}/api/documents", headers=ADMIN, json={
                "id": f"f{n}", "title": f"Filter doc {n}", "text": "quarterly billing review notes",
                "updated_at": at, "author": "ada" if n else "ben", "metadata": {"scope": scope, "team": "red"},
            }).status_code == 202
        worker.drain()

        def ids(**params):
            response = httpx.post(f"{receiver.url}/api/search", headers=ADMIN, json={"q": "billing review", **params})
            assert response.status_code == 200, response.text
            return sorted(r["document_id"] for r in response.json()["results"])

        assert ids() == ["api:f0", "api:f1", "api:f2"]
        assert ids(scope="SUBS") == ["api:f0", "api:f1"]
        assert ids(scope=["SUBS"], updated_after=t0 + 60) == ["api:f1"]
        assert ids(updated_before="2023-11-14T22:43:20Z") == ["api:f0"]  # t0 + 30 minutes
        assert ids(author="ben") == ["api:f0"]
        assert ids(metadata={"team": "red"}, scope="OPS") == ["api:f2"]
        assert ids(metadata={"team": "blue"}) == []
        got = search(receiver, ADMIN, q="billing review", scope="OPS").json()["results"]
        assert [r["document_id"] for r in got] == ["api:f2"]


# --- the CLI ---------------------------------------------------------------------------------


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from cli.main import main; main()", *args],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


class TestCli:
    def test_keys_created_listed_and_revoked_from_the_cli(self, infra, services, receiver):
        env = {**BASE_ENV, **infra}
        made = cli(env, "keys", "create", "--role", "search", "--principal", "bot@example.com", "--json")
        assert made.returncode == 0, made.stderr
        key = json.loads(made.stdout)
        assert key["role"] == "search" and key["token"].startswith("vsk_")
        assert search(receiver, bearer(key["token"]), q="x").status_code == 200
        assert httpx.get(f"{receiver.url}/api/runs", headers=bearer(key["token"])).status_code == 403
        listed = cli(env, "keys", "list")
        assert key["id"] in listed.stdout and key["token"] not in listed.stdout
        assert cli(env, "keys", "create", "--role", "search").returncode == 2  # neither principal nor trusted
        assert cli(env, "keys", "revoke", key["id"]).returncode == 0
        assert search(receiver, bearer(key["token"]), q="x").status_code == 401
        assert cli(env, "keys", "revoke", key["id"]).returncode == 1

    def test_cli_search_equals_api_search(self, synced, infra, slack_settings, slack_sandbox):
        receiver = synced["receiver"]
        env = {**BASE_ENV, **infra, **slack_sandbox.env(), **FAST_BUDGETS}
        trusted = new_key(receiver, role="search", trusted=True)
        member = synced["members"][0]
        for params, args in [
            ({"q": synced["query"], "top_k": 7, "as_user": member}, ["--as-user", member, "--top-k", "7"]),
            ({"q": synced["query"], "top_k": 5, "scope": synced["channel"].id, "as_user": member},
             ["--scope", synced["channel"].id, "--as-user", member, "--top-k", "5"]),
            ({"q": "Q3 roadmap", "source": "slack"}, ["--source", "slack"]),
        ]:
            api = httpx.post(f"{receiver.url}/api/search", json=params, headers=bearer(trusted))
            assert api.status_code == 200, api.text
            got = cli(env, "search", params["q"], "--json", *args)
            assert got.returncode == 0, got.stderr
            assert json.loads(got.stdout)["results"] == api.json()["results"]
            assert api.json()["results"]
        human = cli(env, "search", synced["query"], "--as-user", member)
        assert human.returncode == 0 and "restricted" in human.stdout

    def test_scopes_access_from_the_cli(self, synced, infra, slack_sandbox, services):
        env = {**BASE_ENV, **infra, **slack_sandbox.env(), **FAST_BUDGETS}
        channel = synced["channel"]
        done = cli(env, "scopes", "access", "slack", channel.id, "--public")
        assert done.returncode == 0, done.stderr
        synced["worker"].drain(120)
        outsider = new_key(synced["receiver"], role="search", principal=synced["outsiders"][0])
        hits = leadership_hits(search(synced["receiver"], bearer(outsider), q=synced["query"], top_k=20), channel.id)
        assert hits and all(h["access_type"] == "public" for h in hits)
        assert cli(env, "scopes", "access", "slack", channel.id).returncode == 2
        assert cli(env, "scopes", "access", "slack", "C0NOPE", "--public").returncode == 1


class TestIdentifiersRankFirst:
    def test_issue_keys_repo_refs_and_names_put_the_right_document_first(self, services, receiver, worker):
        people = ["Grace Liu", "Henry Adeyemi", "Farid Haddad", "Erika Novak"]
        for n in range(24):
            key = f"SUBS-{600 + n}"
            person = people[n % len(people)] if n != 13 else "Ngozi Bello"
            body = {"id": f"sub-{n}", "title": f"{key}: billing migration step {n}",
                    "text": f"The SUBS billing migration, step {n}. Owner: {person}. "
                            "We move invoices to the new ledger and check refunds and renewals.",
                    "metadata": {"key": key, "scope": "SUBS"}, "updated_at": 1_700_000_000 + n}
            assert httpx.post(f"{receiver.url}/api/documents", json=body, headers=ADMIN).status_code == 202
        for n in range(6):
            body = {"id": f"gh-{n}", "title": "Fix the billing webhook retries",
                    "text": f"Issue #{40 + n} in acme/api: billing webhook retries time out.",
                    "metadata": {"repo": "acme/api", "number": 40 + n, "scope": "acme/api"}, "updated_at": 1_700_000_000}
            assert httpx.post(f"{receiver.url}/api/documents", json=body, headers=ADMIN).status_code == 202
        worker.drain()

        def first(q: str, **extra) -> str:
            response = httpx.post(f"{receiver.url}/api/search", json={"q": q, **extra}, headers=ADMIN)
            assert response.status_code == 200, response.text
            return response.json()["results"][0]["document_id"]

        assert first("SUBS-613") == "api:sub-13"
        assert first("what is the status of subs-607?") == "api:sub-7"
        assert first("acme/api#42") == "api:gh-2"
        assert first("Ngozi Bello") == "api:sub-13"
        # The identifier lane respects filters: a key outside the asked scope is not pinned.
        response = httpx.post(f"{receiver.url}/api/search", headers=ADMIN,
                              json={"q": "SUBS-613", "scope": "acme/api"}).json()["results"]
        assert "api:sub-13" not in [r["document_id"] for r in response]


class TestNulCharacters:
    """Found by the schema-driven fuzz: Postgres text cannot hold U+0000, which made a 500."""

    def test_nul_in_any_value_is_a_400(self, services, receiver):
        cases = [("POST", "/api/keys", {"role": "admin", "name": "a\x00b"}),
                 ("POST", "/api/keys", {"role": "search", "principal": "a\x00@example.com"}),
                 ("POST", "/api/search", {"q": "x\x00"}),
                 ("POST", "/api/search", {"q": "x", "metadata": {"team": "r\x00"}}),
                 ("POST", "/api/search", {"q": "x", "scope": ["S\x00"]}),
                 ("POST", "/api/scopes/slack/access", {"keys": ["C\x00"], "public": True})]
        for method, path, body in cases:
            response = httpx.request(method, f"{receiver.url}{path}", json=body, headers=ADMIN)
            assert response.status_code == 400, (path, body, response.text)
        assert httpx.get(f"{receiver.url}/api/documents/a%00b", headers=ADMIN).status_code == 400
        # NUL in a path is refused before any route runs (receiver/app.py).
        assert httpx.delete(f"{receiver.url}/api/keys/a%00b", headers=ADMIN).status_code == 400


class TestSearchPage:
    def test_search_page_is_self_contained_asks_for_a_key_and_renders_text_only(self, services, receiver):
        import base64
        import hashlib
        import re

        response = httpx.get(f"{receiver.url}/search")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        html, csp = response.text, response.headers["content-security-policy"]
        [script] = re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp and "connect-src 'self'" in csp and "default-src 'none'" in csp
        assert 'type="password"' in html and "sessionStorage" in html  # the key: asked for, kept per tab
        assert '"Authorization": "Bearer " + key' in script and 'fetch("api/search"' in script
        assert "innerHTML" not in html and "textContent" in script  # results as text, never markup
        assert not re.search(r"(src|href)=\"(https?:)?//", html)  # nothing from elsewhere


class TestLongDocuments:
    def test_a_long_document_does_not_crowd_the_others_out_of_top_k(self, services, receiver, worker):
        """Found merging: a transcript has a chunk per speaker turn, so the top_k × 4 chunks asked
        of the index could all be one document's and a search answered fewer documents than
        top_k although more matched. The search asks again for more."""
        long = "\n\n".join(f"Turn {n}: the ledger ledger ledger migration, part {n}. " + "filler " * 150
                           for n in range(40))
        docs = [{"id": "long", "title": "Ledger ledger ledger", "text": long}]
        docs += [{"id": f"short-{n}", "title": f"Note {n}", "text": f"One mention of the ledger, number {n}."}
                 for n in range(3)]
        for body in docs:
            assert httpx.post(f"{receiver.url}/api/documents", json={**body, "updated_at": 1_700_000_000},
                              headers=ADMIN).status_code == 202
        worker.drain()
        assert len(services.index.list_ids("api:long#")) > 16  # more than top_k × 4 chunks
        for mode in ("vector", "hybrid"):
            got = search(receiver, ADMIN, q="ledger ledger ledger", top_k="4", mode=mode).json()["results"]
            assert sorted(r["document_id"] for r in got) == ["api:long", "api:short-0", "api:short-1", "api:short-2"], mode
