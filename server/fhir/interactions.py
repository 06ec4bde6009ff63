"""The interactions: search, read, vread, create, update, patch, delete.

Each is a function of the FHIR service and plain values, so the route table
and the batch/transaction Bundle share them. Writes take an optional
connection: a transaction Bundle passes its own.
"""

import re
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection

from fhir_mappings import fhir_json
from fhir_mappings.errors import Forbidden, InvalidRequest, InvalidResource, ResourceNotFound
from fhir_mappings.outcome import operation_outcome
from fhir_mappings.patches import Patch
from fhir_mappings.patient_compartment import compartment_parameter, patients_searched
from fhir_mappings.resources import client_resource, require_id
from fhir_mappings.search_query import SearchRequest
from server.audit.middleware import note_patients
from server.db import writing
from server.fhir.own_references import with_relative_references, with_relative_search_values
from server.fhir.preconditions import Preconditions, names_version, parse_preconditions, parse_tags
from server.fhir.search import SearchPage
from server.fhir.service import FhirService
from server.fhir.store import StoredVersion


def written_outcome(version: StoredVersion) -> dict[str, Any]:
    """What a write answers with `Prefer: return=OperationOutcome` (R4 http.html#ops)."""
    done = f"{version.resource_type}/{version.resource_id} is at version {version.version_id}"
    return operation_outcome("informational", done, "information")


def require_read_match(version: StoredVersion, if_match: object) -> None:
    """A read's If-Match, asked before anything else (RFC 9110 §13.2.2): 412
    unless it names the version read (`*`: any). Parsed as a write's is."""
    preconditions = parse_preconditions(if_match, None)
    if preconditions is not None:
        preconditions.require(f"{version.resource_type}/{version.resource_id}", version.version_id)


def not_modified(version: StoredVersion, if_none_match: str | None, modified_since_micros: int | None) -> bool:
    """Whether a conditional read is answered 304: If-None-Match wins over
    If-Modified-Since (RFC 9110 §13.2.2), which compares whole seconds, as
    HTTP dates have them."""
    tags = parse_tags("If-None-Match", if_none_match)  # as a write's is: a malformed one is 400 on either
    if tags is not None:
        return names_version(tags, version.version_id)
    if modified_since_micros is not None:
        return version.last_updated // 1_000_000 <= modified_since_micros // 1_000_000
    return False


def search(
    service: FhirService, path: list[str], pairs: list[tuple[str, str]], base: str, strict: bool,
    authorize: Callable[[SearchRequest], None], connection: Connection | None = None,
) -> SearchPage:
    """`[type]?pairs`, or `Patient/[id]/[type]?pairs` within the patient's
    compartment (`path` the parts of either). The audit record names the
    patients it was asked about, a paging cursor's included."""
    resource_type = path[-1]
    service.require_type(resource_type)
    within = compartment_parameter(resource_type, require_id(path[1])) if len(path) == 3 else None
    pairs = with_relative_search_values(resource_type, pairs, base)
    note_patients(patients_searched(resource_type, [*pairs, *([within] if within else [])]))
    page = service.searcher.search(resource_type, pairs, base, strict, connection, authorize, within)
    note_patients(patients_searched(resource_type, list(page.parameters)))
    return page


def is_search(path: list[str]) -> bool:
    """Whether a GET of `path` is a search: of a type, or of one in a patient's compartment."""
    return len(path) == 1 or (len(path) == 3 and path[0] == "Patient" and not path[2].startswith(("_", "$")))


def read(
    service: FhirService, resource_type: str, resource_id: str, connection: Connection | None = None
) -> StoredVersion:
    service.require_type(resource_type)
    return service.store.read(resource_type, require_id(resource_id), connection)


def vread(
    service: FhirService, resource_type: str, resource_id: str, version: str, connection: Connection | None = None
) -> StoredVersion:
    service.require_type(resource_type)
    if not re.fullmatch(r"[0-9]{1,9}", version):
        raise ResourceNotFound(f"{resource_type}/{resource_id} has no version {version[:20]!r}")
    return service.store.vread(resource_type, require_id(resource_id), int(version), connection)


def create(
    service: FhirService, resource_type: str, body: Any, connection: Connection | None = None,
    resource_id: str | None = None,
) -> StoredVersion:
    """A new resource; the server assigns its id (FHIR R4 http.html#create ignores the body's)."""
    service.require_writable(resource_type)
    resource = client_resource(_without_id(body), resource_type)
    resource_id = resource_id or service.new_id()
    with writing(service.engine, connection) as session:
        hook = service.write_hooks.get(resource_type)
        if hook is not None:
            resource = hook.creating(session, resource, resource_id)
        return service.store.put(session, resource, resource_id, "POST")


def update(
    service: FhirService, resource_type: str, resource_id: str, body: Any, preconditions: Preconditions | None,
    connection: Connection | None = None, *, may_create: bool,
) -> tuple[StoredVersion, bool]:
    """A new version (or the first, update-as-create); returns it and whether
    it was created, which a client that `may_create` not is refused (the
    write is undone): creating takes the right to create, however it is asked."""
    service.require_writable(resource_type)
    require_id(resource_id)
    if not isinstance(body, dict) or body.get("id") != resource_id:
        raise InvalidRequest(f"the resource's id must be present and equal {resource_id!r}, the id in the URL")
    resource = client_resource(body, resource_type)
    with writing(service.engine, connection) as session:
        hook = service.write_hooks.get(resource_type)
        if hook is not None:
            resource = hook.updating(session, resource, resource_id)
        version = service.store.put(session, resource, resource_id, "PUT", preconditions=preconditions)
        if version.created and not may_create:
            raise Forbidden(f"{resource_type}/{resource_id} does not exist, and this client may not create it")
    return version, version.created


def patch(
    service: FhirService, resource_type: str, resource_id: str, patch: Patch, preconditions: Preconditions | None,
    base: str, connection: Connection | None = None, *, check: Callable[[dict[str, Any]], None] = lambda _: None,
) -> StoredVersion:
    """A patch (JSON Patch or FHIRPath Patch) applied to the current version,
    whose result is then written as an update of it (R4 http.html#patch: "the
    server processes the resulting document as an Update"): validated,
    versioned, through the type's write hook, under the same preconditions. The version patched is
    locked first, so no other write slips in between. `check` sees the result
    before it is written (a right the resource as patched needs)."""
    service.require_writable(resource_type)
    require_id(resource_id)
    with writing(service.engine, connection) as session:
        service.store.lock_current(session, resource_type, [resource_id])
        current = service.store.read(resource_type, resource_id, session)  # 404, or 410 when deleted
        if preconditions is not None:  # judged before the patch, whose own errors would hide a 412
            preconditions.require(f"{resource_type}/{resource_id}", current.version_id, current.last_updated)
        assert current.body is not None
        patched = with_relative_references(patch(fhir_json.loads(current.body)), base)
        if not isinstance(patched, dict):
            raise InvalidResource(f"the patch leaves no {resource_type} (the whole document was removed or replaced)")
        for element, kept in (("resourceType", resource_type), ("id", resource_id)):
            if patched.get(element) != kept:
                raise InvalidResource(f"a patch may not change the {resource_type}'s {element} ({kept})")
        check(patched)
        version, _ = update(service, resource_type, resource_id, patched, preconditions, session, may_create=False)
    return version


def delete(
    service: FhirService, resource_type: str, resource_id: str, preconditions: Preconditions | None,
    connection: Connection | None = None,
) -> StoredVersion | None:
    service.require_writable(resource_type)
    require_id(resource_id)
    with writing(service.engine, connection) as session:
        hook = service.write_hooks.get(resource_type)
        if hook is not None:
            hook.deleting(session, resource_id)
        return service.store.delete(session, resource_type, resource_id, preconditions)


def _without_id(body: Any) -> Any:
    if isinstance(body, dict) and "id" in body:
        return {key: value for key, value in body.items() if key != "id"}
    return body
