"""The GitHub simulator over real HTTP: REST shapes, paging, rate limits, signed webhooks.

There is no official GitHub client in the project's dependencies, so these tests speak plain
HTTP the way the GitHub docs describe it (Link paging, x-ratelimit-* headers, HMAC signatures
checked against GitHub's published test vector).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from sandbox.base import Simulator
from sandbox.github import GitHubSimulator, sign
from sandbox.server import SandboxServer, create_simulators


class Receiver(Simulator):
    """A stand-in webhook receiver that records what arrives (answers ``status``)."""

    name = "receiver"

    def __init__(self) -> None:
        super().__init__()
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.status = 200

    def routes(self) -> list[BaseRoute]:
        async def hook(request: Request) -> Response:
            self.received.append((dict(request.headers), await request.body()))
            return Response(status_code=self.status)

        return [Route("/webhooks/github", hook, methods=["POST"])]


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, Any]]:
    sims = create_simulators(["github"], profile="small")
    receiver = Receiver()
    server = SandboxServer({**sims, "receiver": receiver}).start()
    sim = sims["github"]
    assert isinstance(sim, GitHubSimulator)
    sim.webhooks.target = server.url("receiver") + "/webhooks/github"
    env = server.env()
    client = httpx.Client(base_url=env["GITHUB_API_URL"],
                          headers={"Authorization": f"Bearer {env['GITHUB_TOKEN']}"}, timeout=10)
    yield {"server": server, "sim": sim, "rx": receiver, "env": env, "api": client}
    client.close()
    server.stop()


def control(w: dict[str, Any], method: str, path: str, body: Any = None) -> dict[str, Any]:
    """Call the control API, wait until its webhook went out, return the answer."""
    r = w["api"].request(method, f"/_sandbox{path}", json=body)
    assert r.status_code < 300, r.text
    w["server"].run_coroutine(w["sim"].webhooks.drain(5))
    return r.json()


def received(w: dict[str, Any], guid: str) -> list[tuple[dict[str, str], bytes]]:
    return [(h, b) for h, b in w["rx"].received if h["x-github-delivery"] == guid]


def follow(client: httpx.Client, url: str) -> list[dict[str, Any]]:
    """Every item of a listing, following ``Link: rel="next"`` like GitHub's docs say."""
    items: list[dict[str, Any]] = []
    while url:
        r = client.get(url)
        assert r.status_code == 200, r.text
        items += r.json()
        url = r.links.get("next", {}).get("url", "")
    return items


# --- signing -----------------------------------------------------------------------------------
def test_signature_matches_githubs_published_test_vector() -> None:
    assert sign("It's a Secret to Everybody", b"Hello, World!") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )


# --- auth and errors ---------------------------------------------------------------------------
def test_bad_token_gets_bad_credentials_and_no_token_cannot_see_private_repos(world: dict[str, Any]) -> None:
    url = world["env"]["GITHUB_API_URL"] + "/repos/acme/api/issues"
    bad = httpx.get(url, headers={"Authorization": "token ghp_wrong"})
    assert bad.status_code == 401
    assert bad.json()["message"] == "Bad credentials" and "documentation_url" in bad.json()
    assert bad.headers["x-ratelimit-limit"] == "60"
    anonymous = httpx.get(url)
    assert anonymous.status_code == 404 and anonymous.json()["message"] == "Not Found"
    assert world["api"].get("/repos/acme/nope").status_code == 404


def test_invalid_state_is_a_validation_error(world: dict[str, Any]) -> None:
    r = world["api"].get("/repos/acme/api/issues", params={"state": "bogus"})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "state"


# --- issues, pulls, paging ---------------------------------------------------------------------
def test_issues_default_to_open_and_include_pull_requests(world: dict[str, Any]) -> None:
    api = world["api"]
    default = api.get("/repos/acme/web/issues", params={"per_page": 100}).json()
    everything = api.get("/repos/acme/web/issues", params={"per_page": 100, "state": "all"}).json()
    assert default and all(i["state"] == "open" for i in default)
    assert len(everything) > len(default)
    truth = api.get("/_sandbox/truth").json()["acme/web"]
    pulls = sorted(i["number"] for i in everything if "pull_request" in i)
    issues = sorted(i["number"] for i in everything if "pull_request" not in i)
    assert pulls == truth["pulls"] and issues == truth["issues"] and pulls


def test_single_page_has_no_link_and_pages_link_every_way(world: dict[str, Any]) -> None:
    api = world["api"]
    single = api.get("/repos/acme/web/issues", params={"state": "all", "per_page": 100})
    assert "link" not in single.headers
    middle = api.get("/repos/acme/web/issues", params={"state": "all", "per_page": 2, "page": 2})
    assert set(middle.links) == {"prev", "next", "last", "first"}
    assert "page=1" in middle.links["first"]["url"] and "page=3" in middle.links["next"]["url"]
    assert len(middle.json()) == 2
    assert len(api.get("/repos/acme/web/issues", params={"state": "all"}).json()) <= 30  # default per_page


def test_per_page_is_capped_at_100() -> None:
    sims = create_simulators(["github"], profile="scale")
    server = SandboxServer(sims).start()
    try:
        env = server.env()
        with httpx.Client(headers={"Authorization": f"token {env['GITHUB_TOKEN']}"}, timeout=10) as c:
            r = c.get(env["GITHUB_API_URL"] + "/repos/acme/api/issues", params={"per_page": 500, "state": "all"})
            assert len(r.json()) == 100
            items = follow(c, env["GITHUB_API_URL"] + "/repos/acme/api/issues?state=all&per_page=100")
            numbers = [i["number"] for i in items]
            assert len(numbers) == len(set(numbers)) == 500
    finally:
        server.stop()


def test_since_filters_on_updated_at_inclusive_and_sorts(world: dict[str, Any]) -> None:
    api = world["api"]
    items = api.get("/repos/acme/api/issues",
                    params={"state": "all", "sort": "updated", "direction": "asc", "per_page": 100}).json()
    stamps = [i["updated_at"] for i in items]
    assert stamps == sorted(stamps)
    pivot = stamps[len(stamps) // 2]
    newer = api.get("/repos/acme/api/issues", params={"state": "all", "since": pivot, "per_page": 100}).json()
    assert {i["number"] for i in newer} == {i["number"] for i in items if i["updated_at"] >= pivot}


def test_pulls_have_no_since_and_default_to_open(world: dict[str, Any]) -> None:
    api = world["api"]
    all_pulls = api.get("/repos/acme/api/pulls", params={"state": "all", "per_page": 100}).json()
    future = api.get("/repos/acme/api/pulls",
                     params={"state": "all", "per_page": 100, "since": "2999-01-01T00:00:00Z"}).json()
    assert len(future) == len(all_pulls) > 0  # since is ignored, as on GitHub
    assert all(p["state"] == "open" for p in api.get("/repos/acme/api/pulls").json())
    one = api.get(f"/repos/acme/api/pulls/{all_pulls[0]['number']}").json()
    assert {"head", "base", "merged"} <= set(one) and one["head"]["ref"]


def test_commits_since_until_sha_and_detail(world: dict[str, Any]) -> None:
    api = world["api"]
    commits = follow(api, "/repos/acme/api/commits?per_page=5")
    dates = [c["commit"]["committer"]["date"] for c in commits]
    assert dates == sorted(dates, reverse=True) and len(commits) >= 10
    mid = dates[len(dates) // 2]
    since = api.get("/repos/acme/api/commits", params={"since": mid, "per_page": 100}).json()
    until = api.get("/repos/acme/api/commits", params={"until": mid, "per_page": 100}).json()
    assert all(c["commit"]["committer"]["date"] >= mid for c in since)
    assert all(c["commit"]["committer"]["date"] <= mid for c in until)
    older = api.get("/repos/acme/api/commits", params={"sha": commits[3]["sha"], "per_page": 100}).json()
    assert [c["sha"] for c in older] == [c["sha"] for c in commits[3:]]
    detail = api.get(f"/repos/acme/api/commits/{commits[0]['sha']}").json()
    assert detail["files"] and detail["stats"]["total"] >= 0
    missing = api.get("/repos/acme/api/commits/" + "f" * 40)
    assert missing.status_code == 422 and missing.json()["message"].startswith("No commit found for SHA")


# --- rate limits -------------------------------------------------------------------------------
def test_primary_limit_exhaustion_and_secondary_limit(world: dict[str, Any]) -> None:
    api, sim = world["api"], world["sim"]
    try:
        api.put("/_sandbox/knobs", json={"rate_limit": 3})
        api.put("/_sandbox/ratelimit", json={"reset": True})
        answers = [api.get("/repos/acme/api") for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 403]
        assert [a.headers["x-ratelimit-remaining"] for a in answers] == ["2", "1", "0", "0"]
        assert "rate limit exceeded" in answers[3].json()["message"]
        assert int(answers[3].headers["x-ratelimit-reset"]) >= time.time()
        api.put("/_sandbox/ratelimit", json={"status": 429})
        assert api.get("/repos/acme/api").status_code == 429
        assert api.get("/rate_limit").status_code == 200  # /rate_limit never counts
        api.put("/_sandbox/knobs", json={"rate_limit": 0})  # unlimited
        assert api.get("/repos/acme/api").status_code == 200
        api.put("/_sandbox/ratelimit", json={"secondary": 1, "retry_after": 7})
        second = api.get("/repos/acme/api")
        assert second.status_code == 403 and second.headers["retry-after"] == "7"
        assert second.headers["x-ratelimit-remaining"] != "0"  # not the primary limit
        assert "secondary rate limit" in second.json()["message"]
        assert api.get("/repos/acme/api").status_code == 200
    finally:
        api.put("/_sandbox/knobs", json={"rate_limit": None})
        api.put("/_sandbox/ratelimit", json={"status": 403, "reset": True})
    assert sim.limit_status == 403


# --- control API and webhooks ------------------------------------------------------------------
def _verify(headers: dict[str, str], body: bytes, secret: str) -> None:
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-hub-signature-256"], expected)
    legacy = "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()
    assert headers["x-hub-signature"] == legacy
    assert headers["user-agent"].startswith("GitHub-Hookshot/") and headers["x-github-hook-id"]


def test_issue_lifecycle_fires_signed_webhooks(world: dict[str, Any]) -> None:
    api, secret = world["api"], world["env"]["GITHUB_WEBHOOK_SECRET"]
    created = control(world, "POST", "/repos/acme/api/issues", {"title": "Rounding bug", "body": "Half-even."})
    number = created["number"]
    [(headers, body)] = received(world, created["delivery"])
    _verify(headers, body, secret)
    payload = json.loads(body)
    assert headers["x-github-event"] == "issues" and payload["action"] == "opened"
    assert payload["issue"]["number"] == number and payload["repository"]["full_name"] == "acme/api"

    comment = control(world, "POST", f"/repos/acme/api/issues/{number}/comments", {"body": "Seen it too"})
    [(headers, body)] = received(world, comment["delivery"])
    assert headers["x-github-event"] == "issue_comment" and json.loads(body)["action"] == "created"
    comments = api.get(f"/repos/acme/api/issues/{number}/comments").json()
    assert [c["body"] for c in comments] == ["Seen it too"]

    edited = control(world, "PATCH", f"/repos/acme/api/issues/{number}", {"state": "closed"})
    [(headers, body)] = received(world, edited["delivery"])
    assert json.loads(body)["action"] == "closed"
    assert api.get(f"/repos/acme/api/issues/{number}").json()["state"] == "closed"

    deleted = control(world, "DELETE", f"/repos/acme/api/issues/{number}")
    [(headers, body)] = received(world, deleted["delivery"])
    assert json.loads(body)["action"] == "deleted"
    gone = api.get(f"/repos/acme/api/issues/{number}")
    assert gone.status_code == 410
    listed = api.get("/repos/acme/api/issues", params={"state": "all", "per_page": 100}).json()
    assert number not in {i["number"] for i in listed}


def test_transfer_answers_301_or_404(world: dict[str, Any]) -> None:
    api = world["api"]
    inside = control(world, "POST", "/repos/acme/api/issues", {"title": "Moves to web"})["number"]
    outside = control(world, "POST", "/repos/acme/api/issues", {"title": "Moves away"})["number"]
    moved = control(world, "POST", f"/repos/acme/api/issues/{inside}/transfer", {"to": "acme/web"})
    [(_, body)] = received(world, moved["delivery"])
    payload = json.loads(body)
    assert payload["action"] == "transferred"
    assert payload["changes"]["new_repository"]["full_name"] == "acme/web"
    r = api.get(f"/repos/acme/api/issues/{inside}")
    assert r.status_code == 301 and r.headers["location"].endswith(f"/repos/acme/web/issues/{moved['number']}")
    assert api.get(r.headers["location"]).json()["title"] == "Moves to web"
    control(world, "POST", f"/repos/acme/api/issues/{outside}/transfer", {"to": "elsewhere/secret"})
    assert api.get(f"/repos/acme/api/issues/{outside}").status_code == 404


def test_pull_request_and_push_events(world: dict[str, Any]) -> None:
    api = world["api"]
    opened = control(world, "POST", "/repos/acme/web/pulls", {"title": "Dark mode", "head": "feature/dark"})
    [(headers, body)] = received(world, opened["delivery"])
    assert headers["x-github-event"] == "pull_request" and json.loads(body)["number"] == opened["number"]
    merged = control(world, "PATCH", f"/repos/acme/web/pulls/{opened['number']}", {"state": "closed", "merged": True})
    assert json.loads(received(world, merged["delivery"])[0][1])["pull_request"]["merged"] is True

    pushed = control(world, "POST", "/repos/acme/web/push",
                     {"commits": [{"message": "Fix rounding", "files": [["billing/rounding.py", "modified"]]}]})
    [(headers, body)] = received(world, pushed["delivery"])
    payload = json.loads(body)
    assert headers["x-github-event"] == "push" and "action" not in payload
    assert payload["commits"][0]["id"] == pushed["shas"][0] and payload["commits"][0]["modified"]
    assert api.get("/repos/acme/web/commits", params={"per_page": 1}).json()[0]["sha"] == pushed["shas"][0]
    removed = control(world, "POST", "/repos/acme/web/push", {"ref": "refs/heads/old", "deleted": True})
    assert json.loads(received(world, removed["delivery"])[0][1])["deleted"] is True


def test_never_retried_and_redelivery_keeps_the_delivery_id(world: dict[str, Any]) -> None:
    rx = world["rx"]
    rx.status = 500
    try:
        failed = control(world, "POST", "/repos/acme/api/issues", {"title": "Lost webhook"})
        time.sleep(0.3)
        assert len(received(world, failed["delivery"])) == 1  # no automatic retry
    finally:
        rx.status = 200
    control(world, "POST", f"/deliveries/{failed['delivery']}/redeliver")
    first, again = received(world, failed["delivery"])
    assert first[1] == again[1] and again[0]["x-hub-signature-256"] == first[0]["x-hub-signature-256"]


def test_ping_form_content_type_and_repository_events(world: dict[str, Any]) -> None:
    secret = world["env"]["GITHUB_WEBHOOK_SECRET"]
    ping = control(world, "POST", "/ping")
    [(headers, body)] = received(world, ping["delivery"])
    assert headers["x-github-event"] == "ping" and json.loads(body)["hook_id"]
    control(world, "PUT", "/hook", {"content_type": "form"})
    try:
        archived = control(world, "POST", "/repos/acme/web/archive", {"archived": True})
    finally:
        control(world, "PUT", "/hook", {"content_type": "json"})
    [(headers, body)] = received(world, archived["delivery"])
    assert headers["content-type"] == "application/x-www-form-urlencoded"
    _verify(headers, body, secret)  # signed over the form-encoded bytes
    payload = json.loads(parse_qs(body.decode())["payload"][0])
    assert payload["action"] == "archived" and payload["repository"]["archived"] is True
    assert world["api"].get("/repos/acme/web").json()["archived"] is True
    control(world, "POST", "/repos/acme/web/archive", {"archived": False})


# --- reviews and review comments ---------------------------------------------------------------
def test_reviews_and_review_comments_fire_signed_webhooks_and_page(world: dict[str, Any]) -> None:
    api, secret = world["api"], world["env"]["GITHUB_WEBHOOK_SECRET"]
    n = control(world, "POST", "/repos/acme/api/pulls", {"title": "Half-even rounding", "head": "fix/round"})["number"]
    start = len(world["rx"].received)
    review = control(world, "POST", f"/repos/acme/api/pulls/{n}/reviews",
                     {"user": "mona", "event": "REQUEST_CHANGES", "body": "Needs a test.",
                      "comments": [{"path": "billing/rounding.py", "line": 12, "body": "Use Decimal here."}]})
    events = [(h["x-github-event"], json.loads(b)) for h, b in world["rx"].received[start:]]
    assert [(e, p["action"]) for e, p in events] == [("pull_request_review_comment", "created"),
                                                    ("pull_request_review", "submitted")]
    for h, b in world["rx"].received[start:]:
        _verify(h, b, secret)
    submitted = events[1][1]
    assert submitted["review"]["state"] == "CHANGES_REQUESTED" and submitted["pull_request"]["number"] == n
    assert submitted["review"]["submitted_at"] and submitted["review"]["user"]["login"] == "mona"
    line = events[0][1]["comment"]
    assert line["path"] == "billing/rounding.py" and line["line"] == 12 and line["diff_hunk"].startswith("@@")
    assert line["pull_request_review_id"] == review["id"] and line["pull_request_url"].endswith(f"/pulls/{n}")

    reply = control(world, "POST", f"/repos/acme/api/pulls/{n}/comments",
                    {"user": "hubot", "body": "Done.", "in_reply_to": line["id"]})
    assert reply["in_reply_to_id"] == line["id"] and reply["path"] == "billing/rounding.py"
    listed = api.get(f"/repos/acme/api/pulls/{n}/comments").json()
    assert [c["id"] for c in listed] == [line["id"], reply["id"]]
    reviews = api.get(f"/repos/acme/api/pulls/{n}/reviews", params={"per_page": 1})
    assert reviews.status_code == 200 and reviews.json()[0]["id"] == review["id"]
    assert 'rel="next"' in reviews.headers["link"]  # the reply made a second (COMMENTED) review
    assert api.get(f"/repos/acme/api/pulls/{n}").json()["review_comments"] == 2

    # An edit leaves the PR's updated_at alone; the repo-wide listing's since finds it. (A seeded
    # comment, dated 2024, so "alone" and "since" mean something without waiting for the clock.)
    seeded = follow(api, "/repos/acme/web/pulls/comments?per_page=2")
    assert seeded and all(c["updated_at"] < "2025-02" for c in seeded)
    target, number = seeded[0], int(seeded[0]["pull_request_url"].rsplit("/", 1)[1])
    pr_updated = api.get(f"/repos/acme/web/pulls/{number}").json()["updated_at"]
    edited = control(world, "PATCH", f"/repos/acme/web/pulls/comments/{target['id']}", {"body": "Use Decimal."})
    [(headers, body)] = received(world, edited["delivery"])
    payload = json.loads(body)
    assert headers["x-github-event"] == "pull_request_review_comment" and payload["action"] == "edited"
    assert payload["changes"]["body"]["from"] == target["body"] and payload["pull_request"]["number"] == number
    assert api.get(f"/repos/acme/web/pulls/{number}").json()["updated_at"] == pr_updated
    since = api.get("/repos/acme/web/pulls/comments",
                    params={"since": edited["updated_at"], "sort": "updated", "direction": "asc"}).json()
    assert [c["id"] for c in since] == [target["id"]] and since[0]["body"] == "Use Decimal."
    assert api.get("/repos/acme/api/pulls/comments", params={"since": "junk"}).status_code == 422

    dismissed = control(world, "PUT", f"/repos/acme/api/pulls/{n}/reviews/{review['id']}/dismissals", {})
    assert json.loads(received(world, dismissed["delivery"])[0][1])["review"]["state"] == "DISMISSED"
    changed = control(world, "PUT", f"/repos/acme/api/pulls/{n}/reviews/{review['id']}", {"body": "Fine now."})
    assert json.loads(received(world, changed["delivery"])[0][1])["action"] == "edited"
    removed = control(world, "DELETE", f"/repos/acme/api/pulls/comments/{reply['id']}")
    assert json.loads(received(world, removed["delivery"])[0][1])["action"] == "deleted"
    assert [c["id"] for c in api.get(f"/repos/acme/api/pulls/{n}/comments").json()] == [line["id"]]
    assert api.get("/repos/acme/api/pulls/99999/reviews").status_code == 404


def test_hook_deliveries_list_newest_first_with_cursor_paging_and_redelivery(world: dict[str, Any]) -> None:
    api = world["api"]
    world["rx"].status = 500
    try:
        lost = control(world, "POST", "/repos/acme/api/issues", {"title": "Receiver failing"})["delivery"]
    finally:
        world["rx"].status = 200
    kept = control(world, "POST", "/repos/acme/api/issues", {"title": "Receiver fine"})["delivery"]
    first = api.get("/orgs/acme/hooks/424242/deliveries", params={"per_page": 1})
    assert first.status_code == 200 and 'rel="next"' in first.headers["link"]
    [newest] = first.json()
    assert newest["guid"] == kept and newest["status_code"] == 200 and newest["status"] == "OK"
    assert newest["event"] == "issues" and newest["action"] == "opened" and newest["redelivery"] is False
    [second] = api.get(first.links["next"]["url"]).json()
    assert second["guid"] == lost and second["status_code"] == 500
    failures = api.get("/orgs/acme/hooks/424242/deliveries", params={"status": "failure", "per_page": 100}).json()
    assert lost in {r["guid"] for r in failures} and kept not in {r["guid"] for r in failures}

    again = api.post(f"/orgs/acme/hooks/424242/deliveries/{second['id']}/attempts")
    assert again.status_code == 202
    world["server"].run_coroutine(world["sim"].webhooks.drain(5))
    assert len(received(world, lost)) == 2
    retried = api.get("/orgs/acme/hooks/424242/deliveries", params={"per_page": 1}).json()[0]
    assert retried["guid"] == lost and retried["redelivery"] is True and retried["status_code"] == 200
    assert api.get("/orgs/acme/hooks/1/deliveries").status_code == 404
    assert api.post("/orgs/acme/hooks/424242/deliveries/999999/attempts").status_code == 404
