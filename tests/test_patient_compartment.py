"""The patients a resource or a search is about, as the audit trail names them."""

from fhir_mappings.patient_compartment import patients_of, patients_searched


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
