"""The BALP AuditEvent builder is not run through the R4 model when the
server records an event (it costs more than the request), so its output is
proved valid here: every kind, with and without each optional part, against
the R4 model with its required bindings and the official JSON schema, and
hostile text from outside made into valid FHIR strings."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from fhir_mappings.audit_event import (
    MAX_PATIENTS_NAMED,
    AuditKind,
    AuditRecord,
    Outcome,
    audit_event,
    audit_events,
    fhir_string,
)
from fhir_mappings.resources import validated
from conformance.fhir_schema import validate_fhir

_EVERYTHING = {
    "client_address": "2001:db8::1", "description": "GET /fhir/Patient answered 200", "request_id": "req-1",
    "patients": ["p1", "p2"], "resources": ["ImagingStudy/1.2.3", "Task/7"], "study_uids": ["1.2.840.1"],
    "query": b"PatientID=X&_count=10",
    "extra_subtypes": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110120"}],
}


def _valid(event: dict) -> None:
    assert validated(dict(event)) == event
    validate_fhir(event)


@pytest.mark.parametrize("kind", list(AuditKind), ids=lambda kind: kind.name)
@pytest.mark.parametrize("outcome", list(Outcome), ids=lambda outcome: outcome.name)
def test_every_kind_and_outcome_is_a_valid_audit_event(kind, outcome):
    bare = audit_event(AuditRecord(kind=kind, outcome=outcome, recorded=datetime.now(UTC), client="c", server="s"))
    full = audit_event(AuditRecord(kind=kind, outcome=outcome, recorded=datetime.now(timezone(timedelta(hours=-5))),
                                   client="nurse", server="https://pacs.example/", **_EVERYTHING))
    _valid(bare)
    _valid(full)
    assert "entity" not in bare and len(full["entity"]) == 2 + 2 + 1 + 2  # patients, resources, study, query + request
    assert full["action"] == kind.value.action and full["outcome"] == outcome.value


HOSTILE = ["a\x00b", "tab\tand\nnewline", "\u00a0non-breaking\u2028line", "   ", "\x7f", "lone \ud800 surrogate",
           "émoji 🩻 and 中文"]


@pytest.mark.parametrize("text", HOSTILE)
def test_text_from_outside_becomes_a_valid_fhir_string(text):
    event = audit_event(AuditRecord(
        kind=AuditKind.READ, outcome=Outcome.MINOR_FAILURE, recorded=datetime.now(UTC), client=text + "x",
        server="s", client_address=text, description=f"GET /fhir/Patient/{text} answered 404", request_id=text,
        patients=[text + "p"], resources=[f"Patient/{text}"], study_uids=[text],
    ))
    _valid(event)
    assert fhir_string("émoji 🩻 and 中文") == "émoji 🩻 and 中文"  # only what FHIR forbids is replaced
    assert fhir_string("a\x00b") == "a\ufffdb"


def test_a_record_without_a_client_or_a_time_zone_cannot_be_built():
    with pytest.raises(ValueError):
        AuditRecord(kind=AuditKind.READ, outcome=Outcome.SUCCESS, recorded=datetime.now(UTC), client=" ", server="s")
    with pytest.raises(ValueError):
        AuditRecord(kind=AuditKind.READ, outcome=Outcome.SUCCESS, recorded=datetime.now(), client="c", server="s")


@pytest.mark.parametrize("description", [None, "GET /fhir/Group/crowd answered 200"])
def test_a_record_of_many_patients_is_several_events_that_name_every_one(description):
    """BALP, ATNA: every patient whose data was disclosed is findable; no one event names more than the bound."""
    patients = [f"p{number:04}" for number in range(2 * MAX_PATIENTS_NAMED + 7)]
    events = audit_events(AuditRecord(kind=AuditKind.READ, outcome=Outcome.SUCCESS, recorded=datetime.now(UTC),
                                      client="c", server="s", description=description, patients=patients,
                                      resources=["Group/crowd"], request_id="req-1", query=b"_elements=id"))
    assert len(events) == 3
    named = []
    for number, event in enumerate(events, 1):
        _valid(event)
        references = [entity["what"]["reference"] for entity in event["entity"] if "what" in entity]
        named += [reference for reference in references if reference.startswith("Patient/")]
        assert "Group/crowd" in references  # each names the same request, resources and query
        assert {"request id", None} <= {entity.get("name") for entity in event["entity"]}
        assert any("query" in entity for entity in event["entity"])
        assert event["outcomeDesc"].startswith(description or "(patients")
        low = (number - 1) * MAX_PATIENTS_NAMED + 1
        assert event["outcomeDesc"].endswith(
            f"(patients {low} to {min(low + MAX_PATIENTS_NAMED - 1, len(patients))} of {len(patients)}: "
            f"event {number} of 3)")
    assert named == [f"Patient/{patient}" for patient in patients]  # every one, once, in the order given
    [exactly] = audit_events(AuditRecord(kind=AuditKind.READ, outcome=Outcome.SUCCESS, recorded=datetime.now(UTC),
                                         client="c", server="s", patients=patients[:MAX_PATIENTS_NAMED]))
    assert len(exactly["entity"]) == MAX_PATIENTS_NAMED and "outcomeDesc" not in exactly
    with pytest.raises(ValueError):
        audit_event(AuditRecord(kind=AuditKind.READ, outcome=Outcome.SUCCESS, recorded=datetime.now(UTC),
                                client="c", server="s", patients=patients))
