"""The common Jira clients against the Jira simulator over loopback: ``jira`` (pycontribs, REST
v2 by default) and atlassian-python-api (``Jira(cloud=True)`` on v2, ``JiraCloud`` on v3) connect,
read server info, list projects and fields, and page a search that spans several pages."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
from atlassian import Jira
from atlassian.jira import JiraCloud
from jira import JIRA, JIRAError

from sandbox.jira import JiraSimulator
from sandbox.server import SandboxServer, create_simulators

JQL = "created >= 2000-01-01 ORDER BY key"


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    sims: dict[str, Any] = create_simulators(["jira"], profile="small")
    jira = sims["jira"]
    assert isinstance(jira, JiraSimulator)
    # 30 seeded + 95 more: more than one page even at the 100-issue cap of a fields search.
    rng, projects, accounts = random.Random(7), list(jira.projects.values()), list(jira.users)
    for n in range(95):
        jira._seed_issue(projects[n % len(projects)], rng, accounts)
    srv = SandboxServer(sims).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def env(server: SandboxServer) -> dict[str, str]:
    return server.env()


@pytest.fixture(scope="module")
def client(env: dict[str, str]) -> JIRA:
    return JIRA(server=env["JIRA_URL"], basic_auth=(env["JIRA_EMAIL"], env["JIRA_API_TOKEN"]),
                max_retries=0, timeout=30)


def truth(server: SandboxServer) -> dict[str, str]:
    sim = server.sims["jira"]
    assert isinstance(sim, JiraSimulator)
    return {str(i.id): i.key for i in sim.issues.values()}


def test_jira_client_connects_as_cloud_and_lists_projects_and_fields(client: JIRA) -> None:
    info = client.server_info()
    assert info["deploymentType"] == "Cloud" and client._is_cloud
    assert all(isinstance(n, int) for n in info["versionNumbers"])
    keys = [p.key for p in client.projects()]
    assert keys == ["OPS", "SUBS", "WEB"]
    assert client.project("SUBS").key == "SUBS" and client.project("SUBS").issueTypes
    with pytest.raises(JIRAError) as missing:
        client.project("NOPE")
    assert missing.value.status_code == 404
    fields = {f["id"]: f for f in client.fields()}
    assert {"summary", "description", "comment", "updated"} <= set(fields)
    assert "type" in fields["issuetype"]["clauseNames"]
    issue = client.issue("OPS-1")
    assert issue.key == "OPS-1" and issue.fields.project.key == "OPS" and issue.fields.summary


def test_jira_client_pages_every_issue_exactly_once(client: JIRA, server: SandboxServer) -> None:
    expected = truth(server)
    assert len(expected) > 100
    # By hand, with nextPageToken (enhanced_search_issues, REST v2: text descriptions).
    seen: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        page = client.enhanced_search_issues(JQL, nextPageToken=token, maxResults=40,
                                             fields="summary,description")
        pages += 1
        seen += [issue.id for issue in page]
        for issue in page:
            assert issue.fields.description is None or isinstance(issue.fields.description, str)
        token = page.nextPageToken
        if not token:
            break
    assert pages == 4
    assert sorted(seen) == sorted(expected) and len(seen) == len(set(seen))
    # All at once (search_issues pages internally in batches of 100 on Cloud).
    everything = client.search_issues(JQL, maxResults=False)
    assert [i.key for i in everything] == sorted(expected.values(), key=lambda k: (k.split("-")[0], int(k.split("-")[1])))


def test_jira_client_is_refused_with_a_wrong_token(env: dict[str, str]) -> None:
    bad = JIRA(server=env["JIRA_URL"], basic_auth=(env["JIRA_EMAIL"], "wrong"), max_retries=0,
               timeout=30)  # serverInfo answers anonymous callers, as Jira Cloud does
    with pytest.raises(JIRAError) as refused:
        bad.projects()
    assert refused.value.status_code == 401


def test_atlassian_python_api_connects_and_pages(env: dict[str, str], server: SandboxServer) -> None:
    expected = truth(server)
    legacy = Jira(url=env["JIRA_URL"], username=env["JIRA_EMAIL"], password=env["JIRA_API_TOKEN"],
                  cloud=True, timeout=30)
    assert legacy.get_server_info()["deploymentType"] == "Cloud"
    assert [p["key"] for p in legacy.projects()] == ["OPS", "SUBS", "WEB"]  # v2 project/search
    assert "summary" in {f["id"] for f in legacy.get_all_fields()}
    cloud = JiraCloud(url=env["JIRA_URL"], username=env["JIRA_EMAIL"], password=env["JIRA_API_TOKEN"],
                      timeout=30)
    issues = cloud.enhanced_jql_get_list_of_tickets(JQL, fields="summary,description")
    assert sorted(i["id"] for i in issues) == sorted(expected)
    assert len({i["id"] for i in issues}) == len(issues)
    # v3 keeps rich text as Atlassian Document Format.
    described = [i for i in issues if i["fields"]["description"] is not None]
    assert described and all(i["fields"]["description"]["type"] == "doc" for i in described)


def test_jira_client_counts_and_reads_comments(client: JIRA, server: SandboxServer) -> None:
    sim = server.sims["jira"]
    assert isinstance(sim, JiraSimulator)
    assert client.approximate_issue_count("project = OPS") == sum(
        1 for i in sim.issues.values() if sim.projects[i.project_id].key == "OPS")
    issue = max(sim.issues.values(), key=lambda i: len(i.comments))
    assert len(issue.comments) >= 2
    comments = client.comments(issue.key)
    assert [c.id for c in comments] == [str(c.id) for c in issue.comments]
    assert all(isinstance(c.body, str) and c.body for c in comments)  # v2: text, not ADF
    newest = client.comments(issue.key, order_by="-created")
    assert newest[0].id == str(issue.comments[-1].id)
    with pytest.raises(JIRAError) as missing:
        client.comments("NOPE-1")
    assert missing.value.status_code == 404
