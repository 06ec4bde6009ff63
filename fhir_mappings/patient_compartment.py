"""The FHIR R4 Patient compartment (compartmentdefinition-patient.html):
which patients a resource or a search is about (the audit trail names the
patient of each access), the compartment searches `Patient/[id]/[type]`,
and what `Patient/[id]/$everything` (R4 OperationDefinition
Patient-everything) was asked for."""

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import orjson

from fhir_mappings.date_ranges import require_instant
from fhir_mappings.errors import InvalidRequest
from fhir_mappings.search_query import TRANSPORT_PARAMETERS, parse_count, parse_search
from fhir_mappings.search_values import split_reference

# R4's Patient compartment for the types this server holds, each with the
# search parameter that finds its members (compartmentdefinition-patient.html).
# R4 puts a DiagnosticReport or an Observation in it by `subject` (and
# `performer`, which nothing here carries: the server writes its Observations
# itself), the other four by `patient`; each of those types has a `patient`
# parameter, its patient reference restricted to Patients, which finds the
# same members. A Group is in it by `member` (Group.member.entity), whether
# the membership holds now or not: R4 says a Group is in the compartment of
# the Patients it names, and the `member` parameter finds them all. Device,
# Endpoint, Task and Subscription are in no patient's compartment; Patient.link,
# R4's way into it for a Patient, nothing here has.
COMPARTMENT_PARAMETERS = MappingProxyType({
    "ImagingStudy": "patient",
    "DiagnosticReport": "patient",
    "Observation": "patient",
    "Provenance": "patient",
    "AuditEvent": "patient",
    "Group": "member",
})
COMPARTMENT_TYPES = tuple(COMPARTMENT_PARAMETERS)

# The date `start` and `end` of $everything look at: when the care happened,
# or for a record of an event (Provenance, AuditEvent), when it was recorded.
# A Group has no date of care (nor R4's Group-level dates): it is kept whatever
# the window, as a resource without its care date is.
CARE_DATES = MappingProxyType({
    "ImagingStudy": "started",
    "DiagnosticReport": "date",
    "Observation": "date",
    "Provenance": "recorded",
    "AuditEvent": "date",
})

# What $everything may return, in the order of its pages' types.
EVERYTHING_TYPES = ("Patient", *COMPARTMENT_TYPES)
_EVERYTHING_PARAMETERS = frozenset(("start", "end", "_since", "_type", "_count"))

# Where this server's resources name their patient: the elements of R4's
# Patient compartment for its types (Provenance.target, AuditEvent.entity.what
# and Group.member.entity among them), and Task.for, a job's patient, though
# R4 leaves Task out of it.
_PATIENT_PATHS = (("subject",), ("patient",), ("for",), ("beneficiary",), ("target",), ("entity", "what"),
                  ("member", "entity"))
# The search parameters of those elements: one that may point at other types
# names a patient only with the type said (`subject=Patient/1`, `subject:Patient=1`).
_PATIENT_PARAMETERS = frozenset(("patient", "subject", "target", "entity", "member"))


def patients_of(resource: dict[str, Any]) -> list[str]:
    """The Patient ids `resource` belongs to (itself, for a Patient; every
    member, for a Group), each once, in the order the resource names them."""
    if resource.get("resourceType") == "Patient":
        return [resource["id"]] if isinstance(resource.get("id"), str) else []
    found = []
    for path in _PATIENT_PATHS:
        for reference in _nodes(resource, path):
            if isinstance(reference, dict) and isinstance(reference.get("reference"), str):
                target = split_reference(reference["reference"])
                if target is not None and target[0] == "Patient":
                    found.append(target[1])
    return list(dict.fromkeys(found))


def _nodes(resource: dict[str, Any], path: tuple[str, ...]) -> list[Any]:
    """What `path` reaches in `resource`, through lists on the way."""
    nodes: list[Any] = [resource]
    for name in path:
        values = [node.get(name) for node in nodes if isinstance(node, dict)]
        nodes = [item for value in values for item in (value if isinstance(value, list) else [value])]
    return nodes


def patients_of_json(body: bytes) -> list[str]:
    """The Patient ids of a stored resource, from its JSON (plain orjson: references hold no decimals to keep)."""
    return patients_of(orjson.loads(body))


def patients_searched(resource_type: str, pairs: list[tuple[str, str]]) -> list[str]:
    """The Patient ids a search names: `patient=`, and `subject=`, `target=`,
    `entity=` or `member=` of a Patient, and `_id=` on Patient itself; within a reverse
    chain (`_has:[type]:[reference]:[parameter]`), those its parameter, one of
    [type]'s, names."""
    found = []
    for name, value in pairs:
        base, _, modifier = name.partition(":")
        if base == "_has":
            _, source_type, _, parameter = (name.split(":", 3) + ["", "", ""])[:4]
            found += patients_searched(source_type, [(parameter, value)])
            continue
        for item in (part.strip() for part in value.split(",")):
            if not item:
                continue
            if base == "_id" and resource_type == "Patient" and not modifier:
                found.append(item)
            elif base in _PATIENT_PARAMETERS and modifier in ("", "Patient"):
                target = split_reference(item) if "/" in item else ("Patient", item)
                if target is not None and target[0] == "Patient" and (base == "patient" or "/" in item or modifier):
                    found.append(target[1])
    return found


def compartment_parameter(resource_type: str, patient_id: str) -> tuple[str, str]:
    """What makes a search of `resource_type` one within the patient's
    compartment (`Patient/[patient_id]/[resource_type]`, R4 http.html#vsearch)."""
    if resource_type not in COMPARTMENT_TYPES:
        raise InvalidRequest(
            f"{resource_type} is not in a patient's compartment here; compartment searches take "
            f"{', '.join(COMPARTMENT_TYPES)}"
        )
    return COMPARTMENT_PARAMETERS[resource_type], f"Patient/{patient_id}"


@dataclass(frozen=True)
class EverythingRequest:
    """What `Patient/[id]/$everything` was asked for, its values checked."""

    patient_id: str
    # The types the client named with `_type`; None: every type of EVERYTHING_TYPES.
    named_types: tuple[str, ...] | None
    start: str | None
    end: str | None
    since: str | None
    count: int
    # What was understood, in the order given: the paging cursor carries it.
    parameters: tuple[tuple[str, str], ...]
    ignored: tuple[str, ...] = ()


def parse_everything(patient_id: str, pairs: list[tuple[str, str]], strict: bool = False) -> EverythingRequest:
    values: dict[str, str] = {}
    used: list[tuple[str, str]] = []
    ignored: list[str] = []
    named: list[str] = []
    for name, value in pairs:
        if name in TRANSPORT_PARAMETERS:
            continue
        if name not in _EVERYTHING_PARAMETERS:
            if strict:
                raise InvalidRequest(f"$everything takes {', '.join(sorted(_EVERYTHING_PARAMETERS))}, not {name!r}")
            ignored.append(name)
            continue
        used.append((name, value))
        if name == "_type":
            named += [item.strip() for item in value.split(",") if item.strip()]
        elif name in values:
            raise InvalidRequest(f"{name} may be given once")
        else:
            values[name] = value
    unknown = [item for item in named if item not in EVERYTHING_TYPES]
    if unknown:
        raise InvalidRequest(
            f"_type names {unknown[0][:64]!r}, which is not in a patient's compartment here; "
            f"$everything returns {', '.join(EVERYTHING_TYPES)}"
        )
    for name in ("start", "end"):
        if name in values:
            _check_date(name, values[name], "ImagingStudy", "started")
    if "_since" in values:  # an instant (R4 patient-operation-everything), as history's `_since`
        require_instant("_since", values["_since"])
    return EverythingRequest(
        patient_id=patient_id,
        named_types=tuple(dict.fromkeys(named)) if named else None,
        start=values.get("start"),
        end=values.get("end"),
        since=values.get("_since"),
        count=parse_count(values.get("_count")),
        parameters=tuple(used),
        ignored=tuple(ignored),
    )


def _check_date(name: str, value: str, resource_type: str, parameter: str) -> None:
    """A date as a search takes one, without a prefix or a list: the search's
    own parser judges it, so that $everything and search agree on dates."""
    if not value[:1].isdigit() or "," in value:
        raise InvalidRequest(f"{name} must be a date such as 2024-05-01, not {value[:40]!r}")
    try:
        parse_search(resource_type, [(parameter, f"ge{value}")], strict=True)
    except InvalidRequest as error:
        raise InvalidRequest(f"{name}: {error}") from None
