"""The DIMSE gateway against real peers: dcmtk's echoscu and storescu, and pynetdicom as an SCU."""

import base64
import errno
import gc
import resource
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import psutil
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)
from sqlalchemy import select

from server.app import create_app
from server.auth.scopes import Role
from server.dimse.peers import PeerError
from server.services import Services
from server.settings import Settings
from server.tables import study_activity
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
    with services.engine.connect() as connection:  # the inference trigger: quiet-study clock started, as by a STOW
        touched = connection.execute(select(study_activity.c.study_instance_uid)).scalars().all()
    assert touched == [study]
    # Kept as sent (storescu proposes Explicit VR Little Endian first), under a File Meta of ours naming the peer.
    from dicom.dimse import IMPLEMENTATION_CLASS_UID

    [kept, *_] = services.store.root.rglob("*.dcm")
    meta = dcmread(kept).file_meta
    assert meta.TransferSyntaxUID == "1.2.840.10008.1.2.1" and meta.MediaStorageSOPClassUID == CTImageStorage
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID and meta.SourceApplicationEntityTitle == "MODALITY1"
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


def _c_store(port: int, sent: Dataset | Path, calling: str = "MODALITY1") -> Dataset:
    """One C-STORE over an association of its own: its response."""
    association = _scu(port, calling).associate("127.0.0.1", port, ae_title=OUR_TITLE)
    assert association.is_established
    try:
        return association.send_c_store(sent)
    finally:
        association.release()


def _c_find(port: int, calling: str, **keys: str) -> list[Dataset]:
    """One Study Root C-FIND of `keys` over an association of its own: the status of each response."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    association = ae.associate("127.0.0.1", port, ae_title=OUR_TITLE)
    assert association.is_established
    identifier = Dataset()
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    try:
        return [status for status, _ in association.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind)]
    finally:
        association.release()


def test_a_corrupt_data_set_is_refused_and_nothing_is_stored(services, gateway, tmp_path: Path):
    client, port = gateway
    services.peers.add("MODALITY1", "127.0.0.1", Role.MODALITY)
    # No StudyInstanceUID: nothing the index could file it under (STOW refuses it alike).
    corrupt = dcmread(BytesIO(make_ct()))
    del corrupt.StudyInstanceUID
    assert _c_store(port, corrupt).Status == 0xC000
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
    assert peer.calls_from("::ffff:10.0.0.7") and not peer.calls_from("::1") and not peer.calls_from("not an address")
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


def _findscu(port: int, level: str, *keys: str, model: str = "-S") -> list[dict[str, str]]:
    """findscu's matches, each as {tag: value}, from its extracted response files."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        args = ["findscu", "-aet", "MODALITY1", "-aec", OUR_TITLE, model, "-k", f"QueryRetrieveLevel={level}", "-X",
                "-od", folder]
        for key in keys:
            args += ["-k", key]
        done = subprocess.run([*args, "127.0.0.1", str(port)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        return [{element.keyword or str(element.tag): str(element.value) for element in dcmread(path)}
                for path in sorted(Path(folder).iterdir())]


def test_a_series_stored_by_storescu_is_found_by_c_find_and_qido(services, gateway, tmp_path: Path):
    client, port = gateway
    services.peers.add("MODALITY1", "127.0.0.1", Role.ADMIN)
    study, series = generate_uid(), generate_uid()
    other_study = generate_uid()
    files = []
    for number in range(1, 4):
        path = tmp_path / f"ct{number}.dcm"
        path.write_bytes(make_ct(study, series, InstanceNumber=number, PatientName="Müller^Anna",
                                 AccessionNumber="ACC-7"))
        files.append(str(path))
    other = tmp_path / "other.dcm"
    other.write_bytes(make_ct(other_study, PatientID="PID-2", PatientName="Other^Bob", StudyDate="20230101"))
    assert _dcmtk("storescu", port, *files, str(other)).startswith("rc=0")
    assert [item["0020000D"]["Value"] for item in client.get("/dicom-web/studies",
            params={"PatientName": "Müller*"}).json()] == [[study]]

    [found] = _findscu(port, "STUDY", "PatientName=M*", "StudyInstanceUID", "NumberOfStudyRelatedInstances",
                       "AccessionNumber", "StudyDescription")
    assert found["StudyInstanceUID"] == study and found["NumberOfStudyRelatedInstances"] == "3"
    assert found["PatientName"] == "Müller^Anna" and found["AccessionNumber"] == "ACC-7"
    assert found["StudyDescription"] == ""  # asked for, none stored: present and empty
    dated = _findscu(port, "STUDY", "StudyDate=20240101-20241231", "StudyInstanceUID")
    assert [match["StudyInstanceUID"] for match in dated] == [study]
    both = _findscu(port, "STUDY", f"StudyInstanceUID={study}\\{other_study}")
    assert sorted(match["StudyInstanceUID"] for match in both) == sorted([study, other_study])
    [in_series] = _findscu(port, "SERIES", f"StudyInstanceUID={study}", "SeriesInstanceUID", "Modality",
                           "NumberOfSeriesRelatedInstances")
    assert in_series["SeriesInstanceUID"] == series and in_series["NumberOfSeriesRelatedInstances"] == "3"
    images = _findscu(port, "IMAGE", f"StudyInstanceUID={study}", f"SeriesInstanceUID={series}", "SOPInstanceUID",
                      "InstanceNumber")
    assert sorted(match["InstanceNumber"] for match in images) == ["1", "2", "3"]
    assert _findscu(port, "STUDY", "PatientID=PID-2", "StudyInstanceUID", model="-P")[0]["StudyInstanceUID"] \
        == other_study
    assert _findscu(port, "STUDY", "PatientName=Nobody") == []

    queries = _events(services, client, type="110112", **{"agent-name": "MODALITY1"})
    assert len(queries) == 7 and all(event["outcome"] == "0" for event in queries)
    assert all(event["agent"][0]["network"]["address"] == "127.0.0.1" for event in queries)
    asked = [base64.b64decode(entity["query"]) for event in queries for entity in event["entity"] if "query" in entity]
    assert b"PatientName=M%2A&StudyInstanceUID=&NumberOfStudyRelatedInstances=" in b"\n".join(asked)
    # Whose data each answer disclosed is named, as in a QIDO-RS search's record: the patient of each match.
    patient_of = {study: _patient_of(client, study), other_study: _patient_of(client, other_study)}
    named = [sorted(_patients_named(event)) for event in queries]
    assert [patient_of[study]] in named and sorted(patient_of.values()) in named and [] in named  # Nobody: none


def _patient_of(client: TestClient, study: str) -> str:
    imaging_study = client.get(f"/fhir/ImagingStudy?identifier=urn:oid:{study}").json()["entry"][0]["resource"]
    return imaging_study["subject"]["reference"]


def _patients_named(event: dict) -> list[str]:
    return [entity["what"]["reference"] for entity in event.get("entity", [])
            if entity.get("what", {}).get("reference", "").startswith("Patient/")]


def _studies_named(event: dict) -> list[str]:
    return [entity["what"]["identifier"]["value"].removeprefix("urn:oid:") for entity in event.get("entity", [])
            if entity.get("name") == "Study Instance UID"]


def test_c_find_refuses_what_it_cannot_answer(services, gateway):

    _, port = gateway
    services.peers.add("MODALITY1", "127.0.0.1", Role.MODALITY)  # may store, not search
    services.peers.add("VIEWER1", "127.0.0.1", Role.CLINICIAN)

    def find(calling: str, **keys: str) -> list[int]:
        return [status.Status for status in _c_find(port, calling, **keys)]

    assert find("MODALITY1", QueryRetrieveLevel="STUDY", StudyInstanceUID="") == [0x0124]
    assert find("VIEWER1", QueryRetrieveLevel="PATIENT", PatientID="") == [0xA900]
    assert find("VIEWER1", QueryRetrieveLevel="STUDY", StudyDate="not-a-date") == [0xA900]
    assert find("VIEWER1", QueryRetrieveLevel="STUDY", StudyInstanceUID="") == [0x0000]


def test_with_several_workers_the_first_to_bind_the_port_serves_dimse(services):
    from dataclasses import replace

    from server.dimse.scp import start_dimse

    several = replace(services, settings=services.settings.model_copy(update={"workers": 2, "dimse_port": 19111}))
    alone = replace(services, settings=several.settings.model_copy(update={"workers": 1}))
    first = start_dimse(several)
    try:
        assert first is not None and first.address[1] == 19111
        assert start_dimse(several) is None
        with pytest.raises(OSError):  # a single process has no one else to serve DIMSE: it does not start
            start_dimse(alone)
    finally:
        assert first is not None
        first.stop()


def test_c_get_sends_the_matching_instances_back_over_the_association(services, gateway, tmp_path: Path):
    client, port = gateway
    services.peers.add("MODALITY1", "127.0.0.1", Role.ADMIN)
    study, series = generate_uid(), generate_uid()
    sent = {}
    for number in range(1, 4):
        payload = make_ct(study, series, InstanceNumber=number)
        sent[dcmread(BytesIO(payload)).SOPInstanceUID] = payload
        (tmp_path / f"ct{number}.dcm").write_bytes(payload)
    assert _dcmtk("storescu", port, *(str(tmp_path / f"ct{n}.dcm") for n in range(1, 4))).startswith("rc=0")
    received = tmp_path / "received"
    received.mkdir()
    done = subprocess.run(["getscu", "-aet", "MODALITY1", "-aec", OUR_TITLE, "-S", "-k", "QueryRetrieveLevel=SERIES",
                           "-k", f"StudyInstanceUID={study}", "-k", f"SeriesInstanceUID={series}", "-od", str(received),
                           "127.0.0.1", str(port)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    got = {dcmread(path).SOPInstanceUID: dcmread(path) for path in received.iterdir()}
    assert set(got) == set(sent)
    for uid, dataset in got.items():
        assert dataset.PixelData == dcmread(BytesIO(sent[uid])).PixelData
    [retrieved] = _events(services, client, type="110104", action="R", **{"agent-name": "MODALITY1"})
    assert retrieved["outcomeDesc"] == "C-GET from MODALITY1: 3 instances" and study in str(retrieved["entity"])
    assert _patients_named(retrieved) == [_patient_of(client, study)]

    services.peers.add("STORER", "127.0.0.1", Role.MODALITY)  # may store, not read
    refused = subprocess.run(["getscu", "-aet", "STORER", "-aec", OUR_TITLE, "-S", "-k", "QueryRetrieveLevel=STUDY",
                              "-k", f"StudyInstanceUID={study}", "-od", str(received), "127.0.0.1", str(port)],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 0 and "DIMSE status is: Unknown Status: 0x124" in refused.stderr  # dcmtk has no name
    assert len(list(received.iterdir())) == 3



def test_the_gateway_names_itself_and_sends_each_pdu_at_once(services, gateway):
    from dicom.dimse import IMPLEMENTATION_CLASS_UID

    client, port = gateway
    services.peers.add("MODALITY1", "127.0.0.1", Role.MODALITY)
    association = _scu(port).associate("127.0.0.1", port, ae_title=OUR_TITLE)
    assert association.is_established
    try:
        assert association.acceptor.implementation_class_uid == IMPLEMENTATION_CLASS_UID
        [accepted] = client.app.state.dimse._server.active_associations
        # Without TCP_NODELAY, a response of two PDUs (a C-GET's C-STORE-RQ: command, then data set) waits
        # for the peer's delayed ACK of the first: 40 ms a sub-operation with getscu.
        assert accepted.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        association.release()


def test_a_data_set_that_is_not_the_instance_the_request_names_is_refused(services, gateway, tmp_path: Path,
                                                                         monkeypatch):
    from pynetdicom import _config

    client, port = gateway
    services.peers.add("MODALITY1", "127.0.0.1", Role.MODALITY)
    # Sending in chunks, pynetdicom sends a file's data set as it is, under the SOP Instance UID its File Meta names.
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    sent = dcmread(BytesIO(make_ct()))
    sent.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    sent.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2"  # what the gateway accepts first; nothing is converted
    path = tmp_path / "mislabelled.dcm"
    sent.save_as(path)  # as it is: enforce_file_format would set the File Meta from the data set
    assert _c_store(port, path).Status == 0xA900
    assert client.get("/dicom-web/studies").json() == []
    assert list(services.store.root.rglob("*.dcm")) == [] and list(services.store.temp_dir.iterdir()) == []
    [refused] = _events(services, client, type="110104", outcome="4")
    assert "answered status A900" in refused["outcomeDesc"] and sent.SOPInstanceUID in refused["outcomeDesc"]


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"])
def test_file_meta_elements_sent_in_the_data_set_do_not_override_ours(services, gateway, syntax):
    """Some SCUs send their file's File Meta elements in the data set (no part of it, PS3.10 7.1): stored behind
    our File Meta, they were read as part of it, the peer's Transfer Syntax UID (here not the one negotiated) and
    Source AE Title overriding ours."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    client, port = gateway
    services.peers.add("MODALITY1", "127.0.0.1", Role.MODALITY)
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(CTImageStorage, [syntax])
    sent = dcmread(BytesIO(make_ct(transfer_syntax=syntax)))
    stale = ImplicitVRLittleEndian if syntax != ImplicitVRLittleEndian else ExplicitVRLittleEndian
    sent.add_new(0x00020001, "OB", b"\0\1")  # an OB: a 4-byte length in explicit VR
    sent.add_new(0x00020010, "UI", stale)
    sent.add_new(0x00020016, "AE", "ITS-SOURCE")
    association = ae.associate("127.0.0.1", port, ae_title=OUR_TITLE)
    assert association.is_established
    try:
        assert association.send_c_store(sent).Status == 0x0000
    finally:
        association.release()
    [kept] = services.store.root.rglob("*.dcm")
    stored = dcmread(kept)
    assert (stored.file_meta.TransferSyntaxUID, stored.file_meta.SourceApplicationEntityTitle) == (syntax, "MODALITY1")
    assert [element.tag for element in stored if element.tag.group == 0x0002] == []
    assert (stored.PatientID, stored.PixelData) == (sent.PatientID, sent.PixelData)


def test_a_c_get_names_what_it_retrieves_by_uid(services, gateway, tmp_path: Path):
    """Hierarchical retrieval (PS3.4 C.4.3.1.3.1): an empty key or a wildcard would retrieve every instance it
    matches (with no keys, the whole archive), so it is refused and nothing is sent."""
    from pynetdicom import build_role
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

    _, port = gateway
    services.peers.add("MODALITY1", "127.0.0.1", Role.ADMIN)
    study, series = generate_uid(), generate_uid()
    (tmp_path / "ct.dcm").write_bytes(make_ct(study, series))
    assert _dcmtk("storescu", port, str(tmp_path / "ct.dcm")).startswith("rc=0")

    def get(**keys: str) -> tuple[list[int], int]:
        received: list[str] = []

        def take(event: evt.Event) -> int:
            # The gateway has pynetdicom receive data sets to files, in this process the test's SCU too.
            event.dataset_path.unlink()
            received.append(event.request.AffectedSOPInstanceUID)
            return 0

        ae = AE(ae_title="MODALITY1")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        ae.add_requested_context(CTImageStorage)
        handlers = [(evt.EVT_C_STORE, take)]
        association = ae.associate("127.0.0.1", port, ae_title=OUR_TITLE, evt_handlers=handlers,
                                   ext_neg=[build_role(CTImageStorage, scp_role=True)])
        assert association.is_established
        identifier = Dataset()
        for keyword, value in keys.items():
            setattr(identifier, keyword, value)
        try:
            statuses = [status.Status for status, _ in
                        association.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)]
        finally:
            association.release()
        return statuses, len(received)

    assert get(QueryRetrieveLevel="STUDY", StudyInstanceUID="") == ([0xA900], 0)
    assert get(QueryRetrieveLevel="STUDY", StudyInstanceUID="*") == ([0xA900], 0)
    assert get(QueryRetrieveLevel="STUDY", PatientID="*") == ([0xA900], 0)  # no StudyInstanceUID
    assert get(QueryRetrieveLevel="SERIES", SeriesInstanceUID=series) == ([0xA900], 0)  # no study above it
    assert get(QueryRetrieveLevel="SERIES", StudyInstanceUID=f"{study}\\{generate_uid()}",
               SeriesInstanceUID=series) == ([0xA900], 0)  # a list above the level
    assert get(QueryRetrieveLevel="SERIES", StudyInstanceUID=study, SeriesInstanceUID=f"{series}\\{generate_uid()}"
               ) == ([0xFF00, 0x0000], 1)
    assert get(QueryRetrieveLevel="STUDY", StudyInstanceUID=study) == ([0xFF00, 0x0000], 1)


def test_a_c_find_matching_more_than_the_limit_is_refused_whole(services, gateway, tmp_path: Path, monkeypatch):

    client, port = gateway
    services.peers.add("MODALITY1", "127.0.0.1", Role.ADMIN)
    for number in range(3):
        (tmp_path / f"ct{number}.dcm").write_bytes(make_ct(generate_uid(), generate_uid(), PatientID="MANY"))
    assert _dcmtk("storescu", port, *(str(tmp_path / f"ct{n}.dcm") for n in range(3))).startswith("rc=0")
    monkeypatch.setattr(services.settings, "dimse_find_max_matches", 2)

    def find(patient_id: str) -> list[tuple[int, str]]:
        return [(status.Status, str(status.get("ErrorComment", ""))) for status in
                _c_find(port, "MODALITY1", QueryRetrieveLevel="STUDY", PatientID=patient_id, StudyInstanceUID="")]

    assert find("MANY") == [(0xA700, "more than 2 matches; narrow the query")]
    assert [status for status, _ in find("MAN?")] == [0xA700]
    refused = _events(services, client, type="110112", outcome="4")
    assert [event["outcomeDesc"] for event in refused] == ["C-FIND from MODALITY1 refused: more than 2 matches"] * 2
    monkeypatch.setattr(services.settings, "dimse_find_max_matches", 3)
    assert [status for status, _ in find("MANY")] == [0xFF00, 0xFF00, 0xFF00, 0x0000]


def test_a_c_find_disclosing_more_patients_than_an_event_names_is_recorded_in_several(services, gateway,
                                                                                     tmp_path: Path):

    from fhir_mappings.audit_event import MAX_PATIENTS_NAMED

    client, port = gateway
    services.peers.add("MODALITY1", "127.0.0.1", Role.ADMIN)
    count = MAX_PATIENTS_NAMED + 5
    for number in range(count):
        (tmp_path / f"ct{number}.dcm").write_bytes(make_ct(generate_uid(), generate_uid(), PatientID=f"CROWD{number}"))
    assert _dcmtk("storescu", port, *(str(tmp_path / f"ct{n}.dcm") for n in range(count))).startswith("rc=0")
    statuses = _c_find(port, "MODALITY1", QueryRetrieveLevel="STUDY", PatientID="CROWD*", StudyInstanceUID="")
    assert [status.Status for status in statuses] == [0xFF00] * count + [0x0000]
    events = _events(services, client, type="110112", **{"agent-name": "MODALITY1"})
    assert len(events) == 2
    named = [patient for event in events for patient in _patients_named(event)]
    assert len(named) == len(set(named)) == count
    # Each names the studies of its own patients, not all of them (the events of a C-FIND of 10,000 studies of as
    # many patients would name a million).
    studies = [(study, event) for event in events for study in _studies_named(event)]
    assert len(studies) == count
    assert all(_patient_of(client, study) in _patients_named(event) for study, event in studies)


def _large_ct(path: Path, study: str, frames: int) -> int:
    """A multi-frame CT of `frames` 512x512 16-bit frames, written in pieces: its pixel data is never in memory."""
    header = dcmread(BytesIO(make_ct(study, size=512, NumberOfFrames=frames)))
    del header.PixelData
    header.save_as(path)  # Explicit VR Little Endian, as make_ct writes it
    frame = bytes(512 * 512 * 2)
    with path.open("ab") as out:
        out.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, len(frame) * frames))
        for _ in range(frames):
            out.write(frame)
    return path.stat().st_size


class _PeakRss:
    """The process's resident memory above what it was at the start, at its highest, sampled every 10 ms."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self.start = self._process.memory_info().rss
        self.peak = self.start
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss sampler")
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(0.01):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def growth(self) -> int:
        self._done.set()
        self._thread.join()
        return self.peak - self.start


@pytest.fixture
def system_temp(tmp_path: Path, monkeypatch) -> Path:
    """The folder pynetdicom writes received data sets into (tempfile's default), here one of this test's own so that
    what is left there can be seen apart from other processes' files."""
    folder = tmp_path / "system-temp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_a_large_instance_is_streamed_to_disk_not_held_in_memory(services, gateway, tmp_path: Path, system_temp):
    client, port = gateway
    services.peers.add("MODALITY1", "127.0.0.1", Role.MODALITY)
    study = generate_uid()
    size = _large_ct(tmp_path / "large.dcm", study, frames=572)  # 300 MB of pixel data
    gc.collect()

    rss = _PeakRss()
    assert _dcmtk("storescu", port, str(tmp_path / "large.dcm")).startswith("rc=0")
    growth = rss.growth()

    print(f"RSS growth storing a {size / 2**20:.0f} MiB instance: {growth / 2**20:.1f} MiB")
    assert growth < size / 10
    found = client.get("/dicom-web/studies", params={"StudyInstanceUID": study}).json()
    assert [item["00201208"]["Value"] for item in found] == [[1]]
    [kept] = services.store.root.rglob("*.dcm")
    assert kept.stat().st_size >= size - 1024
    from dicom.dimse import IMPLEMENTATION_CLASS_UID

    meta = dcmread(kept, stop_before_pixels=True).file_meta
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID and meta.SourceApplicationEntityTitle == "MODALITY1"
    assert list(system_temp.iterdir()) == [] and list(services.store.temp_dir.iterdir()) == []


@pytest.mark.parametrize("cut_by", ["peer", "server"])
def test_a_transfer_cut_off_midway_leaves_no_file_behind(services, gateway, tmp_path: Path, system_temp, cut_by):
    """By the peer (its connection drops, as when a modality is switched off) or by the server stopping."""
    client, port = gateway
    dimse = client.app.state.dimse
    services.peers.add("MODALITY1", "127.0.0.1", Role.MODALITY)
    _large_ct(tmp_path / "large.dcm", generate_uid(), frames=572)
    peer = subprocess.Popen(["storescu", "-aet", "MODALITY1", "-aec", OUR_TITLE, "127.0.0.1", str(port),
                             str(tmp_path / "large.dcm")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not any(path.stat().st_size > 20 * 2**20 for path in system_temp.iterdir()):
            assert time.monotonic() < deadline and peer.poll() is None, "the transfer never got under way"
            time.sleep(0.01)
        if cut_by == "server":
            dimse.stop()  # aborts the association and waits for its thread
        else:
            peer.kill()
            deadline = time.monotonic() + 10
            while dimse._server.active_associations:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        peer.kill()
        peer.wait()

    assert list(system_temp.iterdir()) == [] and list(services.store.temp_dir.iterdir()) == []
    assert list(services.store.root.rglob("*.dcm")) == [] and client.get("/dicom-web/studies").json() == []


@pytest.mark.parametrize("full", ["before", "midway"])
def test_a_store_whose_disk_has_no_room_is_refused_with_0xa700(services, gateway, system_temp, monkeypatch, full):
    """Checked before the copy from the system temp folder (the store's disk may be another, and fuller), and met
    midway as on STOW; either way nothing is kept, in either folder."""
    import shutil

    client, port = gateway
    services.peers.add("MODALITY1", "127.0.0.1", Role.MODALITY)
    if full == "before":
        real = shutil.disk_usage
        # A disk with a few bytes free: statvfs can report one here, but no full disk can be made for a test.
        monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=100))
    else:
        real_new_temp_file = services.store.new_temp_file

        def full(data: bytes) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        def new_temp_file():
            writer = real_new_temp_file()
            writer.write = full
            return writer
        monkeypatch.setattr(services.store, "new_temp_file", new_temp_file)
    assert _c_store(port, dcmread(BytesIO(make_ct()))).Status == 0xA700
    assert list(system_temp.iterdir()) == [] and list(services.store.temp_dir.iterdir()) == []
    assert list(services.store.root.rglob("*.dcm")) == [] and client.get("/dicom-web/studies").json() == []


def test_an_association_not_yet_started_is_not_taken_for_ended(services, gateway):
    """EVT_CONN_OPEN comes before pynetdicom starts the association's thread: another association opening then
    swept it as ended, and a file it left later (a failed write) was never found."""
    from pynetdicom.association import Association

    client, _ = gateway
    dimse = client.app.state.dimse
    opening = Association(AE(), "acceptor")
    dimse._associations.append(opening)
    dimse._sweep()
    assert opening in dimse._associations
    dimse._associations.remove(opening)


def test_a_store_whose_handler_fails_leaves_no_file_behind(services, gateway, system_temp, monkeypatch):
    """pynetdicom removes the received file only when the C-STORE handler returns; the gateway does when it raises
    (here as the peer is looked up, as when the database is unreachable)."""
    client, port = gateway
    services.peers.add("MODALITY1", "127.0.0.1", Role.MODALITY)
    association = _scu(port).associate("127.0.0.1", port, ae_title=OUR_TITLE)
    assert association.is_established

    def unreachable(calling: str) -> None:
        raise ConnectionError("the database is unreachable")
    monkeypatch.setattr(services.peers, "find", unreachable)
    try:
        status = association.send_c_store(dcmread(BytesIO(make_ct())))
    finally:
        association.release()
    assert status.Status == 0xC211  # pynetdicom's answer to a handler that raised
    assert list(system_temp.iterdir()) == [] and list(services.store.temp_dir.iterdir()) == []


def test_a_transfer_that_fails_writing_to_the_system_temp_folder_leaves_no_file_behind(services, gateway,
                                                                                       tmp_path: Path, system_temp):
    """pynetdicom's thread dies on the failed write (as on a full disk) and the connection closes without an event;
    the file is found as the next association opens."""
    client, port = gateway
    services.peers.add("MODALITY1", "127.0.0.1", Role.MODALITY)
    _large_ct(tmp_path / "large.dcm", generate_uid(), frames=100)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    # Files of this process may grow to 20 MB: a write beyond fails with EFBIG (its signal ignored) as one on a full
    # disk fails with ENOSPC.
    ignored = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20 * 2**20, limits[1]))
    try:
        assert not _dcmtk("storescu", port, str(tmp_path / "large.dcm")).startswith("rc=0")
        deadline = time.monotonic() + 10
        while client.app.state.dimse._server.active_associations:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, ignored)
    [left] = system_temp.iterdir()  # no close event came: the file is there until the next association
    assert left.stat().st_size == 20 * 2**20

    assert _dcmtk("echoscu", port).startswith("rc=0")
    assert list(system_temp.iterdir()) == [] and list(services.store.temp_dir.iterdir()) == []
    assert list(services.store.root.rglob("*.dcm")) == []
