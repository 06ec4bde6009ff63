"""STOW-RS over HTTP: status codes, response body, atomicity, bad input."""

import errno
import io
import os
import sqlite3
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, generate_uid
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from server.tables import instances, storage_journal, studies
from tests.dicom_files import make_ct, multipart_body, truncated_files
from tests.round_trips import round_trips
from tests.store_state import files_on_disk

DICOM_JSON = "application/dicom+json"


def _count(services, table=instances) -> int:
    with services.engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(table)).scalar_one()


def _stored_files(services) -> list:
    return sorted(services.store.root / path for path in files_on_disk(services))


def test_stores_instances_and_answers_with_references(client, services):
    study = generate_uid()
    payloads = [make_ct(study_uid=study) for _ in range(3)]
    body, content_type = multipart_body(payloads)
    response = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200
    assert response.headers["content-type"] == DICOM_JSON
    answer = response.json()
    referenced = answer["00081199"]["Value"]
    assert len(referenced) == 3
    assert "00081198" not in answer
    sent = {pydicom.dcmread(io.BytesIO(p)).SOPInstanceUID for p in payloads}
    assert {item["00081155"]["Value"][0] for item in referenced} == sent
    for item in referenced:
        url = item["00081190"]["Value"][0]
        assert url.startswith(f"http://testserver/dicom-web/studies/{study}/series/")
        assert client.get(url, headers={"Accept": "multipart/related; type=\"application/dicom\"; transfer-syntax=*"}).status_code == 200
    assert _count(services) == 3
    assert len(_stored_files(services)) == 3
    assert _count(services, storage_journal) == 0


def test_study_url_mismatch_is_409_with_failure_reason(client, services):
    body, content_type = multipart_body([make_ct()])
    response = client.post(f"/dicom-web/studies/{generate_uid()}", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 409
    failed = response.json()["00081198"]["Value"]
    assert failed[0]["00081197"]["Value"] == [0xA900]
    assert _count(services) == 0
    assert _stored_files(services) == []


def test_partial_success_is_202(client, services):
    study = generate_uid()
    body, content_type = multipart_body([make_ct(study_uid=study), b"this is not DICOM at all" * 10])
    response = client.post(f"/dicom-web/studies/{study}", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 202
    answer = response.json()
    assert len(answer["00081199"]["Value"]) == 1
    assert answer["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    assert answer["00081190"]["Value"] == [f"http://testserver/dicom-web/studies/{study}"]
    assert _count(services) == 1


def test_the_study_retrieve_url_is_always_in_the_answer(client):
    """Type 2 in PS3.18 Table I.1-1: the one study stored, else empty."""
    study = generate_uid()

    def answer(payloads: list[bytes]) -> dict:
        body, content_type = multipart_body(payloads)
        return client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type}).json()

    one_study = answer([make_ct(study_uid=study), make_ct(study_uid=study), b"this is not DICOM at all" * 10])
    assert one_study["00081190"] == {"vr": "UR", "Value": [f"http://testserver/dicom-web/studies/{study}"]}
    assert answer([make_ct(), make_ct()])["00081190"] == {"vr": "UR"}
    assert answer([b"this is not DICOM at all" * 10])["00081190"] == {"vr": "UR"}


@pytest.mark.parametrize("one_request", [False, True])
def test_a_series_uid_already_in_another_study_is_refused(client, services, one_request):
    """In one request the instances are stored in study order, so the study whose UID sorts first keeps the series."""
    series_uid = generate_uid()
    studies_in_order = sorted([generate_uid(), generate_uid()])
    kept, refused = (make_ct(study, series_uid) for study in studies_in_order)
    requests = [[refused, kept]] if one_request else [[kept], [refused]]
    answers = []
    for payloads in requests:
        body, content_type = multipart_body(payloads)
        answers.append(client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type}))
    assert [answer.status_code for answer in answers] == ([202] if one_request else [200, 409])
    [failed] = answers[-1].json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xA900]
    assert failed["00081155"]["Value"] == [pydicom.dcmread(io.BytesIO(refused)).SOPInstanceUID]
    kept_study, refused_study = studies_in_order
    series_found = client.get(f"/dicom-web/studies/{kept_study}/series").json()
    assert [item["0020000E"]["Value"][0] for item in series_found] == [series_uid]
    assert client.get("/dicom-web/studies", params={"StudyInstanceUID": refused_study}).json() == []
    assert _count(services) == 1 and _count(services, studies) == 1
    assert len(_stored_files(services)) == 1
    assert _count(services, storage_journal) == 0


def _nested_ct(depth: int) -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(make_ct()))
    item = Dataset()
    item.TextValue = "innermost"
    for _ in range(depth - 1):
        outer = Dataset()
        outer.ContentSequence = [item]
        item = outer
    dataset.ContentSequence = [item]
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_sequences_nested_deeper_than_real_objects_fail_only_their_instance(client, services):
    body, content_type = multipart_body([make_ct(), _nested_ct(90), _nested_ct(60)])
    response = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 202, response.text
    [failed] = response.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xC000]
    assert len(response.json()["00081199"]["Value"]) == 2
    assert _count(services) == 2
    assert len(_stored_files(services)) == 2


def test_a_nul_inside_a_text_value_fails_only_its_instance(client, services):
    body, content_type = multipart_body([make_ct(), make_ct(PatientID="BAD\x00NUL"), make_ct()])
    response = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 202, response.text
    [failed] = response.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xC000]
    assert _count(services) == 2


def test_a_refused_payload_is_named_by_the_uids_its_file_meta_claims(client, services):
    """Several payloads refused as unreadable can be told apart: each failed
    item names the SOP Class and Instance UIDs of its file meta (Type 1 in
    PS3.18 Table 10.5.3-3); a payload without readable meta names none."""
    nul_uid, truncated_uid = generate_uid(), generate_uid()
    nested = _nested_ct(90)
    nested_uid = pydicom.dcmread(io.BytesIO(nested)).file_meta.MediaStorageSOPInstanceUID
    payloads = [
        make_ct(sop_uid=nul_uid, PatientID="BAD\x00NUL"),
        nested,
        make_ct(sop_uid=truncated_uid, size=64)[:-3000],
        b"this is not DICOM at all" * 10,
    ]
    body, content_type = multipart_body(payloads)
    response = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 409, response.text
    failed = response.json()["00081198"]["Value"]
    named = [(item["00081150"].get("Value"), item["00081155"].get("Value")) for item in failed]
    ct = [CTImageStorage]
    assert named == [(ct, [nul_uid]), (ct, [nested_uid]), (ct, [truncated_uid]), (None, None)]
    assert [item["00081197"]["Value"] for item in failed] == [[0xC000]] * 4


def test_why_a_part_was_refused_is_logged(client, caplog):
    """The response says only 0xC000; the log says what was wrong with which part."""
    sop_uid = generate_uid()
    body, content_type = multipart_body([make_ct(), make_ct(sop_uid=sop_uid, PatientID="BAD\x00NUL")])
    with caplog.at_level("WARNING", logger="server.dicomweb.stow"):
        response = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 202, response.text
    [message] = [record.getMessage() for record in caplog.records if record.name == "server.dicomweb.stow"]
    assert f"part 2 (SOP Instance UID {sop_uid}) with FailureReason C000" in message
    assert "(0010,0020) holds a NUL character" in message


def test_a_text_that_spells_an_escaped_nul_is_kept(client, services):
    """JSON escapes a NUL as \\u0000; a comment holding those six characters has no NUL."""
    study = generate_uid()
    body, content_type = multipart_body([make_ct(study, ImageComments="not a \\u0000 character")])
    response = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text
    [instance] = client.get(f"/dicom-web/studies/{study}/metadata").json()
    assert instance["00204000"]["Value"] == ["not a \\u0000 character"]


def test_numbers_no_sql_integer_holds_are_left_out_of_the_index_not_refused(client, services):
    study = generate_uid()
    body, content_type = multipart_body([make_ct(study, SeriesNumber=2**40), make_ct(study, InstanceNumber=-(2**40))])
    response = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text
    assert _count(services) == 2
    series = client.get(f"/dicom-web/studies/{study}/series").json()
    assert 2**40 in {item["00200011"]["Value"][0] for item in series if "00200011" in item}  # as stored


def test_resent_instance_never_duplicates_the_row(client, services):
    payload = make_ct()
    body, content_type = multipart_body([payload, payload])
    assert client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type}).status_code == 200
    body, content_type = multipart_body([payload])
    assert client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type}).status_code == 200
    assert _count(services) == 1
    assert len(_stored_files(services)) == 1


def test_changed_resend_replaces_the_stored_file(client, services):
    sop = generate_uid()
    study = generate_uid()
    series = generate_uid()
    first = make_ct(study_uid=study, series_uid=series, sop_uid=sop, PatientID="OLD")
    second = make_ct(study_uid=study, series_uid=series, sop_uid=sop, PatientID="NEW")
    for payload in (first, second):
        body, content_type = multipart_body([payload])
        assert client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type}).status_code == 200
    assert _count(services) == 1
    files = _stored_files(services)
    assert len(files) == 1 and files[0].read_bytes() == second


@pytest.mark.parametrize(
    "content_type",
    [
        "application/dicom",
        "multipart/related; type=\"application/dicom+xml\"; boundary=x",
        "application/json",
        "multipart/form-data; boundary=x",
    ],
)
def test_wrong_media_type_is_415(client, services, content_type):
    response = client.post("/dicom-web/studies", content=make_ct(), headers={"Content-Type": content_type})
    assert response.status_code == 415
    assert response.json()["message"]
    assert _count(services) == 0


def test_missing_content_type_is_415(client):
    response = client.post("/dicom-web/studies", content=b"")
    assert response.status_code == 415


def test_unquoted_boundary_and_parts_without_content_type(client, services):
    body, _ = multipart_body([make_ct(), make_ct()], boundary="plainBoundary123", part_type=None)
    response = client.post(
        "/dicom-web/studies", content=body, headers={"Content-Type": "multipart/related; type=application/dicom; boundary=plainBoundary123"}
    )
    assert response.status_code == 200
    assert _count(services) == 2


def test_body_without_closing_boundary_stores_nothing(client, services):
    body, content_type = multipart_body([make_ct(), make_ct()])
    truncated = body[: body.rindex(b"--medaiflow-test-boundary--")]
    response = client.post("/dicom-web/studies", content=truncated, headers={"Content-Type": content_type})
    assert response.status_code == 400
    assert "closing" in response.json()["message"]
    assert _count(services) == 0
    assert _stored_files(services) == []
    assert list(services.store.temp_dir.iterdir()) == []


def test_truncated_dicom_file_is_refused(client, services):
    payload = make_ct(size=64)
    body, content_type = multipart_body([payload[: len(payload) - 3000]])
    response = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 409
    assert response.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    assert _count(services) == 0


def test_file_without_sop_instance_uid_is_refused(client, services):
    dataset = pydicom.dcmread(io.BytesIO(make_ct()))
    del dataset.SOPInstanceUID
    out = io.BytesIO()
    dataset.save_as(out)
    body, content_type = multipart_body([out.getvalue()])
    response = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 409
    assert _count(services) == 0


def test_path_traversal_uid_is_refused(client, services):
    body, content_type = multipart_body([make_ct(series_uid="1.2.3")])
    dataset = pydicom.dcmread(io.BytesIO(make_ct()))
    dataset.SeriesInstanceUID = "../../etc"
    out = io.BytesIO()
    dataset.save_as(out)
    body, content_type = multipart_body([out.getvalue()])
    response = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 409
    assert _count(services) == 0
    url_response = client.post("/dicom-web/studies/..%2F..%2Fetc", content=body, headers={"Content-Type": content_type})
    assert url_response.status_code in (400, 404)
    assert not any(services.store.root.parent.parent.glob("etc*"))


def test_request_over_the_size_limit_is_413(client, services):
    services.settings.max_stow_bytes = 1000
    body, content_type = multipart_body([make_ct()])
    response = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 413
    assert _count(services) == 0


def test_streamed_request_over_the_size_limit_is_413(client, services):
    services.settings.max_stow_bytes = 2000
    body, content_type = multipart_body([make_ct(size=64)])

    def chunks():
        for start in range(0, len(body), 512):
            yield body[start : start + 512]

    response = client.post("/dicom-web/studies", content=chunks(), headers={"Content-Type": content_type})
    assert response.status_code == 413
    assert _count(services) == 0
    assert list(services.store.temp_dir.iterdir()) == []


def test_empty_multipart_body_is_400(client):
    body, content_type = multipart_body([])
    response = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 400


def test_study_rows_follow_their_instances(client, services):
    study = generate_uid()
    body, content_type = multipart_body([make_ct(study_uid=study), make_ct(study_uid=study)])
    client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert _count(services, studies) == 1


@pytest.mark.parametrize("path", truncated_files(), ids=lambda p: p.rsplit("/", 1)[-1])
def test_bundled_truncated_files_are_refused(client, services, path):
    body, content_type = multipart_body([open(path, "rb").read()])
    response = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 409
    assert _count(services) == 0


def test_an_index_failure_refuses_only_its_own_instance(client, services, monkeypatch):
    from sqlalchemy.exc import OperationalError

    from server import index

    study, series, doomed = generate_uid(), generate_uid(), "1.2.826.0.1.3680043.8.498.92"
    real_write = index.write_instances

    def failing_write(connection, files, *rest):
        if any(file.description.instance.sop_instance_uid == doomed for file in files):
            raise OperationalError("INSERT", {}, Exception("simulated database failure"))
        return real_write(connection, files, *rest)

    monkeypatch.setattr(index, "write_instances", failing_write)
    payloads = [
        make_ct(study, series, "1.2.826.0.1.3680043.8.498.93", PatientName="LATER^Three"),
        make_ct(study, series, doomed, PatientName="LATER^Two"),
        make_ct(study, series, "1.2.826.0.1.3680043.8.498.91", PatientName="FIRST^One"),
    ]
    body, content_type = multipart_body(payloads)
    response = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 202
    [failed] = response.json()["00081198"]["Value"]
    assert failed["00081155"]["Value"] == [doomed]
    assert failed["00081197"]["Value"] == [0x0110]
    assert _count(services) == 2
    assert len(_stored_files(services)) == 2
    assert _count(services, storage_journal) == 0
    # Written one by one after the failure, the study still takes the first instance's attributes.
    [found] = client.get("/dicom-web/studies", params={"StudyInstanceUID": study}).json()
    assert found["00100010"]["Value"][0]["Alphabetic"] == "FIRST^One"


def test_the_index_rows_of_many_new_studies_take_as_many_statements_as_one(client, services, monkeypatch):
    """One statement per index table for a whole STOW of new instances (round
    trips were most of a STOW's time on PostgreSQL); one stored before takes
    a few more of its own."""
    from server import index

    real_write = index.write_instances
    counts: list[int] = []

    def counted(connection, files):  # type: ignore[no-untyped-def]
        with round_trips(connection) as count:
            written = real_write(connection, files)
        counts.append(count[0])
        return written

    monkeypatch.setattr(index, "write_instances", counted)
    resent = make_ct()
    for payloads in (
        [resent],
        [make_ct() for _ in range(20)],
        [make_ct(study, generate_uid()) for study in (generate_uid(), generate_uid()) for _ in range(10)],
    ):
        body, content_type = multipart_body(payloads)
        response = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
        assert response.status_code == 200
    assert counts[1] == counts[0] and counts[2] == counts[0]
    assert _count(services) == 41 and _count(services, studies) == 23
    body, content_type = multipart_body([resent, make_ct()])
    response = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200
    assert counts[3] == counts[0] + 1  # the resent one is looked up
    assert _count(services) == 42


def test_a_series_emptied_by_a_move_within_a_request_may_be_named_by_another_study(client, services):
    """An instance sent twice in one request, moving from series S1 to S2,
    leaves S1 and its study empty, and so deleted; a later instance of the
    request that puts S1 under another study is then no conflict."""
    first, second, third = (f"1.2.826.0.1.3680043.8.498.5{digit}" for digit in (1, 2, 3))  # studies in UID order
    emptied, other = generate_uid(), generate_uid()
    moved, kept = generate_uid(), generate_uid()
    body, content_type = multipart_body([
        make_ct(first, emptied, moved), make_ct(second, other, moved), make_ct(third, emptied, kept),
    ])
    response = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text
    series_of = {item["0020000D"]["Value"][0]: item["0020000E"]["Value"][0]
                 for item in client.get("/dicom-web/series").json()}
    assert series_of == {second: other, third: emptied}
    assert _count(services) == 2 and len(_stored_files(services)) == 2


def test_study_attributes_come_from_the_latest_request_and_its_first_instance(client):
    """The rule conformance/DICOM_CONFORMANCE_STATEMENT.md states: within a
    request, the first instance in (series, SOP Instance UID) order; a later
    request replaces them."""
    study, series = generate_uid(), generate_uid()

    def stow(*names: tuple[str, str]) -> None:
        payloads = [make_ct(study_uid=study, series_uid=series, sop_uid=sop, PatientName=name) for sop, name in names]
        body, content_type = multipart_body(payloads)
        assert client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type}).status_code == 200

    def name() -> str:
        [found] = client.get("/dicom-web/studies", params={"StudyInstanceUID": study}).json()
        return found["00100010"]["Value"][0]["Alphabetic"]

    stow(("1.2.826.0.1.3680043.8.498.9", "LATER^Sop"), ("1.2.826.0.1.3680043.8.498.1", "FIRST^Sop"))
    assert name() == "FIRST^Sop"
    stow(("1.2.826.0.1.3680043.8.498.5", "CORRECTED^Name"))
    assert name() == "CORRECTED^Name"


def _stored_over_http(client, payloads: list[bytes]) -> int:
    body, content_type = multipart_body(payloads)
    return client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type}).status_code


def _study_answer(client, study: str) -> dict:
    [found] = client.get("/dicom-web/studies", params={"StudyInstanceUID": study}).json()
    return found


def _series_description(client, study: str) -> list[str]:
    return [item["0008103E"]["Value"][0] for item in client.get(
        f"/dicom-web/studies/{study}/series", params={"includefield": "SeriesDescription"}).json()]


@pytest.mark.parametrize("isolated", [False, True], ids=["batch", "instance by instance"])
def test_an_instance_sent_twice_in_one_request_describes_its_study_and_series_as_stored(client, isolated):
    """The later copy is the one stored, and so the one the study and series
    describe, also when the batch is written an instance at a time (after
    one of its instances named a series of another study)."""
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    payloads = [make_ct(study, series, sop, PatientID=patient, SeriesDescription=patient.lower())
                for patient in ("A", "B")]
    if isolated:
        taken = generate_uid()
        assert _stored_over_http(client, [make_ct(series_uid=taken)]) == 200
        payloads.append(make_ct(series_uid=taken))
    assert _stored_over_http(client, payloads) == (202 if isolated else 200)
    metadata = client.get(f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/metadata").json()
    assert metadata[0]["00100020"]["Value"] == ["B"]
    assert _study_answer(client, study)["00100020"]["Value"] == ["B"]
    assert _series_description(client, study) == ["b"]


def test_an_instance_moved_to_another_study_leaves_its_old_study_described_by_what_remains(client):
    old, series, moved = generate_uid(), generate_uid(), generate_uid()
    for payload in (make_ct(old, series, PatientID="STAYS", SeriesDescription="stays"),
                    make_ct(old, series, moved, PatientID="MOVES", SeriesDescription="moves")):
        assert _stored_over_http(client, [payload]) == 200
    assert _study_answer(client, old)["00100020"]["Value"] == ["MOVES"]
    assert _stored_over_http(client, [make_ct(generate_uid(), sop_uid=moved, PatientID="MOVES")]) == 200
    assert _study_answer(client, old)["00100020"]["Value"] == ["STAYS"]
    assert _series_description(client, old) == ["stays"]


def test_a_stow_moving_an_instance_out_of_a_study_queues_behind_its_delete(services, monkeypatch):
    """A re-sent instance that moves to another study empties its old one,
    which the STOW then deletes, while a DELETE of that old study runs. The
    STOW locks the old study before the instance, as DELETE does: they
    queue. (They used to deadlock: the STOW held the instance and waited
    for the study, the DELETE the reverse.)"""
    if services.engine.dialect.name != "postgresql":
        pytest.skip("SQLite writers take turns: they cannot deadlock")
    from functools import partial

    from sqlalchemy import event

    from server import index
    from server.db import retried_on_conflict
    from server.dicomweb.delete import delete_resources

    old_study, new_study, sop = generate_uid(), generate_uid(), generate_uid()
    assert _stored_directly(services, make_ct(old_study, sop_uid=sop))[0].failure is None
    deadlocks: list[BaseException] = []
    event.listen(services.engine, "handle_error", lambda context: deadlocks.append(context.original_exception)
                 if getattr(context.original_exception, "pgcode", None) == "40P01" else None)
    hold = _Hold()
    real_refresh = index.refresh_parents

    def refresh_when_told(connection, series_pk, written):  # type: ignore[no-untyped-def]
        hold.hold(connection)  # the STOW holds what it locked so far
        return real_refresh(connection, series_pk, written)

    monkeypatch.setattr(index, "refresh_parents", refresh_when_told)
    stowed, deleted = hold.race(
        services,
        partial(_stored_directly, services, make_ct(new_study, sop_uid=sop)),
        partial(retried_on_conflict, partial(delete_resources, services.engine, services.ingestor, old_study)),
    )
    assert deadlocks == []
    assert stowed[0].failure is None  # type: ignore[index]
    assert type(deleted).__name__ == "NotFound"  # the study had gone with its last instance
    with services.engine.connect() as connection:
        assert [study for study, sops in _sops_by_study(connection).items() if sop in sops] == [new_study]
        assert connection.execute(select(func.count()).where(studies.c.study_instance_uid == old_study)).scalar() == 0


def test_a_database_failure_in_the_fhir_search_index_refuses_the_stow_cleanly(client, services):
    """The search-index rows go through psycopg2 itself (`server.db.insert_rows`):
    an error there is raised as SQLAlchemy's, which the STOW handles: a
    refusal, not a 500 with a file left behind."""
    if services.engine.dialect.name != "postgresql":
        pytest.skip("SQLite's rows go through SQLAlchemy")
    from sqlalchemy import text

    with services.engine.begin() as connection:
        connection.execute(text(
            "CREATE FUNCTION refuse_tokens() RETURNS trigger AS $$ BEGIN"
            " RAISE EXCEPTION 'could not extend file' USING ERRCODE = '53100'; END $$ LANGUAGE plpgsql"
        ))
        connection.execute(text(
            "CREATE TRIGGER refuse_tokens BEFORE INSERT ON fhir_tokens FOR EACH ROW EXECUTE FUNCTION refuse_tokens()"
        ))
    body, content_type = multipart_body([make_ct()])
    response = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 409
    [failed] = response.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xA700]  # SQLSTATE 53100, disk full: Out of Resources
    assert _count(services) == 0 and _count(services, storage_journal) == 0
    assert _stored_files(services) == []


def test_an_instance_stored_while_another_leaves_its_series_is_kept(services):
    """One STOW adds an instance to a series while another moves the
    series' only other instance elsewhere. The mover, seeing no instance
    left, used to delete the series once the adder committed, and the
    instance the adder had just stored went with it (the rows cascade),
    leaving its file behind. A STOW now locks the studies its instances
    leave before it looks at them, so the two take turns."""
    if services.engine.dialect.name != "postgresql":
        pytest.skip("SQLite writers take turns already")
    from functools import partial

    study, series_uid, leaving, added = generate_uid(), generate_uid(), generate_uid(), generate_uid()
    assert _stored_directly(services, make_ct(study, series_uid, leaving))[0].failure is None
    hold = _Hold()
    on_change = services.ingestor.on_studies_changed

    def held_once(connection, study_uids, change):  # type: ignore[no-untyped-def]
        hold.hold(connection)  # the adder, its rows written, not yet committed
        on_change(connection, study_uids, change)

    services.ingestor.on_studies_changed = held_once
    add, move = hold.race(
        services,
        partial(_stored_directly, services, make_ct(study, series_uid, added)),
        partial(_stored_directly, services, make_ct(generate_uid(), sop_uid=leaving)),
    )
    assert add[0].failure is None and move[0].failure is None  # type: ignore[index]
    with services.engine.connect() as connection:
        assert _sops_by_study(connection)[study] == [added]
        # Every file on disk is an instance's, and the reverse.
        assert files_on_disk(services) == set(connection.execute(select(instances.c.file_path)).scalars())


def _sops_by_study(connection) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    """The SOP Instance UIDs of each study in the index."""
    rows = connection.execute(
        select(studies.c.study_instance_uid, instances.c.sop_instance_uid)
        .join(instances, instances.c.study_pk == studies.c.id).order_by(instances.c.sop_instance_uid)
    )
    found: dict[str, list[str]] = {}
    for study, sop in rows:
        found.setdefault(study, []).append(sop)
    return found


def _stored_directly(services, payload: bytes) -> list:  # type: ignore[no-untyped-def]
    """One payload through the ingest path, without HTTP: its outcomes."""
    from server.ingest import prepare

    writer = services.store.new_temp_file()
    writer.write(payload)
    return services.ingestor.store_batch([prepare(writer.finish())])


class _Hold:
    """Two pieces of work raced on PostgreSQL: the first is held where it
    calls `hold` (its transaction open, its locks taken) until the second
    waits for one of those locks; then both run to their end."""

    def __init__(self) -> None:
        import threading

        self.paused, self.resume = threading.Event(), threading.Event()
        self.holder_pid: int | None = None

    def hold(self, connection) -> None:  # type: ignore[no-untyped-def]
        """The first call only: later ones (the second work's) pass."""
        if self.paused.is_set():
            return
        self.holder_pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        self.paused.set()
        assert self.resume.wait(30)

    def race(self, services, held, waiting) -> tuple[object, object]:  # type: ignore[no-untyped-def]
        """What each work returned, or raised."""
        import threading

        outcomes: dict[str, object] = {}

        def run(name: str, work) -> None:  # type: ignore[no-untyped-def]
            try:
                outcomes[name] = work()
            except Exception as error:  # noqa: BLE001
                outcomes[name] = error

        first = threading.Thread(target=run, args=("held", held))
        first.start()
        assert self.paused.wait(30)
        second = threading.Thread(target=run, args=("waiting", waiting))
        second.start()
        self._until_blocked(services)
        self.resume.set()
        first.join(30)
        second.join(30)
        return outcomes["held"], outcomes["waiting"]

    def _until_blocked(self, services) -> None:  # type: ignore[no-untyped-def]
        """Until another backend waits for a lock the held transaction holds.
        Each look is a transaction of its own: PostgreSQL keeps one picture of
        pg_stat_activity for a whole transaction."""
        import time

        from sqlalchemy import text

        deadline = time.monotonic() + 30
        with services.engine.connect() as watcher:
            while time.monotonic() < deadline:
                blocked = watcher.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE CAST(:holder AS integer) = ANY(pg_blocking_pids(pid))"),
                    {"holder": self.holder_pid},
                ).scalar()
                watcher.rollback()
                if blocked:
                    return
                time.sleep(0.01)
        raise AssertionError(f"no backend waited for the locks of backend {self.holder_pid}")


def test_a_series_folder_removed_again_and_again_while_placing_is_made_again(client, services, monkeypatch):
    """A DELETE of a series' last file removes its folder; STOWs into that
    series at the same moment may lose their folder between making it and the
    rename, several times running. The instance is stored all the same."""
    real_replace = os.replace
    removed: list[Path] = []

    def replace_after_a_removal(source, target):  # type: ignore[no-untyped-def]
        folder = Path(target).parent
        if services.store.root in folder.parents and len(removed) < 5:
            folder.rmdir()  # what a concurrent `remove` of the series' last file does
            removed.append(folder)
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace_after_a_removal)
    body, content_type = multipart_body([make_ct(generate_uid(), generate_uid(), generate_uid())])

    response = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})

    assert response.status_code == 200, response.text
    assert len(removed) == 5
    assert len(files_on_disk(services)) == 1


def _fill_disk_at(services, monkeypatch, parts: set[int], when: str = "write") -> None:
    """The disk fills up for the payloads of `parts` (1-based), as they are
    opened (`when="open"`) or written; each failed payload's space is freed."""
    made = []
    real = services.store.new_temp_file

    def new_temp_file():
        number = len(made) + 1
        made.append(number)
        if number in parts and when == "open":
            raise OSError(errno.ENOSPC, "No space left on device")
        writer = real()
        if number in parts:
            def full(data: bytes) -> None:
                raise OSError(errno.ENOSPC, "No space left on device")
            writer.write = full
        return writer

    monkeypatch.setattr(services.store, "new_temp_file", new_temp_file)


def _failure_reasons(answer: dict) -> list[int]:
    return [item["00081197"]["Value"][0] for item in answer.get("00081198", {}).get("Value", [])]


@pytest.mark.parametrize("when", ["write", "open"])
def test_full_disk_refuses_the_parts_it_could_not_take_with_0xa700(client, services, monkeypatch, when):
    """PS3.18 Table 10.5.3-3: Out of Resources for what was not stored, 202
    when the rest was; nothing of a refused part is kept."""
    study = generate_uid()
    payloads = [make_ct(study_uid=study, InstanceNumber=number) for number in (1, 2, 3)]
    _fill_disk_at(services, monkeypatch, {2}, when)
    body, content_type = multipart_body(payloads)
    response = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 202
    answer = response.json()
    assert _failure_reasons(answer) == [0xA700]
    assert len(answer["00081199"]["Value"]) == 2
    assert _count(services) == 2
    assert len(_stored_files(services)) == 2
    assert list(services.store.temp_dir.iterdir()) == []
    assert _count(services, storage_journal) == 0


def test_full_disk_for_every_part_is_409_and_keeps_nothing(client, services, monkeypatch):
    _fill_disk_at(services, monkeypatch, {1, 2})
    body, content_type = multipart_body([make_ct(), make_ct()])
    response = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 409
    assert response.headers["content-type"] == DICOM_JSON
    assert _failure_reasons(response.json()) == [0xA700, 0xA700]
    assert _count(services) == 0
    assert _stored_files(services) == []
    assert list(services.store.temp_dir.iterdir()) == []


class _PostgresDiskFull(Exception):
    pgcode = "53100"  # disk_full


def _sqlite_full() -> Exception:
    error = sqlite3.OperationalError("database or disk is full")
    error.sqlite_errorcode = sqlite3.SQLITE_FULL
    return error


@pytest.mark.parametrize("cause", [_sqlite_full, _PostgresDiskFull])
def test_database_full_while_indexing_is_0xa700(client, services, monkeypatch, cause):
    from server import index

    def full(*_, **__):
        raise OperationalError("INSERT INTO instances ...", {}, cause())

    monkeypatch.setattr(index, "write_instances", full)
    body, content_type = multipart_body([make_ct(), make_ct()])
    response = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 409
    assert _failure_reasons(response.json()) == [0xA700, 0xA700]
    assert _count(services) == 0
    assert _stored_files(services) == []
    assert _count(services, storage_journal) == 0
