"""The MCP server, through the official ``mcp`` client: over streamable HTTP at /mcp on the
real receiver and over stdio (``vector-sync mcp`` as a subprocess). Its ``search`` returns what
the API returns, with the same access rules."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import httpx
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from tests.conftest import ADMIN_KEY, BASE_ENV

ADMIN = {"X-Admin-Key": ADMIN_KEY}


def push_documents(receiver, worker) -> None:
    for n, (title, text) in enumerate([
        ("SUBS-652: billing migration", "Moving SUBS invoices to the new ledger in March."),
        ("Onboarding checklist", "Laptops, accounts and the first week's plan for new hires."),
        ("Incident review: queue outage", "Redis ran out of memory; the workers stalled for an hour."),
    ]):
        body = {"id": f"mcp-{n}", "title": title, "text": text, "updated_at": 1_700_000_000 + n,
                "metadata": {"key": title.split(":")[0]} if title.startswith("SUBS") else {}}
        assert httpx.post(f"{receiver.url}/api/documents", json=body, headers=ADMIN).status_code == 202
    worker.drain()


def new_key(receiver, **body) -> str:
    response = httpx.post(f"{receiver.url}/api/keys", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    return response.json()["token"]


def api_search(receiver, token: str, **body) -> dict:
    response = httpx.post(f"{receiver.url}/api/search", json=body, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return response.json()


async def http_calls(url: str, token: str, calls: list[tuple[str, dict]]) -> list:
    client = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with client, Client(streamable_http_client(url, http_client=client)) as session:
        tools = await session.list_tools()
        out: list = [sorted(t.name for t in tools.tools)]
        for name, args in calls:
            out.append(await session.call_tool(name, args))
        return out


def structured(result) -> dict:
    assert not result.is_error, result.content
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(result.content[0].text)


def test_search_and_get_document_over_streamable_http(services, receiver, worker):
    push_documents(receiver, worker)
    token = new_key(receiver, role="search", principal="agent@example.com")
    calls = [("search", {"q": "SUBS-652", "top_k": 3}),
             ("search", {"q": "what stalled the workers", "top_k": 2}),
             ("get_document", {"document_id": "api:mcp-0"}),
             ("get_document", {"document_id": "api:nope"}),
             ("search", {"q": "x", "as_user": "boss@example.com"})]
    tools, first, second, doc, missing, refused = asyncio.run(http_calls(f"{receiver.url}/mcp", token, calls))
    assert tools == ["get_document", "search"]
    assert structured(first)["results"] == api_search(receiver, token, q="SUBS-652", top_k=3)["results"]
    assert structured(first)["results"][0]["document_id"] == "api:mcp-0"
    assert structured(second)["results"] == api_search(receiver, token, q="what stalled the workers", top_k=2)["results"]
    got = structured(doc)
    assert got["document_id"] == "api:mcp-0" and got["state"] == "indexed" and got["chunk_count"] == 1
    assert missing.is_error and refused.is_error  # unknown document; untrusted key with as_user


def test_mcp_over_http_needs_a_live_key(services, receiver, worker):
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    headers = {"Accept": "application/json, text/event-stream"}
    assert httpx.post(f"{receiver.url}/mcp", json=body, headers=headers).status_code == 401
    created = httpx.post(f"{receiver.url}/api/keys", json={"role": "search", "principal": "a@example.com"},
                         headers=ADMIN).json()
    assert httpx.delete(f"{receiver.url}/api/keys/{created['id']}", headers=ADMIN).status_code == 200
    revoked = httpx.post(f"{receiver.url}/mcp", json=body, headers={**headers, "Authorization": f"Bearer {created['token']}"})
    assert revoked.status_code == 401


def test_search_over_stdio_equals_the_api(infra, services, receiver, worker):
    push_documents(receiver, worker)
    token = new_key(receiver, role="search", principal="agent@example.com")
    params = StdioServerParameters(
        command=sys.executable, args=["-c", "from cli.main import main; main(['mcp'])"],
        env={**os.environ, **BASE_ENV, **infra, "VECTOR_SYNC_API_KEY": token}, cwd=os.getcwd())

    async def go():
        async with Client(params) as session:
            return await session.call_tool("search", {"q": "onboarding new hires", "top_k": 3})

    result = asyncio.run(go())
    assert structured(result)["results"] == api_search(receiver, token, q="onboarding new hires", top_k=3)["results"]
    assert structured(result)["results"][0]["document_id"] == "api:mcp-1"
