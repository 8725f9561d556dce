"""Access kept current from the sources (issue 11): a private Slack channel's membership
changes reach search through member_joined/left_channel events and, when an event is lost,
through the reconciler's membership refresh; GitHub private repositories are restricted to
their collaborators. Real receiver, worker, Postgres, Redis and simulators over loopback."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.test_search_access import (  # noqa: F401  (fixtures)
    bearer,
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
