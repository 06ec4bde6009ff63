"""`Patient/[id]/$everything` (R4 OperationDefinition Patient-everything):
the patient and every resource in its compartment, in pages of a searchset.

The Patient comes first, then the rest in the order they were written. Pages
are found by keyset from the last row of the one before, as a search's are,
so resources written while a client pages neither shift nor repeat what it
sees. The members are read from the reference index in that order, from
the last row on and no further than a page, so a page costs about the same
for a patient with a million resources as for one with ten.
"""

from collections.abc import Callable
from typing import Any

from sqlalchemy import Integer, Select, and_, case, false, or_, select, union_all

from fhir_mappings.errors import Forbidden, InvalidRequest
from fhir_mappings.patient_compartment import (
    CARE_DATES,
    COMPARTMENT_PARAMETERS,
    EVERYTHING_TYPES,
    EverythingRequest,
    parse_everything,
)
from fhir_mappings.search_query import Summary, parse_search
from server.db import reading
from server.fhir.search import Row, SearchPage, page_links
from server.fhir.search_sql import RECORDS_OF_READING, RESOURCES, condition_clause, held_by, records_so_far
from server.fhir.service import FhirService
from server.fhir.visibility import Visibility
from server.tables import fhir_references, fhir_resources

_MEMBERS = fhir_resources.alias("m")
_OPERATION = "Patient/$everything"
# The Patient's rank, then the rest's: the order of the rows with their ids, and half a cursor's position.
_PATIENT_FIRST = case((RESOURCES.c.resource_type == "Patient", 0), else_=1).cast(Integer)


def everything(
    service: FhirService, patient_id: str, pairs: list[tuple[str, str]], base: str, strict: bool,
    may_search: Callable[[str], bool],
) -> SearchPage:
    """`may_search(type)`: whether the client may see resources of that type.
    Types named in `_type` that it may not see are refused; otherwise they are
    left out, and the Bundle says so."""
    cursor_token = next((value for name, value in pairs if name == "_cursor"), None)
    state: dict[str, Any] = {}
    if cursor_token is not None:
        state = service.cursors.decode(cursor_token)
        if state.get("operation") != _OPERATION or state.get("patient") != patient_id:
            raise InvalidRequest("the paging cursor (_cursor) does not belong to this $everything")
        pairs = [(str(name), str(value)) for name, value in state.get("params", [])]
    request = parse_everything(patient_id, pairs, strict=strict and cursor_token is None)
    types, warnings = _types_shown(request, may_search)
    warnings += [f"unknown parameter {name!r} was ignored" for name in request.ignored]
    position = state.get("position")  # signed with the cursor: as this function wrote it
    upto = state.get("upto")
    with reading(service.engine) as session:
        service.store.read("Patient", patient_id, session)  # 404 or 410 for a patient not here
        page = _page(request, types, position, service.visibility, upto)
        fetched = session.execute(page).all() if request.count else []
        has_more = len(fetched) > request.count
        if has_more and cursor_token is None:
            upto = records_so_far(session)
    fetched = fetched[: request.count]
    rows = [Row(row.id, row.resource_type, row.resource_id, row.resource_json) for row in fetched]
    last = [fetched[-1].k0, fetched[-1].id] if has_more and fetched else None
    # No total: counting a compartment of thousands (each access to the patient adds an AuditEvent to it)
    # costs many times a page, which reads no further than itself.
    links = _links(service, request, base, cursor_token, last, upto)
    return SearchPage((Summary.FALSE, ()), request.parameters, rows, [], None, links, warnings)


def _types_shown(request: EverythingRequest, may_search: Callable[[str], bool]) -> tuple[list[str], list[str]]:
    """The types this page shows, and what the Bundle says about the others."""
    if request.named_types is not None:
        refused = [resource_type for resource_type in request.named_types if not may_search(resource_type)]
        if refused:
            raise Forbidden(f"_type names {', '.join(refused)}, which this client may not search")
        return list(request.named_types), []
    shown = [resource_type for resource_type in EVERYTHING_TYPES if may_search(resource_type)]
    left_out = [resource_type for resource_type in EVERYTHING_TYPES if resource_type not in shown]
    warnings = [f"{', '.join(left_out)} left out: this client may not search them"] if left_out else []
    return shown, warnings


def _page(
    request: EverythingRequest, types: list[str], position: list[int] | None, visibility: Visibility,
    upto: int | None,
) -> Select[Any]:
    """The page after `position`: the Patient (on the first page), and a page
    of the compartment's members past the position, in the order of all;
    those of RECORDS_OF_READING no further than `upto`."""
    compartment = [resource_type for resource_type in types if resource_type != "Patient"]
    members = _members(request, compartment, position, visibility, upto)
    if "Patient" in types and position is None:  # the first row of all, so behind any cursor
        members.append(select(_MEMBERS.c.id).where(
            _MEMBERS.c.resource_type == "Patient", _MEMBERS.c.resource_id == request.patient_id,
            _MEMBERS.c.deleted == false(), *_changed_since(request, visibility),
        ))
    return (
        select(RESOURCES.c.id, RESOURCES.c.resource_type, RESOURCES.c.resource_id, RESOURCES.c.resource_json,
               _PATIENT_FIRST.label("k0"))
        .where(RESOURCES.c.id.in_(union_all(*members)) if members else false())
        .order_by(_PATIENT_FIRST, RESOURCES.c.id)
        .limit(request.count + 1)
    )


def _members(
    request: EverythingRequest, types: list[str], position: list[int] | None, visibility: Visibility,
    upto: int | None,
) -> list[Select[Any]]:
    """The ids of at most a page of the compartment's members of `types` that
    the request keeps, past `position`, for each parameter that finds them
    (`patient`, or `member` for a Group): the resources that name the patient,
    in the order they were written, from one range of the reference index
    (`ix_fhir_references_lookup`) each, which stops once a page is found."""
    by_parameter: dict[str, list[str]] = {}
    for resource_type in types:
        by_parameter.setdefault(COMPARTMENT_PARAMETERS[resource_type], []).append(resource_type)
    return [_members_by(parameter, request, of_parameter, position, visibility, upto)
            for parameter, of_parameter in by_parameter.items()]


def _members_by(
    parameter: str, request: EverythingRequest, types: list[str], position: list[int] | None,
    visibility: Visibility, upto: int | None,
) -> Select[Any]:
    kept = [and_(_MEMBERS.c.resource_type == resource_type, *_care_window(request, resource_type),
                 *([_MEMBERS.c.id <= upto] if upto is not None and resource_type in RECORDS_OF_READING else []))
            for resource_type in types]
    member = (
        select(fhir_references.c.resource_pk.label("id"))
        .distinct()
        .join(_MEMBERS, _MEMBERS.c.id == fhir_references.c.resource_pk)
        .where(
            fhir_references.c.param == parameter,
            fhir_references.c.target_id == request.patient_id,
            fhir_references.c.target_type == "Patient",
            _MEMBERS.c.deleted == false(),
            or_(*kept),
            *_changed_since(request, visibility),
            *visibility.where(_MEMBERS.c.resource_type, _MEMBERS.c.resource_id),
        )
        .order_by(fhir_references.c.resource_pk)
        .limit(request.count + 1)
    )
    if position is not None and position[0] == 1:  # past the Patient, and past this row among the rest
        member = member.where(fhir_references.c.resource_pk > position[1])
    return select(member.subquery().c.id)


def _changed_since(request: EverythingRequest, visibility: Visibility) -> list[Any]:
    if request.since is None:
        return []
    since = parse_search("Patient", [("_lastUpdated", f"ge{request.since}")], strict=True).conditions
    return [condition_clause(condition, _MEMBERS, visibility) for condition in since]


def _care_window(request: EverythingRequest, resource_type: str) -> list[Any]:
    """`start` and `end` on the type's care date; a resource without one is
    kept, since nothing says it lies outside the window, as is a type
    without one (Group)."""
    care = CARE_DATES.get(resource_type)
    if care is None:
        return []
    bounds = [(care, f"ge{request.start}")] if request.start is not None else []
    bounds += [(care, f"le{request.end}")] if request.end is not None else []
    if not bounds:
        return []
    within = parse_search(resource_type, bounds, strict=True).conditions
    [undated] = parse_search(resource_type, [(f"{care}:missing", "true")], strict=True).conditions
    return [or_(held_by(undated, _MEMBERS), and_(*(held_by(condition, _MEMBERS) for condition in within)))]


def _links(
    service: FhirService, request: EverythingRequest, base: str, cursor_token: str | None,
    next_position: list[int] | None, upto: int | None,
) -> dict[str, str]:
    search = {
        "operation": _OPERATION, "patient": request.patient_id, "params": [list(pair) for pair in request.parameters]
    }
    if upto is not None:
        search["upto"] = upto
    links, cursor_url = page_links(
        service.cursors, f"{base}/Patient/{request.patient_id}/$everything", search, request.parameters,
        request.count, cursor_token,
    )
    if next_position is not None:
        links["next"] = cursor_url(position=next_position)
    return links
