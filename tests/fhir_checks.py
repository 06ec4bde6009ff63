"""Checks every FHIR answer of the tests goes through, and seeding helpers."""

from typing import Any

import httpx
import orjson

from fhir_mappings import fhir_xml
from fhir_mappings.resources import model_class
from server.db import write_connection
from server.fhir.store import StoredVersion
from server.services import Services
from conformance.fhir_schema import validate_fhir


def check_fhir_response(response: httpx.Response) -> None:
    content_type = response.headers.get("content-type", "")
    if not response.request.url.path.startswith("/fhir") or not ("json" in content_type or "xml" in content_type):
        return
    response.read()
    # XML is read back by the strict reader, which refuses what FHIR XML does not allow, then checked as JSON.
    body = orjson.loads(response.content) if "json" in content_type else fhir_xml.loads(response.content)
    validate_fhir(body)
    # The R4 models must read it too (they check what the schema leaves out).
    model_class(body["resourceType"]).model_validate(body)


def seed(services: Services, *resources: dict[str, Any]) -> list[StoredVersion]:
    """Write resources as the server itself would (any type, ids from the dicts)."""
    with write_connection(services.engine) as connection:
        return [
            services.fhir.store.put(connection, resource, resource["id"], "PUT")
            for resource in resources
        ]


def ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [
        entry["resource"]["id"]
        for entry in bundle.get("entry", [])
        if entry.get("search", {}).get("mode", "match") == mode
    ]


def link(bundle: dict[str, Any], relation: str) -> str | None:
    return next((item["url"] for item in bundle.get("link", []) if item["relation"] == relation), None)
