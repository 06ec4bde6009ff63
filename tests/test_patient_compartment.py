"""The patients a resource or a search is about, as the audit trail names them."""

import pytest

from fhir_mappings.errors import InvalidRequest
from fhir_mappings.patient_compartment import (
    COMPARTMENT_PARAMETERS,
    COMPARTMENT_TYPES,
    EVERYTHING_TYPES,
    compartment_parameter,
    patients_of,
    patients_searched,
)


def test_a_resource_belongs_to_the_patients_it_points_at():
    assert patients_of({"resourceType": "Patient", "id": "p1"}) == ["p1"]
    assert patients_of({"resourceType": "ImagingStudy", "id": "1.2", "subject": {"reference": "Patient/p2"}}) == ["p2"]
    assert patients_of({"resourceType": "Task", "for": {"reference": "Patient/p3/_history/2"}}) == ["p3"]
    # Another server's Patient p4 is not this server's p4.
    assert patients_of({"resourceType": "Task", "for": {"reference": "http://x/fhir/Patient/p4"}}) == []
    assert patients_of({"resourceType": "Observation", "subject": {"reference": "Group/g"}}) == []
    assert patients_of({"resourceType": "Device", "id": "d"}) == []
    # R4's compartment names them by Provenance.target and AuditEvent.entity.what.
    provenance = {"resourceType": "Provenance",
                  "target": [{"reference": "DiagnosticReport/r"}, {"reference": "Patient/p5"}]}
    assert patients_of(provenance) == ["p5"]
    audit = {"resourceType": "AuditEvent",
             "entity": [{"what": {"reference": "Task/t"}}, {"what": {"reference": "Patient/p6"}}]}
    assert patients_of(audit) == ["p6"]


def test_a_search_names_the_patients_in_its_parameters():
    assert patients_searched("ImagingStudy", [("patient", "p1,Patient/p2"), ("subject", "Patient/p3")]) == ["p1", "p2", "p3"]
    assert patients_searched("Observation", [("subject", "g1"), ("subject:Group", "g2")]) == []  # not known to be patients
    assert patients_searched("Observation", [("subject:Patient", "p4")]) == ["p4"]
    assert patients_searched("Patient", [("_id", "p5"), ("name", "p6")]) == ["p5"]
    assert patients_searched("DiagnosticReport", [("patient.name", "Doe")]) == []
    assert patients_searched("Provenance", [("target", "Patient/p7,Task/t"), ("target", "p8")]) == ["p7"]
    assert patients_searched("AuditEvent", [("entity:Patient", "p9")]) == ["p9"]


def test_a_reverse_chain_names_the_patients_the_other_type_is_asked_about():
    """`_has:[type]:[reference]:[parameter]`: its parameter is one of [type]'s."""
    assert patients_searched("Observation", [("_has:DiagnosticReport:result:patient", "p1,Patient/p2")]) == ["p1", "p2"]
    assert patients_searched("Patient", [("_has:Observation:subject:subject:Patient", "p3")]) == ["p3"]
    assert patients_searched("Patient", [("_has:Observation:subject:code", "1234-5")]) == []
    assert patients_searched("Patient", [("_has:Patient:link:_id", "p4")]) == ["p4"]


def test_a_group_belongs_to_each_patient_it_names_as_a_member():
    group = {"resourceType": "Group", "member": [
        {"entity": {"reference": "Patient/p2"}}, {"entity": {"reference": "Device/d"}},
        {"entity": {"reference": "Patient/p1"}, "inactive": True}, {"entity": {"reference": "Patient/p2"}},
    ]}
    assert patients_of(group) == ["p2", "p1"]  # each once, in the Group's order; an inactive one still named
    assert patients_searched("Group", [("member", "Patient/p3,Device/d"), ("member", "p4")]) == ["p3"]
    assert compartment_parameter("Group", "p5") == ("member", "Patient/p5")
    assert compartment_parameter("Observation", "p5") == ("patient", "Patient/p5")
    with pytest.raises(InvalidRequest, match="Group"):  # the message lists the compartment's types
        compartment_parameter("Device", "p5")
    assert set(COMPARTMENT_TYPES) == set(COMPARTMENT_PARAMETERS) and "Group" in EVERYTHING_TYPES
