"""What a conditional query matches: conditional create (`If-None-Exist`,
R4 http.html#ccreate), conditional update (`PUT [type]?[query]`,
http.html#cond-update), conditional patch (`PATCH [type]?[query]`,
http.html#patch), conditional delete (`DELETE [type]?[query]`,
http.html#3.1.0.7.1) and a transaction's conditional references.

A query is searched strictly (a parameter the server does not know is an
error, not ignored: ignoring it would match too much), with this server's own
URLs made relative, and needs the right to search its type.
"""

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection

from fhir_mappings.errors import InvalidRequest, ResourceConflict, ResourceNotFound, VersionConflict
from fhir_mappings.patches import Patch
from fhir_mappings.search_query import SearchRequest
from server.db import advisory_locks, writing
from server.fhir import interactions
from server.fhir.negotiation import form_pairs
from server.fhir.own_references import with_relative_search_values
from server.fhir.preconditions import Preconditions
from server.fhir.service import FhirService
from server.fhir.store import StoredVersion

# Parameters that shape a search's answer, not the set it matches (R4 search.html#return).
_RESULT_PARAMETERS = frozenset((
    "_sort", "_include", "_revinclude", "_summary", "_total", "_elements", "_contained", "_containedType", "_cursor",
))
# Left out of a condition: `_format` and `_pretty`, which every interaction
# takes (R4 http.html#parameters), say how to answer a conditional update or
# delete; `_count` changes nothing, as the condition is searched for two.
_SET_ASIDE = frozenset(("_format", "_pretty", "_count"))


def matching_ids(
    service: FhirService, resource_type: str, query: str, base: str, connection: Connection,
    authorize_search: Callable[[SearchRequest], None],
) -> list[str]:
    """The ids of the resources `query` matches: none, one, or two (two say "several")."""
    service.require_type(resource_type)
    pairs = [(name, value) for name, value in form_pairs(query) if name not in _SET_ASIDE]
    shaping = sorted({name for name, _ in pairs if name in _RESULT_PARAMETERS})
    if shaping:
        raise InvalidRequest(
            f"a condition names resources, not how to show them: {', '.join(shaping)} has no place in it"
        )
    if not pairs:
        raise InvalidRequest(f"a conditional query on {resource_type} needs search parameters")
    pairs = with_relative_search_values(resource_type, pairs, base)
    page = service.searcher.search(
        resource_type, [*pairs, ("_count", "2")], base, strict=True, connection=connection, authorize=authorize_search
    )
    return [row.resource_id for row in page.matches]


def if_none_exist_query(resource_type: str, condition: str, base: str) -> str:
    """The query of an If-None-Exist header or an entry's ifNoneExist. R4 has
    it the part after the `?`; clients also send `Type?query` or the whole
    URL (as a conditional update's is), which a header took and a Bundle
    entry refused as an unknown parameter `Type?name`."""
    path, mark, query = condition.partition("?")
    return query if mark and path in (resource_type, f"{base}/{resource_type}") else condition


def create_if_none_exist(
    service: FhirService, resource_type: str, body: Any, query: str, base: str,
    authorize_search: Callable[[SearchRequest], None], connection: Connection | None = None,
) -> tuple[StoredVersion, bool]:
    """The resource `query` matches, or else `body` created; and whether it
    was created. Several matches are 412, as R4 has it."""
    service.require_writable(resource_type)
    query = if_none_exist_query(resource_type, query, base)
    with writing(service.engine, connection) as session:
        match = the_match(service, resource_type, query, base, session, authorize_search)
        if match is not None:
            return service.store.read(resource_type, match, session), False
        return interactions.create(service, resource_type, body, session), True


def update_where(
    service: FhirService, resource_type: str, body: Any, query: str, base: str, preconditions: Preconditions | None,
    authorize_search: Callable[[SearchRequest], None], connection: Connection | None = None,
) -> tuple[StoredVersion, bool]:
    """`body` written as the resource `query` matches; with no match, created
    (under its own id when it names one that is free); several matches are
    412. Returns the version and whether it was created."""
    service.require_writable(resource_type)
    with writing(service.engine, connection) as session:
        target = update_target(service, resource_type, body, query, base, preconditions, session, authorize_search)
        if target is None:
            return interactions.create(service, resource_type, body, session), True
        return interactions.update(  # its caller checked the right to create
            service, resource_type, target, {**body, "id": target}, preconditions, session, may_create=True
        )


def patch_where(
    service: FhirService, resource_type: str, patch: Patch, query: str, base: str,
    preconditions: Preconditions | None, authorize_search: Callable[[SearchRequest], None],
    connection: Connection | None = None, *, check: Callable[[dict[str, Any]], None] = lambda _: None,
) -> StoredVersion:
    """The one resource `query` matches, patched; none is 404 (a patch has
    nothing to start from, so unlike an update it never creates), several 412."""
    service.require_writable(resource_type)
    with writing(service.engine, connection) as session:
        match = patch_target(service, resource_type, query, base, session, authorize_search)
        return interactions.patch(
            service, resource_type, match, patch, preconditions, base, session, check=check
        )


def patch_target(
    service: FhirService, resource_type: str, query: str, base: str, connection: Connection,
    authorize_search: Callable[[SearchRequest], None],
) -> str:
    """The id of the one resource a conditional patch reaches: none is 404 (a
    patch has nothing to start from, so unlike an update it never creates)."""
    match = the_match(service, resource_type, query, base, connection, authorize_search)
    if match is None:
        raise ResourceNotFound(f"{resource_type}?{query[:100]} matches no {resource_type} to patch")
    return match


def update_target(
    service: FhirService, resource_type: str, body: Any, query: str, base: str, preconditions: Preconditions | None,
    connection: Connection, authorize_search: Callable[[SearchRequest], None],
) -> str | None:
    """The id a conditional update writes: the one match; with none, the
    body's id if that is free (409 if it is taken), or None for a create
    under an id the server assigns. With none, If-Match cannot hold (412):
    it names a version of something that is not there; If-None-Match does."""
    if not isinstance(body, dict):
        raise InvalidRequest(f"the body of a conditional update must be a {resource_type}")
    named = body.get("id")
    if named is not None and not isinstance(named, str):
        raise InvalidRequest(f"the {resource_type}'s id must be a string")
    match = the_match(service, resource_type, query, base, connection, authorize_search)
    if match is not None:
        if named not in (None, match):
            raise InvalidRequest(f"the body names {resource_type}/{named}, the condition matches {match}")
        return match
    if preconditions is not None:
        preconditions.require(f"what {resource_type}?{query[:100]} matches", None)
    if named is None:
        return None
    if _exists(service, resource_type, named, connection):
        raise ResourceConflict(f"{resource_type}/{named} exists, and the condition does not match it")
    return named


def delete_where(
    service: FhirService, resource_type: str, query: str, base: str, preconditions: Preconditions | None,
    authorize_search: Callable[[SearchRequest], None], connection: Connection | None = None,
) -> StoredVersion | None:
    """The one resource `query` matches, deleted; None when it matches
    nothing, which R4 treats as an ordinary delete of nothing. Several
    matches are 412: this server deletes one resource at a time
    (CapabilityStatement conditionalDelete `single`)."""
    service.require_writable(resource_type)
    with writing(service.engine, connection) as session:
        match = the_match(service, resource_type, query, base, session, authorize_search)
        if match is None:
            if preconditions is not None:
                preconditions.require(f"what {resource_type}?{query[:100]} matches", None)
            return None
        return interactions.delete(service, resource_type, match, preconditions, session)


def the_match(
    service: FhirService, resource_type: str, query: str, base: str, connection: Connection,
    authorize_search: Callable[[SearchRequest], None],
) -> str | None:
    """The id of the one resource `query` matches, None for none, 412 for
    several; writers with one condition take turns (`serialize_condition`)."""
    serialize_condition(connection, resource_type, query)
    found = matching_ids(service, resource_type, query, base, connection, authorize_search)
    if len(found) > 1:
        raise VersionConflict(f"{resource_type}?{query[:100]} matches more than one {resource_type}")
    return found[0] if found else None


def _exists(service: FhirService, resource_type: str, resource_id: str, connection: Connection) -> bool:
    try:
        return not service.store.read(resource_type, resource_id, connection).deleted
    except ResourceNotFound:
        return False


def condition_key(resource_type: str, query: str) -> str:
    """One text for one condition, however its parameters are ordered."""
    return f"{resource_type}?{sorted(pair for pair in form_pairs(query) if pair[0] not in _SET_ASIDE)}"


def serialize_condition(connection: Connection, resource_type: str, query: str) -> None:
    """Two writers with one condition, at once, must not both find nothing and
    both create (PostgreSQL; SQLite writers hold the database's write lock).
    A writer with several conditions takes them in `condition_key` order."""
    advisory_locks(connection, [f"fhir-condition:{condition_key(resource_type, query)}"])
