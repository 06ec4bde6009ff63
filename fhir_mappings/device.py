"""A model version as a FHIR R4 Device, marked as AI the HL7 way.

HL7 AI Transparency on FHIR (hl7.org/fhir/uv/aitransparency, profile
AI-Device) requires Device.type `Artificial-Intelligence` from its CodeSystem
AIdeviceTypeCS. The id comes from name and version alone, so re-registering
the same version updates one Device; the weights' SHA-256 is its identifier,
so a Device found on a result says exactly which file produced it.
"""

import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fhir_mappings.quantities import ucum_quantity
from fhir_mappings.resources import validated
from inference.model_card import ModelCard

AI_DEVICE_TYPES = "http://hl7.org/fhir/uv/aitransparency/CodeSystem/AIdeviceTypeCS"
# No public naming system exists for weight digests or for validation results
# of a model: these are the server's own (FHIR R4 references.html#Identifier
# allows any URI that names the namespace).
WEIGHTS_SHA256_SYSTEM = "urn:medaiflow:model-weights-sha256"
DEVICE_PROPERTY_SYSTEM = "urn:medaiflow:device-property"
FORCED_ACTIVATION = "activated-without-passing-validation"
# FHIR R4 v2-0136 (Yes/no indicator).
_YES_NO = "http://terminology.hl7.org/CodeSystem/v2-0136"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NOT_IN_ID = re.compile(r"[^A-Za-z0-9.-]+")
_HASH_LENGTH = 10


@dataclass(frozen=True)
class ValidationMetric:
    """One figure of the validation run, e.g. Dice 0.91 (unit "1") or volume error 4.2 %."""

    code: str
    display: str
    value: float
    unit: str  # UCUM

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[^\s]+( [^\s]+)*", self.code) or not self.display.strip() or not self.unit:
            raise ValueError(f"a validation metric needs a code, a display and a UCUM unit, got {self!r}")
        if not math.isfinite(self.value):
            raise ValueError(f"validation metric {self.code}: {self.value!r} is not a number")
        if self.code == FORCED_ACTIVATION:
            raise ValueError(f"{FORCED_ACTIVATION!r} is the server's own Device property, not a metric code")


def device_id(card: ModelCard) -> str:
    """`<name>-<version>-<hash>`: readable, and distinct even where the slug
    folds characters FHIR ids lack (`_`, `+`) or is cut to fit 64."""
    digest = hashlib.sha256(card.key.encode()).hexdigest()[:_HASH_LENGTH]
    slug = _NOT_IN_ID.sub("-", f"{card.name}-{card.version}")[: 64 - _HASH_LENGTH - 1]
    return f"{slug}-{digest}"


def model_device(
    card: ModelCard,
    weights_sha256: str,
    active: bool,
    metrics: Sequence[ValidationMetric],
    *,
    ever_forced: bool = False,
) -> dict[str, Any]:
    """The Device as JSON, validated against the R4 model.

    `ever_forced`: the version was activated, at some time, although its
    validation did not pass. The Device says so for good, a later passing
    validation notwithstanding: the results made meanwhile name this Device
    (not one of its versions), and are judged by what it says.
    """
    digest = weights_sha256.lower()
    if not _SHA256.fullmatch(digest):
        raise ValueError(f"{weights_sha256!r} is not a SHA-256 hex digest")
    codes = [metric.code for metric in metrics]
    if len(set(codes)) != len(codes):
        raise ValueError(f"validation metrics name a code twice: {codes}")
    body: dict[str, Any] = {
        "resourceType": "Device",
        "id": device_id(card),
        "identifier": [
            {"type": {"text": "SHA-256 of the model weights"}, "system": WEIGHTS_SHA256_SYSTEM, "value": digest}
        ],
        "status": "active" if active else "inactive",
        "manufacturer": card.manufacturer,
        "deviceName": [{"name": card.name, "type": "model-name"}],
        "type": {
            "coding": [
                {"system": AI_DEVICE_TYPES, "code": "Artificial-Intelligence", "display": "All kinds of Artificial Intelligence"}
            ]
        },
        "version": [{"value": card.version}],
        "property": [_metric(metric) for metric in metrics] + [_ever_forced(ever_forced)],
    }
    if card.description.strip():
        body["note"] = [{"text": card.description.strip()}]
    return validated(body)


def _metric(metric: ValidationMetric) -> dict[str, Any]:
    return {
        "type": {"coding": [{"system": DEVICE_PROPERTY_SYSTEM, "code": metric.code, "display": metric.display}]},
        "valueQuantity": [ucum_quantity(metric.value, metric.unit)],
    }


def _ever_forced(ever_forced: bool) -> dict[str, Any]:
    answer = ("Y", "Yes") if ever_forced else ("N", "No")
    display = "Ever activated without a passing validation"
    return {
        "type": {"coding": [{"system": DEVICE_PROPERTY_SYSTEM, "code": FORCED_ACTIVATION, "display": display}]},
        "valueCode": [{"coding": [{"system": _YES_NO, "code": answer[0], "display": answer[1]}]}],
    }
