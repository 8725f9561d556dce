"""The OpenAPI 3.1 description of every public route, served at ``/openapi.json``.

Hand-written, in this one place. tests/test_openapi.py checks it against the app's real route
table (every route documented, nothing documented that does not exist), validates it with
``openapi-spec-validator``, and fuzzes the running receiver from it with schemathesis.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from core.settings import SOURCE_NAMES

SOURCES = list(SOURCE_NAMES)
ADMIN = [{"bearer": []}, {"adminKey": []}]
ANY_KEY = ADMIN  # search routes take the same headers; the key's role decides


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERROR = _json(_ref("Error"), "What is wrong, in words")


def _errors(*codes: int) -> dict[str, Any]:
    words = {400: "Bad request", 401: "Missing or unknown key", 403: "Refused for this key",
             404: "Not found", 409: "Conflict", 413: "Body too large", 503: "A dependency is down"}
    return {str(code): {**ERROR, "description": words[code]} for code in codes}


def _path(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": schema or {"type": "string", "minLength": 1}}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def _body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _op(summary: str, responses: dict[str, Any], *, security: list[Any] | None = None,
        parameters: list[Any] | None = None, body: dict[str, Any] | None = None,
        tags: list[str] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": responses, "security": security or []}
    if parameters:
        op["parameters"] = parameters
    if body:
        op["requestBody"] = body
    if tags:
        op["tags"] = tags
    return op


OBJ = {"type": "object"}
SOURCE = _path("source", "A source name", {"type": "string", "enum": SOURCES})
SEARCH_PARAMS = [
    {"name": "q", "in": "query", "required": True, "description": "The words to search for",
     "schema": {"type": "string", "minLength": 1, "maxLength": 2000}},
    _query("top_k", "How many documents (1-100, default 10)", {"type": "integer", "minimum": 1, "maximum": 100}),
    _query("source", "Only these sources (comma-separated)", {"type": "string"}),
    _query("scope", "Only these scope keys (comma-separated): a Jira project, Slack channel id, repo",
           {"type": "string"}),
    _query("updated_after", "Updated at or after: epoch seconds or ISO 8601", {"type": "string"}),
    _query("updated_before", "Updated at or before: epoch seconds or ISO 8601", {"type": "string"}),
    _query("author", "Only documents by this author", {"type": "string"}),
    _query("as_user", "Search as this email sees it (trusted search keys and admin keys)",
           {"type": "string", "format": "email"}),
    _query("include_restricted", "Admin keys: every document, whoever may read it",
           {"type": "boolean"}),
    _query("mode", "hybrid (default with pgvector) or vector", {"type": "string", "enum": ["hybrid", "vector"]}),
]

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "SearchRequest": {
        "type": "object", "required": ["q"], "additionalProperties": False,
        "properties": {
            "q": {"type": "string", "minLength": 1, "maxLength": 2000},
            "top_k": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
            "source": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
            "scope": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
            "updated_after": {"oneOf": [{"type": "number"}, {"type": "string"}],
                              "description": "epoch seconds or ISO 8601"},
            "updated_before": {"oneOf": [{"type": "number"}, {"type": "string"}]},
            "author": {"type": "string"},
            "metadata": {"type": "object", "description": "exact matches on metadata fields",
                         "additionalProperties": {"type": ["string", "number", "boolean"]}},
            "as_user": {"type": "string", "format": "email"},
            "include_restricted": {"type": "boolean"},
            "mode": {"type": "string", "enum": ["hybrid", "vector"]},
        },
    },
    "SearchResult": {
        "type": "object",
        "required": ["document_id", "title", "url", "source", "scope", "text", "score", "access_type",
                     "source_updated_at", "as_of", "stale"],
        "properties": {
            "document_id": {"type": "string"}, "title": {"type": "string"}, "url": {"type": "string"},
            "source": {"type": "string"}, "scope": {"type": "string"},
            "text": {"type": "string", "description": "the matching chunk"},
            "score": {"type": "number"}, "author": {"type": "string"},
            "access_type": {"type": "string", "enum": ["public", "restricted"]},
            "source_updated_at": {"type": ["string", "null"], "format": "date-time"},
            "as_of": {"type": ["string", "null"], "format": "date-time",
                      "description": "when the document was last confirmed against its source"},
            "stale": {"type": "boolean",
                      "description": "its scope is stale, failing or deactivated: the source may have moved on"},
            "chunk": {"type": ["integer", "null"]}, "vector_id": {"type": "string"},
        },
    },
    "SearchResponse": {
        "type": "object", "required": ["query", "results"],
        "properties": {"query": {"type": "string"}, "mode": {"type": "string"}, "access": {"type": "string"},
                       "results": {"type": "array", "items": _ref("SearchResult")}},
    },
    "IndexedDocument": {
        "type": "object",
        "properties": {
            "document_id": {"type": "string"}, "source": {"type": "string"}, "scope": {"type": "string"},
            "state": {"type": "string", "enum": ["indexed", "pending", "deferred", "failing", "deleted"]},
            "content_hash": {"type": ["string", "null"]}, "chunk_count": {"type": "integer"},
            "indexed_at": {"type": ["string", "null"]}, "checked_at": {"type": ["string", "null"]},
            "as_of": {"type": ["string", "null"]}, "stale": {"type": "boolean"},
            "last_error": {"type": ["string", "null"]}, "access_type": {"type": ["string", "null"]},
            "access_list": {"type": "array", "items": {"type": "string"}},
        },
    },
    "PushedDocument": {
        "type": "object", "required": ["id", "title", "text"],
        "properties": {
            "id": {"type": "string", "minLength": 1, "maxLength": 512}, "title": {"type": "string"},
            "text": {"type": "string"}, "url": {"type": "string"}, "author": {"type": "string"},
            "updated_at": {"type": "number"}, "metadata": {"type": "object"},
        },
    },
    "NewKey": {
        "type": "object", "required": ["role"], "additionalProperties": False,
        "properties": {"role": {"type": "string", "enum": ["admin", "search"]},
                       "principal": {"type": "string", "format": "email"},
                       "trusted": {"type": "boolean"}, "name": {"type": "string", "maxLength": 200}},
    },
    "ScopeAccess": {
        "type": "object", "required": ["keys"], "additionalProperties": False,
        "properties": {"keys": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
                       "restrict": {"type": "array", "items": {"type": "string", "format": "email"}},
                       "public": {"type": "boolean", "const": True},
                       "inherit": {"type": "boolean", "const": True}},
    },
    "ScopeKeys": {
        "type": "object", "required": ["keys"],
        "properties": {"keys": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
                       "purge": {"type": "boolean"}},
    },
}


def spec() -> dict[str, Any]:
    ok = lambda what: _json(OBJ, what)  # noqa: E731
    paths: dict[str, Any] = {
        "/healthz": {"get": _op("Liveness", {"200": ok("The process is up")}, tags=["health"])},
        "/readyz": {"get": _op("Readiness: Postgres and Redis answer",
                               {"200": ok("Ready"), "503": ok("Not ready, with the reason")}, tags=["health"])},
        "/api/status": {"get": _op("The one status report: per source and scope freshness, processes, audit",
                                   {"200": ok("The report")}, tags=["status"])},
        "/metrics": {"get": _op("Prometheus metrics from the status report",
                                {"200": {"description": "Text exposition format",
                                         "content": {"text/plain": {"schema": {"type": "string"}}}}},
                                tags=["status"])},
        "/": {"get": _op("The dashboard page", {"200": {"description": "HTML",
                                                        "content": {"text/html": {"schema": {"type": "string"}}}}},
                         tags=["status"])},
        "/search": {"get": _op("A search page for people (asks for a search key)",
                               {"200": {"description": "HTML",
                                        "content": {"text/html": {"schema": {"type": "string"}}}}},
                               tags=["search"])},
        "/openapi.json": {"get": _op("This document", {"200": ok("OpenAPI 3.1")}, tags=["meta"])},
        "/api/search": {
            "get": _op("Search (simple form); unknown parameters are a 400",
                       {"200": _json(_ref("SearchResponse"), "Results the key may read"),
                        **_errors(400, 401, 403, 503)},
                       security=ANY_KEY, parameters=SEARCH_PARAMS, tags=["search"]),
            "post": _op("Search with filters; unknown fields are a 400",
                        {"200": _json(_ref("SearchResponse"), "Results the key may read"),
                         **_errors(400, 401, 403, 413, 503)},
                        security=ANY_KEY, body=_body(_ref("SearchRequest")), tags=["search"]),
        },
        "/api/documents": {
            "post": _op("Push a document (source 'api')", {"202": ok("Enqueued"), **_errors(400, 401, 403, 413, 503)},
                        security=ADMIN, body=_body(_ref("PushedDocument")), tags=["documents"]),
        },
        "/api/documents/{id}": {
            "get": _op("What is indexed for one document (404 when unknown or not readable by this key)",
                       {"200": _json(_ref("IndexedDocument"), "The document's index state"),
                        **_errors(400, 401, 403, 404)},
                       security=ANY_KEY, tags=["documents"],
                       parameters=[_path("id", "A document id, e.g. jira:10001 or slack:C01:1700000000.000100"),
                                   _query("as_user", "Read as this email (trusted and admin keys)",
                                          {"type": "string", "format": "email"}),
                                   _query("include_restricted", "Admin keys: whoever may read it",
                                          {"type": "boolean"})]),
            "delete": _op("Delete a pushed document", {"202": ok("Delete enqueued"), **_errors(400, 401, 403, 503)},
                          security=ADMIN, parameters=[_path("id", "The pushed document's id")],
                          tags=["documents"]),
        },
        "/webhooks/{source}": {
            "post": _op("A source's signed webhook (verified over the raw body)",
                        {"200": ok("Accepted, duplicate or a handshake reply"), **_errors(400, 401, 403, 404, 409, 413, 503)},
                        parameters=[SOURCE], body=_body(OBJ, required=False), tags=["webhooks"]),
        },
        "/api/keys": {
            "get": _op("List API keys (never their tokens)", {"200": ok("Keys"), **_errors(400, 401, 403)},
                       security=ADMIN, tags=["admin"],
                       parameters=[_query("include_revoked", "Include revoked keys", {"type": "boolean"})]),
            "post": _op("Create an API key; the token is in this answer only",
                        {"201": ok("The key and its token"), **_errors(400, 401, 403, 413)},
                        security=ADMIN, body=_body(_ref("NewKey")), tags=["admin"]),
        },
        "/api/keys/{id}": {
            "delete": _op("Revoke a key, at once", {"200": ok("Revoked"), **_errors(401, 403, 404)},
                          security=ADMIN, parameters=[_path("id", "The key id")], tags=["admin"]),
        },
        "/api/scopes": {
            "get": _op("List scopes", {"200": ok("Scopes"), **_errors(400, 401, 403)}, security=ADMIN,
                       parameters=[_query("source", "Only this source", {"type": "string", "enum": SOURCES})],
                       tags=["admin"]),
        },
        "/api/scopes/{source}/access": {
            "post": _op("Set who may read a scope's documents (restrict, public, or inherit the source's)",
                        {"200": ok("Saved; documents re-syncing"), **_errors(400, 401, 403, 404, 413, 503)},
                        security=ADMIN, parameters=[SOURCE], body=_body(_ref("ScopeAccess")), tags=["admin"]),
        },
        "/api/scopes/{source}/{action}": {
            "post": _op("Activate or deactivate scopes (deactivate may purge), or sync them now "
                        "(make active scopes due: the reconciler runs their pass on its next tick)",
                        {"200": ok("Changed"), "202": ok("Due now (sync)"),
                         **_errors(400, 401, 403, 404, 409, 413, 503)}, security=ADMIN,
                        parameters=[SOURCE, _path("action", "What to do",
                                                  {"type": "string", "enum": ["activate", "deactivate", "sync"]})],
                        body=_body(_ref("ScopeKeys")), tags=["admin"]),
        },
        "/api/backfill/{source}": {
            "post": _op("Queue a backfill (run by the reconciler)",
                        {"202": ok("Queued"), **_errors(400, 401, 403, 404, 409, 413)}, security=ADMIN,
                        parameters=[SOURCE], tags=["admin"],
                        body=_body({"type": "object", "properties": {
                            "scopes": {"type": "array", "items": {"type": "string"}},
                            "days": {"type": "integer", "minimum": 1}}}, required=False)),
        },
        "/api/runs": {
            "get": _op("Recent runs", {"200": ok("Runs"), **_errors(401, 403)}, security=ADMIN, tags=["admin"],
                       parameters=[_query("source", "Only this source", {"type": "string"}),
                                   _query("kind", "Only this kind", {"type": "string"})]),
        },
        "/api/runs/{id}": {
            "get": _op("One run (a backfill's with its verification)", {"200": ok("The run"), **_errors(400, 401, 403, 404)},
                       security=ADMIN, parameters=[_path("id", "The run id")], tags=["admin"]),
        },
        "/api/admin/runs/{id}": {
            "get": _op("One run (the same as /api/runs/{id}; a drift audit's report)",
                       {"200": ok("The run"), **_errors(400, 401, 403, 404)},
                       security=ADMIN, parameters=[_path("id", "The run id")], tags=["admin"]),
        },
        "/api/admin/verify": {
            "post": _op("Drift audit: compare the sources with the documents table and the index "
                        "(one scope at once, answered with the report; otherwise queued for the reconciler)",
                        {"200": ok("The report of one scope's audit"), "202": ok("Queued, one run per source"),
                         **_errors(400, 401, 403, 404, 409, 413, 503)}, security=ADMIN, tags=["admin"],
                        body=_body({"type": "object", "properties": {
                            "source": {"type": "string"}, "scope": {"type": "string"},
                            "repair": {"type": "boolean"}}}, required=False)),
        },
        "/api/admin/resync": {
            "post": _op("Re-sync documents: enqueue a sync of each (fetched again from its source); "
                        "all or none",
                        {"202": ok("Enqueued"), **_errors(400, 401, 403, 404, 413, 503)}, security=ADMIN,
                        tags=["admin"],
                        body=_body({"type": "object", "required": ["document_ids"], "properties": {
                            "document_ids": {"type": "array", "minItems": 1, "items": {"type": "string"}}}})),
        },
        "/api/dead-letters": {
            "get": _op("Jobs that exhausted their retries", {"200": ok("Dead letters"), **_errors(401, 403)},
                       security=ADMIN, tags=["admin"]),
        },
        "/api/dead-letters/replay": {
            "post": _op("Replay dead letters (all, or these message ids)", {"200": ok("Replayed"), **_errors(400, 401, 403, 413)},
                        security=ADMIN, tags=["admin"],
                        body=_body({"type": "object", "properties": {
                            "message_ids": {"type": "array", "items": {"type": "string"}}}}, required=False)),
        },
        "/mcp": {
            method: _op(f"MCP streamable HTTP ({method.upper()}): tools search and get_document, "
                        "with the same access rules as /api/search",
                        {"200": ok("A JSON-RPC answer"), "202": ok("Accepted (a notification)"),
                         **_errors(400, 401, 403, 404), "405": {**ERROR, "description": "Not allowed"},
                         "406": {**ERROR, "description": "Not acceptable"},
                         "415": {**ERROR, "description": "Unsupported media type"}},
                        security=ANY_KEY, tags=["mcp"],
                        body=_body(OBJ, required=False) if method == "post" else None)
            for method in ("post", "delete")
        },
        "/api/admin/verification-token/{source}": {
            "get": _op("A webhook verification token received from a source (Notion)",
                       {"200": ok("The token"), **_errors(401, 403, 404)}, security=ADMIN,
                       parameters=[SOURCE], tags=["admin"]),
            "delete": _op("Forget a recorded verification token (one planted by an unsigned request), "
                          "so the genuine handshake is recorded",
                          {"200": ok("Cleared, or nothing was recorded"), **_errors(401, 403, 404)},
                          security=ADMIN, parameters=[SOURCE], tags=["admin"]),
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "vector-sync", "version": "0.1.0",
                 "description": "Keeps a vector index in step with Jira, Slack, GitHub, Notion, Tempo and "
                                "Fireflies; permission-aware search with freshness on every result."},
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "An API key: admin (everything) or search (search and read documents)"},
                "adminKey": {"type": "apiKey", "in": "header", "name": "X-Admin-Key",
                             "description": "The same keys, in the older header"},
            },
        },
    }


async def openapi(request: Request) -> Response:
    return JSONResponse(spec())


def routes() -> list[BaseRoute]:
    return [Route("/openapi.json", openapi, methods=["GET"])]
