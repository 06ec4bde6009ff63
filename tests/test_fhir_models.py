"""The R4 models, the required bindings they leave unchecked, and the uuid type they get wrong."""

import importlib
import pkgutil

import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from pydantic import BaseModel

from fhir_mappings.errors import InvalidResource
from fhir_mappings.resources import client_resource, model_class, validate_resource


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


def _task_with_uuid(value: str) -> dict:
    return {"resourceType": "Task", "status": "requested", "intent": "order",
            "input": [{"type": {"text": "correlation"}, "valueUuid": value}],
            "extension": [{"url": "http://example.org/correlation", "valueUuid": value}]}


def test_a_uuid_of_any_version_is_kept_as_sent():
    version_1 = "urn:uuid:a76d9bbf-f293-11e8-a1a4-7b4e5c8a1c3d"
    task = client_resource(_task_with_uuid(version_1))
    assert task["input"][0]["valueUuid"] == task["extension"][0]["valueUuid"] == version_1


@pytest.mark.parametrize(
    "value",
    [  # forms of one version 4 UUID that the models alone take, and rewrite
        "c757873d-ec9a-4326-a141-556f43239520",  # the URN's prefix left out
        "urn:uuid:C757873D-EC9A-4326-A141-556F43239520",  # R4 writes it in lower case
        "urn:uuid:{c757873d-ec9a-4326-a141-556f43239520}",
        "urn:uuid:c757873dec9a4326a141556f43239520",
        "urn:uuid:c757873d-ec9a-4326-a141-556f43239520\n",
        "urn:uuid:not-a-uuid",
    ],
)
def test_a_uuid_r4_does_not_allow_is_refused(value):
    with pytest.raises(InvalidResource, match="valueUuid"):
        validate_resource(_task_with_uuid(value))


def test_no_r4b_model_keeps_the_version_4_uuid_type():
    """The models `use_r4_uuids` retypes are every one with a uuid element, in whatever version of fhir.resources."""
    model_class("Task")
    left = [
        f"{model.__name__}.{name}"
        for model in _every_r4b_model()
        for name, field in model.model_fields.items()
        if "UUID" in repr(field.annotation)
    ]
    assert left == []


def _every_r4b_model() -> list[type[BaseModel]]:
    import fhir.resources.R4B as r4b

    modules = [
        importlib.import_module(f"fhir.resources.R4B.{module.name}")
        for module in pkgutil.iter_modules(r4b.__path__)
        if not module.name.startswith("tests")
    ]
    return [
        model for module in modules for model in vars(module).values()
        if isinstance(model, type) and issubclass(model, BaseModel) and model.__module__ == module.__name__
    ]
