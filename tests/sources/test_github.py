"""The GitHub connector against the GitHub simulator over real HTTP, plus its pure functions."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from core.documents import Document, Gone, Ref
from core.errors import InvalidWebhook, MalformedWebhook, NotConfigured, PermanentSourceError, RateLimited, \
    TransientSourceError
from core.settings import Settings
from core.sources.base import Scope, Source
from core.sources.github import COMMIT_FILES_DAYS, GitHubSource, build, commit_to_document, epoch, issue_to_document, pull_to_document, \
    rate_limit_wait, verify_signature
from sandbox.github import GitHubSimulator
from sandbox.server import SandboxServer, create_simulators


def make_source(env: dict[str, str], client: httpx.AsyncClient) -> GitHubSource:
    return build(Settings.from_environ(env).source("github"), client)


def run(env: dict[str, str], body: Callable[[GitHubSource], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``body(source)`` with a fresh client on a fresh loop (the sandbox has its own)."""

    async def main() -> Any:
        async with httpx.AsyncClient(timeout=10) as client:
            return await body(make_source(env, client))

    return asyncio.run(main())


async def collect(iterator: AsyncIterator[Any]) -> list[Any]:
    return [x async for x in iterator]


@pytest.fixture(scope="module")
def small() -> Iterator[dict[str, Any]]:
    sims = create_simulators(["github"], profile="small")
    server = SandboxServer(sims).start()
    sim = sims["github"]
    assert isinstance(sim, GitHubSimulator)
    env = server.env()
    api = httpx.Client(base_url=env["GITHUB_API_URL"], headers={"Authorization": f"Bearer {env['GITHUB_TOKEN']}"},
                       timeout=10)
    yield {"server": server, "sim": sim, "env": env, "api_get": lambda path: api.get(path).json(),
           "control": httpx.Client(base_url=server.url("github") + "/_sandbox", timeout=10)}
    server.stop()


def control(w: dict[str, Any], method: str, path: str, body: Any = None) -> dict[str, Any]:
    r = w["control"].request(method, path, json=body)
    assert r.status_code < 300, r.text
    w["server"].run_coroutine(w["sim"].webhooks.drain(5))
    return r.json()


def delivery(w: dict[str, Any], guid: str) -> tuple[dict[str, str], bytes]:
    """The (headers, raw body) the simulator sent for ``guid`` (no receiver: recorded only)."""
    found = [d for d in w["sim"].webhooks.deliveries if d.headers["X-GitHub-Delivery"] == guid]
    return found[-1].headers, found[-1].body


# --- pure: signatures and documents ---------------------------------------------------------
def test_verify_matches_githubs_published_test_vector() -> None:
    headers = {"x-hub-signature-256": "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"}
    verify_signature("It's a Secret to Everybody", headers, b"Hello, World!")
    with pytest.raises(InvalidWebhook):
        verify_signature("It's a Secret to Everybody", headers, b"Hello, World?")
    with pytest.raises(InvalidWebhook):
        verify_signature("It's a Secret to Everybody", {}, b"Hello, World!")
    env = {"GITHUB_TOKEN": "t", "GITHUB_WEBHOOK_SECRET": "It's a Secret to Everybody"}
    source = build(Settings.from_environ(env).source("github"), httpx.AsyncClient())
    assert isinstance(source, Source) and source.pushes
    source.verify(headers, b"Hello, World!")
    unset = build(Settings.from_environ({"GITHUB_TOKEN": "t"}).source("github"), httpx.AsyncClient())
    with pytest.raises(NotConfigured):
        unset.verify(headers, b"Hello, World!")


ISSUE = {"number": 7, "title": "Invoice rounding", "body": "Totals are off.\n\nBy a cent.", "state": "open",
         "user": {"login": "mona"}, "labels": [{"name": "billing"}, {"name": "bug"}],
         "created_at": "2024-03-01T10:00:00Z", "updated_at": "2024-03-02T10:00:00Z",
         "html_url": "https://github.com/acme/api/issues/7"}
COMMENTS = [{"user": {"login": "hubot"}, "body": "Agreed: half-even.\n\nShip it.",
             "created_at": "2024-03-03T09:00:00Z", "updated_at": "2024-03-04T09:00:00Z"}]


def test_issue_document_has_comments_as_paragraphs_and_metadata() -> None:
    doc = issue_to_document("acme/api", ISSUE, COMMENTS)
    assert doc.id == "acme/api/issues/7" and doc.scope == "acme/api" and doc.title == "Invoice rounding"
    paragraphs = doc.text.split("\n\n")
    assert paragraphs[0] == "Invoice rounding" and "opened by mona on 2024-03-01" in paragraphs[1]
    assert "Comment by hubot on 2024-03-03:\nAgreed: half-even.\nShip it." in paragraphs
    assert doc.updated_at == 1709542800.0  # the comment's updated_at is the newest
    assert doc.metadata == {"kind": "issue", "repo": "acme/api", "number": 7, "state": "open",
                            "labels": ["billing", "bug"], "author": "mona", "comments": 1}
    assert doc.author == "mona" and doc.url.endswith("/issues/7")


def test_pull_and_commit_documents() -> None:
    pull = {**ISSUE, "merged_at": "2024-03-05T00:00:00Z", "head": {"ref": "fix/rounding"},
            "base": {"ref": "main"}, "draft": False, "html_url": "https://github.com/acme/api/pull/7"}
    doc = pull_to_document("acme/api", pull, [])
    assert doc.id == "acme/api/pulls/7" and "fix/rounding → main" in doc.text and "merged" in doc.text
    assert doc.metadata["kind"] == "pull" and doc.metadata["merged"] is True and doc.metadata["base"] == "main"
    commit = {"sha": "a" * 40, "html_url": "u", "author": {"login": "octocat"},
              "commit": {"message": "Fix rounding\n\nUse half-even.",
                         "author": {"name": "Octo Cat", "date": "2024-03-06T00:00:00Z"},
                         "committer": {"name": "Octo Cat", "date": "2024-03-07T00:00:00Z"}},
              "files": [{"filename": "billing/rounding.py", "status": "modified"}]}
    doc = commit_to_document("acme/api", commit, now=1709769600.0 + 86400)
    assert doc.id == f"acme/api/commits/{'a' * 40}" and doc.title == "Fix rounding"
    assert "Files changed: billing/rounding.py (modified)" in doc.text and "by octocat" in doc.text
    assert doc.updated_at == 1709769600.0 and doc.metadata["files"] == ["billing/rounding.py"]
    # Older than COMMIT_FILES_DAYS: the message alone, as the commit listing gives it.
    old = commit_to_document("acme/api", commit, now=1709769600.0 + (COMMIT_FILES_DAYS + 1) * 86400)
    listed = commit_to_document("acme/api", {k: v for k, v in commit.items() if k != "files"},
                                now=1709769600.0 + (COMMIT_FILES_DAYS + 1) * 86400)
    assert "Files changed" not in old.text and old.metadata["files"] == [] and old == listed


def test_rate_limit_wait_reads_githubs_signals() -> None:
    now = 1_000_000.0
    primary = httpx.Response(403, headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1000010"})
    assert rate_limit_wait(primary, now) == 10.5
    assert rate_limit_wait(httpx.Response(403, headers={"retry-after": "7"}), now) == 7.0
    secondary = httpx.Response(403, json={"message": "You have exceeded a secondary rate limit."})
    assert rate_limit_wait(secondary, now) == 60.0
    refused = httpx.Response(403, headers={"x-ratelimit-remaining": "4000"}, json={"message": "Forbidden"})
    assert rate_limit_wait(refused, now) is None
    assert rate_limit_wait(httpx.Response(404), now) is None


# --- listing ---------------------------------------------------------------------------------
def test_changes_over_scale_returns_every_item_once_and_resumes() -> None:
    sims = create_simulators(["github"], profile="scale")
    server = SandboxServer(sims).start()
    try:
        env = server.env()
        truth = httpx.get(server.url("github") + "/_sandbox/truth").json()

        async def body(source: GitHubSource) -> None:
            scopes = await source.scopes()
            assert [s.key for s in scopes] == list(truth)
            total = 0
            for scope in scopes:
                pages = await collect(source.changes(scope, None, None))
                ids = [r.id for p in pages for r in p.refs]
                expected = truth[scope.key]
                assert len(ids) == len(set(ids))
                assert {i for i in ids if "/issues/" in i} == {f"{scope.key}/issues/{n}" for n in expected["issues"]}
                assert {i for i in ids if "/pulls/" in i} == {f"{scope.key}/pulls/{n}" for n in expected["pulls"]}
                assert {i for i in ids if "/commits/" in i} == {f"{scope.key}/commits/{s}" for s in expected["commits"]}
                assert pages[-1].checkpoint is None and all(p.checkpoint for p in pages[:-1])
                total += len(ids)
                # Resume from the third page's checkpoint: exactly the rest follows.
                rest = await collect(source.changes(scope, None, pages[2].checkpoint))
                assert [r.id for p in rest for r in p.refs] == [r.id for p in pages[3:] for r in p.refs]
            assert total == 3000 + 6000

        run(env, body)
    finally:
        server.stop()


def test_changes_since_lists_only_newer_items_with_high_water(small: dict[str, Any]) -> None:
    before = time.time() - 1
    created = control(small, "POST", "/repos/acme/api/issues", {"title": "Fresh", "body": "new"})
    pushed = control(small, "POST", "/repos/acme/api/push", {"commits": [{"message": "Fresh commit"}]})

    async def body(source: GitHubSource) -> None:
        pages = await collect(source.changes(Scope("github", "acme/api"), before, None))
        ids = [r.id for p in pages for r in p.refs]
        assert f"acme/api/issues/{created['number']}" in ids and f"acme/api/commits/{pushed['shas'][0]}" in ids
        assert all(not i.endswith("/issues/1") for i in ids)  # seeded items are older
        assert max(p.high_water or 0 for p in pages) >= int(before)

    run(small["env"], body)


def test_live_ids_match_ground_truth(small: dict[str, Any]) -> None:
    async def body(source: GitHubSource) -> list[str]:
        return await collect(source.live_ids(Scope("github", "acme/web")))

    ids = run(small["env"], body)
    truth = httpx.get(small["server"].url("github") + "/_sandbox/truth").json()["acme/web"]
    expected = ({f"acme/web/issues/{n}" for n in truth["issues"]} | {f"acme/web/pulls/{n}" for n in truth["pulls"]}
                | {f"acme/web/commits/{s}" for s in truth["commits"]})
    assert sorted(ids) == sorted(expected)


# --- fetch -----------------------------------------------------------------------------------
def test_fetch_issue_pull_and_commit_and_gone(small: dict[str, Any]) -> None:
    issue = control(small, "POST", "/repos/acme/api/issues", {"title": "Login timeout", "body": "After 30 s."})
    control(small, "POST", f"/repos/acme/api/issues/{issue['number']}/comments",
            {"body": "Root cause: no timeout on the call.", "user": "bob-ops"})
    pull = control(small, "POST", "/repos/acme/api/pulls", {"title": "Add timeout", "head": "fix/timeout"})
    control(small, "POST", f"/repos/acme/api/issues/{pull['number']}/comments", {"body": "LGTM"})
    sha = control(small, "POST", "/repos/acme/api/push",
                  {"commits": [{"message": "Add timeout", "files": [["api/auth.py", "modified"]]}]})["shas"][0]
    doomed = control(small, "POST", "/repos/acme/api/issues", {"title": "To delete"})["number"]
    control(small, "DELETE", f"/repos/acme/api/issues/{doomed}")
    moved = control(small, "POST", "/repos/acme/api/issues", {"title": "To move"})["number"]
    control(small, "POST", f"/repos/acme/api/issues/{moved}/transfer", {"to": "acme/web"})

    async def body(source: GitHubSource) -> list[Document | Gone]:
        refs = [f"acme/api/issues/{issue['number']}", f"acme/api/pulls/{pull['number']}", f"acme/api/commits/{sha}",
                f"acme/api/issues/{doomed}", f"acme/api/issues/{moved}", f"acme/api/commits/{'e' * 40}",
                "acme/api/pulls/9999"]
        return [await source.fetch(Ref("github", r, "acme/api")) for r in refs]

    got_issue, got_pull, got_commit, *gone = run(small["env"], body)
    assert isinstance(got_issue, Document) and "Comment by bob-ops" in got_issue.text
    assert "Root cause: no timeout" in got_issue.text and got_issue.metadata["kind"] == "issue"
    assert isinstance(got_pull, Document) and "fix/timeout → main" in got_pull.text and "LGTM" in got_pull.text
    assert isinstance(got_commit, Document) and "api/auth.py (modified)" in got_commit.text
    assert all(isinstance(g, Gone) for g in gone)


def test_failed_fetch_raises_never_gone(small: dict[str, Any]) -> None:
    async def bad_token(source: GitHubSource) -> Any:
        return await source.fetch(Ref("github", "acme/api/issues/1", "acme/api"))

    with pytest.raises(PermanentSourceError) as refused:
        run({**small["env"], "GITHUB_TOKEN": "ghp_wrong"}, bad_token)
    assert refused.value.status == 401

    async def faulty(source: GitHubSource) -> Any:
        source.http.attempts = 2  # keep the backoff short
        return await source.fetch(Ref("github", "acme/api/issues/1", "acme/api"))

    small["control"].put("/knobs", json={"fault_rate": 1.0})
    try:
        with pytest.raises(TransientSourceError):
            run(small["env"], faulty)
    finally:
        small["control"].put("/knobs", json={"fault_rate": 0.0})

    async def listing(source: GitHubSource) -> Any:
        return await collect(source.live_ids(Scope("github", "acme/gone")))

    with pytest.raises(PermanentSourceError):  # a missing repo is an error, not "nothing is live"
        run(small["env"], listing)


# --- rate limits -----------------------------------------------------------------------------
def test_primary_limit_waits_for_reset_or_raises_when_too_far(small: dict[str, Any]) -> None:
    ctl = small["control"]

    async def fetch_one(source: GitHubSource) -> tuple[Any, int]:
        doc = await source.fetch(Ref("github", "acme/api/issues/1", "acme/api"))
        return doc, source.http.requests

    try:
        ctl.put("/knobs", json={"rate_limit": 1})
        ctl.put("/ratelimit", json={"window": 1.5, "reset": True})
        started = time.monotonic()
        # issue + comments + the repository (its visibility, issue 11): the 2nd and 3rd wait for reset
        doc, requests = run(small["env"], fetch_one)
        assert isinstance(doc, Document) and requests == 5 and time.monotonic() - started >= 0.5
        ctl.put("/ratelimit", json={"window": 3600, "reset": True, "status": 429})
        with pytest.raises(RateLimited) as limited:
            run(small["env"], fetch_one)
        assert limited.value.retry_after > 120
        ctl.put("/knobs", json={"rate_limit": None})
        ctl.put("/ratelimit", json={"secondary": 1, "retry_after": 1})
        doc, requests = run(small["env"], fetch_one)  # honours retry-after, then succeeds
        assert isinstance(doc, Document) and requests == 4
    finally:
        ctl.put("/knobs", json={"rate_limit": None})
        ctl.put("/ratelimit", json={"window": 3600, "reset": True, "status": 403, "secondary": 0})


# --- webhooks --------------------------------------------------------------------------------
def parsed(w: dict[str, Any], guid: str) -> Any:
    headers, body = delivery(w, guid)
    source = make_source(w["env"], httpx.AsyncClient())
    source.verify(headers, body)
    return source.parse(headers, body)


def test_parse_issue_comment_pull_events(small: dict[str, Any]) -> None:
    opened = control(small, "POST", "/repos/acme/api/issues", {"title": "Webhook issue"})
    n = opened["number"]
    result = parsed(small, opened["delivery"])
    assert [(r.id, r.op) for r in result.refs] == [(f"acme/api/issues/{n}", "sync")]
    assert result.delivery_id == opened["delivery"] and result.refs[0].event_at
    comment = control(small, "POST", f"/repos/acme/api/issues/{n}/comments", {"body": "hi"})
    assert [r.id for r in parsed(small, comment["delivery"]).refs] == [f"acme/api/issues/{n}"]
    removed = control(small, "DELETE", f"/repos/acme/api/issues/comments/{comment['id']}")
    assert parsed(small, removed["delivery"]).refs[0].event_at is None
    pull = control(small, "POST", "/repos/acme/api/pulls", {"title": "Webhook PR"})
    assert [r.id for r in parsed(small, pull["delivery"]).refs] == [f"acme/api/pulls/{pull['number']}"]
    on_pull = control(small, "POST", f"/repos/acme/api/issues/{pull['number']}/comments", {"body": "PR note"})
    assert [r.id for r in parsed(small, on_pull["delivery"]).refs] == [f"acme/api/pulls/{pull['number']}"]
    deleted = control(small, "DELETE", f"/repos/acme/api/issues/{n}")
    assert [(r.id, r.op) for r in parsed(small, deleted["delivery"]).refs] == [(f"acme/api/issues/{n}", "delete")]


def test_parse_transfer_push_repository_and_ping(small: dict[str, Any]) -> None:
    n = control(small, "POST", "/repos/acme/api/issues", {"title": "Moving"})["number"]
    moved = control(small, "POST", f"/repos/acme/api/issues/{n}/transfer", {"to": "acme/web"})
    refs = parsed(small, moved["delivery"]).refs
    assert [(r.id, r.op) for r in refs] == [(f"acme/api/issues/{n}", "delete"),
                                            (f"acme/web/issues/{moved['number']}", "sync")]
    push = control(small, "POST", "/repos/acme/web/push", {"commits": [{"message": "a"}, {"message": "b"}]})
    assert [r.id for r in parsed(small, push["delivery"]).refs] == [f"acme/web/commits/{s}" for s in push["shas"]]
    branch = control(small, "POST", "/repos/acme/web/push", {"ref": "refs/heads/topic", "commits": [{"message": "c"}]})
    assert parsed(small, branch["delivery"]).refs == []
    gone = control(small, "POST", "/repos/acme/web/push", {"ref": "refs/heads/topic", "deleted": True})
    result = parsed(small, gone["delivery"])
    assert result.refs == [] and "deletion" in result.note
    ping = parsed(small, control(small, "POST", "/ping")["delivery"])
    assert ping.reply is not None and ping.reply[0] == 200 and ping.refs == []
    archived = control(small, "POST", "/repos/acme/web/archive", {"archived": True})
    assert parsed(small, archived["delivery"]).scope_events == [("archived", "acme/web")]
    control(small, "POST", "/repos/acme/web/archive", {"archived": False})


def test_parse_repository_deleted_form_bodies_and_redelivery() -> None:
    sims = create_simulators(["github"], profile="small")
    server = SandboxServer(sims).start()
    try:
        w = {"server": server, "sim": sims["github"], "env": server.env(),
             "control": httpx.Client(base_url=server.url("github") + "/_sandbox", timeout=10)}
        control(w, "PUT", "/hook", {"content_type": "form"})
        opened = control(w, "POST", "/repos/acme/web/issues", {"title": "Form encoded"})
        assert parsed(w, opened["delivery"]).refs[0].id == f"acme/web/issues/{opened['number']}"
        control(w, "POST", f"/deliveries/{opened['delivery']}/redeliver")
        again = [d for d in w["sim"].webhooks.deliveries if d.headers["X-GitHub-Delivery"] == opened["delivery"]]
        assert len(again) == 2 and parsed(w, opened["delivery"]).delivery_id == opened["delivery"]
        deleted = control(w, "DELETE", "/repos/acme/web")
        assert parsed(w, deleted["delivery"]).scope_events == [("deleted", "acme/web")]
    finally:
        server.stop()


def test_parse_rejects_bad_signatures_and_bodies_and_ignores_unknown_events() -> None:
    env = {"GITHUB_TOKEN": "t", "GITHUB_WEBHOOK_SECRET": "s3cret"}
    source = make_source(env, httpx.AsyncClient())
    body = json.dumps({"action": "opened", "repository": {"full_name": "acme/api"}}).encode()
    with pytest.raises(InvalidWebhook):
        source.verify({"X-Hub-Signature-256": "sha256=" + "0" * 64}, body)
    unknown = source.parse({"X-GitHub-Event": "star", "X-GitHub-Delivery": "d1"}, body)
    assert unknown.refs == [] and "star" in unknown.note and unknown.delivery_id == "d1"
    with pytest.raises(MalformedWebhook):
        source.parse({"X-GitHub-Event": "issues"}, b"{not json")
    with pytest.raises(MalformedWebhook):
        source.parse({"X-GitHub-Event": "issues"}, body)  # no "issue" in an issues event
    with pytest.raises(MalformedWebhook):
        source.parse({}, body)
    form = urlencode({"payload": json.dumps({"ref": "refs/heads/main", "commits": [{"id": "abc"}],
                                             "repository": {"full_name": "Acme/API", "default_branch": "main"}})})
    pushed = source.parse({"X-GitHub-Event": "push", "Content-Type": "application/x-www-form-urlencoded"},
                          form.encode())
    assert [r.id for r in pushed.refs] == ["acme/api/commits/abc"]  # ids are lower-cased


# --- reviews and review comments, and the cost of commits ----------------------------------
def test_pull_document_holds_reviews_and_review_comment_threads() -> None:
    pull = {**ISSUE, "head": {"ref": "fix/rounding"}, "base": {"ref": "main"}}
    reviews = [{"user": {"login": "mona"}, "state": "APPROVED", "body": "", "submitted_at": "2024-03-08T00:00:00Z"},
               {"user": {"login": "hubot"}, "state": "COMMENTED", "body": "", "submitted_at": "2024-03-08T00:00:00Z"}]
    comments = [{"id": 2, "in_reply_to_id": 1, "user": {"login": "mona"}, "body": "Done.", "path": "billing/r.py",
                 "created_at": "2024-03-09T00:00:00Z", "updated_at": "2024-03-10T00:00:00Z"},
                {"id": 1, "user": {"login": "hubot"}, "body": "Use Decimal.", "path": "billing/r.py", "line": 12,
                 "diff_hunk": "@@ -1 +1 @@\n+total = round(x)", "created_at": "2024-03-08T00:00:00Z",
                 "updated_at": "2024-03-08T00:00:00Z"}]
    doc = pull_to_document("acme/api", pull, [], reviews, comments)
    paragraphs = doc.text.split("\n\n")
    root = "Review comment by hubot on billing/r.py line 12 (2024-03-08):\n> +total = round(x)\nUse Decimal."
    assert "Review by mona on 2024-03-08: approved" in paragraphs and root in paragraphs
    assert paragraphs.index(root) + 1 == paragraphs.index("Reply by mona on billing/r.py (2024-03-09):\nDone.")
    assert not any(p.startswith("Review by hubot") for p in paragraphs)  # a bare wrapper says nothing
    assert doc.updated_at == epoch("2024-03-10T00:00:00Z")
    assert doc.metadata["reviews"] == 2 and doc.metadata["review_comments"] == 2
    assert doc.metadata["approved_by"] == ["mona"]


def test_reviews_fetched_parsed_and_an_edit_found_by_the_next_pass(small: dict[str, Any]) -> None:
    n = control(small, "POST", "/repos/acme/api/pulls", {"title": "Rounding PR", "head": "fix/r2"})["number"]
    review = control(small, "POST", f"/repos/acme/api/pulls/{n}/reviews",
                     {"user": "mona", "event": "APPROVE", "body": "Ship the ledger fix.",
                      "comments": [{"path": "billing/ledger.py", "line": 3, "body": "Nice guard."}]})
    [line] = small["api_get"](f"/repos/acme/api/pulls/{n}/comments")
    ref = Ref("github", f"acme/api/pulls/{n}", "acme/api")
    result = parsed(small, review["delivery"])
    assert [(r.id, r.op) for r in result.refs] == [(ref.id, "sync")] and result.refs[0].event_at
    comment_events = [d for d in small["sim"].webhooks.deliveries
                      if d.headers["X-GitHub-Event"] == "pull_request_review_comment"]
    assert parsed(small, comment_events[-1].headers["X-GitHub-Delivery"]).refs[0].id == ref.id

    async def fetch(source: GitHubSource) -> Any:
        return await source.fetch(ref)

    doc = run(small["env"], fetch)
    assert "Review by mona" in doc.text and "Ship the ledger fix." in doc.text
    assert "on billing/ledger.py line 3" in doc.text and "Nice guard." in doc.text
    # A seeded (2024) PR's review comment edited, its webhook lost: the PR's updated_at does not
    # move, so /issues?since misses it; the pass's /pulls/comments?since lists it.
    seeded = small["api_get"]("/repos/acme/web/pulls/comments?per_page=1")[0]
    old = Ref("github", "acme/web/pulls/" + seeded["pull_request_url"].rsplit("/", 1)[1], "acme/web")
    cursor = time.time() - 1
    control(small, "PATCH", f"/repos/acme/web/pulls/comments/{seeded['id']}", {"body": "Nicer guard."})

    async def listing(source: GitHubSource) -> list[Any]:
        return [r for p in await collect(source.changes(Scope("github", "acme/web"), cursor, None)) for r in p.refs]

    refs = run(small["env"], listing)
    assert [r.id for r in refs if "/pulls/" in r.id] == [old.id] and refs[0].event_at >= int(cursor)

    async def fetch_old(source: GitHubSource) -> Any:
        return await source.fetch(old)

    assert "Nicer guard." in run(small["env"], fetch_old).text
    edited = control(small, "PATCH", f"/repos/acme/api/pulls/comments/{line['id']}", {"body": "Nicer guard."})
    assert parsed(small, edited["delivery"]).refs[0].event_at
    assert "Nicer guard." in run(small["env"], fetch).text
    removed = control(small, "DELETE", f"/repos/acme/api/pulls/comments/{line['id']}")
    assert parsed(small, removed["delivery"]).refs[0].event_at is None  # always re-fetched
    assert "Nicer guard." not in run(small["env"], fetch).text


def test_first_sync_of_old_commits_costs_listing_pages_not_a_request_each() -> None:
    """A backfill of 1,000 commits older than COMMIT_FILES_DAYS: 10 listing pages, no fetch."""
    sims = create_simulators(["github"], profile="scale")
    server = SandboxServer(sims).start()
    sim = sims["github"]
    try:
        async def body(source: GitHubSource) -> tuple[int, int, int]:
            start = sim.requests
            pages = await collect(source.changes(Scope("github", "acme/api"), None, None))
            commits = [r for p in pages for r in p.refs if "/commits/" in r.id]
            assert all(isinstance(r.document, Document) and r.document.id == r.id for r in commits)
            return len(commits), sim.requests - start, sum(1 for r in commits if r.document is None)

        commits, requests, to_fetch = run(server.env(), body)
        # 5 issue pages + 10 commit pages + GET /repos/acme/api (its visibility, once).
        assert (commits, requests, to_fetch) == (1000, 16, 0)
    finally:
        server.stop()


def test_redeliver_failed_sends_again_only_what_never_arrived() -> None:
    from tests.sandbox.test_github_sim import Receiver

    sims = create_simulators(["github"], profile="small")
    receiver = Receiver()
    server = SandboxServer({**sims, "receiver": receiver}).start()
    sim = sims["github"]
    sim.webhooks.target = server.url("receiver") + "/webhooks/github"
    w = {"server": server, "sim": sim, "env": server.env(),
         "control": httpx.Client(base_url=server.url("github") + "/_sandbox", timeout=10)}
    try:
        since = time.time() - 1
        arrived = control(w, "POST", "/repos/acme/api/issues", {"title": "Arrived"})["delivery"]
        receiver.status = 500  # the receiver is failing: this one is lost
        failed = control(w, "POST", "/repos/acme/api/issues", {"title": "Lost"})["delivery"]
        sim.knobs.webhook_drop_rate = 1  # and this one never reached it
        dropped = control(w, "POST", "/repos/acme/web/issues", {"title": "Dropped"})["delivery"]
        sim.knobs.webhook_drop_rate, receiver.status = 0, 200

        async def repair(source: GitHubSource) -> list[str]:
            return await source.redeliver_failed("orgs/acme/hooks/424242", since)

        assert sorted(run(w["env"], repair)) == sorted([failed, dropped])
        server.run_coroutine(sim.webhooks.drain(5))
        got = [h["x-github-delivery"] for h, _ in receiver.received]
        assert got.count(arrived) == 1 and got.count(failed) == 2 and got.count(dropped) == 1
        assert run(w["env"], repair) == []  # now every one has a successful attempt

        async def nothing_before(source: GitHubSource) -> list[str]:
            return await source.redeliver_failed("orgs/acme/hooks/424242", time.time() + 60)

        receiver.status = 500
        control(w, "POST", "/repos/acme/api/issues", {"title": "Lost again"})
        assert run(w["env"], nothing_before) == []  # older than ``since``: left alone
    finally:
        server.stop()


def test_listed_issues_without_comments_carry_the_document_the_worker_would_fetch() -> None:
    """Issue 12: an issue with no comments is whole in the /issues listing; its listed document
    is the one a fetch makes, so the worker's request for it is saved. PRs and issues with
    comments are still fetched."""
    sims = create_simulators(["github"], profile="scale")
    server = SandboxServer(sims).start()
    try:
        async def body(source: GitHubSource) -> tuple[list[Ref], list[tuple[Document, Any]]]:
            pages = await collect(source.changes(Scope("github", "acme/api"), None, None))
            items = [r for p in pages for r in p.refs if "/commits/" not in r.id]
            carried = [r for r in items if r.document is not None][:20]
            return items, [(r.document, await source.fetch(r)) for r in carried]

        items, pairs = run(server.env(), body)
        whole = [r for r in items if r.document is not None]
        assert whole and all("/issues/" in r.id and r.document.metadata["comments"] == 0 for r in whole)
        assert any(r.document is None and "/pulls/" in r.id for r in items)
        assert any(r.document is None and "/issues/" in r.id for r in items)  # those with comments
        for listed, fetched in pairs:
            assert isinstance(fetched, Document) and listed == fetched
    finally:
        server.stop()
