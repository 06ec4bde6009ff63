"""The CapabilityStatement is true: each declared search parameter finds what
it should and nothing else, each declared _include/_revinclude is accepted,
undeclared writes are refused (FHIR R4 capabilitystatement.html)."""

import pytest
from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from fhir_mappings.date_ranges import instant_text
from fhir_mappings.search_parameters import ParamType, parameters_for
from fhir_mappings.search_values import extract
from tests.fhir_checks import ids, seed

DCM = "http://dicom.nema.org/resources/ontology/DCM"
SCT = "http://snomed.info/sct"


def _cc(code: str, system: str = SCT) -> dict:
    return {"coding": [{"system": system, "code": code}]}


# One resource per type with a value for every declared parameter (two where
# R4 allows only one of the values, e.g. Observation.value[x]), and a plain
# one that must match none of those values.
RICH = [
    {"resourceType": "Patient", "id": "rich-patient", "identifier": [{"system": "urn:x", "value": "R1"}],
     "name": [{"family": "Richfamily", "given": ["Richgiven"]}], "birthDate": "2020-02-02", "gender": "female",
     "active": True},
    {"resourceType": "ImagingStudy", "id": "rich-study", "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.3"}],
     "status": "available", "subject": {"reference": "Patient/rich-patient"}, "started": "2024-04-04",
     "endpoint": [{"reference": "Endpoint/rich-endpoint"}],
     "series": [{"uid": "1.2.3.1", "modality": {"system": DCM, "code": "MR"}, "bodySite": {"system": SCT, "code": "12738006"},
                 "instance": [{"uid": "1.2.3.1.1", "sopClass": {"system": "urn:ietf:rfc:3986", "code": "urn:oid:1.2.840.10008.5.1.4.1.1.4"}}]}]},
    {"resourceType": "Endpoint", "id": "rich-endpoint", "identifier": [{"value": "E1"}], "name": "Richname", "status": "active",
     "connectionType": {"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type", "code": "hl7-fhir-rest"},
     "payloadType": [_cc("any", "http://terminology.hl7.org/CodeSystem/endpoint-payload-type")], "address": "http://rich"},
    {"resourceType": "DiagnosticReport", "id": "rich-report", "identifier": [{"value": "DR1"}], "status": "final",
     "subject": {"reference": "Patient/rich-patient"}, "code": _cc("18748-4", "http://loinc.org"), "category": [_cc("RAD")],
     "effectiveDateTime": "2024-05-05T10:00:00Z", "issued": "2024-05-06T10:00:00Z",
     "result": [{"reference": "Observation/rich-observation"}], "basedOn": [{"reference": "ServiceRequest/sr1"}],
     "conclusionCode": [_cc("C1")], "media": [{"link": {"reference": "Media/m1"}}]},
    {"resourceType": "Observation", "id": "rich-observation", "identifier": [{"value": "O1"}], "status": "final",
     "subject": {"reference": "Patient/rich-patient"}, "code": _cc("O-CODE"), "category": [_cc("imaging")],
     "effectivePeriod": {"start": "2024-06-06"}, "device": {"reference": "Device/rich-device"},
     "derivedFrom": [{"reference": "ImagingStudy/rich-study"}], "focus": [{"reference": "Task/rich-task"}],
     "hasMember": [{"reference": "Observation/other"}], "method": _cc("M1"),
     "valueQuantity": {"value": 3.25, "system": "http://unitsofmeasure.org", "code": "mL"},
     "component": [{"code": _cc("COMP"), "valueString": "x"}]},
    {"resourceType": "Observation", "id": "rich-observation-concept", "status": "final", "code": _cc("O-CODE-2"),
     "valueCodeableConcept": _cc("V1")},
    {"resourceType": "Device", "id": "rich-device", "identifier": [{"value": "D1"}],
     "deviceName": [{"name": "Richdevice", "type": "model-name"}], "manufacturer": "Richmaker", "modelNumber": "Richmodel",
     "status": "active", "type": _cc("AI")},
    {"resourceType": "Task", "id": "rich-task", "identifier": [{"value": "T1"}], "status": "requested", "intent": "order",
     "businessStatus": _cc("B1"), "code": _cc("TC"), "priority": "urgent", "focus": {"reference": "ImagingStudy/rich-study"},
     "for": {"reference": "Patient/rich-patient"}, "owner": {"reference": "Device/rich-device"},
     "requester": {"reference": "Device/rich-device"}, "basedOn": [{"reference": "ServiceRequest/sr1"}],
     "partOf": [{"reference": "Task/parent"}], "authoredOn": "2024-07-07", "lastModified": "2024-07-08T00:00:00Z",
     "executionPeriod": {"start": "2024-07-07T01:00:00Z"}},
    {"resourceType": "Provenance", "id": "rich-provenance", "target": [{"reference": "Patient/rich-patient"}],
     "recorded": "2024-08-08T00:00:00Z", "agent": [{"who": {"reference": "Device/rich-device"}}],
     "entity": [{"role": "source", "what": {"reference": "ImagingStudy/rich-study"}}]},
    {"resourceType": "AuditEvent", "id": "rich-audit", "type": {"system": DCM, "code": "110112"},
     "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "search-type"}], "action": "E",
     "recorded": "2024-09-09T00:00:00Z", "outcome": "0",
     "agent": [{"who": {"reference": "Device/rich-device"}, "name": "Richagent", "role": [_cc("110153", DCM)],
                "requestor": True, "network": {"address": "10.1.2.3", "type": "2"}}],
     "source": {"observer": {"reference": "Device/rich-device"}},
     "entity": [{"what": {"reference": "Patient/rich-patient"}, "name": "Richentity", "type": {"system": DCM, "code": "110180"},
                 "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"}}]},
    {"resourceType": "Subscription", "id": "rich-subscription", "status": "active", "reason": "rich",
     "criteria": "DiagnosticReport?status=final", "contact": [{"system": "email", "value": "rich@example.org"}],
     "channel": {"type": "rest-hook", "endpoint": "https://rich.example/hook", "payload": "application/fhir+json"}},
    {"resourceType": "Group", "id": "rich-group", "type": "person", "actual": True,
     "identifier": [{"system": "urn:rich", "value": "rich-group"}],
     "code": {"coding": [{"system": "urn:rich", "code": "cohort"}]},
     "managingEntity": {"reference": "Organization/rich-org"},
     "member": [{"entity": {"reference": "Patient/rich-patient"}}],
     "characteristic": [{"code": {"coding": [{"system": "urn:rich", "code": "trait"}]},
                         "valueCodeableConcept": {"coding": [{"system": "urn:rich", "code": "yes"}]},
                         "exclude": True}]},
]
# Every type is searched by its meta's security labels, tags and profiles too.
RICH = [{**resource, "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                                            "code": "AIAST"}],
                              "tag": [{"system": "urn:rich", "code": "rich"}],
                              "profile": ["http://rich.example/StructureDefinition/rich"]}}
        for resource in RICH]
PLAIN = [
    {"resourceType": "Patient", "id": "plain-patient", "gender": "male"},
    {"resourceType": "ImagingStudy", "id": "plain-study", "status": "registered", "subject": {"reference": "Patient/plain-patient"}},
    {"resourceType": "Endpoint", "id": "plain-endpoint", "status": "off",
     "connectionType": {"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type", "code": "direct-project"},
     "payloadType": [{"text": "none"}], "address": "http://plain"},
    {"resourceType": "DiagnosticReport", "id": "plain-report", "status": "partial", "code": {"text": "plain"}},
    {"resourceType": "Observation", "id": "plain-observation", "status": "preliminary", "code": {"text": "plain"}},
    {"resourceType": "Device", "id": "plain-device", "status": "inactive"},
    {"resourceType": "Task", "id": "plain-task", "status": "draft", "intent": "plan"},
    {"resourceType": "Provenance", "id": "plain-provenance", "target": [{"reference": "Task/plain-task"}],
     "recorded": "2001-01-01T00:00:00Z", "agent": [{"who": {"reference": "Organization/o1"}}]},
    {"resourceType": "AuditEvent", "id": "plain-audit", "type": {"system": DCM, "code": "110100"}, "action": "R",
     "recorded": "2001-01-01T00:00:00Z", "outcome": "4", "agent": [{"requestor": False}],
     "source": {"observer": {"reference": "Organization/o1"}}},
    {"resourceType": "Subscription", "id": "plain-subscription", "status": "off", "reason": "plain",
     "criteria": "Task?status=ready", "channel": {"type": "websocket", "endpoint": "wss://plain.example/hook"}},
    {"resourceType": "Group", "id": "plain-group", "type": "device", "actual": False,
     "characteristic": [{"code": {"text": "plain"}, "valueBoolean": False, "exclude": False}]},
]


@pytest.fixture
def settings(settings):
    """Where the rich Subscription may send (no notification is sent: nothing it matches is written after it)."""
    return settings.model_copy(update={"subscription_endpoints": "https://rich.example/"})


@pytest.fixture
def capability(fhir, services):
    seed(services, *PLAIN)
    seed(services, *RICH)
    response = fhir.get("/fhir/metadata")
    assert response.status_code == 200
    return CapabilityStatement.model_validate(response.json())


def _query_value(resource: dict, name: str, kind: ParamType) -> str | None:
    values = extract(resource)
    if kind in (ParamType.TOKEN, ParamType.URI):
        found = [(system, code) for param, system, code in values.tokens if param == name]
        return f"{found[0][0]}|{found[0][1]}" if found and found[0][0] else (found[0][1] if found else None)
    if kind is ParamType.STRING:
        found = [exact for param, _, exact in values.strings if param == name]
        return found[0] if found else None
    if kind is ParamType.DATE:
        found = [low for param, low, _ in values.dates if param == name]
        return f"ge{instant_text(found[0])}" if found else None
    if kind is ParamType.REFERENCE:
        found = [f"{kind_}/{id_}" for param, kind_, id_ in values.references if param == name]
        return found[0] if found else None
    found = [value for param, value, _, _ in values.quantities if param == name]
    return str(found[0]) if found else None


def test_every_declared_search_parameter_works(fhir, capability):
    declared = {(resource.type, param.name): param.type for rest in capability.rest for resource in rest.resource
                for param in resource.searchParam}
    checked = 0
    for (resource_type, name), kind in sorted(declared.items()):
        if name == "_id":
            rich = next(r for r in RICH if r["resourceType"] == resource_type)
            value = rich["id"]
        elif name == "_lastUpdated":
            rich = next(r for r in RICH if r["resourceType"] == resource_type)
            stored = fhir.get(f"/fhir/{resource_type}/{rich['id']}").json()
            value = f"ge{stored['meta']['lastUpdated']}"
        else:
            assert parameters_for(resource_type)[name].type.value == kind
            candidates = [(r, _query_value(r, name, ParamType(kind))) for r in RICH if r["resourceType"] == resource_type]
            rich, value = next((r, v) for r, v in candidates if v is not None)
        response = fhir.get(f"/fhir/{resource_type}", params={name: value, "_count": 100},
                            headers={"Prefer": "handling=strict"})
        assert response.status_code == 200, (resource_type, name, response.text)
        found = ids(response.json())
        assert rich["id"] in found, (resource_type, name, value)
        assert not any(found_id.startswith("plain-") for found_id in found), (resource_type, name, value, found)
        checked += 1
    assert checked == sum(len(parameters_for(t)) + 2 for t in {r["resourceType"] for r in RICH})


def test_every_declared_include_is_accepted(fhir, capability):
    for rest in capability.rest:
        for resource in rest.resource:
            for value in resource.searchInclude or []:
                assert fhir.get(f"/fhir/{resource.type}", params={"_include": value}).status_code == 200, value
            for value in resource.searchRevInclude or []:
                assert fhir.get(f"/fhir/{resource.type}", params={"_revinclude": value}).status_code == 200, value
    bundle = fhir.get("/fhir/Patient", params={"_id": "rich-patient", "_revinclude": "Observation:subject"}).json()
    assert ids(bundle, "include") == ["rich-observation"]


def test_declared_interactions_match_behaviour(fhir, capability):
    for rest in capability.rest:
        for resource in rest.resource:
            codes = {interaction.code for interaction in resource.interaction}
            assert {"read", "vread", "search-type"} <= codes
            rich_id = next(r["id"] for r in RICH if r["resourceType"] == resource.type)
            body = {**next(r for r in RICH if r["resourceType"] == resource.type)}
            update = fhir.put(f"/fhir/{resource.type}/{rich_id}", json=body)
            assert (update.status_code == 200) == ("update" in codes), resource.type
            history = fhir.get(f"/fhir/{resource.type}/_history")
            assert (history.status_code == 200) == ("history-type" in codes), resource.type
            assert resource.conditionalRead == "full-support"
    formats = capability.format
    assert set(formats) == {"application/fhir+json", "application/json", "application/fhir+xml", "application/xml"}
    assert capability.fhirVersion == "4.0.1"


def test_capability_statement_in_xml(fhir):
    response = fhir.get("/fhir/metadata", params={"_format": "xml"})
    assert response.status_code == 200
    assert '<CapabilityStatement xmlns="http://hl7.org/fhir">' in response.text


@pytest.mark.parametrize("bundle_type", ["batch", "transaction"])
def test_a_bundle_entry_get_metadata_answers_the_capability_statement(fhir, services, bundle_type):
    """`GET metadata` is an interaction as any other (R4 http.html#capabilities):
    in a Bundle it answers what `GET /fhir/metadata` does, to whoever may post
    the Bundle, as the route answers anyone."""
    from server.auth.scopes import Role, role_grant

    alone = fhir.get("/fhir/metadata").json()
    entries = [{"request": {"method": "GET", "url": url}}
               for url in ("metadata", "metadata?mode=full", "http://testserver/fhir/metadata")]
    token, _ = services.auth.issuer.issue("a-clinician", "clinician", str(role_grant(Role.CLINICIAN)), client=False)
    for headers in ({}, {"Authorization": f"Bearer {token}"}):
        response = fhir.post("/fhir", json={"resourceType": "Bundle", "type": bundle_type, "entry": entries},
                             headers=headers)
        assert response.status_code == 200, response.text[:300]
        answered = response.json()["entry"]
        assert [entry["response"]["status"] for entry in answered] == ["200 OK"] * 3
        assert [entry["resource"] for entry in answered] == [alone] * 3
        head = fhir.post("/fhir", headers=headers, json={"resourceType": "Bundle", "type": bundle_type, "entry": [
            {"request": {"method": "HEAD", "url": "metadata"}}]})
        assert head.json()["entry"] == [{"response": {"status": "200 OK"}}]
