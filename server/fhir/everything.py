"""`Patient/[id]/$everything` (R4 OperationDefinition Patient-everything):
the patient and every resource in its compartment, in pages of a searchset.

The Patient comes first, then the rest in the order they were written. Pages
are found by keyset from the last row of the one before, as a search's are,
so resources written while a client pages neither shift nor repeat what it sees.
"""

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import Integer, and_, case, false, func, or_, select, union_all

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
from server.fhir.search import Row, SearchPage
from server.fhir.search_sql import RESOURCES, SortPart, after, condition_clause, order_by, where_current
from server.fhir.service import FhirService
from server.tables import fhir_resources

_MEMBERS = fhir_resources.alias("m")
_OPERATION = "Patient/$everything"


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
    matching = _matching(request, types)
    parts = [SortPart(case((RESOURCES.c.resource_type == "Patient", 0), else_=1).cast(Integer), False),
             SortPart(RESOURCES.c.id, False)]
    statement = (
        select(RESOURCES.c.id, RESOURCES.c.resource_type, RESOURCES.c.resource_id, RESOURCES.c.resource_json,
               parts[0].expression.label("k0"))
        .where(*matching)
        .order_by(*order_by(parts, False))
        .limit(request.count + 1)
    )
    position = state.get("position")
    if position is not None:
        if not isinstance(position, list) or len(position) != len(parts):
            raise InvalidRequest("the paging cursor (_cursor) does not belong to this $everything")
        statement = statement.where(after(parts, position, False))
    with reading(service.engine) as session:
        service.store.read("Patient", patient_id, session)  # 404 or 410 for a patient not here
        fetched = session.execute(statement).all() if request.count else []
        total = state.get("total") if cursor_token is not None else session.execute(
            select(func.count()).select_from(RESOURCES).where(*matching)
        ).scalar_one()
    has_more = len(fetched) > request.count
    fetched = fetched[: request.count]
    rows = [Row(row.id, row.resource_type, row.resource_id, row.resource_json) for row in fetched]
    links = _links(service, request, base, cursor_token, total,
                   [fetched[-1].k0, fetched[-1].id] if has_more and fetched else None)
    return SearchPage((Summary.FALSE, ()), rows, [], total, links, warnings)


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


def _matching(request: EverythingRequest, types: list[str]) -> list[Any]:
    """The conditions on RESOURCES of the rows in the answer. Each type's
    members come from its own indexed lookup, united: one OR over the types
    would make the databases read every resource to test it."""
    members = []
    for resource_type in types:
        if resource_type == "Patient":
            members.append(select(_MEMBERS.c.id).where(
                where_current(_MEMBERS, "Patient"), _MEMBERS.c.resource_id == request.patient_id
            ))
            continue
        member = [(COMPARTMENT_PARAMETERS[resource_type], f"Patient/{request.patient_id}")]
        clauses = [condition_clause(condition, _MEMBERS)
                   for condition in parse_search(resource_type, member, strict=True).conditions]
        window = _care_window(request, resource_type)
        if window is not None:
            clauses.append(window)
        members.append(select(_MEMBERS.c.id).where(where_current(_MEMBERS, resource_type), *clauses))
    if not members:
        return [false()]
    matching = [RESOURCES.c.deleted == false(), RESOURCES.c.id.in_(union_all(*members))]
    if request.since is not None:
        since = parse_search("Patient", [("_lastUpdated", f"ge{request.since}")], strict=True).conditions
        matching += [condition_clause(condition, RESOURCES) for condition in since]
    return matching


def _care_window(request: EverythingRequest, resource_type: str) -> Any:
    """`start` and `end` on the type's care date; a resource without one is
    kept, since nothing says it lies outside the window."""
    care = CARE_DATES[resource_type]
    bounds = [(care, f"ge{request.start}")] if request.start is not None else []
    bounds += [(care, f"le{request.end}")] if request.end is not None else []
    if not bounds:
        return None
    within = parse_search(resource_type, bounds, strict=True).conditions
    undated = parse_search(resource_type, [(f"{care}:missing", "true")], strict=True).conditions
    return or_(*(condition_clause(condition, _MEMBERS) for condition in undated),
               and_(*(condition_clause(condition, _MEMBERS) for condition in within)))


def _links(
    service: FhirService, request: EverythingRequest, base: str, cursor_token: str | None, total: int | None,
    next_position: list[Any] | None,
) -> dict[str, str]:
    url = f"{base}/Patient/{request.patient_id}/$everything"
    common = {"operation": _OPERATION, "patient": request.patient_id,
              "params": [list(pair) for pair in request.parameters], "total": total}

    def cursor_url(**position: Any) -> str:
        return f"{url}?{urlencode({'_cursor': service.cursors.encode({**common, **position})})}"

    if cursor_token is not None:
        self_url = f"{url}?{urlencode({'_cursor': cursor_token})}"
    else:
        self_url = f"{url}?{urlencode(request.parameters)}" if request.parameters else url
    links = {"self": self_url, "first": cursor_url()}
    if next_position is not None:
        links["next"] = cursor_url(position=next_position)
    return links
