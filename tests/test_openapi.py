"""/openapi.json: valid OpenAPI 3.1, exactly the app's routes, and a schema-driven fuzz of the
running receiver (schemathesis) that must never see a 5xx."""

from __future__ import annotations

import re

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings as hsettings
from openapi_spec_validator import validate

from receiver.app import create_app
from receiver.openapi import spec
from tests.conftest import ADMIN_KEY

METHODS = {"get", "post", "put", "patch", "delete"}


def documented() -> set[tuple[str, str]]:
    return {(path, method) for path, ops in spec()["paths"].items() for method in ops if method in METHODS}


def routed(app) -> set[tuple[str, str]]:
    found = set()
    for route in app.routes:
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        for method in (route.methods or {"GET"}) - {"HEAD"}:
            found.add((path, method.lower()))
    return found


def test_the_document_validates_as_openapi_3_1():
    document = spec()
    assert document["openapi"].startswith("3.1")
    validate(document)


def test_every_route_is_documented_and_nothing_else(services):
    app = create_app(services.settings)
    assert routed(app) == documented()


def test_served_at_openapi_json(services, receiver):
    response = httpx.get(f"{receiver.url}/openapi.json")
    assert response.status_code == 200
    assert response.json() == spec()


def test_schema_driven_fuzz_finds_no_server_error(services, receiver):
    schema = schemathesis.openapi.from_dict(spec())
    failures: list[str] = []

    @hsettings(max_examples=150, deadline=None, database=None,
               suppress_health_check=list(HealthCheck))
    @given(case=schema.as_strategy())
    def check(case) -> None:
        response = case.call(base_url=receiver.url, headers={"X-Admin-Key": ADMIN_KEY}, timeout=30)
        if response.status_code >= 500:
            failures.append(f"{case.method} {case.formatted_path} {case.query} {case.body!r} -> "
                            f"{response.status_code} {response.text[:200]}")

    check()
    assert not failures, "\n".join(failures[:10])


def test_malformed_requests_from_the_schema_get_4xx_not_5xx(services, receiver):
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_dict(spec())
    failures: list[str] = []

    @hsettings(max_examples=150, deadline=None, database=None,
               suppress_health_check=list(HealthCheck))
    @given(case=schema.as_strategy(generation_mode=GenerationMode.NEGATIVE))
    def check(case) -> None:
        response = case.call(base_url=receiver.url, headers={"X-Admin-Key": ADMIN_KEY}, timeout=30)
        if response.status_code >= 500:
            failures.append(f"{case.method} {case.formatted_path} {case.query} {case.body!r} -> "
                            f"{response.status_code} {response.text[:200]}")

    check()
    assert not failures, "\n".join(failures[:10])


