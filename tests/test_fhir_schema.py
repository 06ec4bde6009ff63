"""tests/fhir_schema.py: the official FHIR R4 JSON schema as a test oracle."""

import copy

import pytest
from jsonschema import Draft6Validator, validators

from conformance.fhir_schema import load_schema, validate_fhir
from fhir_mappings.r4_resource_types import R4_RESOURCE_TYPES

PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "meta": {"lastUpdated": "2024-01-01T00:00:00Z"},
    "identifier": [{"system": "urn:oid:1.2.3", "value": "123"}],
    "name": [{"family": "Doe", "given": ["John"]}],
    "gender": "male",
    "birthDate": "1970-01-01",
}

OPERATION_OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "not-found", "diagnostics": "no such study"}],
}


def searchset(*resources: dict) -> dict:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "link": [{"relation": "self", "url": "http://localhost/fhir/Patient"}],
        "entry": [
            {
                "fullUrl": f"http://localhost/fhir/{r['resourceType']}/{r['id']}",
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in resources
        ],
    }


def test_installed_schema_is_the_official_r4_one():
    schema = load_schema()
    assert schema["id"] == "http://hl7.org/fhir/json-schema/4.0"
    assert validators.validator_for(schema) is Draft6Validator
    Draft6Validator.check_schema(schema)


def test_valid_resources_pass():
    validate_fhir(PATIENT)
    validate_fhir(OPERATION_OUTCOME)
    validate_fhir(searchset(PATIENT))
    validate_fhir(searchset())


def test_wrong_type_is_reported_at_its_path():
    with pytest.raises(AssertionError) as failure:
        validate_fhir({**PATIENT, "gender": 5})
    message = str(failure.value)
    assert "$.gender" in message
    assert "is not one of ['male', 'female', 'other', 'unknown']" in message
    assert "is not valid under any of the given schemas" not in message


def test_error_inside_a_bundle_entry_is_reported_at_its_path():
    bundle = searchset(PATIENT, {**PATIENT, "id": "p2", "gender": 5})
    with pytest.raises(AssertionError, match=r"\$\.entry\[1\]\.resource\.gender: 5 is not one of"):
        validate_fhir(bundle)


def test_unknown_element_fails():
    with pytest.raises(AssertionError, match=r"\$: Additional properties are not allowed \('studyUid' was unexpected\)"):
        validate_fhir({**PATIENT, "studyUid": "1.2.3"})


def test_unknown_resource_type_fails():
    with pytest.raises(AssertionError, match="'Study' is not a FHIR R4 resourceType"):
        validate_fhir({"resourceType": "Study", "id": "s1"})
    with pytest.raises(AssertionError, match="'resourceType' is a required property"):
        validate_fhir({"id": "s1"})


def test_operation_outcome_issue_code_must_be_an_issue_type():
    body = copy.deepcopy(OPERATION_OUTCOME)
    body["issue"][0]["code"] = "no-such-code"
    with pytest.raises(AssertionError, match=r"\$\.issue\[0\]\.code: 'no-such-code' is not one of"):
        validate_fhir(body)


def test_operation_outcome_without_issues_fails():
    with pytest.raises(AssertionError, match="'issue' is a required property"):
        validate_fhir({"resourceType": "OperationOutcome"})


def test_missing_required_primitive_is_not_caught_by_the_official_schema():
    # OperationOutcome.issue.code is 1..1 in FHIR, but the official JSON schema
    # lists no primitive element as required (its value may be given as "_code"
    # with extensions only), so a missing code passes. A check for it needs
    # more than this schema.
    body = copy.deepcopy(OPERATION_OUTCOME)
    del body["issue"][0]["code"]
    validate_fhir(body)


def test_patterns_match_to_the_very_end():
    # ECMA-262 "$": a trailing newline makes an id invalid, as in other validators.
    with pytest.raises(AssertionError, match=r"\$\.id: 'p1\\n' does not match"):
        validate_fhir({**PATIENT, "id": "p1\n"})


@pytest.mark.parametrize("text", ["Doe\ufeff", "\ufeffDoe", "Do\ufeffe"])
def test_a_zero_width_no_break_space_is_a_space_as_in_ecma_regex(text):
    # ECMA-262's \s holds U+FEFF, Python's does not: a string pattern's \S refuses it
    # there (the schema's own npm validator does), and so here.
    with pytest.raises(AssertionError, match="does not match"):
        validate_fhir({**PATIENT, "name": [{"family": text}]})
    validate_fhir({**PATIENT, "name": [{"family": "Do e"}]})


def test_the_r4_resource_types_table_is_the_schemas():
    """fhir_mappings/r4_resource_types.py, checked against the official R4 list."""
    assert R4_RESOURCE_TYPES == frozenset(load_schema()["discriminator"]["mapping"])
