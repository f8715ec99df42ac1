"""The OpenAPI document describes the stored-event endpoints, so the contract test (Schemathesis)
exercises them."""

from __future__ import annotations

from ingest_worker.shim.openapi import document

EVENTS = "/v1/integrations/{integration_id}/events"


def test_document_has_the_event_store_operations_with_their_501() -> None:
    """List (beside ingest's POST), fate, update and delete are documented, each with the 501
    of a disabled store; ingest and import have none."""
    paths = document()["paths"]
    assert set(paths[EVENTS]) == {"get", "post"}
    assert set(paths[f"{EVENTS}/{{event_id}}"]) == {"get", "put", "delete"}
    stored = [paths[EVENTS]["get"], *paths[f"{EVENTS}/{{event_id}}"].values()]
    assert all("501" in op["responses"] for op in stored)
    assert "501" not in paths[EVENTS]["post"]["responses"]
    assert "501" not in paths[f"{EVENTS}/import"]["post"]["responses"]


def test_list_documents_spots_filters_and_paging() -> None:
    """The list takes Spot's camelCase filters (arrays as repeated keys), the time range, and
    our cursor and limit; it answers the list envelope of stored events."""
    operation = document()["paths"][EVENTS]["get"]
    params = {p["name"]: p for p in operation["parameters"]}
    assert set(params) == {
        "integration_id",
        "integrationEventTypeIds",
        "integrationDeviceIds",
        "cameraIds",
        "start",
        "end",
        "cursor",
        "limit",
    }
    assert params["cameraIds"]["schema"]["type"] == "array"
    assert params["cameraIds"]["explode"] is True
    assert params["start"]["schema"]["format"] == "date-time"
    body = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert set(body["required"]) == {"integration_events", "prev", "next"}
    update = document()["paths"][f"{EVENTS}/{{event_id}}"]["put"]
    body_schema = update["requestBody"]["content"]["application/json"]["schema"]
    assert body_schema == {"$ref": "#/components/schemas/update"}
    assert "update" in document()["components"]["schemas"]
