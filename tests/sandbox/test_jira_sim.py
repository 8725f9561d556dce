"""The Jira simulator over real loopback HTTP: auth, enhanced search, JQL, bulkfetch, webhooks."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest

from sandbox.jira import JiraSimulator
from sandbox.server import SandboxServer, create_simulators
from tests.sinks import Sink


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    sims: dict[str, Any] = create_simulators(["jira"], profile="small")
    sims["sink"] = Sink()
    srv = SandboxServer(sims).start()
    sims["jira"].webhooks.target = srv.url("sink") + "/hook"
    sims["jira"].retry_delay = 0.05
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def scale() -> Iterator[SandboxServer]:
    srv = SandboxServer(create_simulators(["jira"], profile="scale")).start()
    yield srv
    srv.stop()


@pytest.fixture()
def sim(server: SandboxServer) -> JiraSimulator:
    jira = server.sims["jira"]
    assert isinstance(jira, JiraSimulator)
    return jira


@pytest.fixture()
def sink(server: SandboxServer) -> Sink:
    recorder = server.sims["sink"]
    assert isinstance(recorder, Sink)
    recorder.received.clear()
    return recorder


def api(srv: SandboxServer) -> httpx.Client:
    env = srv.env()
    return httpx.Client(base_url=env["JIRA_URL"], auth=(env["JIRA_EMAIL"], env["JIRA_API_TOKEN"]))


def control(srv: SandboxServer) -> httpx.Client:
    return httpx.Client(base_url=srv.url("jira") + "/_sandbox/jira")


def search(client: httpx.Client, jql: str, **extra: Any) -> httpx.Response:
    return client.post("/rest/api/3/search/jql", json={"jql": jql, **extra})


def drain(srv: SandboxServer) -> None:
    srv.run_coroutine(srv.sims["jira"].webhooks.drain(10))


# --- auth and removed endpoints -------------------------------------------------------------


def test_missing_or_wrong_credentials_are_401(server: SandboxServer) -> None:
    url = server.url("jira") + "/rest/api/3/search/jql"
    anonymous = httpx.get(url, params={"jql": "project = SUBS"})
    wrong = httpx.get(url, params={"jql": "project = SUBS"}, auth=("sandbox@example.com", "nope"))
    for response in (anonymous, wrong):
        assert response.status_code == 401
        assert "must be authenticated" in response.text
    assert wrong.headers["x-seraph-loginreason"] == "AUTHENTICATED_FAILED"


@pytest.mark.parametrize("path", ["/rest/api/3/search", "/rest/api/2/search"])
def test_removed_search_endpoints_answer_410(server: SandboxServer, path: str) -> None:
    with api(server) as client:
        for response in (client.get(path, params={"jql": "project = SUBS"}),
                         client.post(path, json={"jql": "project = SUBS"})):
            assert response.status_code == 410
            assert "/rest/api/3/search/jql" in response.json()["errorMessages"][0]


# --- enhanced search ------------------------------------------------------------------------


def test_fields_default_to_id_only_and_no_total_or_start_at(server: SandboxServer) -> None:
    with api(server) as client:
        body = client.get("/rest/api/3/search/jql", params={"jql": "project = SUBS"}).json()
    assert body["issues"] and all(set(issue) == {"id"} for issue in body["issues"])
    assert "total" not in body and "startAt" not in body


def test_start_at_is_ignored(server: SandboxServer) -> None:
    with api(server) as client:
        first = search(client, "project = SUBS ORDER BY key", maxResults=3).json()
        skipped = search(client, "project = SUBS ORDER BY key", maxResults=3, startAt=5).json()
    assert first["issues"] == skipped["issues"]


def test_token_paging_returns_every_issue_once_and_last_page_has_no_token(sim: JiraSimulator,
                                                                          server: SandboxServer) -> None:
    truth = {i.id for i in sim.issues.values() if sim.projects[i.project_id].key == "OPS"}
    seen: list[int] = []
    token = None
    pages = 0
    with api(server) as client:
        while True:
            extra = {"nextPageToken": token} if token else {}
            body = search(client, 'project = "OPS" ORDER BY updated ASC', maxResults=3, **extra).json()
            seen += [int(issue["id"]) for issue in body["issues"]]
            pages += 1
            token = body.get("nextPageToken")
            if not token:
                assert body["isLast"] is True
                break
            assert body["isLast"] is False
    assert sorted(seen) == sorted(truth) and pages > 2


def test_token_of_another_query_is_refused(server: SandboxServer) -> None:
    with api(server) as client:
        token = search(client, "project = SUBS", maxResults=2).json()["nextPageToken"]
        response = search(client, "project = OPS", maxResults=2, nextPageToken=token)
    assert response.status_code == 400 and response.json()["errorMessages"]


def test_order_by_updated_desc_sorts(server: SandboxServer) -> None:
    with api(server) as client:
        body = search(client, "project = SUBS ORDER BY updated DESC", fields=["updated"]).json()
    stamps = [datetime.strptime(i["fields"]["updated"], "%Y-%m-%dT%H:%M:%S.%f%z") for i in body["issues"]]
    assert stamps == sorted(stamps, reverse=True)


def test_fields_all_navigable_explicit_and_exclusions(server: SandboxServer) -> None:
    with api(server) as client:
        everything = search(client, "project = SUBS", fields=["*all"], maxResults=1).json()["issues"][0]
        navigable = search(client, "project = SUBS", fields=["*navigable", "-comment"],
                           maxResults=1).json()["issues"][0]
        explicit = client.get("/rest/api/3/search/jql",
                              params={"jql": "project = SUBS", "fields": "summary,status",
                                      "maxResults": 1}).json()["issues"][0]
    assert {"summary", "description", "comment", "status", "project", "updated"} <= set(everything["fields"])
    assert everything["fields"]["description"]["type"] == "doc"
    assert "comment" not in navigable["fields"] and "summary" in navigable["fields"]
    assert set(explicit["fields"]) == {"summary", "status"} and explicit["key"].startswith("SUBS-")


def test_max_results_caps_depend_on_fields(scale: SandboxServer) -> None:
    with api(scale) as client:
        ids = search(client, "updated >= 0", fields=["id"], maxResults=6000).json()
        keys = search(client, "updated >= 0", fields=["key"], maxResults=5000).json()
        full = search(client, "updated >= 0", fields=["summary"], maxResults=5000).json()
        default = search(client, "updated >= 0").json()
    assert len(ids["issues"]) == 5000 and len(keys["issues"]) == 5000
    assert len(full["issues"]) == 100
    assert len(default["issues"]) == 50 and default["nextPageToken"]


def test_scale_profile_has_72_projects_and_7556_issues(scale: SandboxServer) -> None:
    with control(scale) as client:
        truth = client.get("/truth").json()
    assert len(truth["projects"]) == 72 and len(truth["issues"]) == 7556
    assert len({i["id"] for i in truth["issues"]}) == 7556
    assert sum(i["comments"] for i in truth["issues"]) > 7556  # most issues have comments


@pytest.mark.parametrize("jql,message", [
    ("ORDER BY updated DESC", "Unbounded JQL"),
    ("", "Unbounded JQL"),
    ("project = SUBS banana", "Expecting either 'OR' or 'AND'"),
    ("projekt = SUBS", "Field 'projekt' does not exist"),
    ("project = NOPE", "The value 'NOPE' does not exist for the field 'project'"),
    ('project = SUBS AND updated >= "yesterday-ish"', "for field 'updated' is invalid"),
    ("project in (SUBS, OPS", "Expecting"),
])
def test_bad_jql_is_400_with_jira_message(server: SandboxServer, jql: str, message: str) -> None:
    with api(server) as client:
        response = search(client, jql)
    assert response.status_code == 400
    assert message in response.json()["errorMessages"][0]
    assert response.json()["errors"] == {}


def test_project_in_and_or(server: SandboxServer, sim: JiraSimulator) -> None:
    with api(server) as client:
        both = search(client, "project in (SUBS, OPS)", maxResults=100).json()["issues"]
        either = search(client, "project = SUBS OR project = OPS", maxResults=100).json()["issues"]
    expected = {str(i.id) for i in sim.issues.values() if sim.projects[i.project_id].key in ("SUBS", "OPS")}
    assert {i["id"] for i in both} == expected == {i["id"] for i in either}


def test_jql_dates_use_account_time_zone_and_minute_precision(server: SandboxServer, sim: JiraSimulator) -> None:
    # 2024-07-01 14:30:45 UTC is 10:30:45 in New York (EDT, UTC-4).
    stamp = int(datetime(2024, 7, 1, 14, 30, 45, tzinfo=timezone.utc).timestamp() * 1000)
    with control(server) as ctl:
        created = ctl.post("/issues", json={"project": "WEB", "summary": "tz probe", "updated": stamp}).json()
    key = created["key"]

    def hits(clause: str) -> bool:
        with api(server) as client:
            body = search(client, f"key = {key} AND {clause}").json()
        assert "issues" in body, body
        return bool(body["issues"])

    assert sim.time_zone.key == "America/New_York"
    assert hits('updated >= "2024/07/01 10:30"')
    assert not hits('updated >= "2024/07/01 10:31"')
    assert not hits('updated >= "2024-07-01 14:30"')  # read as New York time, not UTC
    assert hits(f"updated >= {stamp + 14_000}")  # epoch ms, floored to the minute
    assert not hits(f"updated >= {stamp + 15_000}")  # 14:31:00 UTC
    with control(server) as ctl:
        ctl.put("/settings", json={"time_zone": "UTC"})
    try:
        assert hits('updated >= "2024-07-01 14:30"')
    finally:
        with control(server) as ctl:
            ctl.put("/settings", json={"time_zone": "America/New_York"})


def test_times_are_printed_with_the_account_offset(server: SandboxServer) -> None:
    with api(server) as client:
        issue = search(client, "project = SUBS", fields=["updated"], maxResults=1).json()["issues"][0]
    assert issue["fields"]["updated"][-5:] in ("-0500", "-0400")


# --- issues, bulkfetch, projects ------------------------------------------------------------


def test_bulkfetch_returns_found_issues_and_leaves_out_unknown(server: SandboxServer, sim: JiraSimulator) -> None:
    some = list(sim.issues.values())[:3]
    wanted = [str(some[0].id), some[1].key, str(some[2].id), "999999", "NOPE-1"]
    with api(server) as client:
        body = client.post("/rest/api/3/issue/bulkfetch",
                           json={"issueIdsOrKeys": wanted, "fields": ["summary", "comment"]}).json()
        too_many = client.post("/rest/api/3/issue/bulkfetch",
                               json={"issueIdsOrKeys": [str(n) for n in range(101)], "fields": ["summary"]})
    assert [i["id"] for i in body["issues"]] == [str(i.id) for i in some]
    assert set(body["issues"][0]["fields"]) == {"summary", "comment"}
    assert body["issueErrors"] == []
    assert too_many.status_code == 400 and too_many.json()["errorMessages"]


def test_get_issue_by_id_key_and_404(server: SandboxServer, sim: JiraSimulator) -> None:
    issue = next(iter(sim.issues.values()))
    with api(server) as client:
        by_id = client.get(f"/rest/api/3/issue/{issue.id}").json()
        by_key = client.get(f"/rest/api/3/issue/{issue.key}", params={"fields": "summary"}).json()
        missing = client.get("/rest/api/3/issue/424242")
    assert by_id["key"] == issue.key and by_id["fields"]["comment"]["comments"] is not None
    assert set(by_key["fields"]) == {"summary"}
    assert missing.status_code == 404
    assert missing.json()["errorMessages"] == ["Issue does not exist or you do not have permission to see it."]


def test_project_search_pages_by_offset(server: SandboxServer) -> None:
    with api(server) as client:
        first = client.get("/rest/api/3/project/search", params={"maxResults": 2}).json()
        second = client.get("/rest/api/3/project/search", params={"startAt": 2, "maxResults": 2}).json()
    assert len(first["values"]) == 2 and first["isLast"] is False and "nextPage" in first
    assert len(second["values"]) == 1 and second["isLast"] is True and "nextPage" not in second


def test_moved_issue_keeps_id_and_old_key_still_resolves(server: SandboxServer) -> None:
    with control(server) as ctl:
        issue = ctl.post("/issues", json={"project": "SUBS", "summary": "to be moved"}).json()
        moved = ctl.post(f"/issues/{issue['key']}/move", json={"project": "OPS"}).json()
    assert moved["id"] == issue["id"] and moved["key"].startswith("OPS-")
    with api(server) as client:
        by_old = client.get(f"/rest/api/3/issue/{issue['key']}").json()
        found = search(client, f"key = {issue['key']}").json()["issues"]
        in_old_project = search(client, "project = SUBS", maxResults=5000).json()["issues"]
    assert by_old["id"] == issue["id"] and by_old["key"] == moved["key"]
    assert by_old["fields"]["project"]["key"] == "OPS"
    assert [i["id"] for i in found] == [issue["id"]]
    assert issue["id"] not in {i["id"] for i in in_old_project}


def test_rate_limit_answers_429_with_retry_after(server: SandboxServer, sim: JiraSimulator) -> None:
    sim.knobs.rate_limit = 2
    try:
        with api(server) as client:
            responses = [client.get("/rest/api/3/project/search") for _ in range(6)]
    finally:
        sim.knobs.rate_limit = None
    limited = [r for r in responses if r.status_code == 429]
    assert limited, [r.status_code for r in responses]
    headers = limited[0].headers
    assert int(headers["retry-after"]) >= 1 and headers["x-ratelimit-remaining"] == "0"
    assert headers["x-ratelimit-limit"] == "2" and headers["ratelimit-reason"] == "jira-burst-based"
    assert limited[0].json()["errorMessages"]


# --- webhooks -------------------------------------------------------------------------------


def _verify(headers: dict[str, str], body: bytes) -> None:
    expected = "sha256=" + hmac.new(b"sandbox-jira-webhook-secret", body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-hub-signature"], expected)


def test_control_changes_fire_signed_webhooks(server: SandboxServer, sink: Sink) -> None:
    with control(server) as ctl:
        issue = ctl.post("/issues", json={"project": "WEB", "summary": "hooked", "description": "Body"}).json()
        ctl.put(f"/issues/{issue['id']}", json={"summary": "hooked again", "status": "Done"})
        comment = ctl.post(f"/issues/{issue['id']}/comments", json={"body": "first!"}).json()
        ctl.put(f"/issues/{issue['id']}/comments/{comment['id']}", json={"body": "edited"})
        ctl.delete(f"/issues/{issue['id']}/comments/{comment['id']}")
        ctl.delete(f"/issues/{issue['id']}")
    drain(server)
    events = []
    for headers, body in sink.received:
        _verify(headers, body)
        assert headers["x-atlassian-webhook-identifier"] and "x-atlassian-webhook-retry" not in headers
        events.append(json.loads(body))
    assert [e["webhookEvent"] for e in events] == [
        "jira:issue_created", "jira:issue_updated", "comment_created", "comment_updated",
        "comment_deleted", "jira:issue_deleted",
    ]
    assert all(e["issue"]["id"] == issue["id"] and isinstance(e["timestamp"], int) for e in events)
    assert {i["field"] for i in events[1]["changelog"]["items"]} == {"summary", "status"}
    assert events[2]["comment"]["body"]["type"] == "doc"
    assert events[5]["issue"]["fields"]["summary"] == "hooked again"  # the pre-delete state
    assert len({h["x-atlassian-webhook-identifier"] for h, _ in sink.received}) == 6


def test_issue_delete_cascades_comment_deleted_on_the_secondary_flow(server: SandboxServer, sink: Sink) -> None:
    with control(server) as ctl:
        issue = ctl.post("/issues", json={"project": "WEB", "summary": "doomed"}).json()
        comments = [ctl.post(f"/issues/{issue['id']}/comments", json={"body": f"c{n}"}).json() for n in range(2)]
        drain(server)
        sink.received.clear()
        ctl.delete(f"/issues/{issue['id']}")
    drain(server)
    events = []
    for headers, body in sink.received:
        _verify(headers, body)
        events.append((json.loads(body), headers["x-atlassian-webhook-flow"]))
    assert [(e["webhookEvent"], flow) for e, flow in events] == [
        ("jira:issue_deleted", "Primary"), ("comment_deleted", "Secondary"), ("comment_deleted", "Secondary")]
    assert [e["comment"]["id"] for e, _ in events[1:]] == [c["id"] for c in comments]
    assert all(e["issue"]["id"] == issue["id"] for e, _ in events)
    assert all(e["comment"]["self"].endswith(f"/issue/{issue['id']}/comment/{e['comment']['id']}")
               for e, _ in events[1:])


def test_failed_delivery_is_retried_with_same_identifier(server: SandboxServer, sink: Sink) -> None:
    sink.statuses = [503, 429]
    with control(server) as ctl:
        ctl.post("/issues", json={"project": "WEB", "summary": "retry me"})
    deadline = time.monotonic() + 5
    while len(sink.received) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    drain(server)
    assert len(sink.received) == 3
    ids = {h["x-atlassian-webhook-identifier"] for h, _ in sink.received}
    assert len(ids) == 1
    assert [h.get("x-atlassian-webhook-retry") for h, _ in sink.received] == [None, "1", "2"]
    assert len({body for _, body in sink.received}) == 1


def test_held_webhooks_can_be_released_out_of_order(server: SandboxServer, sink: Sink) -> None:
    with control(server) as ctl:
        issue = ctl.post("/issues", json={"project": "WEB", "summary": "v0"}).json()
        drain(server)
        sink.received.clear()
        ctl.put("/settings", json={"webhook_mode": "hold"})
        try:
            ctl.put(f"/issues/{issue['id']}", json={"summary": "v1"})
            ctl.put(f"/issues/{issue['id']}", json={"summary": "v2"})
            assert sink.received == []
        finally:
            ctl.put("/settings", json={"webhook_mode": "now"})
        assert ctl.post("/webhooks/release", json={"order": "reverse"}).json() == {"released": 2}
    summaries = [json.loads(body)["issue"]["fields"]["summary"] for _, body in sink.received]
    assert summaries == ["v2", "v1"]


def test_edit_can_be_stamped_in_the_past(server: SandboxServer) -> None:
    with control(server) as ctl:
        issue = ctl.post("/issues", json={"project": "WEB", "summary": "old"}).json()
        ctl.put(f"/issues/{issue['id']}", json={"summary": "backdated", "updated": 1_700_000_000_000})
        truth = {i["id"]: i for i in ctl.get("/truth").json()["issues"]}
    assert truth[issue["id"]]["updated"] == 1_700_000_000_000


def test_seed_fills_shared_world() -> None:
    world: dict[str, Any] = {}
    jira = JiraSimulator()
    jira.seed("small", random.Random(1), world)
    shape = world["jira"]
    assert len(shape["projects"]) == 3 and len(shape["issues"]) == 30 == len(jira.issues)
    assert set(shape["projects"][0]) == {"id", "key", "name"}
    assert set(shape["issues"][0]) == {"id", "key", "project_key", "summary"}
    assert all(i["id"].isdigit() and i["key"].startswith(i["project_key"] + "-") for i in shape["issues"])
    again: dict[str, Any] = {}
    JiraSimulator().seed("small", random.Random(1), again)
    assert again == world  # deterministic for a seed
