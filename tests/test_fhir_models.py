"""The R4 models and the required bindings they leave unchecked."""

import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.diagnosticreport import DiagnosticReport

from fhir_mappings.errors import InvalidResource
from fhir_mappings.resources import validate_resource


def test_r4b_models_are_r4_where_the_default_r5_ones_are_not():
    # The package's default (R5) models renamed these; R4B keeps the R4 names.
    assert "imagingStudy" in {field.alias or name for name, field in DiagnosticReport.model_fields.items()}
    assert "deviceName" in {field.alias or name for name, field in Device.model_fields.items()}
    assert {"type", "subtype"} <= {field.alias or name for name, field in AuditEvent.model_fields.items()}
    from fhir.resources.diagnosticreport import DiagnosticReport as R5DiagnosticReport

    assert "imagingStudy" not in {field.alias or name for name, field in R5DiagnosticReport.model_fields.items()}


def test_the_models_alone_accept_a_bogus_status():
    from fhir.resources.R4B.observation import Observation

    Observation.model_validate({"resourceType": "Observation", "status": "bogus", "code": {"text": "x"}})


@pytest.mark.parametrize(
    "body",
    [
        {"resourceType": "Observation", "status": "bogus", "code": {"text": "x"}},
        {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
         "valueQuantity": {"value": 1, "comparator": "~"}},
        {"resourceType": "DiagnosticReport", "status": "done", "code": {"text": "x"}},
        {"resourceType": "Task", "status": "requested", "intent": "wish"},
        {"resourceType": "Task", "status": "started", "intent": "order"},
        {"resourceType": "ImagingStudy", "status": "ready", "subject": {"reference": "Patient/p"}},
        {"resourceType": "Patient", "gender": "M"},
        {"resourceType": "Patient", "name": [{"use": "nick"}]},
        {"resourceType": "Device", "status": "on"},
        {"resourceType": "AuditEvent", "type": {"code": "rest"}, "action": "X", "recorded": "2024-01-01T00:00:00Z",
         "agent": [{"requestor": True}], "source": {"observer": {"display": "s"}}},
    ],
)
def test_required_bindings_are_enforced(body):
    with pytest.raises(InvalidResource, match="required value set"):
        validate_resource(body)


@pytest.mark.parametrize(
    "body",
    [
        {"resourceType": "Observation", "status": "entered-in-error", "code": {"text": "x"}},
        {"resourceType": "DiagnosticReport", "status": "appended", "code": {"text": "x"}},
        {"resourceType": "Task", "status": "in-progress", "intent": "order"},
        {"resourceType": "AuditEvent", "type": {"code": "rest"}, "action": "E", "outcome": "12",
         "recorded": "2024-01-01T00:00:00Z", "agent": [{"requestor": True}], "source": {"observer": {"display": "s"}}},
    ],
)
def test_codes_of_the_full_value_sets_pass(body):
    validate_resource(body)
