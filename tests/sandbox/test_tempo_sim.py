"""The Tempo simulator over real HTTP: auth, filters, paging by metadata.next, limits, 429."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from sandbox.server import SandboxServer, create_simulators


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    sims = create_simulators(["jira", "tempo"], profile="small", seed=7)
    srv = SandboxServer(sims).start()
    yield srv
    srv.stop()


@pytest.fixture()
def api(server: SandboxServer) -> Iterator[httpx.Client]:
    env = server.env()
    with httpx.Client(base_url=env["TEMPO_API_URL"], timeout=10,
                      headers={"Authorization": f"Bearer {env['TEMPO_API_TOKEN']}"}) as client:
        client.put("/_sandbox/knobs", json={"rate_limit": 0})
        yield client


def test_wrong_or_missing_token_is_401(server: SandboxServer) -> None:
    for headers in ({"Authorization": "Bearer wrong"}, {}):
        response = httpx.get(server.url("tempo") + "/4/worklogs", headers=headers)
        assert response.status_code == 401
        assert response.json()["errors"][0]["message"]


def test_paging_follows_next_until_it_is_absent(api: httpx.Client) -> None:
    url: str | None = "/4/worklogs?from=2000-01-01&to=2100-01-01&limit=7"
    seen, pages = [], 0
    while url:
        body = api.get(url).json()
        pages += 1
        assert body["metadata"]["count"] == len(body["results"]) <= 7
        seen += [w["tempoWorklogId"] for w in body["results"]]
        url = body["metadata"].get("next")
    assert pages == 5 and len(seen) == len(set(seen)) == 30


def test_worklog_shape_is_v4_ids_only(api: httpx.Client) -> None:
    worklog = api.get("/4/worklogs?limit=1").json()["results"][0]
    assert set(worklog["issue"]) == {"self", "id"} and isinstance(worklog["issue"]["id"], int)
    assert set(worklog["author"]) == {"self", "accountId"}
    for key in ("tempoWorklogId", "timeSpentSeconds", "billableSeconds", "startDate", "startTime",
                "description", "createdAt", "updatedAt", "attributes"):
        assert key in worklog


def test_filters_by_date_issue_project_and_updated(api: httpx.Client, server: SandboxServer) -> None:
    truth = api.get("/_sandbox/worklogs").json()["worklogs"]
    day = sorted(w["startDate"] for w in truth)[15]
    by_date = api.get(f"/4/worklogs?from={day}&to={day}&limit=5000").json()["results"]
    assert by_date and {w["startDate"] for w in by_date} == {day}
    issue = truth[0]["issue"]["id"]
    by_issue = api.get(f"/4/worklogs?issue={issue}").json()["results"]
    assert {w["issue"]["id"] for w in by_issue} == {issue}
    project = server.sims["tempo"].issue_project[issue]
    by_project = api.get(f"/4/worklogs?project={project}&limit=5000").json()["results"]
    assert by_project and all(server.sims["tempo"].issue_project[w["issue"]["id"]] == project for w in by_project)
    edited = api.put(f"/_sandbox/worklogs/{truth[3]['tempoWorklogId']}", json={"description": "edited"}).json()
    since = edited["updatedAt"]
    recent = api.get(f"/4/worklogs?updatedFrom={since}").json()["results"]
    assert [w["tempoWorklogId"] for w in recent] == [edited["tempoWorklogId"]]


def test_bad_parameters_are_400(api: httpx.Client) -> None:
    for query in ("limit=5001", "limit=0", "from=01-05-2024", "updatedFrom=yesterday", "offset=x"):
        response = api.get(f"/4/worklogs?{query}")
        assert response.status_code == 400, query
        assert response.json()["errors"][0]["message"]


def test_deleted_worklog_is_404(api: httpx.Client) -> None:
    truth = api.get("/_sandbox/worklogs").json()["worklogs"]
    created = api.post("/_sandbox/worklogs", json={"issueId": truth[0]["issue"]["id"],
                                                   "description": "tmp"}).json()
    wid = created["tempoWorklogId"]
    assert api.get(f"/4/worklogs/{wid}").status_code == 200
    api.delete(f"/_sandbox/worklogs/{wid}")
    assert api.get(f"/4/worklogs/{wid}").status_code == 404
    assert wid in api.get("/_sandbox/worklogs").json()["deleted"]


def test_over_5_per_second_is_429_with_optional_retry_after(api: httpx.Client) -> None:
    api.put("/_sandbox/knobs", json={"rate_limit": None})
    time.sleep(1.1)  # a full bucket
    statuses = [api.get("/4/worklogs?limit=1") for _ in range(8)]
    limited = [r for r in statuses if r.status_code == 429]
    assert limited and limited[0].headers["Retry-After"] == "1"
    api.put("/_sandbox/tempo", json={"retry_after_header": False})
    more = [api.get("/4/worklogs?limit=1") for _ in range(8)]
    assert any(r.status_code == 429 and "retry-after" not in r.headers for r in more)
    api.put("/_sandbox/tempo", json={"retry_after_header": True})
