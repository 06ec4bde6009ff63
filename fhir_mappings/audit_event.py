"""IHE BALP-style AuditEvents (FHIR R4 auditevent.html; IHE ITI Basic Audit
Log Patterns; DICOM PS3.15 A.5 for the DICOM event codes).

`audit_event` builds the event as recorded; the audit chain adds its own
extension (sequence number and hashes) when it appends it.

Every request writes one, so the builder is not run through the R4 model
(that cost 0.7 ms an event, more than the request it records). Its shape is
fixed by this module: the tests validate each kind, with every optional part,
against the R4 model and the official JSON schema. What comes from outside
(names, paths, addresses) is made a valid FHIR string here, whatever it held.
"""

import base64
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import Enum
from typing import Any

DCM = "http://dicom.nema.org/resources/ontology/DCM"
IDENTITY_SYSTEM = "urn:medaiflow:identity"  # user names and client ids of this server
SERVER_SYSTEM = "urn:ietf:rfc:3986"  # the server, by its URL
_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
_RESTFUL = "http://hl7.org/fhir/restful-interaction"
_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
_OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
# The most patients one event names, each an entity of role Patient (BALP's
# way, and what `AuditEvent?patient=` finds). A read of a Group names its
# members, and a Group of 10,000 would make one event of 10,000 entities (and
# 20,000 index rows): an action that discloses more patients is recorded by
# several events (`audit_events`), each naming this many of them and the same
# request, resources and query, so every patient is still found by
# `AuditEvent?patient=` (BALP, ATNA: each patient whose data was disclosed).
MAX_PATIENTS_NAMED = 100
# FHIR R4 datatypes: a string is [ \r\n\t\S]+ (no other white space) and
# should hold no control characters; lone surrogates cannot be encoded at all.
_NOT_IN_A_STRING = re.compile(r"[^\S \r\n\t]|[\x00-\x08\x0e-\x1f\x7f\ud800-\udfff]")
# Agent roles, DCM (PS3.16 CID 402): on a read the client receives (Destination).
_SOURCE = {"system": DCM, "code": "110153", "display": "Source Role ID"}
_DESTINATION = {"system": DCM, "code": "110152", "display": "Destination Role ID"}
_APPLICATION = {"system": DCM, "code": "110150", "display": "Application"}


class Outcome(Enum):
    """audit-event-outcome (required binding)."""

    SUCCESS = "0"
    MINOR_FAILURE = "4"  # the request was refused (4xx)
    SERIOUS_FAILURE = "8"  # the server failed (5xx)
    MAJOR_FAILURE = "12"


@dataclass(frozen=True)
class _Kind:
    type: dict[str, str]
    subtype: dict[str, str] | None
    action: str  # audit-event-action: C R U D E
    client_receives: bool  # decides which agent is Source and which Destination


def _rest(code: str, action: str, client_receives: bool) -> _Kind:
    return _Kind({"system": _EVENT_TYPE, "code": "rest", "display": "Restful Operation"},
                 {"system": _RESTFUL, "code": code}, action, client_receives)


def _dicom(code: str, display: str, action: str, client_receives: bool,
           event_type: tuple[str, str] | None = None) -> _Kind:
    """`event_type`: the EventTypeCode (code, display) that PS3.15 requires of some events, as the subtype."""
    subtype = {"system": DCM, "code": event_type[0], "display": event_type[1]} if event_type else None
    return _Kind({"system": DCM, "code": code, "display": display}, subtype, action, client_receives)


class AuditKind(Enum):
    """What happened. FHIR interactions are `rest` with the restful-interaction
    subtype; DICOMweb transactions and the server's own events take the DICOM
    audit event codes of PS3.15 A.5.3."""

    READ = _rest("read", "R", True)
    VREAD = _rest("vread", "R", True)
    HISTORY = _rest("history-instance", "R", True)
    HISTORY_TYPE = _rest("history-type", "R", True)
    HISTORY_SYSTEM = _rest("history-system", "R", True)
    # A query's client is its Source, as on a create (BALP; PS3.15 A.5.3.10).
    SEARCH = _rest("search-type", "E", False)
    CAPABILITIES = _rest("capabilities", "R", True)
    CREATE = _rest("create", "C", False)
    UPDATE = _rest("update", "U", False)
    PATCH = _rest("patch", "U", False)
    DELETE = _rest("delete", "D", False)
    BATCH = _rest("batch", "E", False)
    TRANSACTION = _rest("transaction", "E", False)
    OPERATION = _rest("operation", "E", True)
    STOW = _dicom("110104", "DICOM Instances Transferred", "C", False)
    WADO = _dicom("110104", "DICOM Instances Transferred", "R", True)
    QIDO = _dicom("110112", "Query", "E", False)
    STUDY_DELETED = _dicom("110105", "DICOM Study Deleted", "D", False)
    # With the EventTypeCode that PS3.15 A.5.3 (User Authentication) requires.
    LOGIN = _dicom("110114", "User Authentication", "E", False, ("110122", "Login"))
    APPLICATION_ACTIVITY = _dicom("110100", "Application Activity", "U", False)  # models, jobs
    # 110137 is no event of its own but a type of Security Alert (PS3.15 A.5.3, Security Alert; PS3.16 CID 403).
    SECURITY_CHANGE = _dicom("110113", "Security Alert", "U", False, ("110137", "User Security Attributes Changed"))
    # A DIMSE association refused for who called or from where (PS3.16 CID 403).
    NODE_AUTHENTICATION = _dicom("110113", "Security Alert", "E", False, ("110126", "Node Authentication"))
    # A Subscription's notification: the server sends, its owner's endpoint receives.
    EXPORT = _dicom("110106", "Export", "R", True)


@dataclass(frozen=True)
class AuditRecord:
    kind: AuditKind
    outcome: Outcome
    recorded: datetime
    client: str  # user name or client id; "anonymous" before authentication
    server: str  # this server's name, the event's source observer
    client_address: str | None = None
    description: str | None = None  # outcomeDesc: what went wrong, or what was done
    request_id: str | None = None
    patients: Sequence[str] = ()  # Patient resource ids: MAX_PATIENTS_NAMED at most an event (`audit_events`)
    resources: Sequence[str] = ()  # "Type/id" of what the action touched
    study_uids: Sequence[str] = ()
    query: bytes | None = None  # the query as received, for searches and QIDO
    extra_subtypes: Sequence[dict[str, str]] = field(default_factory=tuple)
    # Where the server sent something (a rest-hook endpoint): the client's network address, a URI.
    destination: str | None = None
    application: str | None = None  # the client id of the app a user acts through (SMART App Launch)

    def __post_init__(self) -> None:
        if self.recorded.tzinfo is None:
            raise ValueError("an audit time needs a time zone")
        if not self.client.strip() or not self.server.strip():
            raise ValueError("an audit record names its client and its server")


def audit_events(record: AuditRecord, patient_of: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The record's events: one, or for more than MAX_PATIENTS_NAMED patients
    one per that many (in the order given), each naming the same request,
    resources, studies and query, and saying in outcomeDesc which part of
    how many patients it names. The caller appends them together, in one
    transaction: the action is recorded whole, or not at all.

    Given `patient_of` (the patient of each study UID), each event names the
    studies of its own patients instead, the first those of none: a search
    disclosing 10,000 studies of as many patients would otherwise name all
    of them in each of its 100 events (a million entities, 370 MB)."""
    total = len(record.patients)
    if total <= MAX_PATIENTS_NAMED:
        return [audit_event(record)]
    parts = range(0, total, MAX_PATIENTS_NAMED)
    events = []
    for number, start in enumerate(parts, 1):
        patients = record.patients[start:start + MAX_PATIENTS_NAMED]
        studies = record.study_uids
        if patient_of is not None:
            named = set(patients)
            studies = [uid for uid in record.study_uids
                       if patient_of.get(uid) in named or (number == 1 and uid not in patient_of)]
        events.append(audit_event(replace(
            record, patients=patients, study_uids=studies,
            description=f"{(record.description or '')[:900]} (patients {start + 1} to "
                        f"{min(start + MAX_PATIENTS_NAMED, total)} of {total}: event {number} of {len(parts)})"
                        .lstrip(),
        )))
    return events


def audit_event(record: AuditRecord) -> dict[str, Any]:
    """The one event of a record that names no more than MAX_PATIENTS_NAMED
    patients (ValueError otherwise: `audit_events` records more)."""
    if len(record.patients) > MAX_PATIENTS_NAMED:
        raise ValueError(f"an audit event names {MAX_PATIENTS_NAMED} patients at most: use audit_events")
    kind = record.kind.value
    client_role, server_role = (_DESTINATION, _SOURCE) if kind.client_receives else (_SOURCE, _DESTINATION)
    client_name, server_name = fhir_string(record.client), fhir_string(record.server)
    # Users and clients are no FHIR resources: they are named by identifier, which
    # `agent:identifier` and `source:identifier` searches find.
    client_who = {"identifier": {"system": IDENTITY_SYSTEM, "value": client_name}, "display": client_name}
    server_who = {"identifier": {"system": SERVER_SYSTEM, "value": server_name}, "display": server_name}
    client = {"type": {"coding": [client_role]}, "who": client_who, "name": client_name, "requestor": True}
    if record.destination:
        client["network"] = {"address": fhir_string(record.destination), "type": "5"}  # 5: URI
    elif record.client_address:
        client["network"] = {"address": fhir_string(record.client_address), "type": "2"}  # 2: IP address
    server = {"type": {"coding": [server_role]}, "who": server_who, "name": server_name, "requestor": False}
    agents = [client, server]
    if record.application:
        # The user asked; the app is how (BALP's client agent): `agent:identifier` finds each.
        app_name = fhir_string(record.application)
        agents.append({"type": {"coding": [_APPLICATION]}, "name": app_name, "requestor": False,
                       "who": {"identifier": {"system": IDENTITY_SYSTEM, "value": app_name}, "display": app_name}})
    body: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": kind.type,
        "action": kind.action,
        "recorded": record.recorded.isoformat(timespec="microseconds"),
        "outcome": record.outcome.value,
        "agent": agents,
        "source": {"observer": server_who,
                   "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4"}]},
    }
    subtypes = ([kind.subtype] if kind.subtype else []) + list(record.extra_subtypes)
    if subtypes:
        body["subtype"] = subtypes
    if record.description:
        body["outcomeDesc"] = fhir_string(record.description[:1000])
    entities = [_patient(patient) for patient in record.patients]
    entities += [_resource(fhir_string(reference)) for reference in record.resources]
    entities += [_study(fhir_string(uid)) for uid in record.study_uids]
    if record.query is not None:
        entities.append({"type": {"system": _ENTITY_TYPE, "code": "2", "display": "System Object"},
                         "role": {"system": _OBJECT_ROLE, "code": "24", "display": "Query"},
                         "query": base64.b64encode(record.query).decode()})
    if record.request_id:
        entities.append({"type": {"system": _ENTITY_TYPE, "code": "2", "display": "System Object"},
                         "name": "request id", "description": fhir_string(record.request_id)})
    if entities:
        body["entity"] = entities
    return body


def fhir_string(text: str) -> str:
    """`text` as a valid FHIR string: control characters shown as U+FFFD,
    never empty, no surrounding white space."""
    cleaned = _NOT_IN_A_STRING.sub("\ufffd", text).strip()
    return cleaned or "\ufffd"


def _patient(patient_id: str) -> dict[str, Any]:
    return {"what": {"reference": f"Patient/{fhir_string(patient_id)}"},
            "type": {"system": _ENTITY_TYPE, "code": "1", "display": "Person"},
            "role": {"system": _OBJECT_ROLE, "code": "1", "display": "Patient"}}


def _resource(reference: str) -> dict[str, Any]:
    return {"what": {"reference": reference}, "type": {"system": _ENTITY_TYPE, "code": "2", "display": "System Object"}}


def _study(uid: str) -> dict[str, Any]:
    # PS3.15 A.5.2: the study as a participant object identified by its UID.
    return {"what": {"identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}},
            "type": {"system": _ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": _OBJECT_ROLE, "code": "3", "display": "Report"}, "name": "Study Instance UID"}
