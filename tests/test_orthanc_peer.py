"""Orthanc as a PACS beside MedAIFlow, over DICOMweb only: Orthanc pushes a CT
study to us (its /dicom-web/servers/{name}/stow call, with a `modality`
user's Basic credentials), our demo model segments it, and Orthanc queries
us (/qido) and retrieves the study (/retrieve) with the SEG series our model
made, each instance byte-identical to what we hold."""

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from conformance.instances import parse_multipart
from conformance.peers import LocalOrthanc, orthanc_installed
from server.app import build_services, create_app
from server.auth.scopes import Role
from server.migrate import upgrade
from server.settings import Settings
from tests.conftest import admin_headers, served
from tests.inference_checks import phantom, series_bytes, study_uid

pytestmark = pytest.mark.skipif(not orthanc_installed(), reason="Debian's orthanc and orthanc-dicomweb are not installed")

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
_PACS_PASSWORD = "a long pacs password"
_READER_PASSWORD = "a long reader password"


@pytest.fixture
def medaiflow(settings: Settings) -> Iterator[tuple[str, Any]]:
    services = build_services(settings.model_copy(update={
        "executor": "local", "demo_model": True, "study_quiet_seconds": 0.3}))
    upgrade(services.engine)
    services.auth.identities.add_user("pacs", Role.MODALITY, _PACS_PASSWORD)
    services.auth.identities.add_user("pacs-reader", Role.CLINICIAN, _READER_PASSWORD)
    try:
        with served(create_app(services=services)) as base:
            yield base, services
    finally:
        services.engine.dispose()


def _wait_for_completed_task(base: str, headers: dict[str, str], uid: str, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        bundle = httpx.get(f"{base}/fhir/Task", params={"focus": f"ImagingStudy/{uid}"}, headers=headers).json()
        tasks = [entry["resource"] for entry in bundle.get("entry", [])]
        if tasks and tasks[0]["status"] in ("completed", "failed", "cancelled"):
            return tasks[0]
        time.sleep(0.3)
    raise AssertionError(f"no final Task for {uid} in {timeout} s")


def test_orthanc_pushes_queries_and_retrieves_the_segmented_study(medaiflow):
    base, services = medaiflow
    ours = admin_headers(services)
    study = phantom(seed=61, lesions=1)
    uid = study_uid(study)
    servers = {
        # A PACS pushes with a modality user's credentials and reads with a clinician's.
        "medaiflow": {"Url": f"{base}/dicom-web/", "Username": "pacs", "Password": _PACS_PASSWORD},
        "medaiflow-read": {"Url": f"{base}/dicom-web/", "Username": "pacs-reader", "Password": _READER_PASSWORD},
    }
    with LocalOrthanc(dicomweb_servers=servers) as orthanc, httpx.Client(base_url=orthanc.root, timeout=120) as pacs:
        for payload in series_bytes(study):
            assert pacs.post("/instances", content=payload).status_code == 200
        [orthanc_study] = pacs.get("/studies").json()

        pushed = pacs.post("/dicom-web/servers/medaiflow/stow", json={"Resources": [orthanc_study]})
        assert pushed.status_code == 200, pushed.text
        task = _wait_for_completed_task(base, ours, uid)
        assert task["status"] == "completed", task

        found = pacs.post("/dicom-web/servers/medaiflow-read/qido",
                          json={"Uri": "/studies", "Arguments": {"StudyInstanceUID": uid}})
        assert found.status_code == 200, found.text
        # Orthanc gives the answer in its own JSON form: {"0020000D": {"Name": ..., "Value": "1.2..."}}.
        assert [item["0020000D"]["Value"] for item in found.json()] == [uid]
        series = pacs.post("/dicom-web/servers/medaiflow-read/qido", json={"Uri": f"/studies/{uid}/series"}).json()
        assert sorted(item["00080060"]["Value"] for item in series) == ["CT", "SEG"]

        assert pacs.delete(f"/studies/{orthanc_study}").status_code == 200  # what comes back comes from us
        retrieved = pacs.post("/dicom-web/servers/medaiflow-read/retrieve", json={"Resources": [{"Study": uid}]})
        assert retrieved.status_code == 200, retrieved.text
        [orthanc_study] = pacs.get("/studies").json()
        instances = pacs.get(f"/studies/{orthanc_study}/instances", params={"expand": ""}).json()
        held = {instance["MainDicomTags"]["SOPInstanceUID"]: pacs.get(f"/instances/{instance['ID']}/file").content
                for instance in instances}

    ours_client = httpx.Client(base_url=base, headers=ours, timeout=60)
    listed = ours_client.get(f"/dicom-web/studies/{uid}/instances", headers={"Accept": "application/dicom+json"}).json()
    assert len(held) == len(listed) == len(series_bytes(study)) + 1
    classes = {item["00080018"]["Value"][0]: item["00080016"]["Value"][0] for item in listed}
    assert list(classes.values()).count(SEG) == 1
    for item in listed:
        sop, series_uid = item["00080018"]["Value"][0], item["0020000E"]["Value"][0]
        mine = ours_client.get(f"/dicom-web/studies/{uid}/series/{series_uid}/instances/{sop}",
                               headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
        assert mine.status_code == 200
        assert _only_part(mine) == held[sop], f"{sop} ({classes[sop]}) differs after Orthanc retrieved it"


def _only_part(response: httpx.Response) -> bytes:
    [(_, content)] = parse_multipart(response.content, response.headers["content-type"])
    return content
