"""The CapabilityStatement, made from the same tables the server runs on
(search parameters, writable and history-keeping types), so that what it
declares is what the server does (FHIR R4 capabilitystatement.html)."""

from typing import Any

from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from fhir_mappings import fhirpath
from fhir_mappings.json_patch import MEDIA_TYPE as JSON_PATCH
from fhir_mappings.resources import check_required_bindings
from fhir_mappings.search_parameters import (
    COMMON,
    DEFINITIONS,
    ParamType,
    parameters_for,
    reference_parameters,
)

_TYPE_DEFINITIONS = "http://hl7.org/fhir/SearchParameter"
_SUBSCRIPTIONS = (
    "Keeps every version. Channel type rest-hook only: a POST with an empty body to channel.endpoint when no"
    " payload is asked for, else a PUT of the resource to channel.endpoint/[type]/[id] in application/fhir+json"
    " or application/json, with the channel.header entries as HTTP headers. The endpoint must lie under a URL"
    " prefix the server's operator allows (MEDAIFLOW_SUBSCRIPTION_ENDPOINTS). A requested Subscription becomes"
    " active when accepted; one whose notification keeps failing becomes error, with Subscription.error saying"
    " why. Notifications are sent with the rights of whoever last wrote the Subscription, while it still holds"
    " them; AuditEvent and Subscription cannot be subscribed to."
)
_EVERYTHING = "http://hl7.org/fhir/OperationDefinition/Patient-everything"
# FHIR Bulk Data Access v2.0.0 (hl7.org/fhir/uv/bulkdata/export.html).
_BULK_DATA = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition"
# Patient-everything, which R4 defines, and the Patient-level export; a
# CapabilityStatement names operations by their definitions.
_PATIENT_OPERATIONS = [{"name": "everything", "definition": _EVERYTHING},
                       {"name": "export", "definition": f"{_BULK_DATA}/patient-export"}]
# The Group-level export: a Group's member Patients and their compartments.
_GROUP_OPERATIONS = [{"name": "export", "definition": f"{_BULK_DATA}/group-export"}]
_GROUPS = (
    "Keeps every version. A Group of Patients is a cohort for Group/[id]/$export, which exports the members"
    " whose membership holds at the kick-off (not inactive, within their period), their compartments and"
    " the Group (with _since, a member who joined after it, by the Group's version then, is exported whole);"
    " a Group with members of other types is refused by it. A Group is in the Patient compartment of"
    " each Patient it names as a member (R4, by member): Patient/[id]/Group, $everything, the Patient-level"
    " export and patient/ scopes reach it, whole."
)
# Every type's content can be validated, and a writable type's writes rehearsed.
_VALIDATE = {"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"}


def capability_statement(
    base_url: str, software_version: str, writable: frozenset[str], history_types: frozenset[str], auth_url: str
) -> CapabilityStatement:
    resources = []
    for resource_type in sorted(DEFINITIONS):
        keeps_history = resource_type in history_types
        interactions = ["read", "vread", "search-type"]
        if keeps_history:
            interactions += ["history-instance", "history-type"]
        if resource_type in writable:
            interactions += ["create", "update", "patch", "delete"]
        parameters = [*COMMON.values(), *parameters_for(resource_type).values()]
        sort_names = [parameter.name for parameter in parameters if parameter.type is not ParamType.REFERENCE]
        operations = [*{"Patient": _PATIENT_OPERATIONS, "Group": _GROUP_OPERATIONS}.get(resource_type, []),
                      _VALIDATE]
        resources.append(
            {
                "type": resource_type,
                "documentation": (
                    _SUBSCRIPTIONS if resource_type == "Subscription"
                    else _GROUPS if resource_type == "Group"
                    else "Keeps every version." if keeps_history
                    else "Projected from the hash-chained audit trail, which AuditEvent/$verify checks; read-only."
                    if resource_type == "AuditEvent"
                    else "Derived from the DICOM store; only the current version is kept."
                ),
                "interaction": [{"code": code} for code in interactions],
                "versioning": "versioned-update" if resource_type in writable else "versioned",
                "readHistory": keeps_history,
                "updateCreate": resource_type in writable,
                "conditionalCreate": resource_type in writable,
                "conditionalRead": "full-support",
                "conditionalUpdate": resource_type in writable,
                "conditionalDelete": "single" if resource_type in writable else "not-supported",
                "searchInclude": sorted(
                    f"{resource_type}:{name}" for name in reference_parameters(resource_type)
                ),
                "searchRevInclude": sorted(
                    f"{source}:{name}"
                    for source in DEFINITIONS
                    for name, parameter in reference_parameters(source).items()
                    if resource_type in parameter.targets or "Resource" in parameter.targets
                ),
                "searchParam": [
                    {
                        "name": parameter.name,
                        "definition": f"{_TYPE_DEFINITIONS}/{_definition_id(resource_type, parameter.name)}",
                        "type": parameter.type.value,
                        "documentation": parameter.documentation
                        + (" (sortable)" if parameter.name in sort_names else ""),
                    }
                    for parameter in parameters
                ],
                "operation": operations,
            }
        )
    statement = CapabilityStatement.model_validate(
        {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": "2026-11-27",
            "kind": "instance",
            "software": {"name": "MedAIFlow", "version": software_version},
            "implementation": {"description": "MedAIFlow FHIR R4 server", "url": base_url},
            "fhirVersion": "4.0.1",
            "format": ["application/fhir+json", "application/json", "application/fhir+xml", "application/xml"],
            # R4 http.html#patch: JSON Patch, and FHIRPath Patch (a Parameters resource) in either FHIR
            # format; not XML Patch.
            "patchFormat": [JSON_PATCH, "application/fhir+json", "application/fhir+xml"],
            "rest": [
                {
                    "mode": "server",
                    "documentation": (
                        "Search: comma is OR, a repeated parameter is AND; _count (default 20, at most 1000), "
                        "_sort, _include and _revinclude (with :iterate), _summary (true, text, data, count), "
                        "_elements, _total (none, estimate, accurate). Chains (subject:Patient.identifier=) "
                        "and reverse chains (_has:Observation:patient:code=) go one level. "
                        "Unknown parameters are ignored unless "
                        "the request has Prefer: handling=strict. XML is produced for reads and searches. "
                        "Patient/[id]/[type] searches a type within a patient's compartment, and "
                        "Patient/[id]/$everything (start, end, _since, _type, _count) returns the patient and "
                        "its compartment. Patch takes JSON Patch (application/json-patch+json) and FHIRPath Patch"
                        " (a Parameters resource, application/fhir+json or +xml), also conditional (PATCH"
                        " [type]?[query]) and as Bundle entries (a Binary holding a JSON Patch, or a Parameters);"
                        f" FHIRPath Patch paths take a subset of FHIRPath: {fhirpath.SUPPORTED}. "
                        "Subscriptions notify by rest-hook (see Subscription). Bulk Data "
                        "$export (system, Patient and Group level) writes NDJSON files of what the caller "
                        "may read and search, kept for a while (MEDAIFLOW_EXPORT_RETENTION_HOURS)."
                    ),
                    "security": _security(auth_url),
                    "compartment": ["http://hl7.org/fhir/CompartmentDefinition/patient"],
                    "resource": resources,
                    "interaction": [{"code": "batch"}, {"code": "transaction"}, {"code": "history-system"}],
                    "operation": [{"name": "export", "definition": f"{_BULK_DATA}/export"}],
                }
            ],
        }
    )
    check_required_bindings(statement, "CapabilityStatement")
    return statement


def _security(auth_url: str) -> dict[str, Any]:
    """SMART on FHIR (App Launch 2.x): clients find the token endpoint here
    as in /.well-known/smart-configuration."""
    return {
        "cors": True,
        "service": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR",
        }]}],
        "extension": [{
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": [{"url": "token", "valueUri": f"{auth_url}/token"},
                          {"url": "authorize", "valueUri": f"{auth_url}/authorize"}],
        }],
        "description": (
            "OAuth 2.0 Bearer tokens from the token endpoint (password grant; client_credentials with a secret, or "
            "with an RS384 or ES384 client assertion as SMART Backend Services sign it; authorization_code with PKCE "
            "S256 and refresh_token for SMART apps' standalone and EHR launch), or HTTP Basic. "
            "Permissions are SMART v2 scopes; patient/ ones (read and search) reach the Patient of the launch "
            "context (picked with launch/patient, or named by an EHR launch), and its compartment, alone."
        ),
    }


def _definition_id(resource_type: str, name: str) -> str:
    if name.startswith("_"):
        return f"Resource-{name[1:]}"
    return _SHARED_DEFINITIONS.get((resource_type, name), f"{resource_type}-{name}")


# Standard parameters that R4 defines once for several types
# (searchparameter-registry.html: the clinical-* and individual-* entries).
_SHARED_DEFINITIONS = {
    ("ImagingStudy", "identifier"): "clinical-identifier",
    ("ImagingStudy", "patient"): "clinical-patient",
    ("DiagnosticReport", "identifier"): "clinical-identifier",
    ("DiagnosticReport", "patient"): "clinical-patient",
    ("DiagnosticReport", "code"): "clinical-code",
    ("DiagnosticReport", "date"): "clinical-date",
    ("Observation", "identifier"): "clinical-identifier",
    ("Observation", "patient"): "clinical-patient",
    ("Observation", "code"): "clinical-code",
    ("Observation", "date"): "clinical-date",
    ("Patient", "family"): "individual-family",
    ("Patient", "given"): "individual-given",
    ("Patient", "birthdate"): "individual-birthdate",
    ("Patient", "gender"): "individual-gender",
}
