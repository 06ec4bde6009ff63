"""The DIMSE gateway against real peers: dcmtk's echoscu and storescu, and pynetdicom as an SCU."""

import socket
import subprocess
import threading
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from server.app import create_app
from server.auth.scopes import Role
from server.dimse.peers import PeerError
from server.services import Services
from server.settings import Settings
from tests.conftest import admin_headers
from tests.dicom_files import make_ct

OUR_TITLE = "MEDAIFLOW-T"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Port 0: the gateway takes a free one, which `app.state.dimse.address` tells.
    return settings.model_copy(update={"dimse_port": 0, "dimse_ae_title": OUR_TITLE})


@pytest.fixture
def gateway(services: Services) -> Iterator[tuple[TestClient, int]]:
    app: FastAPI = create_app(services=services)
    before = set(threading.enumerate())
    with TestClient(app, base_url="http://testserver", headers=admin_headers(services)) as client:
        port = app.state.dimse.address[1]
        yield client, port
    # Stopped with the app: its listener and association threads are gone, and so is the port.
    left = [thread.name for thread in set(threading.enumerate()) - before
            if thread.is_alive() and thread.name != "AnyIO worker thread"]  # the test client's pool, kept for reuse
    assert left == []
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def _dcmtk(tool: str, port: int, *files: str, calling: str = "MODALITY1", called: str = OUR_TITLE) -> str:
    done = subprocess.run([tool, "-aet", calling, "-aec", called, "127.0.0.1", str(port), *files],
                          capture_output=True, text=True, timeout=60)
    return f"rc={done.returncode}\n{done.stdout}{done.stderr}"


def _events(services: Services, client: TestClient, **params: str) -> list[dict]:
    services.audit.chain.project()
    bundle = client.get("/fhir/AuditEvent", params={**params, "_count": 100}).json()
    return [entry["resource"] for entry in bundle.get("entry", [])]


def test_a_registered_peer_echoes_and_others_are_rejected_and_recorded(services, gateway):
    client, port = gateway
    services.peers.add("MODALITY1", "127.0.0.1", Role.MODALITY)
    services.peers.add("ELSEWHERE", "10.11.12.13", Role.MODALITY)

    assert _dcmtk("echoscu", port).startswith("rc=0")
    unknown = _dcmtk("echoscu", port, calling="STRANGER")
    assert not unknown.startswith("rc=0") and "Calling AE Title Not Recognized" in unknown
    wrong_host = _dcmtk("echoscu", port, calling="ELSEWHERE")
    assert not wrong_host.startswith("rc=0") and "Calling AE Title Not Recognized" in wrong_host
    not_us = _dcmtk("echoscu", port, called="SOMEONE-ELSE")
    assert not not_us.startswith("rc=0") and "Called AE Title Not Recognized" in not_us

    alerts = _events(services, client, type="110113", subtype="110126")
    described = {event["agent"][0]["name"]: event["outcomeDesc"] for event in alerts}
    assert len(alerts) == 3 and all(event["outcome"] == "4" for event in alerts)
    assert "'STRANGER' is no registered peer" in described["STRANGER"]
    assert "registered for host 10.11.12.13, not 127.0.0.1" in described["ELSEWHERE"]
    assert "called AE title 'SOMEONE-ELSE' is not ours" in described["MODALITY1"]
    assert {event["agent"][0]["network"]["address"] for event in alerts} == {"127.0.0.1"}
    # Registering the peers was recorded too, as a security change of the server's own.
    changes = _events(services, client, type="110113", subtype="110137")
    assert sorted(event["outcomeDesc"] for event in changes) == [
        "DICOM peer ELSEWHERE added: host 10.11.12.13, role modality",
        "DICOM peer MODALITY1 added: host 127.0.0.1, role modality",
    ]


def test_a_series_stored_by_storescu_is_indexed_and_audited_as_a_stow(services, gateway, tmp_path: Path):
    client, port = gateway
    services.peers.add("MODALITY1", "127.0.0.1", Role.MODALITY)
    study, series = generate_uid(), generate_uid()
    files = []
    for number in range(1, 4):
        path = tmp_path / f"ct{number}.dcm"
        path.write_bytes(make_ct(study, series, InstanceNumber=number))
        files.append(str(path))

    assert _dcmtk("storescu", port, *files).startswith("rc=0")

    found = client.get("/dicom-web/studies", params={"StudyInstanceUID": study}).json()
    assert [item["00201208"]["Value"] for item in found] == [[3]]  # NumberOfStudyRelatedInstances
    assert client.get(f"/fhir/ImagingStudy?identifier=urn:oid:{study}").json()["total"] == 1
    stored = _events(services, client, type="110104", action="C", **{"agent-name": "MODALITY1"})
    assert len(stored) == 3
    assert all(event["agent"][0]["network"]["address"] == "127.0.0.1" for event in stored)
    assert all(study in str(event["entity"]) for event in stored)

    # A resend stores nothing new, succeeds, and is recorded too.
    assert _dcmtk("storescu", port, files[0]).startswith("rc=0")
    resent = _events(services, client, type="110104", action="C", **{"agent-name": "MODALITY1"})
    assert len(resent) == 4 and any("answered status 0000" in event["outcomeDesc"] for event in resent)
    assert services.audit.chain.verify().intact


def _scu(port: int, calling: str = "MODALITY1") -> AE:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    return ae


def test_a_corrupt_data_set_is_refused_and_nothing_is_stored(services, gateway, tmp_path: Path):
    client, port = gateway
    services.peers.add("MODALITY1", "127.0.0.1", Role.MODALITY)
    # No StudyInstanceUID: nothing the index could file it under (STOW refuses it alike).
    corrupt = dcmread(BytesIO(make_ct()))
    del corrupt.StudyInstanceUID
    association = _scu(port).associate("127.0.0.1", port, ae_title=OUR_TITLE)
    assert association.is_established
    try:
        status = association.send_c_store(corrupt)
    finally:
        association.release()
    assert status.Status == 0xC000
    assert client.get("/dicom-web/studies").json() == []
    assert list(services.store.root.rglob("*.dcm")) == []
    refused = _events(services, client, type="110104", outcome="4")
    assert len(refused) == 1 and "answered status C000" in refused[0]["outcomeDesc"]


def test_a_peer_whose_role_may_not_store_is_refused(services, gateway):
    client, port = gateway
    services.peers.add("VIEWER1", "127.0.0.1", Role.AUDITOR)
    association = _scu(port, "VIEWER1").associate("127.0.0.1", port, ae_title=OUR_TITLE)
    assert association.is_established
    try:
        assert association.send_c_echo().Status == 0x0000
        status = association.send_c_store(dcmread(BytesIO(make_ct())))
    finally:
        association.release()
    assert status.Status == 0x0124
    assert client.get("/dicom-web/studies").json() == []


def test_peers_are_checked_when_registered(services):
    with pytest.raises(PeerError, match="1 to 16"):
        services.peers.add("A-TITLE-FAR-TOO-LONG", "127.0.0.1", Role.MODALITY)
    with pytest.raises(PeerError, match="backslash"):
        services.peers.add("BAD\\AE", "127.0.0.1", Role.MODALITY)
    services.peers.add("CT1", "10.0.0.0/24", Role.MODALITY)
    with pytest.raises(PeerError, match="registered already"):
        services.peers.add("CT1", "10.0.0.2", Role.MODALITY)
    [peer] = services.peers.all()
    assert peer.calls_from("10.0.0.7") and not peer.calls_from("10.0.1.7")
    assert services.peers.find("localhost") is None
    services.peers.add("NAMED", "localhost", Role.CLINICIAN)
    assert services.peers.find("NAMED").calls_from("127.0.0.1")  # a host name, resolved when it calls
    services.peers.remove("CT1")
    with pytest.raises(PeerError, match="no peer"):
        services.peers.remove("CT1")


def test_peers_are_managed_by_admin_users_over_http(services, client):
    added = client.post("/admin/dicom-peers", json={"aeTitle": "CT-ROOM-2", "host": "10.1.2.3", "role": "modality"})
    assert added.status_code == 201 and added.json() == {"aeTitle": "CT-ROOM-2", "host": "10.1.2.3", "role": "modality"}
    again = client.post("/admin/dicom-peers", json={"aeTitle": "CT-ROOM-2", "host": "10.1.2.3", "role": "modality"})
    assert again.status_code == 409
    bad = client.post("/admin/dicom-peers", json={"aeTitle": "", "host": "10.1.2.3", "role": "modality"})
    assert bad.status_code == 422 and "1 to 16" in bad.json()["message"]
    assert client.post("/admin/dicom-peers", json={"aeTitle": "X", "host": "h", "role": "root"}).status_code == 400
    assert client.get("/admin/dicom-peers").json() == [added.json()]
    # A client, even one with every scope, confers no role.
    token, _ = services.auth.issuer.issue("pacs-client", None, "system/*.cruds", client=True)
    as_client = client.post("/admin/dicom-peers", json={"aeTitle": "SNEAKY", "host": "10.0.0.1", "role": "admin"},
                            headers={"Authorization": f"Bearer {token}"})
    assert as_client.status_code == 403
    assert client.delete("/admin/dicom-peers/CT-ROOM-2").status_code == 204
    assert client.delete("/admin/dicom-peers/CT-ROOM-2").status_code == 404
    assert client.get("/admin/dicom-peers").json() == []


def test_peers_are_managed_from_the_command_line(tmp_path, database_url, monkeypatch, capsys):
    from server.cli import main

    monkeypatch.setenv("MEDAIFLOW_DATA_DIR", str(tmp_path / "cli-data"))
    monkeypatch.setenv("MEDAIFLOW_DATABASE_URL", database_url)
    assert main(["peers", "add", "PACS1", "--host", "192.168.4.0/24", "--role", "clinician"]) == 0
    assert main(["peers", "add", "PACS1", "--host", "192.168.4.9", "--role", "clinician"]) == 2
    assert main(["peers", "list"]) == 0
    assert main(["peers", "remove", "PACS1"]) == 0
    assert main(["peers", "remove", "PACS1"]) == 2
    out, err = capsys.readouterr()
    assert "PACS1            clinician    192.168.4.0/24" in out
    assert "registered already" in err and "no peer" in err
