"""Which patients a resource or a search is about: the little of the FHIR R4
Patient compartment (compartmentdefinition-patient.html) that the audit
trail needs to name the patient of each access."""

from typing import Any

import orjson

from fhir_mappings.search_values import split_reference

# The elements by which this server's resources point at their patient.
_PATIENT_ELEMENTS = ("subject", "patient", "for", "beneficiary")


def patients_of(resource: dict[str, Any]) -> list[str]:
    """The Patient ids `resource` belongs to (itself, for a Patient)."""
    if resource.get("resourceType") == "Patient":
        return [resource["id"]] if isinstance(resource.get("id"), str) else []
    found = []
    for element in _PATIENT_ELEMENTS:
        value = resource.get(element)
        for reference in value if isinstance(value, list) else [value]:
            if isinstance(reference, dict) and isinstance(reference.get("reference"), str):
                target = split_reference(reference["reference"])
                if target is not None and target[0] == "Patient":
                    found.append(target[1])
    return found


def patients_of_json(body: bytes) -> list[str]:
    """The Patient ids of a stored resource, from its JSON (plain orjson: references hold no decimals to keep)."""
    return patients_of(orjson.loads(body))


def patients_searched(resource_type: str, pairs: list[tuple[str, str]]) -> list[str]:
    """The Patient ids a search names: `patient=`, `subject=` (of a Patient),
    and `_id=` on Patient itself."""
    found = []
    for name, value in pairs:
        base, _, modifier = name.partition(":")
        for item in (part.strip() for part in value.split(",")):
            if not item:
                continue
            if base == "_id" and resource_type == "Patient" and not modifier:
                found.append(item)
            elif base in ("patient", "subject") and modifier in ("", "Patient"):
                target = split_reference(item) if "/" in item else ("Patient", item)
                if target is not None and target[0] == "Patient" and (base == "patient" or "/" in item or modifier):
                    found.append(target[1])
    return found
