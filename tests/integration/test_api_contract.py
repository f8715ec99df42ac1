"""The API against its own OpenAPI document: a property-based run finds no 5xx and no answer
that contradicts the document; plus health, readiness and metrics."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from tests.integration.apiserver import ADMIN_TOKEN
from tests.integration.conftest import ApiProcess


@pytest.fixture(scope="session")
def contract(api_process: ApiProcess) -> schemathesis.schemas.BaseSchema:
    """The document as the running process serves it, with the admin token and a real
    integration id (other ids are drawn too, for the 404 paths)."""
    loaded = schemathesis.openapi.from_url(f"{api_process.url}/openapi.json")
    loaded.config.update(parameters={"integration_id": api_process.integration_id})
    return loaded


# Deleting the one integration would turn every later case into a 404.
schema = schemathesis.pytest.from_fixture("contract").exclude(
    method="DELETE", path="/v1/integrations/{integration_id}"
)


@schemathesis.auth()
class AdminToken:
    """The admin bearer token, applied the way Schemathesis can also withhold it (to check
    that requests without it, or with a wrong one, are refused)."""

    def get(self, case: schemathesis.Case[Any], context: schemathesis.AuthContext) -> str:
        return ADMIN_TOKEN

    def set(
        self, case: schemathesis.Case[Any], data: str, context: schemathesis.AuthContext
    ) -> None:
        case.headers["Authorization"] = f"Bearer {data}"


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_conforms_to_its_openapi_document(
    case: schemathesis.Case[Any], api_process: ApiProcess
) -> None:
    """Generated requests (valid and invalid) never get a 5xx, and every answer's status,
    content type and body match the document."""
    # Schema-valid is not always acceptable here: a template must name *required* properties,
    # ids must exist. Those answers are 400/404 by design, so that one check is left out.
    case.call_and_validate(excluded_checks=[positive_data_acceptance])


def test_openapi_document_covers_every_route(api_process: ApiProcess) -> None:
    """The document lists every management and ingest path, in OpenAPI 3.1."""
    document = httpx.get(f"{api_process.url}/openapi.json").json()
    assert document["openapi"] == "3.1.0"
    paths = set(document["paths"])
    assert {
        "/v1/integrations/{integration_id}/events",
        "/v1/integrations/{integration_id}/events/import",
        "/v1/integrations",
        "/v1/integrations/{integration_id}/event-types/{type_id}",
        "/v1/integrations/{integration_id}/devices/{device_id}/cameras",
        "/v1/integrations/{integration_id}/tokens/{token_id}",
    } <= paths


def test_health_readiness_and_metrics(api_process: ApiProcess) -> None:
    """/healthz and /readyz answer 200 with Kafka, PostgreSQL, the token refresh and the
    catalog's change follower up; /metrics counts requests by route and status and has the
    publish latency histogram."""
    assert httpx.get(f"{api_process.url}/healthz").status_code == 200
    ready = httpx.get(f"{api_process.url}/readyz")
    tasks = {"auth_refresh": True, "catalog_follower": True}
    assert ready.json() == {"kafka": True, "postgres": True, "tasks": tasks}
    base = f"{api_process.url}/v1/integrations/{api_process.integration_id}"
    headers = {"authorization": f"Bearer {api_process.admin_token}"}
    typed = httpx.post(
        f"{base}/event-types", json={"name": "t", "schema": {"type": "object"}}, headers=headers
    )
    body = {
        "integration_event_type_id": typed.json()["integration_event_type"]["id"],
        "timestamp": "2024-01-01T00:00:00Z",
        "attributes": {},
        "device_external_id": "d",
    }
    assert httpx.post(f"{base}/events", json=body, headers=headers).status_code == 202
    text = httpx.get(f"{api_process.url}/metrics").text
    assert (
        'ingest_http_requests_total{method="POST",'
        'route="/v1/integrations/{integration_id:id}/events",status="202"}' in text
    )
    assert "ingest_publish_seconds_bucket" in text
    assert "ingest_http_requests_in_flight" in text
