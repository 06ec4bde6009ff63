"""Instance, type and system history (FHIR R4 http.html#history): newest
first, paged with the same signed cursors as search."""

import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode

import orjson
from sqlalchemy import Connection, and_, or_, select, tuple_

from fhir_mappings.date_ranges import instant_text, require_instant
from fhir_mappings.errors import Forbidden, InvalidRequest, ResourceNotFound
from fhir_mappings.patient_compartment import patients_of_json
from fhir_mappings.resources import require_id
from fhir_mappings.search_query import parse_count
from server.audit.middleware import note_patients
from server.db import reading
from server.fhir.open_transactions import settled_before
from server.fhir.service import FhirService
from server.tables import fhir_resources, fhir_versions

_STATUS = {"POST": "201 Created", "PUT": "200 OK", "DELETE": "204 No Content"}
_CREATED = "201 Created"


# History parameters (R4 http.html#history) this server does not take: ignoring
# them would answer a different question than the one asked.
_UNSUPPORTED = ("_at", "_list")
_TAKEN = ("_count", "_since", "_cursor")
# How long a type history waits for the transactions open when it was asked for.
_SETTLING_SECONDS = 1.0


def history(
    service: FhirService, resource_type: str, resource_id: str | None, pairs: list[tuple[str, str]], base: str,
    link_parameters: Sequence[tuple[str, str]] = (), connection: Connection | None = None,
) -> bytes:
    """`link_parameters` (`_format`, `_pretty`) are kept in the Bundle's links.
    `connection`: a transaction Bundle's, whose history is what its own
    transaction sees (it waits for no other: they could be waiting for it)."""
    service.require_type(resource_type)
    if resource_type not in service.store.history_types:
        raise ResourceNotFound(f"{resource_type} keeps only its current version; it has no history")
    if resource_id is not None:
        require_id(resource_id)
    return _history(service, resource_type, (resource_type,), resource_id, pairs, base, link_parameters, connection)


def system_history(
    service: FhirService, may_search: Callable[[str], bool], pairs: list[tuple[str, str]], base: str,
    link_parameters: Sequence[tuple[str, str]] = (), connection: Connection | None = None,
) -> bytes:
    """The history of every type that keeps one and that the caller may
    search (`may_search`), as one: a type's history lists all of it, which a
    search right grants (R4 gives no narrower one). 403 when it may search
    none of them."""
    types = tuple(sorted(name for name in service.store.history_types if may_search(name)))
    if not types:
        raise Forbidden("the whole-system history lists the types the caller may search, and it may search none"
                        " that keeps a history")
    return _history(service, None, types, None, pairs, base, link_parameters, connection)


def _history(
    service: FhirService, resource_type: str | None, types: tuple[str, ...], resource_id: str | None,
    pairs: list[tuple[str, str]], base: str, link_parameters: Sequence[tuple[str, str]],
    connection: Connection | None,
) -> bytes:
    """`resource_type`: the type of an instance or type history, None for the
    system's; `types`: the types whose versions it lists."""
    names = [name for name, _ in pairs]
    for name in _UNSUPPORTED:
        if name in names:
            raise InvalidRequest(f"{name} is not supported in a history; _since and _count are")
    for name in _TAKEN:
        if names.count(name) > 1:
            raise InvalidRequest(f"{name} may be given once")
    parameters = dict(pairs)
    state: dict[str, Any] = {}
    if "_cursor" in parameters:
        state = service.cursors.decode(parameters["_cursor"])
        if state.get("history") != [resource_type, resource_id]:  # [None, None]: the system's
            raise InvalidRequest("the paging cursor (_cursor) does not belong to this history")
        parameters = state["params"]
    asked_at = time.time_ns() // 1000
    count = max(1, parse_count(parameters.get("_count")))
    since = require_instant("_since", parameters["_since"]) if "_since" in parameters else None
    statement = (
        select(fhir_versions)
        .where(fhir_versions.c.resource_type.in_(types),
               *service.visibility.where(fhir_versions.c.resource_type, fhir_versions.c.resource_id, resource_type))
        .order_by(fhir_versions.c.last_updated.desc(), fhir_versions.c.id.desc())
        .limit(count + 1)
    )
    if resource_id is not None:
        statement = statement.where(fhir_versions.c.resource_id == resource_id)
    if since is not None:
        statement = statement.where(fhir_versions.c.last_updated >= since)
    position = state.get("position")
    if position is not None:
        last_updated, pk = position
        statement = statement.where(
            or_(
                fhir_versions.c.last_updated < last_updated,
                and_(fhir_versions.c.last_updated == last_updated, fhir_versions.c.id < pk),
            )
        )
    in_transaction = connection is not None
    with reading(service.engine, connection) as connection:
        if resource_id is None and not in_transaction:
            # The transactions open when it was asked for are waited for; it goes no further than the oldest left.
            horizon = settled_before(connection, asked_at, _SETTLING_SECONDS)
            if horizon is not None:
                statement = statement.where(fhir_versions.c.last_updated < horizon)
        rows = connection.execute(statement).all()
        if not rows and resource_id is not None and position is None:
            exists = connection.execute(
                select(fhir_resources.c.id).where(
                    fhir_resources.c.resource_type == resource_type, fhir_resources.c.resource_id == resource_id,
                    *service.visibility.where(fhir_resources.c.resource_type, fhir_resources.c.resource_id,
                                              resource_type),
                )
            ).first()
            if exists is None:
                raise ResourceNotFound(f"{resource_type}/{resource_id} is not known")
        more = len(rows) > count
        rows = rows[:count]
        recreated = _recreated(connection, rows)
    # Where the next page starts, whether or not this one shows its last version.
    following = [rows[-1].last_updated, rows[-1].id] if more else None
    rows = [row for row in rows if service.visibility.shows_version(row.resource_type, row.resource_json)]
    # The bodies a history returns are those of a vread: its audit names their patients.
    note_patients(patient for row in rows if row.resource_json for patient in patients_of_json(row.resource_json))
    path = "/".join((base, *(part for part in (resource_type, resource_id) if part), "_history"))
    kept = {name: value for name, value in parameters.items() if name in ("_count", "_since")}
    self_query = urlencode([*kept.items(), *link_parameters])
    links = [{"relation": "self", "url": f"{path}?{self_query}" if self_query else path}]
    if more:
        token = service.cursors.encode({"history": [resource_type, resource_id], "params": kept, "position": following})
        links.append({"relation": "next", "url": f"{path}?{urlencode([('_cursor', token), *link_parameters])}"})
    head = orjson.dumps({"resourceType": "Bundle", "type": "history", "link": links})
    entries = [_entry(base, row, row.id in recreated) for row in rows]
    if not entries:
        return head
    return head[:-1] + b',"entry":[' + b",".join(entries) + b"]}"


def _recreated(connection: Connection, rows: Sequence[Any]) -> set[int]:
    """The pks of the PUT versions among `rows` that followed a deletion: those
    created the resource anew, as a PUT of version 1 did (update as create)."""
    following = {(row.resource_type, row.resource_id, row.version_id - 1): row.id
                 for row in rows if row.method == "PUT" and row.version_id > 1}
    if not following:
        return set()
    deletions = connection.execute(
        select(fhir_versions.c.resource_type, fhir_versions.c.resource_id, fhir_versions.c.version_id).where(
            fhir_versions.c.method == "DELETE",
            tuple_(fhir_versions.c.resource_type, fhir_versions.c.resource_id, fhir_versions.c.version_id).in_(
                list(following)
            ),
        )
    ).all()
    return {following[tuple(deletion)] for deletion in deletions}


def _entry(base: str, row: Any, recreated: bool) -> bytes:
    entry: dict[str, Any] = {"fullUrl": f"{base}/{row.resource_type}/{row.resource_id}"}
    url = row.resource_type if row.method == "POST" else f"{row.resource_type}/{row.resource_id}"
    entry["request"] = {"method": row.method, "url": url}
    entry["response"] = {
        "status": _CREATED if row.version_id == 1 or recreated else _STATUS[row.method],
        "etag": f'W/"{row.version_id}"',
        "lastModified": instant_text(row.last_updated),
    }
    encoded = orjson.dumps(entry)
    if row.resource_json is None:
        return encoded
    return encoded[:-1] + b',"resource":' + row.resource_json + b"}"
