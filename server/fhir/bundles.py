"""`POST /fhir` with a batch or transaction Bundle (FHIR R4 http.html#transaction).

A batch runs each entry on its own and reports each outcome; a transaction
runs all of them in one database transaction and either all succeed or
nothing is written. In a transaction, every entry's fullUrl is replaced
wherever the Bundle links to it (a created resource's, `urn:uuid:` or URL,
by the id the server assigns, an updated one's by its `Type/id`;
`bundle_links`), in a patched resource as much as in a sent one, and
conditional references by the one resource they match.
"""

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson
from sqlalchemy import Connection

from fhir_mappings.date_ranges import instant_text, require_instant
from fhir_mappings.errors import (
    FhirError,
    Forbidden,
    InvalidRequest,
    InvalidResource,
    VersionConflict,
)
from fhir_mappings.json_patch import binary_patch
from fhir_mappings.links import placeholder_links
from fhir_mappings.outcome import operation_outcome
from fhir_mappings.patches import Patch, fhirpath_patch_of, is_fhirpath_patch, json_patch_of
from fhir_mappings.patient_compartment import patients_of_json
from fhir_mappings.resources import literal_references
from fhir_mappings.search_query import SearchRequest, Summary, read_subsetting
from fhir_mappings.subsetting import subset_json
from server.audit.middleware import note_patients
from server.db import retried_on_conflict, write_connection
from server.fhir import history, interactions
from server.fhir.bundle_links import (
    absolute_full_url,
    refuse_placeholders,
    replace_links,
)
from server.fhir.conditional import (
    condition_key,
    create_if_none_exist,
    delete_where,
    if_none_exist_query,
    matching_ids,
    patch_target,
    patch_where,
    serialize_condition,
    the_match,
    update_target,
    update_where,
)
from server.fhir.negotiation import form_pairs, parse_json
from server.fhir.own_references import (
    with_relative_references,
)
from server.fhir.preconditions import Preconditions, parse_preconditions
from server.fhir.search import render_searchset
from server.fhir.service import FhirService
from server.fhir.store import StoredVersion

# What writes one resource named in its URL (`Type/id`), which a transaction locks first.
_INSTANCE_WRITES = ("PUT", "PATCH", "DELETE")
# Processing order inside a transaction (FHIR R4 http.html#trules).
_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
MAX_ENTRIES = 1000


@dataclass
class EntryResult:
    status: str
    resource: bytes | None = None
    location: str | None = None
    etag: str | None = None
    last_modified: int | None = None
    outcome: dict[str, Any] | None = None
    written: StoredVersion | None = None  # by this entry: what `Prefer: return=` decides on


def process_bundle(
    service: FhirService, body: Any, base: str, status_for: Any, authorize: Callable[[str, str, Any], None],
    authorize_search: Callable[[SearchRequest], None], may_create: Callable[[str], bool],
    capabilities: Callable[[], bytes], returned: str | None = None,
) -> bytes:
    """`authorize(method, path, resource)` raises Forbidden for an entry its
    sender may not run; `authorize_search` for a search entry reaching types
    it may not read; `may_create(type)` says whether an update may create;
    `capabilities()` is the CapabilityStatement a `GET metadata` entry answers.
    `returned`: the request's `Prefer: return=`, which says what a written
    entry's response carries (R4 http.html#transaction-response)."""
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        raise InvalidRequest("POST /fhir takes a Bundle of type batch or transaction")
    kind = body.get("type")
    if kind not in ("batch", "transaction"):
        raise InvalidRequest(f"the Bundle type must be batch or transaction, not {kind!r}")
    entries = body.get("entry") or []
    if not isinstance(entries, list) or len(entries) > MAX_ENTRIES:
        raise InvalidRequest(f"a Bundle may carry at most {MAX_ENTRIES} entries")
    for position, entry in enumerate(entries):
        _request_of(entry, position)
    if kind == "transaction":
        # All or nothing: every entry is allowed, or none runs.
        for entry in entries:
            authorize(entry["request"]["method"], _path(entry["request"]["url"], base), entry.get("resource"))
        # Nothing of a transaction that PostgreSQL ended in a deadlock was kept: it is run again whole.
        results = retried_on_conflict(
            lambda: _transaction(service, entries, base, authorize, authorize_search, may_create, capabilities)
        )
    else:
        results = [
            _batch_entry(service, entry, position, base, status_for, authorize, authorize_search, may_create,
                         capabilities)
            for position, entry in enumerate(entries)
        ]
    return _response_bundle(f"{kind}-response", results, returned)


def _transaction(
    service: FhirService, entries: list[dict[str, Any]], base: str, authorize: Callable[[str, str, Any], None],
    authorize_search: Callable[[SearchRequest], None], may_create: Callable[[str], bool],
    capabilities: Callable[[], bytes],
) -> list[EntryResult]:
    conditions = _conditions(entries, base)
    # Deletes run first (http.html#trules): what later entries write never changes what one deleted.
    rechecked = {position: condition for position, condition in conditions.items()
                 if entries[position]["request"]["method"] != "DELETE"}
    results: dict[int, EntryResult] = {}
    with write_connection(service.engine) as connection:
        # All in one order, as every writer with these conditions takes them, before any is judged.
        for resource_type, query in sorted(set(conditions.values()), key=lambda condition: condition_key(*condition)):
            serialize_condition(connection, resource_type, query)
        # Conditions first: an entry's fullUrl stands for the resource its condition found.
        existing = _conditional_creates(service, entries, conditions, base, connection, authorize_search)
        targets = _conditional_targets(service, entries, conditions, base, connection, authorize_search)
        entries = [_unconditional(entry, position, targets, base) for position, entry in enumerate(entries)]
        # Resolved, no two entries may reach one resource (http.html#trules), a matched create's included.
        deleted = _refuse_overlaps(entries, base, {
            position: f"{version.resource_type}/{version.resource_id}" for position, version in existing.items()
        })
        assigned = _identities(entries, base, existing)
        entries = [
            with_relative_references(replace_links(entry, assigned, base, position), base)
            for position, entry in enumerate(entries)
        ]
        for position, entry in enumerate(entries):
            refuse_placeholders(entry.get("resource"), position)
        _lock_targets(service, connection, entries, base)
        references: list[tuple[int, str, str, str]] = []
        entries = [
            _resolve_conditional_references(
                service, entry, position, base, connection, authorize_search, deleted, references
            )
            for position, entry in enumerate(entries)
        ]
        order = sorted(range(len(entries)), key=lambda position: _processing_order(entries[position], base))
        for position in order:
            entry = entries[position]
            if position in existing:
                results[position] = _result("200 OK", existing[position], base)
                continue
            full_url = absolute_full_url(entry, base)
            created_id = assigned[full_url].rpartition("/")[2] if full_url in assigned else None
            try:
                results[position] = _run(
                    service, entry, base, connection, created_id, authorize, authorize_search, may_create,
                    capabilities, linked=partial(_linked_in_transaction, entry, assigned, base, position),
                )
            except FhirError as error:
                request = entry["request"]
                error.diagnostics = f"entry {position} ({request['method']} {request['url']}): {error.diagnostics}"
                raise
        judged = [
            (position, resource_type, query, _own_resource(position, existing, results))
            for position, (resource_type, query) in rechecked.items()
        ]
        _refuse_order_dependence(service, connection, base, authorize_search, judged + references, entries)
    return [results[position] for position in range(len(entries))]


def _own_resource(position: int, existing: dict[int, StoredVersion], results: dict[int, EntryResult]) -> str | None:
    """The id of what a conditional create or update matched or wrote."""
    if position in existing:
        return existing[position].resource_id
    written = results[position].written
    return None if written is None else written.resource_id


def _refuse_order_dependence(
    service: FhirService, connection: Connection, base: str, authorize_search: Callable[[SearchRequest], None],
    judged: list[tuple[int, str, str, str | None]], entries: list[dict[str, Any]],
) -> None:
    """Conditions are judged before any entry runs; once they all have, each
    must meet nothing but the resource it found or made (`own`). One that
    another entry's write now meets (`POST Task` with identifier V beside
    `PUT Task?identifier=V`, which created a second) made the outcome depend
    on the order of processing, and R4 has such a transaction fail
    (http.html#trules). Raising rolls it all back. Only a type some other
    entry wrote can meet a condition anew: the others are not searched again."""
    writers = {
        position: _path(entry["request"]["url"], base).strip("/").partition("/")[0]
        for position, entry in enumerate(entries) if entry["request"]["method"] in ("POST", "PUT", "PATCH")
    }
    for position, resource_type, query, own in judged:
        if not any(kind == resource_type for writer, kind in writers.items() if writer != position):
            continue
        met = set(matching_ids(service, resource_type, query, base, connection, authorize_search)) - {own}
        if met:
            raise InvalidRequest(
                f"entry {position}: its condition {resource_type}?{query[:100]} was judged before this transaction's"
                f" entries ran, and now also meets {resource_type}/{sorted(met)[0]}, which another entry wrote: the"
                " outcome would depend on the order of processing"
            )


def _lock_targets(service: FhirService, connection: Connection, entries: list[dict[str, Any]], base: str) -> None:
    """Every resource the transaction updates or deletes, locked before any
    entry runs, type by type and id by id, as every writer takes them: two
    transactions that change the same resources in other orders of entries
    (`DELETE A, PUT B` and `DELETE B, PUT A`) then queue, where taking each
    lock as its entry ran had PostgreSQL end one of them in a deadlock."""
    targets: dict[str, set[str]] = {}
    for entry in entries:
        resource_type, _, resource_id = _path(entry["request"]["url"], base).strip("/").partition("/")
        if entry["request"]["method"] in _INSTANCE_WRITES and resource_id and "/" not in resource_id:
            targets.setdefault(resource_type, set()).add(resource_id)
    for resource_type in sorted(targets):
        service.store.lock_current(connection, resource_type, sorted(targets[resource_type]))


def _processing_order(entry: dict[str, Any], base: str) -> tuple[int, str]:
    request = entry["request"]
    return _ORDER[request["method"]], _path(request["url"], base)


def _conditions(entries: list[dict[str, Any]], base: str) -> dict[int, tuple[str, str]]:
    """Each conditional entry's type and query, by position: a create's
    `ifNoneExist`, a conditional update's or delete's URL. Two entries with
    one condition would both find nothing and both create (or one create what
    the other deletes): the spec has such a transaction fail."""
    conditions: dict[int, tuple[str, str]] = {}
    seen: dict[str, int] = {}
    for position, entry in enumerate(entries):
        request = entry["request"]
        query = _text(request, "ifNoneExist")
        if query is not None and request["method"] != "POST":
            raise InvalidRequest(f"entry {position}: ifNoneExist belongs to a POST (a create)")
        resource_type = _path(request["url"], base).strip("/")
        if query is not None:
            query = if_none_exist_query(resource_type, query, base)
        # `[type]?[query]`; `Task/x?_format=json` is a plain update or delete with general parameters.
        conditional = request["method"] in _INSTANCE_WRITES and "?" in request["url"] and "/" not in resource_type
        if query is None and conditional:
            query = request["url"].partition("?")[2]
        if query is None:
            continue
        key = condition_key(resource_type, query)
        if key in seen:
            raise InvalidRequest(f"entries {seen[key]} and {position} share one condition ({key[:100]})")
        seen[key] = position
        conditions[position] = (resource_type, query)
    return conditions


def _refuse_overlaps(entries: list[dict[str, Any]], base: str, claimed: dict[int, str]) -> set[str]:
    """Two entries for one identity make a transaction's outcome depend on
    processing order: the spec has such a transaction fail (http.html#trules).
    `claimed`: the resource (`Type/id`) a matched conditional create answers
    with, by position. Returns the resources the transaction deletes."""
    full_urls: set[str] = set()
    targets: dict[str, int] = {}
    deleted: set[str] = set()
    for position, entry in enumerate(entries):
        full_url = absolute_full_url(entry, base)
        if full_url is not None:
            if full_url in full_urls:
                raise InvalidRequest(f"entry {position}: fullUrl {full_url[:100]!r} appears twice in the transaction")
            full_urls.add(full_url)
        method, url = entry["request"]["method"], entry["request"]["url"]
        path = _path(url, base).strip("/")
        # A conditional delete that matched nothing stays conditional: it reaches no resource.
        target = claimed.get(position) or (path if method in _INSTANCE_WRITES and "/" in path else None)
        if target is None:
            continue
        if target in targets:
            raise InvalidRequest(f"entries {targets[target]} and {position} both reach {target[:100]}")
        targets[target] = position
        if method == "DELETE":
            deleted.add(target)
    return deleted


def _batch_entry(
    service: FhirService, entry: dict[str, Any], position: int, base: str, status_for: Any,
    authorize: Callable[[str, str, Any], None], authorize_search: Callable[[SearchRequest], None],
    may_create: Callable[[str], bool], capabilities: Callable[[], bytes],
) -> EntryResult:
    try:
        authorize(entry["request"]["method"], _path(entry["request"]["url"], base), entry.get("resource"))
        local = with_relative_references(entry, base)
        return retried_on_conflict(lambda: _run(
            service, local, base, None, None, authorize, authorize_search, may_create, capabilities,
            linked=_linked_in_batch,
        ))
    except FhirError as error:
        status = status_for(error)
        return EntryResult(f"{status}", outcome=operation_outcome(error.issue_code, error.diagnostics))


def _run(
    service: FhirService, entry: dict[str, Any], base: str, connection: Connection | None, created_id: str | None,
    authorize: Callable[[str, str, Any], None], authorize_search: Callable[[SearchRequest], None],
    may_create: Callable[[str], bool], capabilities: Callable[[], bytes], *, linked: Callable[[Any], Any],
) -> EntryResult:
    """`authorize` was asked about the entry as sent; a patch asks it again of
    its result, whose links to other entries `linked` resolves."""
    method, url = entry["request"]["method"], entry["request"]["url"]
    if method == "HEAD":  # R4 http-verb HEAD: what GET answers, without its body (RFC 9110 9.3.2)
        as_get = {**entry, "request": {**entry["request"], "method": "GET"}}
        answer = _run(
            service, as_get, base, connection, created_id, authorize, authorize_search, may_create, capabilities,
            linked=linked,
        )
        answer.resource = None
        return answer
    if_none_exist = _text(entry["request"], "ifNoneExist")
    if url.startswith(f"{base}/"):
        url = url[len(base) + 1 :]
    path, _, query = url.partition("?")
    if "://" in path:
        raise InvalidRequest(
            f"{url[:100]!r} is not on this server: request.url is relative to {base}, or starts with it"
        )
    parts = path.strip("/").split("/")
    if "" in parts:  # `Task//x` is no URL of Task/x
        raise InvalidRequest(f"{url[:100]!r} has an empty path segment")
    if method == "GET" and parts == ["metadata"]:  # the capabilities interaction (R4 http.html#capabilities)
        return EntryResult("200 OK", resource=capabilities())
    if method == "GET" and parts == ["_history"]:  # the whole system's
        return EntryResult("200 OK", resource=history.system_history(
            service, partial(_may_search, authorize), form_pairs(query), base, connection=connection))
    if method == "GET" and interactions.is_search(parts):
        page = interactions.search(service, parts, form_pairs(query), base, False, authorize_search, connection)
        return EntryResult("200 OK", resource=render_searchset(page, base))
    if method == "GET" and len(parts) in (2, 3) and parts[-1] == "_history":  # a type's or an instance's
        resource_id = parts[1] if len(parts) == 3 else None
        return EntryResult("200 OK", resource=history.history(
            service, parts[0], resource_id, form_pairs(query), base, connection=connection))
    if method == "GET" and len(parts) in (2, 4) and (len(parts) == 2 or parts[2] == "_history"):
        version = (
            interactions.read(service, parts[0], parts[1], connection)
            if len(parts) == 2
            else interactions.vread(service, parts[0], parts[1], parts[3], connection)
        )
        request = entry["request"]
        summary, elements = read_subsetting(form_pairs(query))
        interactions.require_read_match(version, request.get("ifMatch"))
        if interactions.not_modified(version, _text(request, "ifNoneMatch"), _instant(request, "ifModifiedSince")):
            return EntryResult("304 Not Modified", etag=version.etag, last_modified=version.last_updated)
        return _result("200 OK", version, base, subset_of=(summary, elements))
    resource = entry.get("resource")
    preconditions = _preconditions(entry["request"]) if method in _INSTANCE_WRITES else None
    if if_none_exist is not None and method != "POST":
        raise InvalidRequest("ifNoneExist belongs to a POST (a create)")
    if method == "POST" and len(parts) == 1 and if_none_exist is not None:
        version, created = create_if_none_exist(
            service, parts[0], resource, if_none_exist, base, authorize_search, connection
        )
        return _result("201 Created" if created else "200 OK", version, base, written=created)
    if method == "POST" and len(parts) == 1:
        version = interactions.create(service, parts[0], resource, connection, created_id)
        return _result("201 Created", version, base, written=True)
    if method == "PUT" and len(parts) == 1 and query:
        version, created = update_where(
            service, parts[0], resource, query, base, preconditions, authorize_search, connection
        )
        return _result("201 Created" if created else "200 OK", version, base, written=True)
    if method == "PUT" and len(parts) == 2:
        version, created = interactions.update(
            service, parts[0], parts[1], resource, preconditions, connection, may_create=may_create(parts[0])
        )
        return _result("201 Created" if created else "200 OK", version, base, written=True)
    if method == "PATCH" and (len(parts) == 2 or (len(parts) == 1 and query)):
        applied = _entry_patch(resource)

        def patch(document: Any) -> Any:
            return linked(applied(document))

        def check(patched: dict[str, Any]) -> None:
            authorize(method, path, patched)

        version = (
            interactions.patch(service, parts[0], parts[1], patch, preconditions, base, connection, check=check)
            if len(parts) == 2
            else patch_where(
                service, parts[0], patch, query, base, preconditions, authorize_search, connection, check=check
            )
        )
        return _result("200 OK", version, base, written=True)
    if method == "DELETE" and len(parts) == 1 and query:
        delete_where(service, parts[0], query, base, preconditions, authorize_search, connection)
        return EntryResult("204 No Content")
    if method == "DELETE" and len(parts) == 2:
        interactions.delete(service, parts[0], parts[1], preconditions, connection)
        return EntryResult("204 No Content")
    raise InvalidRequest(f"{method} {url} is not an interaction this server supports in a Bundle")


def _may_search(authorize: Callable[[str, str, Any], None], resource_type: str) -> bool:
    try:
        authorize("GET", resource_type, None)  # a search of the type
    except Forbidden:
        return False
    return True


def _entry_patch(resource: Any) -> Patch:
    """A PATCH entry's patch: a Parameters resource is a FHIRPath Patch
    (R4 fhirpatch.html); a Binary holds a JSON Patch."""
    if is_fhirpath_patch(resource):
        return fhirpath_patch_of(resource)
    return json_patch_of(parse_json(binary_patch(resource), "the JSON Patch in the entry's Binary"))


def _linked_in_transaction(
    entry: dict[str, Any], assigned: dict[str, str], base: str, position: int, patched: Any
) -> Any:
    """A patched resource with its links to the transaction's entries (their
    fullUrls, `urn:uuid:` placeholders among them) replaced by what those
    entries became, as a sent resource's are: a patch may link to them too."""
    resolved = replace_links({**entry, "resource": patched}, assigned, base, position)["resource"]
    left = placeholder_links(resolved)
    if left:
        raise InvalidRequest(f"the patch puts {left[0][:100]}, the fullUrl of no entry of this transaction")
    # Conditional references are judged before any entry runs, from what the entries send; a patch's
    # result exists only as its entry runs.
    conditional = [reference for reference in literal_references(resolved) if "?" in reference]
    if conditional:
        raise InvalidRequest(
            f"the patch puts the conditional reference {conditional[0][:100]}, which is resolved in the resources"
            " entries send, not in a patch's result: name the resource (Type/id) or an entry's fullUrl"
        )
    return resolved


def _linked_in_batch(patched: Any) -> Any:
    """A batch's entries are independent (R4 http.html#brules): a
    placeholder in a patched resource names nothing."""
    left = placeholder_links(patched)
    if left:
        raise InvalidResource(
            f"the patch puts {left[0][:100]}, a placeholder for another entry's resource; entries link to each other"
            " only in a transaction Bundle, not in a batch"
        )
    return patched


def _text(request: dict[str, Any], name: str) -> str | None:
    value = request.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"request.{name} must be a string")
    return value


def _preconditions(request: dict[str, Any]) -> Preconditions | None:
    """An update's or delete's `ifMatch` and `ifNoneMatch`, as the HTTP
    headers are (a read's `ifNoneMatch` asks for a 304 instead)."""
    return parse_preconditions(request.get("ifMatch"), request.get("ifNoneMatch"))


def _instant(request: dict[str, Any], name: str) -> int | None:
    """An entry's `instant` (Bundle.entry.request.ifModifiedSince) as microseconds."""
    text = _text(request, name)
    return None if text is None else require_instant(f"request.{name}", text)


def _path(url: str, base: str) -> str:
    """An entry's URL as the path below /fhir (`Task/abc`), as the access table reads it."""
    if url.startswith(f"{base}/"):
        url = url[len(base) + 1 :]
    return url.partition("?")[0]


def _result(
    status: str, version: StoredVersion, base: str, subset_of: tuple[Summary, tuple[str, ...]] = (Summary.FALSE, ()),
    written: bool = False,
) -> EntryResult:
    """`subset_of`: what a read's `_summary` and `_elements` ask for; `written`:
    by this entry, whose record the store told the patients as it wrote."""
    if version.body is not None and not written:  # the patient whose data a read discloses, for the audit record
        note_patients(patients_of_json(version.body))
    return EntryResult(
        status,
        resource=None if version.body is None else subset_json(version.body, *subset_of),
        location=f"{base}/{version.resource_type}/{version.resource_id}/_history/{version.version_id}",
        etag=version.etag,
        last_modified=version.last_updated,
        written=version if written else None,
    )


def _request_of(entry: Any, position: int) -> None:
    request = entry.get("request") if isinstance(entry, dict) else None
    if not isinstance(request, dict) or request.get("method") not in _ORDER or not isinstance(request.get("url"), str):
        raise InvalidRequest(
            f"entry {position} needs request.method (GET, HEAD, POST, PUT, PATCH, DELETE) and request.url"
        )


def _conditional_creates(
    service: FhirService, entries: list[dict[str, Any]], conditions: dict[int, tuple[str, str]], base: str,
    connection: Connection, authorize_search: Callable[[SearchRequest], None],
) -> dict[int, StoredVersion]:
    """The entries whose `ifNoneExist` matches a resource, by position, with
    that resource (the others create). Several matches fail the transaction (412)."""
    existing: dict[int, StoredVersion] = {}
    for position, (resource_type, query) in conditions.items():
        if entries[position]["request"]["method"] != "POST":
            continue
        service.require_writable(resource_type)
        found = matching_ids(service, resource_type, query, base, connection, authorize_search)
        if len(found) > 1:
            raise VersionConflict(f"entry {position}: ifNoneExist {query[:100]} matches more than one {resource_type}")
        if found:
            existing[position] = service.store.read(resource_type, found[0], connection)
    return existing


def _conditional_targets(
    service: FhirService, entries: list[dict[str, Any]], conditions: dict[int, tuple[str, str]], base: str,
    connection: Connection, authorize_search: Callable[[SearchRequest], None],
) -> dict[int, str | None]:
    """The id each conditional update, patch or delete (`PUT Task?...`)
    reaches, by position: an update's match, the body's free id, or None for
    an id the server assigns; a patch's match (none is 404: a patch never
    creates); a delete's match, or None for none."""
    targets: dict[int, str | None] = {}
    for position, (resource_type, query) in conditions.items():
        request = entries[position]["request"]
        if request["method"] not in _INSTANCE_WRITES:
            continue
        service.require_writable(resource_type)
        try:
            targets[position] = _conditional_target(
                service, entries[position], resource_type, query, base, connection, authorize_search
            )
        except FhirError as error:
            error.diagnostics = f"entry {position}: {error.diagnostics}"
            raise
    return targets


def _conditional_target(
    service: FhirService, entry: dict[str, Any], resource_type: str, query: str, base: str, connection: Connection,
    authorize_search: Callable[[SearchRequest], None],
) -> str | None:
    request = entry["request"]
    if request["method"] == "PUT":
        return update_target(
            service, resource_type, entry.get("resource"), query, base, _preconditions(request), connection,
            authorize_search,
        )
    if request["method"] == "PATCH":
        return patch_target(service, resource_type, query, base, connection, authorize_search)
    return the_match(service, resource_type, query, base, connection, authorize_search)


def _unconditional(
    entry: dict[str, Any], position: int, update_targets: dict[int, str | None], base: str
) -> dict[str, Any]:
    """The entry as the interaction its condition decided: without its
    `ifNoneExist` once `_conditional_creates` judged it, a conditional update
    as the update or create of the resource it found, a conditional delete as
    the delete of its match (a copy: a transaction run again after a deadlock
    judges it again)."""
    request = {key: value for key, value in entry["request"].items() if key != "ifNoneExist"}
    if position not in update_targets:
        return {**entry, "request": request}
    resource_type = _path(request["url"], base).strip("/")
    target = update_targets[position]
    if request["method"] in ("DELETE", "PATCH"):
        # A delete without a match keeps its condition, and deletes nothing when it runs.
        return {**entry, "request": request if target is None else {**request, "url": f"{resource_type}/{target}"}}
    if target is None:
        return {**entry, "request": {**request, "method": "POST", "url": resource_type}}
    resource = {**entry["resource"], "id": target}
    return {**entry, "request": {**request, "url": f"{resource_type}/{target}"}, "resource": resource}


def _identities(entries: list[dict[str, Any]], base: str, existing: dict[int, StoredVersion]) -> dict[str, str]:
    """What each entry's fullUrl (made absolute) stands for once the transaction
    has run: a created resource's, whatever its form (a placeholder, a URL on
    this server or another), the id the server assigns (or the resource its
    ifNoneExist matched); an updated resource's the `Type/id` of its URL."""
    assigned: dict[str, str] = {}
    for position, entry in enumerate(entries):
        full_url, method, url = absolute_full_url(entry, base), entry["request"]["method"], entry["request"]["url"]
        if full_url is None:
            continue
        if position in existing:
            assigned[full_url] = f"{existing[position].resource_type}/{existing[position].resource_id}"
        elif method == "POST":
            assigned[full_url] = f"{_path(url, base).strip('/')}/{uuid.uuid4()}"
        elif method in ("PUT", "PATCH") and "/" in _path(url, base).strip("/"):  # `Task/x?_format=json` too
            assigned[full_url] = _path(url, base).strip("/")
    return assigned


def _resolve_conditional_references(
    service: FhirService, entry: dict[str, Any], position: int, base: str, connection: Connection,
    authorize_search: Callable[[SearchRequest], None], deleted: set[str], judged: list[tuple[int, str, str, str]],
) -> dict[str, Any]:
    """Conditional references (`Patient?identifier=...`) replaced by the one
    resource they match before the transaction runs; none or several fail it
    (http.html#trules). Each is added to `judged`, with what it matched."""
    conditional = {reference for reference in literal_references(entry.get("resource")) if "?" in reference}
    if not conditional:
        return entry
    resolved: dict[str, str] = {}
    for reference in sorted(conditional):
        resource_type, _, query = reference.partition("?")
        if not resource_type.isalpha():
            raise InvalidRequest(f"entry {position}: {reference[:100]} is not a conditional reference (Type?query)")
        found = matching_ids(service, resource_type, query, base, connection, authorize_search)
        if not found:
            raise InvalidRequest(
                f"entry {position}: the conditional reference {reference[:100]} matches nothing that existed before"
                " this transaction (an entry of it is named by its fullUrl)"
            )
        if len(found) > 1:
            raise VersionConflict(
                f"entry {position}: the conditional reference {reference[:100]} matches more than one {resource_type}"
            )
        resolved[reference] = f"{resource_type}/{found[0]}"
        judged.append((position, resource_type, query, found[0]))
        if resolved[reference] in deleted:
            raise InvalidRequest(
                f"entry {position}: the conditional reference {reference[:100]} matches {resolved[reference]},"
                " which this transaction deletes"
            )
    return replace_links(entry, resolved, base, position)


def _response_bundle(kind: str, results: list[EntryResult], returned: str | None) -> bytes:
    entries = []
    for result in results:
        if result.written is not None and returned in ("minimal", "operationoutcome"):
            result.resource = None
            if returned == "operationoutcome":
                result.outcome = interactions.written_outcome(result.written)
        response: dict[str, Any] = {"status": result.status}
        if result.location:
            response["location"] = result.location
        if result.etag:
            response["etag"] = result.etag
        if result.last_modified is not None:
            response["lastModified"] = instant_text(result.last_modified)
        if result.outcome:
            response["outcome"] = result.outcome
        encoded = orjson.dumps({"response": response})
        if result.resource is not None:
            encoded = b'{"resource":' + result.resource + b"," + encoded[1:]
        entries.append(encoded)
    head = orjson.dumps({"resourceType": "Bundle", "type": kind})
    if not entries:
        return head
    return head[:-1] + b',"entry":[' + b",".join(entries) + b"]}"
