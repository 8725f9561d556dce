"""The Fireflies simulator over real HTTP: auth, the GraphQL executor, quotas, webhooks."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator

import httpx
import pytest

from sandbox.server import SandboxServer, create_simulators


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    srv = SandboxServer(create_simulators(["fireflies"], profile="small", seed=3)).start()
    yield srv
    srv.stop()


@pytest.fixture()
def api(server: SandboxServer) -> Iterator[httpx.Client]:
    env = server.env()
    with httpx.Client(headers={"Authorization": f"Bearer {env['FIREFLIES_API_KEY']}"},
                      timeout=10) as client:
        client.put(server.url("fireflies") + "/_sandbox/plan", json={"plan": "business"})
        client.put(server.url("fireflies") + "/_sandbox/knobs", json={"rate_limit": 0})
        yield client


def gql(client: httpx.Client, server: SandboxServer, query: str, **variables: object) -> httpx.Response:
    return client.post(server.env()["FIREFLIES_API_URL"], json={"query": query, "variables": variables})


def test_wrong_or_missing_key_gets_auth_failed(server: SandboxServer) -> None:
    url = server.env()["FIREFLIES_API_URL"]
    for headers in ({"Authorization": "Bearer nope"}, {}):
        response = httpx.post(url, json={"query": "{ transcripts { id } }"}, headers=headers)
        assert response.status_code == 401
        error = response.json()["errors"][0]
        assert error["code"] == "auth_failed" and error["extensions"]["status"] == 401


def test_only_requested_fields_come_back(api: httpx.Client, server: SandboxServer) -> None:
    response = gql(api, server, "query L($limit: Int) { transcripts(limit: $limit) { id title speakers { name } } }",
                   limit=3)
    assert response.status_code == 200
    items = response.json()["data"]["transcripts"]
    assert len(items) == 3
    assert all(set(item) == {"id", "title", "speakers"} for item in items)
    assert all(set(s) == {"name"} for item in items for s in item["speakers"])


def test_unknown_field_and_argument_are_graphql_errors(api: httpx.Client, server: SandboxServer) -> None:
    for query in ("{ transcripts { id secret_field } }", "{ transcripts(order: 1) { id } }",
                  "{ transcripts { summary } }", "{ transcripts { id { x } } }"):
        response = gql(api, server, query)
        assert response.status_code == 400, query
        assert response.json()["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"


def test_limit_over_50_and_bad_dates_are_invalid_arguments(api: httpx.Client, server: SandboxServer) -> None:
    response = gql(api, server, "query($l: Int) { transcripts(limit: $l) { id } }", l=51)
    assert response.json()["errors"][0]["code"] == "invalid_arguments"
    response = gql(api, server, '{ transcripts(fromDate: "yesterday") { id } }')
    fields = response.json()["errors"][0]["extensions"]["metadata"]["fields"]
    assert fields[0]["name"] == "fromDate"
    # Epoch milliseconds are a number, not a DateTime, even those whose digits Python's
    # fromisoformat reads as a compact date (this one failed only when the seed dates hit it).
    for literal in ("1794020400000", "1794020400000.0"):
        response = gql(api, server, f"{{ transcripts(fromDate: {literal}) {{ id }} }}")
        assert response.status_code == 400, literal


def test_listing_filters_on_meeting_date_newest_first(api: httpx.Client, server: SandboxServer) -> None:
    truth = api.get(server.url("fireflies") + "/_sandbox/transcripts").json()["transcripts"]
    dates = sorted(t["date"] for t in truth)
    middle = dates[len(dates) // 2]
    from_iso = json.dumps(middle)  # a number is not a DateTime: invalid
    assert gql(api, server, f"{{ transcripts(fromDate: {from_iso}) {{ id }} }}").status_code == 400
    iso = _iso(middle)
    items = gql(api, server, "query($f: DateTime) { transcripts(fromDate: $f) { id date } }",
                f=iso).json()["data"]["transcripts"]
    assert items and all(t["date"] >= middle for t in items)
    assert [t["date"] for t in items] == sorted((t["date"] for t in items), reverse=True)
    assert len(items) == sum(1 for d in dates if d >= middle)


def test_unprocessed_transcript_has_null_sentences_until_processed(api: httpx.Client, server: SandboxServer) -> None:
    base = server.url("fireflies") + "/_sandbox"
    created = api.post(f"{base}/transcripts", json={"title": "SUBS kickoff"}).json()
    query = "query($id: String!) { transcript(id: $id) { id sentences { text } summary { overview } } }"
    before = gql(api, server, query, id=created["id"]).json()["data"]["transcript"]
    assert before["sentences"] is None and before["summary"] is None
    api.put(f"{base}/webhook", json={"url": "http://127.0.0.1:9/unreachable"})
    api.post(f"{base}/transcripts/{created['id']}/process", json={"sentence_count": 5})
    after = gql(api, server, query, id=created["id"]).json()["data"]["transcript"]
    assert len(after["sentences"]) == 5 and after["summary"]["overview"]
    server.run_coroutine(server.sims["fireflies"].webhooks.drain(5))
    delivery = server.sims["fireflies"].webhooks.deliveries[-1]
    body = json.loads(delivery.body)
    assert body["event"] == "meeting.transcribed" and body["meeting_id"] == created["id"]
    secret = server.env()["FIREFLIES_WEBHOOK_SECRET"].encode()
    expected = "sha256=" + hmac.new(secret, delivery.body, hashlib.sha256).hexdigest()
    assert delivery.headers["X-Hub-Signature"] == expected


def test_deleted_transcript_is_object_not_found(api: httpx.Client, server: SandboxServer) -> None:
    base = server.url("fireflies") + "/_sandbox"
    created = api.post(f"{base}/transcripts", json={}).json()
    assert api.delete(f"{base}/transcripts/{created['id']}").status_code == 200
    response = gql(api, server, "query($id: String!) { transcript(id: $id) { id } }", id=created["id"])
    assert response.status_code == 404
    assert response.json()["data"] == {"transcript": None}
    assert response.json()["errors"][0]["code"] == "object_not_found"


def test_quota_exceeded_is_too_many_requests(api: httpx.Client, server: SandboxServer) -> None:
    base = server.url("fireflies") + "/_sandbox"
    api.put(f"{base}/knobs", json={"rate_limit": None})
    api.put(f"{base}/plan", json={"limit": 3, "period": 60})
    statuses = [gql(api, server, "{ transcripts { id } }").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    error = gql(api, server, "{ transcripts { id } }").json()["errors"][0]
    assert error["code"] == "too_many_requests"
    assert error["extensions"]["metadata"]["retryAfter"] > 1e12  # epoch ms
    assert api.get(f"{base}/usage").json()["too_many_requests"] >= 2


def _iso(ms: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# The documented Transcript schema, queried as Fireflies' docs do (docs.fireflies.ai/graphql-api/query/transcript).
DOCS_TRANSCRIPT_QUERY = """
query Transcript($transcriptId: String!) {
  transcript(id: $transcriptId) {
    id dateString privacy title host_email organizer_email calendar_id fireflies_users
    participants date transcript_url audio_url video_url duration cal_id calendar_type meeting_link
    speakers { id name }
    sentences {
      index speaker_name speaker_id text raw_text start_time end_time
      ai_filters { task pricing metric question date_and_time text_cleanup sentiment }
    }
    meeting_attendees { displayName email phoneNumber name location }
    meeting_attendance { name join_time leave_time }
    meeting_info { fred_joined silent_meeting summary_status }
    summary {
      keywords action_items outline shorthand_bullet overview bullet_gist gist short_summary
      short_overview meeting_type topics_discussed transcript_chapters
    }
  }
}"""


def test_documented_transcript_fields_are_served(api: httpx.Client, server: SandboxServer) -> None:
    listed = gql(api, server, "query { transcripts(limit: 50) { id meeting_attendees { displayName email name } "
                              "meeting_info { summary_status } } }")
    assert listed.status_code == 200, listed.text
    items = listed.json()["data"]["transcripts"]
    assert items and all(t["meeting_attendees"] for t in items)
    assert {t["meeting_info"]["summary_status"] for t in items} == {"processed", "processing"}
    done = next(t for t in items if t["meeting_info"]["summary_status"] == "processed")
    response = gql(api, server, DOCS_TRANSCRIPT_QUERY, transcriptId=done["id"])
    assert response.status_code == 200, response.text
    t = response.json()["data"]["transcript"]
    assert [a["email"] for a in t["meeting_attendees"]] == t["participants"]
    attendee = t["meeting_attendees"][0]
    assert set(attendee) == {"displayName", "email", "phoneNumber", "name", "location"}
    assert attendee["displayName"] and attendee["displayName"] == attendee["name"]
    assert t["host_email"] == t["organizer_email"] and t["fireflies_users"] == [t["organizer_email"]]
    assert {a["name"] for a in t["meeting_attendance"]} == {s["name"] for s in t["speakers"]}
    assert set(t["sentences"][0]["ai_filters"]) == {"task", "pricing", "metric", "question",
                                                     "date_and_time", "text_cleanup", "sentiment"}
    assert t["summary"]["topics_discussed"] and t["summary"]["gist"]
    # Made-up fields are still refused.
    bad = gql(api, server, "{ transcripts { id meeting_attendees { nickname } } }")
    assert bad.status_code == 400
    assert bad.json()["errors"][0]["message"] == 'Cannot query field "nickname" on type "MeetingAttendee".'


def test_pro_plan_allows_50_requests_a_day(api: httpx.Client, server: SandboxServer) -> None:
    base = server.url("fireflies") + "/_sandbox"
    api.put(f"{base}/knobs", json={"rate_limit": None})
    assert api.put(f"{base}/plan", json={"plan": "pro"}).json() == {"plan": "pro", "limit": 50, "period": 86400.0}
    statuses = [gql(api, server, "{ transcripts(limit: 1) { id } }").status_code for _ in range(51)]
    assert statuses == [200] * 50 + [429]
    error = gql(api, server, "{ transcripts { id } }").json()["errors"][0]
    assert error["code"] == "too_many_requests"
    # The first slot frees a day after the first request (retryAfter is epoch ms).
    assert error["extensions"]["metadata"]["retryAfter"] > (time.time() + 86400 - 3600) * 1000


def test_documented_transcripts_filters(api: httpx.Client, server: SandboxServer) -> None:
    truth = httpx.get(server.url("fireflies") + "/_sandbox/transcripts").json()["transcripts"]
    some = truth[0]
    query = ("query T($keyword: String, $scope: TranscriptsQueryScope, $organizers: [String], "
             "$participants: [String], $userId: String, $mine: Boolean) { transcripts(keyword: $keyword, "
             "scope: $scope, organizers: $organizers, participants: $participants, user_id: $userId, "
             "mine: $mine) { id user { user_id name } } }")

    def ids(**variables: object) -> set[str]:
        response = gql(api, server, query, **variables)
        assert response.status_code == 200, response.text
        return {t["id"] for t in response.json()["data"]["transcripts"]}

    word = some["title"].split()[-1]
    assert ids(keyword=word.upper()) == {t["id"] for t in truth if word.lower() in t["title"].lower()}
    spoken = next(t for t in truth if t["sentences"])["sentences"][0]["text"].split()[-1].strip(".?")
    assert ids(keyword=spoken, scope="sentences") == {
        t["id"] for t in truth if any(spoken.lower() in s["text"].lower() for s in t["sentences"] or [])}
    assert ids(organizers=[some["organizer_email"]]) == {
        t["id"] for t in truth if t["organizer_email"] == some["organizer_email"]}
    person = some["participants"][-1]
    assert ids(participants=[person]) == {t["id"] for t in truth if person in t["participants"]}
    everyone = ids(mine=True)
    assert everyone == {t["id"] for t in truth} and ids(userId="01SOMEONEELSE") == set()
    owner = gql(api, server, "{ users { user_id } transcripts(limit: 1) { user { user_id } } }").json()["data"]
    assert owner["users"][0]["user_id"] == owner["transcripts"][0]["user"]["user_id"]
    # Documented constraints: scope needs keyword; keyword and title exclude each other.
    for bad in ('{ transcripts(scope: all) { id } }', '{ transcripts(keyword: "a", title: "b") { id } }'):
        response = gql(api, server, bad)
        assert response.status_code == 400 and response.json()["errors"][0]["code"] == "invalid_arguments"
