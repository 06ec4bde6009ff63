"""FHIR Bulk Data Access v2.0.0 `$export` (hl7.org/fhir/uv/bulkdata/export.html):
what a kick-off asks for, and the manifest a completed export answers with.

Pure: the server decides which types a caller may have and writes the files.
"""

import re
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import parse_qsl

from fhir_mappings.date_ranges import require_instant
from fhir_mappings.errors import InvalidRequest
from fhir_mappings.patient_compartment import EVERYTHING_TYPES
from fhir_mappings.resources import require_id
from fhir_mappings.search_query import RESULT_PARAMETERS, TRANSPORT_PARAMETERS, SearchRequest, parse_search
from fhir_mappings.search_values import split_reference

# export.html#query-parameters: the NDJSON names a server must accept for `_outputFormat`.
OUTPUT_FORMATS = frozenset(("application/fhir+ndjson", "application/ndjson", "ndjson"))
NDJSON = "application/fhir+ndjson"
# Parameters of the IG this server does not carry out; refused unless the
# client prefers lenient handling, as export.html#query-parameters allows.
_NOT_SUPPORTED = frozenset(("_elements", "includeAssociatedData"))
_TAKEN = frozenset(("_outputFormat", "_since", "_type", "_typeFilter", "patient"))
_REPEATABLE = frozenset(("_type", "_typeFilter"))
# Where a comma-separated `_typeFilter` starts its next query: before `[type]?`,
# so that a comma within a query (a search's OR) stays in it.
_NEXT_QUERY = re.compile(r",(?=[A-Z][A-Za-z]*\?)")


class Level(Enum):
    SYSTEM = "system"  # [base]/$export: every resource the caller may read
    PATIENT = "patient"  # [base]/Patient/$export: the Patients and their compartments
    GROUP = "group"  # [base]/Group/[id]/$export: the Group, and its member Patients and their compartments


def level_types(level: Level, supported_types: frozenset[str]) -> tuple[str, ...]:
    """What an export of the level may hold, in the order it writes them. A
    patient's compartment holds the Groups that name it (R4, by `member`): a
    Patient-level export has them, and a Group-level one its own Group too."""
    if level is Level.SYSTEM:
        return tuple(sorted(supported_types))
    return EVERYTHING_TYPES


@dataclass(frozen=True)
class ExportRequest:
    level: Level
    types: tuple[str, ...] | None  # `_type`, in the order named; None: every type the level holds
    since: int | None  # microseconds: resources changed after it
    # The `patient` parameter of a POST (a Group-level export: its members); None: every patient.
    patients: tuple[str, ...] | None
    type_filters: tuple[str, ...] = ()  # `_typeFilter` queries, `[type]?[query]`, each checked by `type_filter`
    ignored: tuple[str, ...] = ()  # unsupported parameters left aside at the client's lenient request
    group: str | None = None  # a Group-level export's Group id


def parse_export(
    level: Level, pairs: list[tuple[str, str]], patients: list[str] | None, supported_types: frozenset[str],
    lenient: bool,
) -> ExportRequest:
    """`pairs`: the parameters as name=value (a POST's Parameters too);
    `patients`: the `patient` references of a POST, already split out."""
    names = [name for name, _ in pairs]
    for name in _TAKEN - _REPEATABLE:
        if names.count(name) > 1:
            raise InvalidRequest(f"{name} may be given once")
    ignored: list[str] = []
    for name in names:
        if name in _TAKEN or name in TRANSPORT_PARAMETERS:
            continue
        if not lenient:
            why = "is not supported here" if name in _NOT_SUPPORTED else "is not a parameter of $export"
            raise InvalidRequest(f"{name[:64]!r} {why}; send Prefer: handling=lenient to have it ignored")
        ignored.append(name)
    # An unencoded "+" (application/fhir+ndjson, a zone +01:00) arrives as a space; no value here has one.
    values = {name: value.replace(" ", "+") for name, value in pairs}
    output_format = values.get("_outputFormat", NDJSON)
    if output_format not in OUTPUT_FORMATS:
        raise InvalidRequest(f"_outputFormat {output_format[:64]!r} is not offered; use {NDJSON}")
    if "patient" in values:
        raise InvalidRequest("patient is taken only in the Parameters of a POST kick-off (export.html)")
    if patients is not None and level is Level.SYSTEM:
        raise InvalidRequest("patient applies to a Patient-level or Group-level export, not to [base]/$export")
    types = _types(level, pairs, supported_types)
    filters = [query for name, value in pairs if name == "_typeFilter" for query in _NEXT_QUERY.split(value)]
    for query in filters:
        resource_type = type_filter(query, supported_types).resource_type
        if resource_type not in (types or level_types(level, supported_types)):
            raise InvalidRequest(f"_typeFilter {query[:64]!r} is of a type this export does not hold")
    return ExportRequest(
        level=level, types=types, since=require_instant("_since", values["_since"]) if "_since" in values else None,
        patients=tuple(dict.fromkeys(patients)) if patients is not None else None,
        type_filters=tuple(dict.fromkeys(filters)), ignored=tuple(ignored),
    )


def type_filter(query: str, supported_types: frozenset[str]) -> SearchRequest:
    """One `_typeFilter` query, `[type]?[search parameters]`: a search of that
    type, by its criteria alone (export.html#_typefilter-experimental-query-parameter).
    A resource of a type with filters is exported when it matches one of them."""
    resource_type, mark, parameters = query.partition("?")
    if not mark or resource_type not in supported_types:
        raise InvalidRequest(f"_typeFilter {query[:64]!r} is not [type]?[search parameters] of a type held here")
    pairs = parse_qsl(parameters, keep_blank_values=True)
    shaping = [name for name, _ in pairs if name.partition(":")[0] in RESULT_PARAMETERS | TRANSPORT_PARAMETERS]
    if shaping or not pairs:
        raise InvalidRequest(f"_typeFilter {query[:64]!r} must hold search criteria, and only those")
    return parse_search(resource_type, pairs, strict=True)


def _types(level: Level, pairs: list[tuple[str, str]], supported_types: frozenset[str]) -> tuple[str, ...] | None:
    named = [item.strip() for name, value in pairs if name == "_type" for item in value.split(",")]
    if not named:
        return None
    held = level_types(level, supported_types)
    for resource_type in named:
        if resource_type not in held:
            where = {Level.SYSTEM: "this server", Level.PATIENT: "a patient's compartment here",
                     Level.GROUP: "a Group or its patients' compartments here"}[level]
            raise InvalidRequest(f"_type names {resource_type[:64]!r}, which is not a resource type of {where}")
    return tuple(dict.fromkeys(named))


def patient_references(body: Any) -> tuple[list[str] | None, Any]:
    """The Patient ids of a POST's `patient` parameters (valueReference,
    export.html#query-parameters), and the Parameters without them."""
    if not isinstance(body, dict) or not isinstance(body.get("parameter"), list):
        return None, body
    ids, rest = [], []
    for parameter in body["parameter"]:
        if not (isinstance(parameter, dict) and parameter.get("name") == "patient"):
            rest.append(parameter)
            continue
        reference = parameter.get("valueReference")
        text = reference.get("reference") if isinstance(reference, dict) else None
        target = split_reference(text) if isinstance(text, str) else None
        if target is None or target[0] != "Patient":
            raise InvalidRequest("each patient parameter takes a valueReference to a Patient (Patient/[id])")
        ids.append(require_id(target[1]))
    return (ids or None), {**body, "parameter": rest}


def manifest(
    transaction_time: str, request_url: str, outputs: list[dict[str, Any]], errors: list[dict[str, Any]],
) -> dict[str, Any]:
    """The body of a completed export's status (export.html#response---complete-status):
    `outputs` and `errors` as {type, url, count}; the files need the token the
    export was started with, and nothing deleted is reported."""
    return {
        "transactionTime": transaction_time,
        "request": request_url,
        "requiresAccessToken": True,
        "output": outputs,
        "error": errors,
    }
