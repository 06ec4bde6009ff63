"""FHIR R4 (4.0.1) cases: the CapabilityStatement and whether it is true, the
RESTful read interactions, search with its paging, and errors. Every FHIR
JSON body that comes back is checked against the official R4 JSON schema
(`Session.fhir_resource`).

The cases read whatever resources the server holds (on MedAIFlow, those the
DICOMweb cases stored), found through the server's own CapabilityStatement.
They write only what a conforming server must refuse, and resources of
their own (FH-WRITE-01 to -09, FH-TRANS-01: Tasks with no focus, which
order nothing), which they delete again.
"""

import html
import json
import re
import secrets
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlparse
from xml.etree import ElementTree

import httpx

from conformance.case import CaseFailed, CaseSkipped, Registry
from conformance.session import Session

REGISTRY = Registry("fhir")
case = REGISTRY.case

FHIR_JSON = "application/fhir+json"
SUBSETTED = ("http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "SUBSETTED")
_PAGES_FOLLOWED = 60
# A value of each search parameter type that is valid syntax and matches little.
_PROBE_VALUES = {"token": "conformance-probe", "string": "conformance-probe", "date": "ge2000-01-01",
                 "reference": "Patient/conformance-probe", "quantity": "1", "number": "1",
                 "uri": "http://example.org/conformance-probe", "composite": None, "special": None}


def _get(session: Session, path: str, params: dict[str, str] | None = None, **headers: str) -> httpx.Response:
    return session.get(session.fhir(path), params=params, headers={"Accept": FHIR_JSON, **headers})


def _capability(session: Session) -> dict[str, Any]:
    if "capability_failure" in session.state:
        # Asked once: a server that did not answer is not waited for again by every case.
        raise CaseFailed(session.state["capability_failure"])
    if "capability" not in session.state:
        try:
            response = _get(session, "/metadata")
            session.expect_status(response, 200)
            session.state["capability"] = session.fhir_resource(response, "CapabilityStatement")
        except CaseFailed as failure:
            session.state["capability_failure"] = f"GET [base]/metadata: {failure}"
            raise
    return session.state["capability"]  # type: ignore[no-any-return]


def _resources(session: Session) -> list[dict[str, Any]]:
    return [resource for rest in _capability(session).get("rest", []) if rest.get("mode") == "server"
            for resource in rest.get("resource", [])]


def _interactions(resource: dict[str, Any]) -> set[str]:
    return {interaction.get("code") for interaction in resource.get("interaction", [])}


def _declaration(session: Session, resource_type: str) -> dict[str, Any]:
    """What the CapabilityStatement says of `resource_type` ({} when nothing)."""
    return next((resource for resource in _resources(session) if resource.get("type") == resource_type), {})


def _require_last_updated(session: Session, resource_type: str) -> None:
    """_lastUpdated is a parameter of every resource (search.html#all), yet a
    server need not support it: declared, or taken under strict handling (an
    unknown parameter is then 400, search.html#errors), or the case is skipped."""
    if any(parameter.get("name") == "_lastUpdated" for parameter in _declaration(session, resource_type).get("searchParam", [])):
        return
    response = _get(session, f"/{resource_type}", {"_lastUpdated": "gt2000-01-01", "_count": "1"}, Prefer="handling=strict")
    if response.status_code == 400:
        raise CaseSkipped(f"{resource_type} does not declare _lastUpdated and refuses it under strict handling")


def _searchable(session: Session, *interactions: str) -> list[dict[str, Any]]:
    """The declared types that can be searched and have `interactions`, less
    AuditEvent: an auditing server adds some with every request the suite
    makes, so what the suite reads of them would move under it."""
    needed = {"search-type", *interactions}
    return [resource for resource in _resources(session)
            if needed <= _interactions(resource) and resource["type"] != "AuditEvent"]


def _sample(session: Session) -> dict[str, Any]:
    """A resource the server holds, of a type it can search and read."""
    if "sample" in session.state:
        return session.state["sample"]  # type: ignore[no-any-return]
    for resource in _searchable(session, "read"):
        response = _get(session, f"/{resource['type']}", {"_count": "1"})
        # Refused credentials (or too few rights, or too many failed logins) leave nothing to judge:
        # that is the run's failure, not a reason to skip.
        session.expect(
            response.status_code not in (401, 403, 429),
            f"the server refused the suite's credentials ({response.status_code})",
        )
        if response.status_code != 200:
            continue
        entries = session.fhir_resource(response, "Bundle").get("entry", [])
        if entries and entries[0].get("resource", {}).get("id"):
            session.state["sample"] = entries[0]["resource"]
            return entries[0]["resource"]  # type: ignore[no-any-return]
    raise CaseSkipped("the server holds no resource of a type it declares readable and searchable")


def _refused(session: Session, response: httpx.Response, *statuses: int) -> None:
    """A refusal with the clause's status and an OperationOutcome. 401 and 403
    refuse the suite, not the request: they fail the run (as in `_sample`)."""
    session.expect(response.status_code not in (401, 403),
                   f"the server refused the suite's credentials ({response.status_code})")
    session.expect_status(response, *statuses)
    session.fhir_resource(response, "OperationOutcome")


def _bundle(session: Session, response: httpx.Response, kind: str) -> dict[str, Any]:
    """A 200 answer holding a Bundle of type `kind` (searchset, history, batch-response...)."""
    session.expect_status(response, 200)
    bundle = session.fhir_resource(response, "Bundle")
    session.expect(bundle.get("type") == kind, f"the answer is a {bundle.get('type')!r} Bundle, not a {kind}")
    return bundle


def _searchset(session: Session, response: httpx.Response) -> dict[str, Any]:
    return _bundle(session, response, "searchset")


# --- the CapabilityStatement ----------------------------------------------------
@case("FH-CAP-01", "FHIR R4 http.html#capabilities", "GET [base]/metadata: a valid CapabilityStatement for FHIR 4.0.1 in JSON")
def capability_statement(session: Session) -> None:
    capability = _capability(session)
    session.expect(capability.get("fhirVersion") == "4.0.1", f"fhirVersion is {capability.get('fhirVersion')!r}")
    session.expect(capability.get("kind") == "instance", f"kind is {capability.get('kind')!r}, not 'instance'")
    formats = capability.get("format", [])
    session.expect(any("json" in fmt for fmt in formats), f"JSON is not among the formats {formats}")


@case("FH-CAP-02", "FHIR R4 capabilitystatement.html (searchParam) / search.html", "Every declared search parameter is accepted in a search")
def declared_parameters_work(session: Session) -> None:
    refused = []
    for resource in _resources(session):
        if "search-type" not in _interactions(resource):
            continue
        for parameter in resource.get("searchParam", []):
            value = _PROBE_VALUES.get(parameter.get("type", ""))
            if value is None:
                continue
            response = _get(session, f"/{resource['type']}", {parameter["name"]: value, "_count": "1"},
                            Prefer="handling=strict")
            if response.status_code == 400 and parameter.get("type") == "token":
                # A token may take booleans alone (Patient.active), and a server may refuse other values.
                response = _get(session, f"/{resource['type']}", {parameter["name"]: "true", "_count": "1"},
                                Prefer="handling=strict")
            if response.status_code != 200:
                refused.append(f"{resource['type']}?{parameter['name']} ({response.status_code})")
            else:
                _searchset(session, response)
    session.expect(not refused, f"declared, yet refused: {refused}")


@case("FH-CAP-03", "FHIR R4 search.html#errors", "A parameter the server does not know, with Prefer: handling=strict: 400 with an OperationOutcome")
def unknown_parameter_is_refused(session: Session) -> None:
    sample = _sample(session)
    response = _get(session, f"/{sample['resourceType']}", {"conformance-no-such-parameter": "x"},
                    Prefer="handling=strict")
    session.expect_status(response, 400)
    session.fhir_resource(response, "OperationOutcome")


# --- read, vread, conditional read ----------------------------------------------
def _fetch(session: Session, resource_type: str, resource_id: str) -> tuple[dict[str, Any], httpx.Response]:
    """A read that must succeed: the resource, and the answer for its headers."""
    response = _get(session, f"/{resource_type}/{resource_id}")
    session.expect_status(response, 200)
    return session.fhir_resource(response, resource_type), response


def _read(session: Session) -> tuple[dict[str, Any], httpx.Response]:
    sample = _sample(session)
    return _fetch(session, sample["resourceType"], sample["id"])


@case("FH-READ-01", "FHIR R4 http.html#read / http.html#versioning", "Read: 200, the same id, an ETag W/\"versionId\" and Last-Modified")
def read(session: Session) -> None:
    sample = _sample(session)
    resource, response = _read(session)
    session.expect(resource.get("id") == sample["id"], f"read {sample['id']!r}, got id {resource.get('id')!r}")
    version = resource.get("meta", {}).get("versionId")
    etag = response.headers.get("etag")
    session.expect(version and etag == f'W/"{version}"', f"ETag is {etag!r} for meta.versionId {version!r}")
    session.expect(response.headers.get("last-modified"), "no Last-Modified header")


@case("FH-READ-02", "FHIR R4 http.html#vread", "Vread of the current version returns that version")
def vread(session: Session) -> None:
    if "vread" not in _interactions(_declaration(session, _sample(session)["resourceType"])):
        raise CaseSkipped(f"{_sample(session)['resourceType']} declares no vread")
    resource, _ = _read(session)
    version = resource.get("meta", {}).get("versionId")
    if not version:
        raise CaseSkipped("the resource has no meta.versionId")
    response = _get(session, f"/{resource['resourceType']}/{resource['id']}/_history/{version}")
    session.expect_status(response, 200)
    again = session.fhir_resource(response, resource["resourceType"])
    session.expect(again.get("meta", {}).get("versionId") == version, "vread answered another version")


@case("FH-READ-03", "FHIR R4 http.html#cread", "A read with If-None-Match of the current ETag: 304")
def conditional_read(session: Session) -> None:
    declared = _declaration(session, _sample(session)["resourceType"]).get("conditionalRead")
    if declared in (None, "not-supported"):
        raise CaseSkipped(f"{_sample(session)['resourceType']} declares no conditionalRead")
    resource, response = _read(session)
    etag = response.headers.get("etag")
    if not etag:
        raise CaseSkipped("no ETag to send back")
    again = _get(session, f"/{resource['resourceType']}/{resource['id']}", **{"If-None-Match": etag})
    session.expect_status(again, 304)
    session.expect(not again.content, "a 304 has no body")


@case("FH-READ-04", "FHIR R4 http.html#read", "Read of an id that does not exist: 404 with an OperationOutcome")
def read_unknown(session: Session) -> None:
    sample = _sample(session)
    response = _get(session, f"/{sample['resourceType']}/conformance-no-such-id")
    session.expect_status(response, 404)
    session.fhir_resource(response, "OperationOutcome")


@case("FH-FMT-01", "FHIR R4 http.html#mime-type", "Accept of a format not in the CapabilityStatement: 406 (or that format, when declared)")
def unsupported_format(session: Session) -> None:
    sample = _sample(session)
    xml_declared = any("xml" in fmt for fmt in _capability(session).get("format", []))
    response = session.get(session.fhir(f"/{sample['resourceType']}/{sample['id']}"),
                           headers={"Accept": "application/fhir+xml"})
    if xml_declared:
        session.expect_status(response, 200)
        session.expect("xml" in response.headers.get("content-type", ""), "XML was declared, asked for and not given")
    else:
        session.expect_status(response, 406)


@case("FH-ERR-01", "FHIR R4 http.html#create / operationoutcome.html", "A body that is not JSON: 400 (or 422) with an OperationOutcome")
def malformed_body(session: Session) -> None:
    creatable = [resource["type"] for resource in _resources(session) if "create" in _interactions(resource)]
    if not creatable:
        raise CaseSkipped("the server declares no create interaction")
    response = session.post(session.fhir(f"/{creatable[0]}"), content=b"{ not json",
                            headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON})
    _refused(session, response, 400, 422)


# --- search ------------------------------------------------------------------------
@case("FH-SEARCH-01", "FHIR R4 search.html#paging / bundle.html", "Paging: self and next links, parameters carried, no duplicates, no empty trailing page, total kept")
def paging(session: Session) -> None:
    sample = _sample(session)
    counting = _get(session, f"/{sample['resourceType']}", {"_summary": "count"})
    counted = _searchset(session, counting).get("total") if counting.status_code == 200 else None
    # Pages small enough that a server with no next link cannot pass, few enough to follow them all.
    size = max(2, -(-counted // (_PAGES_FOLLOWED - 10))) if isinstance(counted, int) else 2
    response = _get(session, f"/{sample['resourceType']}", {"_count": str(size), "_total": "accurate"})
    seen: list[str] = []
    pages = 0
    total = None
    while True:
        bundle = _searchset(session, response)
        pages += 1
        links = {link.get("relation"): link.get("url") for link in bundle.get("link", [])}
        session.expect("self" in links, f"page {pages} has no self link")
        entries = [entry for entry in bundle.get("entry", []) if entry.get("search", {}).get("mode", "match") == "match"]
        session.expect(entries or pages == 1, f"page {pages} is empty: a next link led to nothing")
        session.expect(len(entries) <= size, f"page {pages} holds {len(entries)} matches, above _count={size}")
        seen += [entry["resource"]["id"] for entry in entries]
        if bundle.get("total") is not None:
            session.expect(total is None or bundle["total"] == total, "Bundle.total changed between pages")
            total = bundle["total"]
        following = links.get("next")
        if following is None or pages >= _PAGES_FOLLOWED:
            break
        carried = parse_qs(urlparse(following).query)
        session.expect("_count" not in carried or carried["_count"] == [str(size)], "the next link changed _count")
        response = session.get(following, headers={"Accept": FHIR_JSON})
    session.expect(len(seen) == len(set(seen)), "a resource came back on two pages")
    expected = counted if isinstance(counted, int) else total
    if expected is None:
        raise CaseSkipped("neither _summary=count nor the pages state a total: how many pages to expect is unknown")
    session.expect(pages < _PAGES_FOLLOWED, f"{expected} matches took more than {_PAGES_FOLLOWED} pages of {size}")
    session.expect(total is None or total == expected, f"Bundle.total is {total}, _summary=count says {expected}")
    session.expect(len(seen) == expected, f"{expected} match, the pages (followed by their next links) held {len(seen)}")


@case("FH-SEARCH-02", "FHIR R4 search.html#summary", "_summary=count: a Bundle with a total and no entries")
def summary_count(session: Session) -> None:
    sample = _sample(session)
    bundle = _searchset(session, _get(session, f"/{sample['resourceType']}", {"_summary": "count"}))
    session.expect(isinstance(bundle.get("total"), int) and bundle["total"] >= 1, f"total is {bundle.get('total')!r}")
    session.expect(not bundle.get("entry"), "_summary=count returned entries")


# The top-level elements R4 makes mandatory (min 1, from each resource's page of the R4
# specification), which _elements may not leave out (search.html#elements); for choice
# elements ([x]) every name the choice can take.
_MANDATORY: dict[str, tuple[str, ...]] = {
    "Patient": (), "Practitioner": (), "Organization": (), "Device": (), "Specimen": (), "Location": (),
    "Task": ("status", "intent"),
    "Observation": ("status", "code"),
    "DiagnosticReport": ("status", "code"),
    "ImagingStudy": ("status", "subject"),
    "ServiceRequest": ("status", "intent", "subject"),
    "Encounter": ("status", "class"),
    "Condition": ("subject",),
    "Procedure": ("status", "subject"),
    "Basic": ("code",),
    "Endpoint": ("status", "connectionType", "payloadType", "address"),
    "AuditEvent": ("type", "recorded", "agent", "source"),
    "Provenance": ("target", "recorded", "agent"),
    "DocumentReference": ("status", "content"),
    "Media": ("status", "content"),
    "Binary": ("contentType",),
    "Composition": ("status", "type", "date", "author", "title"),
    "Subscription": ("status", "reason", "criteria", "channel"),
    "MedicationRequest": ("status", "intent", "subject", "medicationCodeableConcept", "medicationReference"),
}


@case("FH-SEARCH-03", "FHIR R4 search.html#elements", "_elements: only the elements asked for (and mandatory ones), marked SUBSETTED")
def elements(session: Session) -> None:
    sample = _sample(session)
    bundle = _searchset(session, _get(session, f"/{sample['resourceType']}", {"_id": sample["id"], "_elements": "id"}))
    [entry] = bundle.get("entry", []) or [None]
    session.expect(entry is not None, "_id with _elements found nothing")
    resource = entry["resource"]
    tags = {(tag.get("system"), tag.get("code")) for tag in resource.get("meta", {}).get("tag", [])}
    session.expect(SUBSETTED in tags, "the subsetted resource is not tagged SUBSETTED")
    allowed = {"resourceType", "id", "meta", *_MANDATORY.get(resource["resourceType"], ())}
    if resource["resourceType"] not in _MANDATORY:
        # Types the table lacks: a primitive may be mandatory (status...); anything else must be left out.
        allowed |= {key for key, value in resource.items() if isinstance(value, str | bool | int | float)}
    extra = sorted(set(resource) - allowed)
    session.expect(not extra, f"_elements=id, and elements neither asked for nor mandatory came back: {extra}")


@case("FH-SEARCH-04", "FHIR R4 search.html#prefix / search.html#lastUpdated", "_lastUpdated with prefixes: gt a past date finds resources, lt it finds none")
def last_updated_prefixes(session: Session) -> None:
    sample = _sample(session)
    _require_last_updated(session, sample["resourceType"])
    after = _searchset(session, _get(session, f"/{sample['resourceType']}", {"_lastUpdated": "gt2000-01-01", "_count": "1"}))
    before = _searchset(session, _get(session, f"/{sample['resourceType']}", {"_lastUpdated": "lt2000-01-01"}))
    session.expect(after.get("entry"), "_lastUpdated=gt2000-01-01 found nothing")
    session.expect(not before.get("entry"), "_lastUpdated=lt2000-01-01 found resources")


@case("FH-SEARCH-05", "FHIR R4 search.html#id", "_id finds exactly the resource")
def search_by_id(session: Session) -> None:
    sample = _sample(session)
    bundle = _searchset(session, _get(session, f"/{sample['resourceType']}", {"_id": sample["id"]}))
    ids = [entry["resource"]["id"] for entry in bundle.get("entry", [])]
    session.expect(ids == [sample["id"]], f"_id={sample['id']} found {ids}")


@case("FH-SEARCH-06", "FHIR R4 search.html#include", "_include: resources the matches reference come back with search.mode include")
def include(session: Session) -> None:
    tried = []
    for resource in _resources(session):
        for include_value in resource.get("searchInclude", []):
            if include_value == "*" or include_value.count(":") != 1:
                continue
            bundle = _searchset(session, _get(session, f"/{resource['type']}", {"_include": include_value, "_count": "5"}))
            entries = bundle.get("entry", [])
            matches = [entry["resource"] for entry in entries if entry.get("search", {}).get("mode") == "match"]
            included = [entry["resource"] for entry in entries if entry.get("search", {}).get("mode") == "include"]
            if not included:
                target = _resolvable_reference(session, matches, include_value.split(":")[1])
                session.expect(target is None, f"_include={include_value} brought in nothing, yet a match's "
                                               f"{include_value.split(':')[1]} is {target}, which reads back")
                tried.append(include_value)
                continue
            referenced = json.dumps(matches)
            strangers = [f"{item['resourceType']}/{item['id']}" for item in included
                         if not _is_referenced(f"{item['resourceType']}/{item['id']}", referenced)]
            session.expect(not strangers, f"_include={include_value} brought in resources no match references: {strangers}")
            return
    # Data without references cannot show whether _include works: that is no failure of the server.
    raise CaseSkipped(f"no declared _include brought anything in (tried {tried[:10]})")


def _resolvable_reference(session: Session, matches: list[dict[str, Any]], parameter: str) -> str | None:
    """A relative reference, held by a match in the element the parameter is
    named after (subject, based-on as basedOn...), that the server reads:
    what that _include must bring in. None when there is none."""
    element = re.sub(r"-(\w)", lambda found: found.group(1).upper(), parameter)
    for match in matches:
        values = match.get(element)
        for value in values if isinstance(values, list) else [values]:
            reference = value.get("reference") if isinstance(value, dict) else None
            if isinstance(reference, str) and re.fullmatch(r"[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}", reference):
                if _get(session, f"/{reference}").status_code == 200:
                    return reference
    return None


def _is_referenced(reference: str, matches_json: str) -> bool:
    """Relative or absolute, current or versioned."""
    return f'{reference}"' in matches_json or f"{reference}/_history/" in matches_json


@case("FH-CAP-04", "FHIR R4 http.html#create / capabilitystatement.html", "A type without a declared create interaction refuses a create (405 with an OperationOutcome)")
def undeclared_create_is_refused(session: Session) -> None:
    closed = [resource["type"] for resource in _resources(session) if "create" not in _interactions(resource)]
    if not closed:
        raise CaseSkipped("every type declares create")
    accepted = []
    for resource_type in closed[:10]:
        response = session.post(session.fhir(f"/{resource_type}"), json={"resourceType": resource_type},
                                headers={"Accept": FHIR_JSON})
        if response.status_code == 403 and _may_create(session):
            # Refused to credentials that can create: a type no one may create (AuditEvent, written by
            # the server), which 403 states as truly as 405.
            session.fhir_resource(response, "OperationOutcome")
            continue
        try:
            _refused(session, response, 405)
        except CaseFailed as failure:
            accepted.append(f"{resource_type} ({response.status_code}: {failure})")
            if response.status_code < 300:
                _delete_created(session, resource_type, response)
    session.expect(not accepted, f"creates the CapabilityStatement does not declare were not refused: {accepted}")


def _read_patient(session: Session, patient_id: str) -> dict[str, Any]:
    return _fetch(session, "Patient", patient_id)[0]


def _may_create(session: Session) -> bool:
    """Whether the suite's credentials may create at all: its probe, created and deleted."""
    if "may_create" not in session.state:
        try:
            chosen = _probe_type(session)
        except CaseSkipped:
            session.state["may_create"] = False
        else:
            created = session.post(session.fhir(f"/{chosen}"), json={"resourceType": chosen, **_PROBES[chosen]},
                                   headers={"Accept": FHIR_JSON, "Content-Type": FHIR_JSON})
            session.state["may_create"] = created.status_code == 201
            _delete_created(session, chosen, created)
    return bool(session.state["may_create"])


def _patient_family(session: Session) -> tuple[str, str]:
    """(id, family name) of a Patient the server holds."""
    declared = {resource["type"] for resource in _resources(session) if "search-type" in _interactions(resource)}
    if "Patient" not in declared:
        raise CaseSkipped("the server declares no Patient search")
    bundle = _searchset(session, _get(session, "/Patient", {"_count": "20"}))
    for entry in bundle.get("entry", []):
        for name in entry["resource"].get("name", []):
            family = name.get("family")
            if isinstance(family, str) and len(family) >= 4 and family.upper() != family.lower():
                return entry["resource"]["id"], family
    raise CaseSkipped("no Patient with a family name of four letters or more")


@case("FH-SEARCH-07", "FHIR R4 search.html#string", "String search: a prefix in any case matches, :exact is case-sensitive, :contains matches inside")
def string_modifiers(session: Session) -> None:
    patient_id, family = _patient_family(session)

    def finds(parameter: str, value: str) -> bool:
        bundle = _searchset(session, _get(session, "/Patient", {"_id": patient_id, parameter: value}))
        return bool(bundle.get("entry"))

    session.expect(finds("family", family[:3].swapcase()), f"family={family[:3].swapcase()} (a prefix, other case) found nothing")
    session.expect(finds("family:exact", family), "family:exact with the exact name found nothing")
    session.expect(not finds("family:exact", family.swapcase()), "family:exact matched another case")
    names = [name.get("family", "").lower() for name in _read_patient(session, patient_id).get("name", [])]
    # A middle no family name of the patient begins with: :contains finds it, a plain (prefix) search cannot.
    middle = next((family[start:-1] for start in range(1, len(family) - 2)
                   if not any(name.startswith(family[start:-1].lower()) for name in names)), None)
    if middle is None:
        raise CaseSkipped(f"every part of {family!r} begins a family name of the patient")
    session.expect(finds("family:contains", middle.lower()), f"family:contains={middle.lower()} found nothing")
    session.expect(not finds("family", middle.lower()), f"family={middle.lower()} (not a prefix) found the patient")
    # And what is in no name is not found: a server that ignored :contains would find the patient by it.
    absent = f"{middle.lower()}qzx"
    session.expect(not finds("family:contains", absent), f"family:contains={absent} found the patient")


@case("FH-SEARCH-08", "FHIR R4 search.html#missing", ":missing=true and :missing=false split a type's resources between them")
def missing_modifier(session: Session) -> None:
    sample = _sample(session)
    [resource] = [item for item in _resources(session) if item["type"] == sample["resourceType"]]
    parameters = [parameter["name"] for parameter in resource.get("searchParam", [])
                  if parameter.get("type") in ("reference", "token", "date", "string")
                  and not parameter["name"].startswith("_")]
    if not parameters:
        raise CaseSkipped(f"{sample['resourceType']} declares no parameter to test :missing on")
    name = parameters[0]

    def total(params: dict[str, str]) -> int:
        bundle = _searchset(session, _get(session, f"/{sample['resourceType']}", {**params, "_summary": "count"}))
        session.expect(isinstance(bundle.get("total"), int), "_summary=count gave no total")
        return int(bundle["total"])

    everything = total({})
    present, absent = total({f"{name}:missing": "false"}), total({f"{name}:missing": "true"})
    session.expect(present + absent == everything,
                   f"{name}:missing=false ({present}) and =true ({absent}) do not add up to all {everything}")


@case("FH-SEARCH-09", "FHIR R4 search.html#prefix", "Date prefixes on _lastUpdated: eq, ne, ge, le, sa and eb on the resource's day")
def date_prefixes(session: Session) -> None:
    sample = _sample(session)
    updated = sample.get("meta", {}).get("lastUpdated")
    if not isinstance(updated, str):
        raise CaseSkipped("the resource has no meta.lastUpdated")
    _require_last_updated(session, sample["resourceType"])
    day = updated[:10]
    expected = {"eq": True, "ne": False, "ge": True, "le": True, "sa": False, "eb": False}
    wrong = []
    for prefix, included in expected.items():
        bundle = _searchset(session, _get(session, f"/{sample['resourceType']}",
                                          {"_id": sample["id"], "_lastUpdated": f"{prefix}{day}"}))
        if bool(bundle.get("entry")) != included:
            wrong.append(f"{prefix}{day} {'missed' if included else 'matched'} it")
    session.expect(not wrong, f"a resource updated on {updated}: {wrong}")


@case("FH-SEARCH-10", "FHIR R4 search.html#revinclude", "_revinclude of a declared reverse include brings in the resources that point at the match")
def revinclude(session: Session) -> None:
    tried = []
    for resource in _resources(session):
        for value in resource.get("searchRevInclude", []):
            source, _, parameter = value.partition(":")
            if not parameter:
                continue
            bundle = _searchset(session, _get(session, f"/{resource['type']}", {"_revinclude": value, "_count": "5"}))
            entries = bundle.get("entry", [])
            matches = {f"{entry['resource']['resourceType']}/{entry['resource']['id']}" for entry in entries
                       if entry.get("search", {}).get("mode") == "match"}
            included = [entry["resource"] for entry in entries if entry.get("search", {}).get("mode") == "include"]
            if not included:
                pointing = _pointing_at(session, source, parameter, sorted(matches))
                session.expect(pointing is None, f"_revinclude={value} brought in nothing, yet {pointing}")
                tried.append(value)
                continue
            session.expect(all(item["resourceType"] == source for item in included),
                           f"_revinclude={value} brought in other types than {source}")
            strangers = [f"{item['resourceType']}/{item['id']}" for item in included
                         if not any(_is_referenced(match, json.dumps(item)) for match in matches)]
            session.expect(not strangers, f"_revinclude={value} brought in resources that point at no match: {strangers}")
            return
    raise CaseSkipped(f"no declared _revinclude brought anything in (tried {tried[:10]})")


def _pointing_at(session: Session, source: str, parameter: str, matches: list[str]) -> str | None:
    """How the server's own search finds a `source` pointing at one of `matches`
    by `parameter` (what _revinclude must bring in), or None."""
    for match in matches:
        response = _get(session, f"/{source}", {parameter: match, "_count": "1"})
        if response.status_code == 200 and _searchset(session, response).get("entry"):
            return f"{source}?{parameter}={match} finds one"
    return None


# --- content negotiation -----------------------------------------------------------
_FORMAT_NAMES = {"json": ("json", "application/json", "application/fhir+json"),
                 "xml": ("xml", "application/xml", "application/fhir+xml")}


@case("FH-FMT-02", "FHIR R4 http.html#mime-type (_format)", "_format overrides Accept: each of its JSON names (and XML names, when XML is declared) gives that format")
def format_parameter(session: Session) -> None:
    sample = _sample(session)
    formats = " ".join(_capability(session).get("format", []))
    wrong = []
    for fmt, names in _FORMAT_NAMES.items():
        if fmt not in formats:
            continue
        # Accept asks for the other format, so only _format can explain the answer.
        other = "application/fhir+xml" if fmt == "json" else FHIR_JSON
        for name in names:
            response = session.get(session.fhir(f"/{sample['resourceType']}/{sample['id']}"),
                                   params={"_format": name}, headers={"Accept": other})
            if response.status_code == 406 and name == names[0] and fmt == "json":
                # _format is a SHOULD: a server without it answers the Accept header.
                raise CaseSkipped("the server does not support _format (406 to _format=json)")
            media_type = response.headers.get("content-type", "")
            if response.status_code != 200 or fmt not in media_type:
                wrong.append(f"_format={name}: {response.status_code} {media_type or 'no Content-Type'}")
            elif fmt == "json":
                session.fhir_resource(response, sample["resourceType"])
    session.expect(not wrong, f"_format was not honoured: {wrong}")


# --- history -------------------------------------------------------------------
def _history_bundle(session: Session, response: httpx.Response) -> list[dict[str, Any]]:
    """The entries of a history Bundle, each with its request and response (bdl-3, bdl-4)."""
    entries = _bundle(session, response, "history").get("entry", [])
    session.expect(all("request" in entry and "response" in entry for entry in entries),
                   "history entries carry request and response (Bundle invariants bdl-3, bdl-4)")
    return entries  # type: ignore[no-any-return]


def _first_held(session: Session, *interactions: str) -> dict[str, Any]:
    """A resource of a searchable type that declares `interactions` (of the
    suite's sample's type when it can be)."""
    kept = [resource["type"] for resource in _searchable(session, *interactions)]
    sample = _sample(session)
    for resource_type in sorted(kept, key=lambda name: name != sample["resourceType"]):
        bundle = _searchset(session, _get(session, f"/{resource_type}", {"_count": "1"}))
        if bundle.get("entry"):
            return bundle["entry"][0]["resource"]  # type: ignore[no-any-return]
    raise CaseSkipped(f"the server holds no resource of a type that declares {' and '.join(interactions)}")


@contextmanager
def _held_or_own(session: Session, *interactions: str) -> Iterator[dict[str, Any]]:
    """A resource as `_first_held` finds one, or, on a server that holds none
    (an empty one, as `make conformance` starts), a probe of the suite's own,
    deleted afterwards."""
    try:
        held = _first_held(session, *interactions)
    except CaseSkipped:
        chosen = _probe_type(session)
        if not set(interactions) <= _interactions(_declaration(session, chosen)):
            raise
    else:
        yield held
        return
    body = {"resourceType": chosen, **_PROBES[chosen], "note": [{"text": "MedAIFlow conformance probe"}]}
    created = session.post(session.fhir(f"/{chosen}"), json=body, headers={"Accept": FHIR_JSON, "Content-Type": FHIR_JSON})
    try:
        yield _fetch(session, chosen, _created_at(session, chosen, created).rsplit("/", 1)[1])[0]
    finally:
        _delete_created(session, chosen, created)


@case("FH-HIST-01", "FHIR R4 http.html#history", "History of a resource: a history Bundle of its versions, the current one among them")
def instance_history(session: Session) -> None:
    with _held_or_own(session, "history-instance") as resource:
        _instance_history(session, resource)


def _instance_history(session: Session, resource: dict[str, Any]) -> None:
    entries = _history_bundle(session, _get(session, f"/{resource['resourceType']}/{resource['id']}/_history"))
    versions = [entry["resource"] for entry in entries if "resource" in entry]
    strangers = [f"{item['resourceType']}/{item.get('id')}" for item in versions
                 if (item["resourceType"], item.get("id")) != (resource["resourceType"], resource["id"])]
    session.expect(not strangers, f"the history of {resource['resourceType']}/{resource['id']} holds {strangers}")
    current = resource.get("meta", {}).get("versionId")
    session.expect(current in [item.get("meta", {}).get("versionId") for item in versions],
                   f"the current version {current!r} is not in the history")


@case("FH-HIST-02", "FHIR R4 http.html#history", "History of a type: a history Bundle of that type's versions, _count respected")
def type_history(session: Session) -> None:
    with _held_or_own(session, "history-instance") as resource:
        _type_history(session, resource)


def _type_history(session: Session, resource: dict[str, Any]) -> None:
    declared = next(item for item in _resources(session) if item["type"] == resource["resourceType"])
    if "history-type" not in _interactions(declared):
        raise CaseSkipped(f"{resource['resourceType']} declares no history-type")
    entries = _history_bundle(session, _get(session, f"/{resource['resourceType']}/_history", {"_count": "3"}))
    session.expect(entries, f"the history of {resource['resourceType']} is empty, yet one is held")
    session.expect(len(entries) <= 3, f"_count=3, and the history page holds {len(entries)} entries")
    others = {entry["resource"]["resourceType"] for entry in entries if "resource" in entry} - {resource["resourceType"]}
    session.expect(not others, f"the history of {resource['resourceType']} holds {sorted(others)}")


@case("FH-HIST-03", "FHIR R4 http.html#history", "History of the whole system, where declared: a history Bundle, newest first, _count respected, its next page older still")
def system_history(session: Session) -> None:
    rest = _capability(session).get("rest", [{}])[0]
    if "history-system" not in {item.get("code") for item in rest.get("interaction", [])}:
        raise CaseSkipped("the server declares no history-system")
    with _held_or_own(session, "history-instance"):
        response = _get(session, "/_history", {"_count": "2"})
        entries = _history_bundle(session, response)
        session.expect(entries, "the system's history is empty, yet a resource that keeps a history is held")
        session.expect(len(entries) <= 2, f"_count=2, and the history page holds {len(entries)} entries")
        links = response.json().get("link", [])
        following = next((link["url"] for link in links if link.get("relation") == "next"), None)
        if following is not None:
            entries += _history_bundle(session, session.get(following, headers={"Accept": FHIR_JSON}))
    stamps = [entry["response"].get("lastModified") for entry in entries]
    session.expect(all(isinstance(stamp, str) for stamp in stamps),
                   "history entries carry response.lastModified (the version's time)")
    times = [datetime.fromisoformat(stamp) for stamp in stamps]
    session.expect(times == sorted(times, reverse=True),
                   f"a history is newest first (R4 http.html#history), and the system's went {stamps}")


# --- update: what a conforming server must refuse -------------------------------------------
@case("FH-UPDATE-01", "FHIR R4 http.html#update / http.html#concurrency", "Declared update: an id in the body other than the URL's is 400; a stale If-Match is 412; neither changes the resource")
def update_refusals(session: Session) -> None:
    with _held_or_own(session, "update", "read") as resource:
        _update_refusals(session, resource)


def _update_refusals(session: Session, resource: dict[str, Any]) -> None:
    address = session.fhir(f"/{resource['resourceType']}/{resource['id']}")
    version = resource.get("meta", {}).get("versionId")
    other_id = {**resource, "id": f"{resource['id']}-other"}
    response = session.request("PUT", address, json=other_id, headers={"Accept": FHIR_JSON, "Content-Type": FHIR_JSON})
    session.expect_status(response, 400)
    session.fhir_resource(response, "OperationOutcome")
    if version:
        stale = f'W/"conformance-stale-{version}"' if not str(version).isdigit() else f'W/"{int(version) + 1000}"'
        response = session.request("PUT", address, json=resource,
                                   headers={"Accept": FHIR_JSON, "Content-Type": FHIR_JSON, "If-Match": stale})
        session.expect_status(response, 412)
        session.fhir_resource(response, "OperationOutcome")
    again, _ = _fetch(session, resource["resourceType"], resource["id"])
    session.expect(again.get("meta", {}).get("versionId") == version, "a refused update made a new version")


# --- token, reference and quantity searches ---------------------------------------------
def _declared(session: Session, resource_type: str, name: str, kind: str) -> bool:
    return any(parameter.get("name") == name and parameter.get("type") == kind
               for resource in _resources(session) if resource["type"] == resource_type
               for parameter in resource.get("searchParam", []))


def _held(session: Session, name: str, kind: str, has: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    """A resource of a searchable type that declares the parameter `name` of type `kind`, for which `has` holds."""
    for resource in _searchable(session):
        if not _declared(session, resource["type"], name, kind):
            continue
        bundle = _searchset(session, _get(session, f"/{resource['type']}", {f"{name}:missing": "false", "_count": "10"}))
        for entry in bundle.get("entry", []):
            if has(entry["resource"]):
                return entry["resource"]  # type: ignore[no-any-return]
    raise CaseSkipped(f"the server holds no resource with a value for a declared {kind} parameter {name!r}")


def _finds(session: Session, resource: dict[str, Any], params: dict[str, str]) -> bool:
    """Whether a search narrowed to the resource's id, with `params`, finds it."""
    bundle = _searchset(session, _get(session, f"/{resource['resourceType']}", {"_id": resource["id"], **params}))
    return any(entry["resource"].get("id") == resource["id"] for entry in bundle.get("entry", []))


def _judge(session: Session, resource: dict[str, Any], expectations: dict[str, tuple[dict[str, str], bool]]) -> None:
    wrong = [f"{label} {'missed' if expected else 'matched'} it"
             for label, (params, expected) in expectations.items() if _finds(session, resource, params) != expected]
    session.expect(not wrong, f"{resource['resourceType']}/{resource['id']}: {wrong}")


@case("FH-SEARCH-11", "FHIR R4 search.html#token (:not)", "Token status: the resource's code matches, another does not; :not reverses both")
def token_not(session: Session) -> None:
    resource = _held(session, "status", "token", lambda item: isinstance(item.get("status"), str))
    status = resource["status"]
    _judge(session, resource, {
        f"status={status}": ({"status": status}, True),
        "status=conformance-probe": ({"status": "conformance-probe"}, False),
        f"status:not={status}": ({"status:not": status}, False),
        "status:not=conformance-probe": ({"status:not": "conformance-probe"}, True),
    })


def _identified(item: dict[str, Any]) -> bool:
    return any(isinstance(identifier.get("system"), str) and isinstance(identifier.get("value"), str)
               for identifier in item.get("identifier", []))


@case("FH-SEARCH-12", "FHIR R4 search.html#token", "Token forms on identifier: system|value and value match; another system, and |value (no system), do not")
def token_forms(session: Session) -> None:
    resource = _held(session, "identifier", "token", _identified)
    identifier = next(item for item in resource["identifier"] if isinstance(item.get("system"), str) and isinstance(item.get("value"), str))
    system, value = identifier["system"], identifier["value"]
    without_system = any("system" not in item and item.get("value") == value for item in resource["identifier"])
    _judge(session, resource, {
        f"identifier={system}|{value}": ({"identifier": f"{system}|{value}"}, True),
        f"identifier={value}": ({"identifier": value}, True),
        f"identifier={system}|": ({"identifier": f"{system}|"}, True),
        "identifier=urn:conformance:other-system|…": ({"identifier": f"urn:conformance:other-system|{value}"}, False),
        f"identifier=|{value}": ({"identifier": f"|{value}"}, without_system),
    })


_REFERENCE_PARAMETERS = ("subject", "patient")


def _patient_reference(item: dict[str, Any]) -> str | None:
    for element in ("subject", "patient"):
        reference = item.get(element, {}).get("reference") if isinstance(item.get(element), dict) else None
        if isinstance(reference, str) and reference.startswith("Patient/") and "/_history/" not in reference:
            return reference
    return None


def _patient_referrers(session: Session) -> Iterator[tuple[str, dict[str, Any], str]]:
    """(parameter, resource, its "Patient/id") for each of subject and patient that some held resource fills."""
    for name in _REFERENCE_PARAMETERS:
        try:
            resource = _held(session, name, "reference", _patient_reference)
        except CaseSkipped:
            continue
        yield name, resource, _patient_reference(resource) or ""


@case("FH-SEARCH-13", "FHIR R4 search.html#reference", "Reference search: Type/id, the id alone and :Patient=id match; another id, and :Patient on it, do not")
def reference_forms(session: Session) -> None:
    for name, resource, reference in _patient_referrers(session):
        patient_id = reference.removeprefix("Patient/")
        _judge(session, resource, {
            f"{name}={reference}": ({name: reference}, True),
            f"{name}={patient_id}": ({name: patient_id}, True),
            f"{name}:Patient={patient_id}": ({f"{name}:Patient": patient_id}, True),
            f"{name}=Patient/conformance-probe": ({name: "Patient/conformance-probe"}, False),
            f"{name}:Patient=conformance-probe": ({f"{name}:Patient": "conformance-probe"}, False),
        })
        return
    raise CaseSkipped("the server holds no resource with a Patient reference under a declared subject or patient parameter")


def _plain(number: Decimal) -> str:
    """A search number as written: no exponent, whatever its size."""
    return format(number, "f")


def _quantity(item: dict[str, Any]) -> dict[str, Any] | None:
    quantity = item.get("valueQuantity")
    if isinstance(quantity, dict) and isinstance(quantity.get("value"), int | float):
        return quantity
    return None


@case("FH-SEARCH-14", "FHIR R4 search.html#quantity / search.html#prefix", "Quantity prefixes on value-quantity: ge and lt a unit either side, with and without system|code")
def quantity_prefixes(session: Session) -> None:
    resource = _held(session, "value-quantity", "quantity", _quantity)
    quantity = _quantity(resource)
    assert quantity is not None
    # A whole unit either side: the answer cannot hang on the value's implicit precision.
    value = Decimal(str(quantity["value"]))
    below, above = _plain(value - 1), _plain(value + 1)
    expectations = {
        f"ge{below}": ({"value-quantity": f"ge{below}"}, True),
        f"ge{above}": ({"value-quantity": f"ge{above}"}, False),
        f"lt{above}": ({"value-quantity": f"lt{above}"}, True),
        f"lt{below}": ({"value-quantity": f"lt{below}"}, False),
    }
    system, code = quantity.get("system"), quantity.get("code")
    if isinstance(system, str) and isinstance(code, str):
        expectations[f"ge{below}|{system}|{code}"] = ({"value-quantity": f"ge{below}|{system}|{code}"}, True)
        expectations[f"ge{below}|{system}|conformance-unit"] = (
            {"value-quantity": f"ge{below}|{system}|conformance-unit"}, False)
    _judge(session, resource, expectations)


@case("FH-SEARCH-15", "FHIR R4 search.html#chaining", "A chained parameter: subject:Patient.family with the patient's family name matches, another name does not")
def chained_reference(session: Session) -> None:
    for name, resource, reference in _patient_referrers(session):
        response = _get(session, f"/{reference}")
        if response.status_code != 200:
            continue
        families = [item["family"] for item in session.fhir_resource(response, "Patient").get("name", [])
                    if isinstance(item.get("family"), str) and item["family"]]
        if not families or not _declared(session, "Patient", "family", "string"):
            continue
        _judge(session, resource, {
            f"{name}:Patient.family={families[0]}": ({f"{name}:Patient.family": families[0]}, True),
            f"{name}:Patient.family=conformance-probe": ({f"{name}:Patient.family": "conformance-probe"}, False),
        })
        return
    raise CaseSkipped("no resource whose subject or patient is a readable Patient with a family name")


def _several(session: Session) -> str:
    """A searchable type of which the server holds resources updated at different times (an order needs two)."""
    for resource in _searchable(session):
        entries = _searchset(session, _get(session, f"/{resource['type']}", {"_count": "10"})).get("entry", [])
        if len({entry["resource"].get("meta", {}).get("lastUpdated") for entry in entries}) >= 2:
            return resource["type"]  # type: ignore[no-any-return]
    raise CaseSkipped("the server holds no two resources of one searchable type updated at different times")


@case("FH-SEARCH-16", "FHIR R4 search.html#sort", "_sort=_lastUpdated orders the matches oldest first, -_lastUpdated newest first")
def sort_last_updated(session: Session) -> None:
    resource_type = _several(session)

    def updated(order: str) -> list[datetime]:
        response = _get(session, f"/{resource_type}", {"_sort": order, "_count": "20"}, Prefer="handling=strict")
        if response.status_code == 400:
            raise CaseSkipped(f"the server does not sort by _lastUpdated (400 to _sort={order} under strict handling)")
        bundle = _searchset(session, response)
        stamps = [entry["resource"].get("meta", {}).get("lastUpdated") for entry in bundle.get("entry", [])]
        session.expect(all(isinstance(stamp, str) for stamp in stamps), "a match has no meta.lastUpdated")
        return [datetime.fromisoformat(stamp) for stamp in stamps]

    ascending, descending = updated("_lastUpdated"), updated("-_lastUpdated")
    session.expect(ascending == sorted(ascending), f"_sort=_lastUpdated is not oldest first: {ascending}")
    session.expect(descending == sorted(descending, reverse=True), f"_sort=-_lastUpdated is not newest first: {descending}")


# --- the write interactions, on a resource of the suite's own --------------------------------
# Types whose smallest valid resource the suite can write and that mean nothing to a clinical
# system (a Task with no focus orders nothing); the first the server lets it create, update and delete.
_PROBES: dict[str, dict[str, Any]] = {
    "Task": {"status": "draft", "intent": "proposal"},
    "Basic": {"code": {"text": "conformance probe"}},
}
_WRITES = {"create", "update", "delete", "read"}
_PROBE_SYSTEM = "urn:medaiflow:conformance"
_JSON_PATCH = "application/json-patch+json"


@case("FH-WRITE-01", "FHIR R4 http.html#create / #update / #delete / #history", "Create, update with If-Match, history, delete, then read: 201 with Location, a new version, both versions in the history, 410 Gone")
def write_cycle(session: Session) -> None:
    declared = {resource["type"]: resource for resource in _resources(session)}
    chosen = _probe_type(session)
    headers = {"Accept": FHIR_JSON, "Content-Type": FHIR_JSON}
    body = {"resourceType": chosen, **_PROBES[chosen], "note": [{"text": "MedAIFlow conformance probe, first version"}]}
    created = session.post(session.fhir(f"/{chosen}"), json=body, headers=headers)
    session.expect_status(created, 201)
    location = created.headers.get("location", "")
    session.expect(f"/{chosen}/" in location, f"a create answers a Location naming the new {chosen}, got {location!r}")
    resource_id = location.split(f"/{chosen}/", 1)[1].split("/", 1)[0]
    address = session.fhir(f"/{chosen}/{resource_id}")
    try:
        first, _ = _fetch(session, chosen, resource_id)
        etag = f'W/"{first.get("meta", {}).get("versionId")}"'
        changed = {**first, "note": [{"text": "MedAIFlow conformance probe, second version"}]}
        updated = session.request("PUT", address, json=changed, headers={**headers, "If-Match": etag})
        session.expect_status(updated, 200)
        second, _ = _fetch(session, chosen, resource_id)
        session.expect(second.get("meta", {}).get("versionId") != first.get("meta", {}).get("versionId"),
                       "an update kept the versionId")
        session.expect(second.get("note") == changed["note"], "the update's change was not kept")
        if "history-instance" in _interactions(declared[chosen]):
            entries = _history_bundle(session, _get(session, f"/{chosen}/{resource_id}/_history"))
            session.expect(len(entries) >= 2, f"two versions were written, the history holds {len(entries)}")
    finally:
        deleted = session.request("DELETE", address, headers={"Accept": FHIR_JSON})
    session.expect_status(deleted, 200, 202, 204)
    if deleted.status_code == 202:
        return  # 202: the server is "non-committal about the outcome" (http.html#delete), so no read can be required
    gone = _get(session, f"/{chosen}/{resource_id}")
    # A server that keeps no history may forget the resource entirely.
    session.expect_status(gone, *((410,) if declared[chosen].get("readHistory") else (410, 404)))
    session.fhir_resource(gone, "OperationOutcome")


def _probe_type(session: Session) -> str:
    declared = {resource["type"]: resource for resource in _resources(session)}
    chosen = next((name for name in _PROBES if name in declared and _WRITES <= _interactions(declared[name])), None)
    if chosen is None:
        raise CaseSkipped(f"none of {sorted(_PROBES)} declares create, update, delete and read")
    return chosen


def _created_address(session: Session, resource_type: str, created: httpx.Response) -> str | None:
    """The created resource's URL on the server under test, from the Location of a create."""
    location = created.headers.get("location", "")
    if f"{resource_type}/" not in location:
        return None
    resource_id = location.split(f"{resource_type}/", 1)[1].split("/", 1)[0]
    return session.fhir(f"/{resource_type}/{resource_id}")


def _delete_created(session: Session, resource_type: str, created: httpx.Response) -> None:
    address = _created_address(session, resource_type, created)
    if address is not None:
        session.request("DELETE", address, headers={"Accept": FHIR_JSON})


def _delete_marked(session: Session, resource_type: str, marker: dict[str, str]) -> None:
    """Deletes every resource that carries the suite's `marker`: a wrong answer
    (a second create where one was due) may have made more than one."""
    response = _get(session, f"/{resource_type}", {"identifier": f"{marker['system']}|{marker['value']}"})
    if response.status_code != 200:
        return
    for entry in response.json().get("entry", []):
        resource_id = entry.get("resource", {}).get("id")
        if resource_id:
            session.request("DELETE", session.fhir(f"/{resource_type}/{resource_id}"), headers={"Accept": FHIR_JSON})


def _created_at(session: Session, resource_type: str, created: httpx.Response) -> str:
    """Where a create put the resource: it must answer 201 with a Location naming it."""
    session.expect_status(created, 201)
    address = _created_address(session, resource_type, created)
    session.expect(address is not None, f"a create answers a Location naming the new {resource_type}")
    return str(address)


@case("FH-WRITE-02", "FHIR R4 datatypes.html#decimal", "A decimal keeps its precision: 1.50 and 0.0100 written, the same digits read back")
def decimal_precision(session: Session) -> None:
    chosen = _probe_type(session)
    # Written as text: a JSON library would write these numbers as 1.5 and 0.01.
    extension = ",".join(f'{{"url":"{_PROBE_SYSTEM}:decimal","valueDecimal":{text}}}' for text in ("1.50", "0.0100"))
    probe = json.dumps({"resourceType": chosen, **_PROBES[chosen]})
    body = f'{probe[:-1]},"extension":[{extension}]}}'.encode()
    created = session.post(session.fhir(f"/{chosen}"), content=body,
                           headers={"Accept": FHIR_JSON, "Content-Type": FHIR_JSON})
    try:
        address = _created_at(session, chosen, created)
        read = session.get(address, headers={"Accept": FHIR_JSON})
        session.expect_status(read, 200)
        written = re.findall(rb'"valueDecimal"\s*:\s*([-0-9.eE+]+)', read.content)
        session.expect(written == [b"1.50", b"0.0100"], f"decimals written as 1.50 and 0.0100 came back as {written}")
    finally:
        _delete_created(session, chosen, created)


@case("FH-WRITE-03", "FHIR R4 narrative.html#xhtml (txt-1)", "A narrative with a script in it is refused: 400 or 422 with an OperationOutcome, nothing created")
def narrative_without_active_content(session: Session) -> None:
    chosen = _probe_type(session)
    div = '<div xmlns="http://www.w3.org/1999/xhtml">probe<script>alert(1)</script></div>'
    body = {"resourceType": chosen, **_PROBES[chosen], "text": {"status": "generated", "div": div}}
    created = session.post(session.fhir(f"/{chosen}"), json=body,
                           headers={"Accept": FHIR_JSON, "Content-Type": FHIR_JSON})
    try:
        _refused(session, created, 400, 422)
    finally:
        if created.status_code < 300:
            _delete_created(session, chosen, created)


def _marked_probe(
    session: Session, declaration: str | None, label: str
) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The probe type, a fresh identifier, and a probe resource that carries it
    (first: XML elements come in the order FHIR defines, and identifier comes
    before each probe's elements). Skipped unless the type declares
    `declaration` (`conditionalCreate`, ...) when one is named."""
    chosen = _probe_type(session)
    if declaration is not None:
        declared = next(resource for resource in _resources(session) if resource["type"] == chosen)
        if declared.get(declaration) in (None, False, "not-supported"):
            raise CaseSkipped(f"{chosen} declares no {declaration}")
    marker = {"system": _PROBE_SYSTEM, "value": f"{label}-{uuid.uuid4()}"}
    return chosen, marker, {"resourceType": chosen, "identifier": [marker], **_PROBES[chosen]}


@case("FH-WRITE-04", "FHIR R4 http.html#ccreate", "Conditional create, where declared: the first POST with If-None-Exist creates (201), the same again answers the match (200), nothing is created twice")
def conditional_create(session: Session) -> None:
    chosen, marker, body = _marked_probe(session, "conditionalCreate", "ccreate")
    headers = {"Accept": FHIR_JSON, "Content-Type": FHIR_JSON,
               "If-None-Exist": f"identifier={marker['system']}|{marker['value']}"}
    first = session.post(session.fhir(f"/{chosen}"), json=body, headers=headers)
    try:
        session.expect_status(first, 201)
        again = session.post(session.fhir(f"/{chosen}"), json=body, headers=headers)
        session.expect_status(again, 200)
        found = _searchset(session, _get(session, f"/{chosen}", {"identifier": f"{marker['system']}|{marker['value']}"}))
        session.expect(len(found.get("entry", [])) == 1,
                       f"two conditional creates with one condition left {len(found.get('entry', []))} resources")
    finally:
        _delete_marked(session, chosen, marker)


@case("FH-WRITE-05", "FHIR R4 http.html#cond-update", "Conditional update, where declared: PUT [type]?identifier= with no match creates (201), with one match updates it (200, a new version)")
def conditional_update(session: Session) -> None:
    chosen, marker, body = _marked_probe(session, "conditionalUpdate", "cupdate")
    address = session.fhir(f"/{chosen}?identifier={marker['system']}|{marker['value']}")
    headers = {"Accept": FHIR_JSON, "Content-Type": FHIR_JSON}
    first = session.request("PUT", address, json=body, headers=headers)
    try:
        session.expect_status(first, 201)
        created = session.fhir_resource(first, chosen)
        changed = {**body, "note": [{"text": "MedAIFlow conformance probe, updated by condition"}]}
        again = session.request("PUT", address, json=changed, headers=headers)
        session.expect_status(again, 200)
        updated = session.fhir_resource(again, chosen)
        session.expect(updated.get("id") == created.get("id"), "a conditional update of the match made another resource")
        session.expect(updated.get("meta", {}).get("versionId") != created.get("meta", {}).get("versionId"),
                       "a conditional update kept the versionId")
    finally:
        _delete_marked(session, chosen, marker)


@case("FH-WRITE-06", "FHIR R4 http.html#3.1.0.7.1", "Conditional delete, where declared: DELETE [type]?identifier= deletes the one match (2xx, then a read is 404 or 410)")
def conditional_delete(session: Session) -> None:
    chosen, marker, body = _marked_probe(session, "conditionalDelete", "cdelete")
    created = session.post(session.fhir(f"/{chosen}"), json=body,
                           headers={"Accept": FHIR_JSON, "Content-Type": FHIR_JSON})
    try:
        address = _created_at(session, chosen, created)
        deleted = session.request("DELETE", session.fhir(f"/{chosen}?identifier={marker['system']}|{marker['value']}"))
        session.expect_status(deleted, 200, 202, 204)
        session.expect_status(session.get(address, headers={"Accept": FHIR_JSON}), 404, 410)
    finally:
        _delete_created(session, chosen, created)


@case("FH-WRITE-08", "FHIR R4 http.html#patch / RFC 6902 / RFC 5789 §2.2", "Patch, where declared with JSON Patch: a passing test and a replace make a new version with the change (200); a failing test is 422 and a stale If-Match 412, neither changing the resource")
def json_patch(session: Session) -> None:
    chosen = _probe_type(session)
    if "patch" not in _interactions(_declaration(session, chosen)):
        raise CaseSkipped(f"{chosen} declares no patch")
    if _JSON_PATCH not in _capability(session).get("patchFormat", []):
        raise CaseSkipped(f"patchFormat does not list {_JSON_PATCH}")
    body = {"resourceType": chosen, **_PROBES[chosen], "note": [{"text": "MedAIFlow conformance probe, first version"}]}
    created = session.post(session.fhir(f"/{chosen}"), json=body,
                           headers={"Accept": FHIR_JSON, "Content-Type": FHIR_JSON})
    try:
        address = _created_at(session, chosen, created)
        first, _ = _fetch(session, chosen, address.rsplit("/", 1)[1])
        version = first.get("meta", {}).get("versionId")
        headers = {"Accept": FHIR_JSON, "Content-Type": _JSON_PATCH}
        failing = [{"op": "test", "path": "/note/0/text", "value": "not the text"},
                   {"op": "replace", "path": "/note/0/text", "value": "changed by a failing patch"}]
        session.expect_status(session.request("PATCH", address, json=failing, headers=headers), 422)
        change = [{"op": "test", "path": "/note/0/text", "value": body["note"][0]["text"]},
                  {"op": "replace", "path": "/note/0/text", "value": "MedAIFlow conformance probe, patched"}]
        if version:
            stale = f'W/"conformance-stale-{version}"' if not str(version).isdigit() else f'W/"{int(version) + 1000}"'
            refused = session.request("PATCH", address, json=change, headers={**headers, "If-Match": stale})
            session.expect_status(refused, 412)
        unchanged, _ = _fetch(session, chosen, first["id"])
        session.expect(unchanged.get("note") == body["note"], "a refused patch changed the resource")
        patched = session.request("PATCH", address, json=change, headers=headers)
        session.expect_status(patched, 200)
        second, _ = _fetch(session, chosen, first["id"])
        session.expect(second.get("note") == [{"text": change[1]["value"]}], "the patch's change was not kept")
        session.expect(second.get("meta", {}).get("versionId") != version, "a patch kept the versionId")
    finally:
        _delete_created(session, chosen, created)


def _fhirpath_operation(kind: str, path: str, **parts: dict[str, Any]) -> dict[str, Any]:
    """One operation of a FHIRPath Patch (R4 fhirpatch.html): its parts each a name and a value[x]."""
    named = [{"name": name, **value} for name, value in parts.items()]
    return {"name": "operation", "part": [
        {"name": "type", "valueCode": kind}, {"name": "path", "valueString": path}, *named]}


@case("FH-WRITE-09", "FHIR R4 http.html#patch / fhirpatch.html", "Patch, where declared with FHIRPath Patch (a Parameters resource in application/fhir+json): a replace found by where() and an add make a new version with both changes (200); a replace whose path matches nothing is 400 or 422 and changes nothing")
def fhirpath_patch(session: Session) -> None:
    chosen = _probe_type(session)
    if "patch" not in _interactions(_declaration(session, chosen)):
        raise CaseSkipped(f"{chosen} declares no patch")
    if FHIR_JSON not in _capability(session).get("patchFormat", []):
        raise CaseSkipped(f"patchFormat does not list {FHIR_JSON} (FHIRPath Patch)")
    text = "MedAIFlow conformance probe, first version"
    body = {"resourceType": chosen, **_PROBES[chosen], "note": [{"text": text}]}
    headers = {"Accept": FHIR_JSON, "Content-Type": FHIR_JSON}
    created = session.post(session.fhir(f"/{chosen}"), json=body, headers=headers)
    try:
        address = _created_at(session, chosen, created)
        first, _ = _fetch(session, chosen, address.rsplit("/", 1)[1])
        changed = "MedAIFlow conformance probe, patched by FHIRPath"
        added = "MedAIFlow conformance probe, added by FHIRPath"
        missing = {"resourceType": "Parameters", "parameter": [_fhirpath_operation(
            "replace", f"{chosen}.note.where(text = 'not the text').text", value={"valueMarkdown": changed})]}
        session.expect_status(session.request("PATCH", address, json=missing, headers=headers), 400, 422)
        unchanged, _ = _fetch(session, chosen, first["id"])
        session.expect(unchanged.get("note") == body["note"], "a refused FHIRPath Patch changed the resource")
        change = {"resourceType": "Parameters", "parameter": [
            _fhirpath_operation("replace", f"{chosen}.note.where(text = '{text}').text",
                                value={"valueMarkdown": changed}),  # Annotation.text is a markdown
            _fhirpath_operation("add", chosen, name={"valueString": "note"},
                                value={"valueAnnotation": {"text": added}}),
        ]}
        session.expect_status(session.request("PATCH", address, json=change, headers=headers), 200)
        second, _ = _fetch(session, chosen, first["id"])
        session.expect(second.get("note") == [{"text": changed}, {"text": added}],
                       f"the FHIRPath Patch's changes were not kept: note is {second.get('note')}")
        session.expect(second.get("meta", {}).get("versionId") != first.get("meta", {}).get("versionId"),
                       "a FHIRPath Patch kept the versionId")
    finally:
        _delete_created(session, chosen, created)


@case("FH-WRITE-07", "FHIR R4 xml.html / http.html#mime-type", "A create in XML, where XML is declared: 201, and the resource reads back in JSON with the values sent")
def create_in_xml(session: Session) -> None:
    if not any("xml" in fmt for fmt in _capability(session).get("format", [])):
        raise CaseSkipped("the server declares no XML format")
    chosen, _, probe = _marked_probe(session, None, "xml")
    body = _probe_xml(probe)
    created = session.post(session.fhir(f"/{chosen}"), content=body,
                           headers={"Accept": FHIR_JSON, "Content-Type": "application/fhir+xml"})
    try:
        address = _created_at(session, chosen, created)
        read = session.fhir_resource(session.get(address, headers={"Accept": FHIR_JSON}), chosen)
        session.expect(read.get("identifier") == probe["identifier"],
                       f"the identifier sent in XML came back as {read.get('identifier')}")
    finally:
        _delete_created(session, chosen, created)


def _probe_xml(resource: dict[str, Any]) -> bytes:
    """A probe resource in FHIR XML, its elements in the order they are
    given, each primitive in a value attribute."""
    def element(name: str, value: Any) -> str:
        if isinstance(value, list):
            return "".join(element(name, item) for item in value)
        if isinstance(value, dict):
            return f"<{name}>{''.join(element(key, item) for key, item in value.items())}</{name}>"
        text = str(value).lower() if isinstance(value, bool) else str(value)
        return f'<{name} value="{html.escape(text)}"/>'
    inner = "".join(element(name, value) for name, value in resource.items() if name != "resourceType")
    return f'<{resource["resourceType"]} xmlns="http://hl7.org/fhir">{inner}</{resource["resourceType"]}>'.encode()


@case("FH-ERR-02", "FHIR R4 http.html#mime-type / operationoutcome.html", "An error asked for in XML (when XML is declared) is an OperationOutcome in XML")
def error_in_the_format_asked_for(session: Session) -> None:
    if not any("xml" in fmt for fmt in _capability(session).get("format", [])):
        raise CaseSkipped("the server declares no XML format")
    sample = _sample(session)
    response = session.get(session.fhir(f"/{sample['resourceType']}/medaiflow-no-such-id"),
                           headers={"Accept": "application/fhir+xml"})
    session.expect_status(response, 404, 410)
    session.expect("xml" in response.headers.get("content-type", ""),
                   f"XML was asked for, the error came as {response.headers.get('content-type')!r}")
    try:
        root = ElementTree.fromstring(response.content)
    except ElementTree.ParseError as error:
        raise CaseFailed(f"the error is not well-formed XML: {error}") from error
    # Prefixed or not, quoted either way: XML namespaces are judged parsed (FHIR R4 xml.html).
    session.expect(root.tag == "{http://hl7.org/fhir}OperationOutcome",
                   f"the error's root element is {root.tag}, not OperationOutcome in http://hl7.org/fhir")


# --- batch and transaction ---------------------------------------------------------------
def _system_interactions(session: Session) -> set[str]:
    return {interaction.get("code") for rest in _capability(session).get("rest", []) if rest.get("mode") == "server"
            for interaction in rest.get("interaction", [])}


def _post_bundle(session: Session, kind: str, entries: list[dict[str, Any]]) -> httpx.Response:
    return session.post(session.fhir(""), json={"resourceType": "Bundle", "type": kind, "entry": entries},
                        headers={"Accept": FHIR_JSON, "Content-Type": FHIR_JSON})


@case("FH-BATCH-01", "FHIR R4 http.html#transaction (batch)", "A batch runs each entry on its own: a read that succeeds and one that fails, each with its own status, in order")
def batch_entries(session: Session) -> None:
    if "batch" not in _system_interactions(session):
        raise CaseSkipped("the server declares no batch interaction")
    sample = _sample(session)
    response = _post_bundle(session, "batch", [
        {"request": {"method": "GET", "url": f"{sample['resourceType']}/{sample['id']}"}},
        {"request": {"method": "GET", "url": f"{sample['resourceType']}/conformance-no-such-id"}},
    ])
    entries = _bundle(session, response, "batch-response").get("entry", [])
    session.expect(len(entries) == 2, f"two entries were sent, {len(entries)} came back")
    statuses = [str(entry.get("response", {}).get("status", "")).split(" ")[0] for entry in entries]
    session.expect(statuses == ["200", "404"], f"the entries' statuses are {statuses}, not ['200', '404']")
    session.expect(entries[0].get("resource", {}).get("id") == sample["id"], "the read entry does not hold the resource")


@case("FH-TRANS-01", "FHIR R4 http.html#transaction / http.html#trules", "A transaction whose one entry fails changes nothing (the create beside it is not kept); the create alone commits")
def transaction_is_atomic(session: Session) -> None:
    declared = {resource["type"]: resource for resource in _resources(session)}
    if "transaction" not in _system_interactions(session):
        raise CaseSkipped("the server declares no transaction interaction")
    chosen = next((name for name in _PROBES if name in declared
                   and {"create", "search-type"} <= _interactions(declared[name])
                   and _declared(session, name, "identifier", "token")), None)
    if chosen is None:
        raise CaseSkipped(f"none of {sorted(_PROBES)} declares create, search and an identifier parameter")
    marker = f"transaction-{secrets.token_hex(6)}"
    probe = {"resourceType": chosen, **_PROBES[chosen], "identifier": [{"system": _PROBE_SYSTEM, "value": marker}]}
    held = _searchset(session, _get(session, f"/{chosen}", {"_count": "1"})).get("entry", [])
    if held:
        # A stale If-Match fails when the entry runs, after the create (updates run after creates:
        # http.html#trules), so the create must be undone, not merely never started.
        existing = held[0]["resource"]
        failing = {"resource": existing, "request": {"method": "PUT", "url": f"{chosen}/{existing['id']}",
                                                     "ifMatch": 'W/"999999"'}}
    else:
        failing = {"resource": {"resourceType": chosen, **_PROBES[chosen], "id": "conformance-one"},
                   "request": {"method": "PUT", "url": f"{chosen}/conformance-other"}}  # the id does not match

    def kept() -> list[dict[str, Any]]:
        found = _searchset(session, _get(session, f"/{chosen}", {"identifier": f"{_PROBE_SYSTEM}|{marker}"}))
        return found.get("entry", [])  # type: ignore[no-any-return]

    try:
        response = _post_bundle(session, "transaction", [
            {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": probe, "request": {"method": "POST", "url": chosen}},
            failing,
        ])
        session.expect(400 <= response.status_code < 500,
                       f"a transaction with a failing entry must fail (4xx), got {response.status_code}")
        session.fhir_resource(response, "OperationOutcome")
        session.expect(not kept(), f"the failed transaction's {chosen} was kept")
        # The same create alone commits, and the search finds it: the check above could have failed.
        response = _post_bundle(session, "transaction", [
            {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": probe, "request": {"method": "POST", "url": chosen}}])
        _bundle(session, response, "transaction-response")
        session.expect(len(kept()) == 1, f"the transaction's create alone was found {len(kept())} times, not once")
    finally:
        # Whatever was kept (by a server that is not atomic, too) is the suite's and goes.
        for entry in kept():
            session.request("DELETE", session.fhir(f"/{chosen}/{entry['resource']['id']}"), headers={"Accept": FHIR_JSON})


@case("FH-SEARCH-17", "FHIR R4 search.html#summary", "_summary=true, text and data: never elements the resource lacks; data keeps all but text; a resource with elements removed is marked SUBSETTED")
def summary_subsets(session: Session) -> None:
    sample = _sample(session)
    full = {key: value for key, value in _read(session)[0].items() if key != "meta"}
    wrong = []
    for mode in ("true", "text", "data"):
        bundle = _searchset(session, _get(session, f"/{sample['resourceType']}", {"_id": sample["id"], "_summary": mode}))
        [entry] = bundle.get("entry", []) or [None]
        session.expect(entry is not None, f"_id with _summary={mode} found nothing")
        subset = entry["resource"]
        tags = {(tag.get("system"), tag.get("code")) for tag in subset.get("meta", {}).get("tag", [])}
        body = {key: value for key, value in subset.items() if key != "meta"}
        if set(body) - set(full):
            wrong.append(f"{mode}: elements the resource lacks {sorted(set(body) - set(full))}")
        if mode == "data" and body != {key: value for key, value in full.items() if key != "text"}:
            wrong.append("data: not the resource less its text")
        if mode == "text" and "text" in full and "text" not in body:
            wrong.append("text: the narrative is missing")
        if body != full and SUBSETTED not in tags:
            wrong.append(f"{mode}: elements were removed and the resource is not tagged SUBSETTED")
    session.expect(not wrong, f"{sample['resourceType']}/{sample['id']}: {wrong}")


_PATIENT_COMPARTMENT = "http://hl7.org/fhir/CompartmentDefinition/patient"
# Types R4 gives a patient or subject parameter yet leaves out of the Patient compartment.
_OUTSIDE_PATIENT_COMPARTMENT = frozenset(("Task", "Device"))


def _compartment_member(session: Session) -> tuple[dict[str, Any], str]:
    """A held resource in a patient's compartment, and its "Patient/id"."""
    for _, resource, reference in _patient_referrers(session):
        if resource["resourceType"] not in _OUTSIDE_PATIENT_COMPARTMENT:
            return resource, reference
    raise CaseSkipped("the server holds no resource of the Patient compartment with a declared subject or patient")


@case("FH-COMP-01", "FHIR R4 http.html#vsearch / compartmentdefinition-patient.html", "Where the Patient compartment is declared: Patient/[id]/[type] finds a resource of the patient's, and not under another patient")
def compartment_search(session: Session) -> None:
    if not any(_PATIENT_COMPARTMENT in rest.get("compartment", []) for rest in _capability(session).get("rest", [])):
        raise CaseSkipped("the CapabilityStatement declares no Patient compartment")
    resource, reference = _compartment_member(session)
    resource_type, params = resource["resourceType"], {"_id": resource["id"]}

    def found(patient: str) -> bool | None:
        response = _get(session, f"/{patient}/{resource_type}", params)
        if response.status_code == 404:
            return None
        return any(entry["resource"].get("id") == resource["id"]
                   for entry in _searchset(session, response).get("entry", []))

    session.expect(found(reference) is True,
                   f"{reference}/{resource_type} does not find {resource_type}/{resource['id']}")
    session.expect(not found("Patient/conformance-probe"),
                   f"Patient/conformance-probe/{resource_type} finds {resource_type}/{resource['id']}, of {reference}")


@case("FH-OP-01", "FHIR R4 patient-operation-everything.html", "Where Patient $everything is declared: a searchset holding the patient and a resource of its compartment, each once across its pages")
def patient_everything(session: Session) -> None:
    patient = next((resource for resource in _resources(session) if resource["type"] == "Patient"), {})
    if not any(operation.get("name") == "everything" for operation in patient.get("operation", [])):
        raise CaseSkipped("the CapabilityStatement declares no $everything on Patient")
    resource, reference = _compartment_member(session)
    response = _get(session, f"/{reference}/$everything", {"_type": f"Patient,{resource['resourceType']}"})
    seen: list[str] = []
    for _ in range(_PAGES_FOLLOWED):
        bundle = _searchset(session, response)
        seen += [f"{entry['resource']['resourceType']}/{entry['resource'].get('id')}"
                 for entry in bundle.get("entry", []) if entry.get("search", {}).get("mode", "match") != "outcome"]
        following = next((link.get("url") for link in bundle.get("link", []) if link.get("relation") == "next"), None)
        if following is None:
            break
        response = session.get(following, headers={"Accept": FHIR_JSON})
    member = f"{resource['resourceType']}/{resource['id']}"
    session.expect(reference in seen and member in seen, f"{reference}/$everything lacks {[reference, member]}")
    session.expect(len(seen) == len(set(seen)), f"{reference}/$everything gave a resource twice")


@case("FH-OP-02", "FHIR R4 operation-resource-validate.html", "Where Patient $validate is declared: 200 and an OperationOutcome listing an error for a Patient whose gender is outside its required value set, and none for a valid one")
def validate_operation(session: Session) -> None:
    patient = next((resource for resource in _resources(session) if resource["type"] == "Patient"), {})
    if not any(operation.get("name") == "validate" for operation in patient.get("operation", [])):
        raise CaseSkipped("the CapabilityStatement declares no $validate on Patient")

    def errors(body: dict[str, Any]) -> list[dict[str, Any]] | None:
        response = session.post(session.fhir("/Patient/$validate"), json=body,
                                headers={"Accept": FHIR_JSON, "Content-Type": FHIR_JSON})
        session.expect(response.status_code == 200,
                       f"Patient/$validate answered {response.status_code}, not 200 (valid or not, R4 says 200)")
        try:
            outcome = response.json()
        except ValueError:
            outcome = None
        if not isinstance(outcome, dict) or outcome.get("resourceType") != "OperationOutcome":
            session.expect(False, "Patient/$validate did not answer an OperationOutcome")
            return None
        return [issue for issue in outcome.get("issue", []) if issue.get("severity") in ("error", "fatal")]

    invalid = errors({"resourceType": "Patient", "gender": "conformance-probe"})
    session.expect(invalid is None or bool(invalid), "Patient/$validate lists no error for gender 'conformance-probe'")
    valid = errors({"resourceType": "Patient", "gender": "female", "birthDate": "1970-01-01"})
    session.expect(valid is None or not valid, f"Patient/$validate lists errors for a valid Patient: {valid}")
