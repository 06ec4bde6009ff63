"""The search parameters this server supports, by resource type.

Names, types, expressions and targets follow the FHIR R4 (4.0.1) standard
search parameters (searchparameter-registry.html and each resource's
"Search Parameters" table). An expression is a small FHIRPath subset: a
path of element names, `|` between alternatives, `[x]` for a choice type;
a reference parameter's `targets` keep only references to those types
(the standard's `.where(resolve() is Patient)`).
"""

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType


class ParamType(Enum):
    STRING = "string"
    TOKEN = "token"
    DATE = "date"
    REFERENCE = "reference"
    QUANTITY = "quantity"
    URI = "uri"  # matched whole, as R4 search.html#uri has it without :above or :below


@dataclass(frozen=True)
class SearchParameter:
    name: str
    type: ParamType
    paths: tuple[str, ...]
    documentation: str
    targets: tuple[str, ...] = ()
    # A token parameter on a boolean element, whose only values are `true` and `false`.
    boolean: bool = False

    def __post_init__(self) -> None:
        if self.type is ParamType.REFERENCE and not self.targets:
            raise ValueError(f"reference parameter {self.name} needs its target types")


def _p(name: str, type_: ParamType, expression: str, documentation: str, targets: str = "",
       boolean: bool = False) -> SearchParameter:
    return SearchParameter(name, type_, tuple(expression.split(" | ")), documentation, tuple(targets.split()), boolean)


S, T, D, R, Q, U = (ParamType.STRING, ParamType.TOKEN, ParamType.DATE, ParamType.REFERENCE, ParamType.QUANTITY,
                    ParamType.URI)
_ANY_SUBJECT = "Patient Group Device Location Organization Practitioner Medication Substance Procedure"

DEFINITIONS: dict[str, tuple[SearchParameter, ...]] = {
    "ImagingStudy": (
        _p("identifier", T, "identifier", "Identifiers for the study: the Study Instance UID (urn:dicom:uid) and the accession number"),
        _p("patient", R, "subject", "Who the study is about, when a patient", "Patient"),
        _p("subject", R, "subject", "Who the study is about", "Patient Group Device"),
        _p("started", D, "started", "When the study was started (the StudyDate)"),
        _p("modality", T, "series.modality", "The modality of a series (DICOM Modality, DCM code system)"),
        _p("status", T, "status", "The status of the study"),
        _p("endpoint", R, "endpoint | series.endpoint", "The endpoint of the study or of a series", "Endpoint"),
        _p("series", T, "series.uid", "A Series Instance UID of the study"),
        _p("instance", T, "series.instance.uid", "A SOP Instance UID of the study"),
        _p("dicom-class", T, "series.instance.sopClass", "A SOP Class UID of an instance of the study"),
        _p("bodysite", T, "series.bodySite", "The body site of a series"),
    ),
    "Patient": (
        _p("identifier", T, "identifier", "A patient identifier (PatientID, with IssuerOfPatientID as system)"),
        _p("name", S, "name", "A portion of any part of a name: family, given, prefix, suffix or text"),
        _p("family", S, "name.family", "A portion of the family name"),
        _p("given", S, "name.given", "A portion of a given name"),
        _p("birthdate", D, "birthDate", "The patient's date of birth"),
        _p("gender", T, "gender", "Gender of the patient"),
        _p("active", T, "active", "Whether the patient record is active", boolean=True),
    ),
    "Endpoint": (
        _p("identifier", T, "identifier", "Identifies this endpoint across multiple systems"),
        _p("name", S, "name", "A name that this endpoint can be identified by"),
        _p("status", T, "status", "The current status of the endpoint"),
        _p("connection-type", T, "connectionType", "Protocol or profile supported on this endpoint"),
        _p("payload-type", T, "payloadType", "The type of content that may be used at this endpoint"),
    ),
    "DiagnosticReport": (
        _p("identifier", T, "identifier", "An identifier for the report"),
        _p("patient", R, "subject", "The subject of the report, when a patient", "Patient"),
        _p("subject", R, "subject", "The subject of the report", "Patient Group Device Location"),
        _p("status", T, "status", "The status of the report"),
        _p("code", T, "code", "The code for the report, as opposed to codes for the atomic results"),
        _p("category", T, "category", "Which diagnostic discipline or department created the report"),
        _p("date", D, "effective[x]", "The clinically relevant time of the report"),
        _p("issued", D, "issued", "When the report was issued"),
        _p("result", R, "result", "Link to an atomic result (an Observation)", "Observation"),
        _p("based-on", R, "basedOn", "Reference to the service request", "CarePlan ImmunizationRecommendation MedicationRequest NutritionOrder ServiceRequest"),
        _p("conclusion", T, "conclusionCode", "A coded conclusion (interpretation or impression)"),
        _p("media", R, "media.link", "A reference to the image source", "Media"),
    ),
    "Observation": (
        _p("identifier", T, "identifier", "The unique id for a particular observation"),
        _p("patient", R, "subject", "The subject of the observation, when a patient", "Patient"),
        _p("subject", R, "subject", "The subject of the observation", "Patient Group Device Location"),
        _p("code", T, "code", "The code of the observation type"),
        _p("category", T, "category", "The classification of the type of observation"),
        _p("date", D, "effective[x]", "Obtained date/time; a period if the observation spans time"),
        _p("status", T, "status", "The status of the observation"),
        _p("device", R, "device", "The Device that generated the observation data", "Device DeviceMetric"),
        _p("derived-from", R, "derivedFrom", "Related measurements or imaging the observation is made from", "DocumentReference ImagingStudy Media MolecularSequence Observation QuestionnaireResponse"),
        _p("value-quantity", Q, "valueQuantity", "The value of the observation, if a Quantity"),
        _p("value-concept", T, "valueCodeableConcept", "The value of the observation, if a CodeableConcept"),
        _p("focus", R, "focus", "What the observation is about, when it is not about the subject", "Resource"),
        _p("has-member", R, "hasMember", "Related resource that belongs to the observation group", "MolecularSequence Observation QuestionnaireResponse"),
        _p("method", T, "method", "The method used for the observation"),
        _p("component-code", T, "component.code", "The component code of the observation type"),
    ),
    "Device": (
        _p("identifier", T, "identifier", "Instance id from the manufacturer or owner, and other ids"),
        _p("device-name", S, "deviceName.name | type.coding.display | type.text", "A server-defined search that may match any of Device.deviceName or Device.type"),
        _p("manufacturer", S, "manufacturer", "The manufacturer of the device"),
        _p("model", S, "modelNumber", "The model of the device"),
        _p("status", T, "status", "active | inactive | entered-in-error | unknown"),
        _p("type", T, "type", "The type of the device"),
    ),
    "Task": (
        _p("identifier", T, "identifier", "Search for a task instance by its business identifier"),
        _p("status", T, "status", "Search by task status"),
        _p("intent", T, "intent", "Search by task intent"),
        _p("business-status", T, "businessStatus", "Search by business status"),
        _p("code", T, "code", "Search by task code"),
        _p("priority", T, "priority", "Search by task priority"),
        _p("focus", R, "focus", "Search by task focus", "Resource"),
        _p("subject", R, "for", "Search by subject", "Resource"),
        _p("patient", R, "for", "Search by patient", "Patient"),
        _p("owner", R, "owner", "Search by task owner", "CareTeam Device HealthcareService Organization Patient Practitioner PractitionerRole RelatedPerson"),
        _p("requester", R, "requester", "Search by task requester", "Device Organization Patient Practitioner PractitionerRole RelatedPerson"),
        _p("based-on", R, "basedOn", "Search by requests this task is based on", "Resource"),
        _p("part-of", R, "partOf", "Search by task this task is part of", "Task"),
        _p("authored-on", D, "authoredOn", "Search by creation date"),
        _p("modified", D, "lastModified", "Search by last modification date"),
        _p("period", D, "executionPeriod", "Search by period Task is/was underway"),
    ),
    "Provenance": (
        _p("target", R, "target", "Target reference(s) (usually version specific)", "Resource"),
        _p("patient", R, "target", "Target reference(s), when a patient", "Patient"),
        _p("agent", R, "agent.who", "Who participated", "Device Organization Patient Practitioner PractitionerRole RelatedPerson"),
        _p("entity", R, "entity.what", "Identity of entity", "Resource"),
        _p("recorded", D, "recorded", "When the activity was recorded / updated"),
    ),
    "AuditEvent": (
        _p("date", D, "recorded", "Time when the event was recorded"),
        _p("type", T, "type", "Type/identifier of event"),
        _p("subtype", T, "subtype", "More specific type/id for the event"),
        _p("action", T, "action", "Type of action performed during the event"),
        _p("outcome", T, "outcome", "Whether the event succeeded or failed"),
        _p("agent", R, "agent.who", "Identifier of who", "Device Organization Patient Practitioner PractitionerRole RelatedPerson"),
        _p("agent-name", S, "agent.name", "Human friendly name for the agent"),
        _p("agent-role", T, "agent.role", "Agent role in the event"),
        _p("address", S, "agent.network.address", "Identifier for the network access point of the user device"),
        _p("entity", R, "entity.what", "Specific instance of resource", "Resource"),
        _p("entity-name", S, "entity.name", "Descriptor for entity"),
        _p("entity-type", T, "entity.type", "Type of entity involved"),
        _p("entity-role", T, "entity.role", "What role the entity played"),
        _p("patient", R, "entity.what", "Identifier of the patient involved", "Patient"),
        _p("source", R, "source.observer", "The identity of source detecting the event", "Device Organization Patient Practitioner PractitionerRole RelatedPerson"),
    ),
    # R4 group.html: all but characteristic-value, a composite of characteristic and value, which this
    # server's search does not take.
    "Group": (
        _p("identifier", T, "identifier", "Unique id"),
        _p("type", T, "type", "The type of resources the group contains"),
        _p("actual", T, "actual", "Descriptive or actual", boolean=True),
        _p("code", T, "code", "The kind of resources contained"),
        _p("member", R, "member.entity", "Reference to the group member", "Device Group Medication Patient Practitioner PractitionerRole Substance"),
        _p("managing-entity", R, "managingEntity", "Entity that is the custodian of the Group's definition", "Organization Practitioner PractitionerRole RelatedPerson"),
        _p("characteristic", T, "characteristic.code", "Kind of characteristic"),
        _p("value", T, "characteristic.valueCodeableConcept | characteristic.valueBoolean", "Value held by characteristic (a CodeableConcept or a boolean)"),
        _p("exclude", T, "characteristic.exclude", "Group includes or excludes", boolean=True),
    ),
    "Subscription": (
        _p("status", T, "status", "The current state of the subscription"),
        _p("type", T, "channel.type", "The type of channel for the sent notifications"),
        _p("url", U, "channel.endpoint", "The uri that will receive the notifications"),
        _p("criteria", S, "criteria", "The search rules used to determine when to send a notification"),
        _p("payload", T, "channel.payload", "The mime-type of the notification payload"),
        _p("contact", T, "contact", "Contact details for the subscription"),
    ),
}

# Parameters for all resources (FHIR R4 search.html#all), kept in columns of
# the resource table rather than in the index tables.
COMMON: dict[str, SearchParameter] = {
    "_id": _p("_id", T, "id", "Logical id of this artifact"),
    "_lastUpdated": _p("_lastUpdated", D, "meta.lastUpdated", "When the resource version last changed"),
}


# Parameters for all resources (search.html#all) on their `meta`, indexed as
# any type's own: `_security=AIAST` finds what an AI asserted (HL7 AI
# Transparency), whatever its type.
META: tuple[SearchParameter, ...] = (
    _p("_security", T, "meta.security", "Security labels on the resource (AIAST: asserted by an AI)"),
    _p("_tag", T, "meta.tag", "Tags on the resource"),
    _p("_profile", U, "meta.profile", "Profiles the resource claims to conform to"),
)


def identifier_parameter(parameter: SearchParameter) -> SearchParameter:
    """`name:identifier` of a reference parameter (search.html#modifiers): a
    token search on Reference.identifier, indexed under that name."""
    return SearchParameter(f"{parameter.name}:identifier", ParamType.TOKEN, parameter.paths,
                           f"{parameter.documentation}, by the identifier of the reference")


@functools.lru_cache(maxsize=256)  # bounded: a request may name any type
def parameters_for(resource_type: str) -> Mapping[str, SearchParameter]:
    own = DEFINITIONS.get(resource_type)
    return MappingProxyType({parameter.name: parameter for parameter in (*own, *META)} if own else {})


def reference_parameters(resource_type: str) -> dict[str, SearchParameter]:
    return {name: p for name, p in parameters_for(resource_type).items() if p.type is ParamType.REFERENCE}
