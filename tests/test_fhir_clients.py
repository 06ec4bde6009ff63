"""FHIR clients nobody here wrote, against MedAIFlow over HTTP with an EHR's
(clinician's) token: fhirpy (async) and fhirclient (SMART on FHIR's Python
client) read a DiagnosticReport with its Observations
(`_include=DiagnosticReport:result`), follow every `next` link of a search
for 250 reports and get each exactly once, and read the model's Device."""

import asyncio

import pytest
from fhirclient.models.device import Device as ClientDevice
from fhirclient.models.diagnosticreport import DiagnosticReport as ClientReport
from fhirclient.server import FHIRServer
from fhirpy import AsyncFHIRClient

from server.auth.scopes import Role, role_grant
from server.db import write_connection

REPORTS = 250
LOINC = "http://loinc.org"
CODE = "18748-4"  # Diagnostic imaging study
DEMO = "medaiflow-demo-lesions@1.0.1"


@pytest.fixture
def ehr(live_server, services):  # type: ignore[no-untyped-def]
    """The server holding 250 reports (each with one Observation) and the demo
    model's Device; the EHR's FHIR base and token."""
    with write_connection(services.engine) as connection:
        for number in range(REPORTS):
            services.fhir.store.put(connection, {
                "resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": LOINC, "code": "33728-7", "display": "Size.maximum dimension"}]},
                "subject": {"reference": "Patient/ehr-patient"},
                "valueQuantity": {"value": number, "unit": "mm", "system": "http://unitsofmeasure.org", "code": "mm"},
            }, f"ehr-observation-{number}", "PUT")
            services.fhir.store.put(connection, {
                "resourceType": "DiagnosticReport", "status": "final",
                "code": {"coding": [{"system": LOINC, "code": CODE}]},
                "subject": {"reference": "Patient/ehr-patient"},
                "result": [{"reference": f"Observation/ehr-observation-{number}"}],
            }, f"ehr-report-{number}", "PUT")
    services.jobs.ensure_demo_model()
    token, _ = services.auth.issuer.issue("ehr", Role.CLINICIAN.value, str(role_grant(Role.CLINICIAN)), client=False)
    return f"{live_server}/fhir", token, services


def _expected_ids() -> list[str]:
    return sorted(f"ehr-report-{number}" for number in range(REPORTS))


def test_fhirpy_pages_includes_and_reads_the_device(ehr):
    base, token, services = ehr
    demo_device = services.jobs.registry.get(DEMO).device_id

    async def read() -> tuple[list[str], dict, dict]:
        client = AsyncFHIRClient(base, authorization=f"Bearer {token}")
        reports = await client.resources("DiagnosticReport").search(code=f"{LOINC}|{CODE}").limit(20).fetch_all()
        bundle = await (client.resources("DiagnosticReport").search(_id="ehr-report-7")
                        .include("DiagnosticReport", "result").fetch_raw())
        device = await client.reference("Device", demo_device).to_resource()
        return [report.id for report in reports], bundle, device

    ids, bundle, device = asyncio.run(read())
    assert sorted(ids) == _expected_ids()  # each report once: no duplicates, no gaps
    kinds = sorted((entry.resource.resourceType, entry.search.mode) for entry in bundle.entry)
    assert kinds == [("DiagnosticReport", "match"), ("Observation", "include")]
    assert device.deviceName[0]["name"] == "medaiflow-demo-lesions"


def test_fhirclient_pages_includes_and_reads_the_device(ehr):
    base, token, services = ehr
    server = FHIRServer(None, base_uri=base)
    server.session.headers["Authorization"] = f"Bearer {token}"
    search = ClientReport.where(struct={"code": f"{LOINC}|{CODE}", "_count": "20"})
    ids = [report.id for report in search.perform_resources_iter(server)]
    assert sorted(ids) == _expected_ids()
    [bundle] = ClientReport.where(struct={"_id": "ehr-report-7", "_include": "DiagnosticReport:result"}).perform_iter(server)
    assert sorted((entry.resource.resource_type, entry.search.mode) for entry in bundle.entry) == [
        ("DiagnosticReport", "match"), ("Observation", "include")]
    device = ClientDevice.read(services.jobs.registry.get(DEMO).device_id, server)
    assert device.type.coding[0].code == "Artificial-Intelligence"
