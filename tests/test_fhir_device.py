"""fhir_mappings/device.py: a model version as an HL7 AI Transparency Device."""

import dataclasses
import math

import pytest

from fhir_mappings.device import (
    AI_DEVICE_TYPES,
    DEVICE_PROPERTY_SYSTEM,
    FORCED_ACTIVATION,
    WEIGHTS_SHA256_SYSTEM,
    ValidationMetric,
    device_id,
    model_device,
)
from fhir_mappings.resources import RESOURCE_ID, validated
from tests.ai_cards import demo_card
from conformance.fhir_schema import validate_fhir

SHA = "0123456789abcdef" * 4
METRICS = [
    ValidationMetric("dice", "Dice similarity coefficient", 0.912, "1"),
    ValidationMetric("volume-error", "Mean absolute volume error", 4.2, "%"),
    ValidationMetric("count-accuracy", "Lesion count accuracy", 97.5, "%"),
]


def _property(device: dict, code: str) -> dict:
    matches = [item for item in device["property"] if item["type"]["coding"][0]["code"] == code]
    assert len(matches) == 1, code
    assert matches[0]["type"]["coding"][0]["system"] == DEVICE_PROPERTY_SYSTEM
    return matches[0]


def test_device_is_valid_r4_and_marked_as_ai():
    device = model_device(demo_card(), SHA, True, METRICS)
    validated(device)
    validate_fhir(device)
    assert device["type"]["coding"] == [
        {"system": AI_DEVICE_TYPES, "code": "Artificial-Intelligence", "display": "All kinds of Artificial Intelligence"}
    ]
    assert device["identifier"][0]["system"] == WEIGHTS_SHA256_SYSTEM
    assert device["identifier"][0]["value"] == SHA
    assert device["deviceName"] == [{"name": "demo", "type": "model-name"}]
    assert device["version"] == [{"value": "1.0.0"}]
    assert device["manufacturer"] == "MedAIFlow"
    assert device["note"] == [{"text": "Finds lesions on CT phantoms"}]
    assert device["status"] == "active"
    assert device["id"] == device_id(demo_card())


def test_inactive_device():
    device = model_device(demo_card(), SHA, False, [])
    assert device["status"] == "inactive"
    validate_fhir(device)


def test_validation_metrics_are_properties_in_ucum():
    device = model_device(demo_card(), SHA, True, METRICS)
    dice = _property(device, "dice")
    assert dice["type"]["coding"][0]["display"] == "Dice similarity coefficient"
    assert dice["valueQuantity"] == [{"value": 0.912, "unit": "1", "system": "http://unitsofmeasure.org", "code": "1"}]
    assert _property(device, "volume-error")["valueQuantity"][0]["code"] == "%"
    assert _property(device, "count-accuracy")["valueQuantity"][0]["value"] == 97.5


@pytest.mark.parametrize(("forced", "answer"), [(True, "Y"), (False, "N")])
def test_forced_activation_is_stated_either_way(forced, answer):
    device = model_device(demo_card(), SHA, True, METRICS[:1], ever_forced=forced)
    flag = _property(device, FORCED_ACTIVATION)
    assert flag["valueCode"][0]["coding"][0]["system"] == "http://terminology.hl7.org/CodeSystem/v2-0136"
    assert flag["valueCode"][0]["coding"][0]["code"] == answer
    validate_fhir(device)


def test_no_description_no_note():
    device = model_device(dataclasses.replace(demo_card(), description="  "), SHA, True, [])
    assert "note" not in device


def test_digest_is_normalised_and_checked():
    assert model_device(demo_card(), SHA.upper(), True, [])["identifier"][0]["value"] == SHA
    for bad in ("", "abc", SHA[:-1] + "g", SHA + "0"):
        with pytest.raises(ValueError, match="SHA-256"):
            model_device(demo_card(), bad, True, [])


def test_metric_codes_must_be_distinct():
    with pytest.raises(ValueError, match="twice"):
        model_device(demo_card(), SHA, True, [METRICS[0], METRICS[0]])


@pytest.mark.parametrize(
    "args",
    [("", "Dice", 0.9, "1"), ("dice", " ", 0.9, "1"), ("dice", "Dice", 0.9, ""), ("dice", "Dice", math.nan, "1"),
     ("two  spaces", "Dice", 0.9, "1"), (FORCED_ACTIVATION, "Forced", 1.0, "1")],
)
def test_bad_metrics_are_refused(args):
    with pytest.raises(ValueError):
        ValidationMetric(*args)


def test_device_id_is_deterministic_readable_and_valid():
    card = demo_card()
    assert device_id(card) == device_id(demo_card())
    assert device_id(card).startswith("demo-1.0.0-")
    assert RESOURCE_ID.fullmatch(device_id(card))
    assert device_id(card) != device_id(demo_card(version="1.0.1"))


def test_device_id_keeps_apart_what_the_slug_folds():
    plain, underscored = demo_card(name="liver-seg"), demo_card(name="liver_seg")
    assert device_id(plain) != device_id(underscored)
    assert RESOURCE_ID.fullmatch(device_id(underscored))
    assert device_id(demo_card(version="1.0+a")) != device_id(demo_card(version="1.0-a"))


def test_device_id_of_the_longest_name_and_version_fits():
    card = demo_card(name="n" * 64, version="v" * 32)
    other = demo_card(name="n" * 64, version="v" * 31 + "w")
    assert len(device_id(card)) <= 64
    assert RESOURCE_ID.fullmatch(device_id(card))
    assert device_id(card) != device_id(other)
    validate_fhir(model_device(card, SHA, True, []))
