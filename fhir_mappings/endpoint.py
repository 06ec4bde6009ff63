"""The server's own DICOMweb services as FHIR Endpoints.

R4 gives an Endpoint one connectionType, so the one DICOMweb root appears as
three Endpoints: WADO-RS (which ImagingStudy.endpoint points at), QIDO-RS
and STOW-RS. Codes: FHIR R4 CodeSystem endpoint-connection-type.
"""

from fhir_mappings.resources import validated

CONNECTION_TYPES = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
WADO_ENDPOINT_ID = "dicomweb-wado-rs"

_SERVICES = (
    (WADO_ENDPOINT_ID, "dicom-wado-rs", "DICOMweb WADO-RS", ["application/dicom", "application/dicom+json"]),
    ("dicomweb-qido-rs", "dicom-qido-rs", "DICOMweb QIDO-RS", ["application/dicom+json"]),
    ("dicomweb-stow-rs", "dicom-stow-rs", "DICOMweb STOW-RS", ["application/dicom"]),
)


def dicomweb_endpoints(address: str) -> list[dict[str, object]]:
    """The three Endpoints as JSON, validated against the R4 model."""
    return [
        validated(
            {
                "resourceType": "Endpoint",
                "id": resource_id,
                "status": "active",
                "connectionType": {"system": CONNECTION_TYPES, "code": code},
                "name": f"MedAIFlow {name}",
                "payloadType": [{"text": "DICOM"}],
                "payloadMimeType": mime_types,
                "address": address,
            }
        )
        for resource_id, code, name, mime_types in _SERVICES
    ]
