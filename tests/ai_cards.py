"""A small model card for the FHIR mapping tests, built the way a bundle declares it."""

from typing import Any

from inference.model_card import ModelCard

SCT = "http://snomed.info/sct"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
LESION = {"system": SCT, "code": "52988006", "display": "Lesion"}
COUNT_CODE = {"system": "urn:example:measurements", "code": "lesion-count", "display": "Number of lesions"}
VOLUME = {"system": SCT, "code": "118565006", "display": "Volume"}
CENTER = {"system": DCM, "code": "111010", "display": "Center"}
LONG_AXIS = {"system": SCT, "code": "103339001", "display": "Long axis"}

ALL_MEASUREMENTS = [
    {"kind": "count", "code": COUNT_CODE, "unit": "{lesions}"},
    {"kind": "total_volume", "code": VOLUME, "unit": "mL"},
    {"kind": "finding_volume", "code": VOLUME, "unit": "mL"},
    {"kind": "centroid", "code": CENTER, "unit": "mm"},
    {"kind": "longest_diameter", "code": LONG_AXIS, "unit": "mm"},
]


def demo_metadata(name: str = "demo", version: str = "1.0.0", **segment: Any) -> dict[str, Any]:
    """configs/metadata.json of a one-segment lesion model; `segment` overrides its fields."""
    return {
        "name": name,
        "version": version,
        "description": "Finds lesions on CT phantoms",
        "authors": "MedAIFlow tests",
        "medaiflow": {
            "manufacturer": "MedAIFlow",
            "series": {"modality": "CT", "sop_class_uids": ["1.2.840.10008.5.1.4.1.1.2"], "min_slices": 20},
            "segments": [
                {"label": 1, "name": "lesion", "finding": LESION, "min_component_ml": 0.05,
                 "measurements": ALL_MEASUREMENTS, **segment}
            ],
        },
    }


def demo_card(name: str = "demo", version: str = "1.0.0", **segment: Any) -> ModelCard:
    return ModelCard.from_metadata(demo_metadata(name, version, **segment))
