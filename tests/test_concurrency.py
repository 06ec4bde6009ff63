"""Many modalities storing one study at once, over real HTTP.

Eight clients send overlapping parts of the same study at the same moment.
Whatever the interleaving, the index must end with each instance once, one
study row, one row per series, and the disk must hold exactly the files the
rows point at: no orphans, no journal entries, no temp files.
"""

import hashlib
import logging
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from server.services import Services
from server.tables import fhir_resources, instances, series, storage_journal, studies
from tests.conftest import admin_headers
from tests.dicom_files import make_ct, multipart_body
from tests.store_state import files_on_disk

CLIENTS = 8
OWN_PER_CLIENT = 5
SHARED_PER_CLIENT = 5
SHARED_POOL = 10
SERIES_COUNT = 3


def stow_all_at_once(base_url: str, bodies: list[list[bytes]], headers: dict[str, str]) -> list[httpx.Response]:
    """POST every body from its own thread, released together by a barrier."""
    barrier = threading.Barrier(len(bodies))

    def send(payloads: list[bytes]) -> httpx.Response:
        body, content_type = multipart_body(payloads)
        with httpx.Client(base_url=base_url, timeout=120, headers=headers) as client:
            barrier.wait()
            return client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})

    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        return list(pool.map(send, bodies))


def referenced_sops(response: httpx.Response) -> set[str]:
    return {item["00081155"]["Value"][0] for item in response.json()["00081199"]["Value"]}


def assert_store_consistent(services: Services) -> list[tuple[str, str, str]]:
    """Rows and files match one to one; nothing is left for recovery. Returns (sop, path, sha256) rows."""
    with services.engine.connect() as connection:
        rows = connection.execute(
            select(instances.c.sop_instance_uid, instances.c.file_path, instances.c.sha256)
        ).all()
        journal = connection.execute(select(func.count()).select_from(storage_journal)).scalar_one()
    assert journal == 0
    assert files_on_disk(services) == {path for _, path, _ in rows}
    assert list(Path(services.store.temp_dir).iterdir()) == []
    for _, path, sha256 in rows:
        assert hashlib.sha256(services.store.absolute(path).read_bytes()).hexdigest() == sha256
    return [tuple(row) for row in rows]


def test_overlapping_stow_of_one_study(live_server: str, services: Services) -> None:
    study_uid = generate_uid()
    series_uids = [generate_uid() for _ in range(SERIES_COUNT)]

    def instance(number: int) -> tuple[str, bytes]:
        sop_uid = generate_uid()
        payload = make_ct(
            study_uid=study_uid, series_uid=series_uids[number % SERIES_COUNT], sop_uid=sop_uid, InstanceNumber=number
        )
        return sop_uid, payload

    shared = [instance(number) for number in range(SHARED_POOL)]
    bodies: list[list[tuple[str, bytes]]] = []
    for client in range(CLIENTS):
        # Each shared instance goes to several clients, in different batch positions.
        overlap = [shared[(client * 3 + k) % SHARED_POOL] for k in range(SHARED_PER_CLIENT)]
        own = [instance(SHARED_POOL + client * OWN_PER_CLIENT + k) for k in range(OWN_PER_CLIENT)]
        bodies.append(own + overlap if client % 2 else overlap + own)

    responses = stow_all_at_once(live_server, [[payload for _, payload in body] for body in bodies], admin_headers(services))

    assert [response.status_code for response in responses] == [200] * CLIENTS, [r.text for r in responses]
    for response, body in zip(responses, bodies, strict=True):
        assert referenced_sops(response) == {sop for sop, _ in body}
    expected_sops = {sop for body in bodies for sop, _ in body}
    assert len(expected_sops) == SHARED_POOL + CLIENTS * OWN_PER_CLIENT

    with services.engine.connect() as connection:
        assert connection.execute(select(studies.c.study_instance_uid)).scalars().all() == [study_uid]
        assert sorted(connection.execute(select(series.c.series_instance_uid)).scalars()) == sorted(series_uids)
    rows = assert_store_consistent(services)
    assert sorted(sop for sop, _, _ in rows) == sorted(expected_sops)


def test_concurrent_versions_of_the_same_instances(live_server: str, services: Services) -> None:
    """Every client sends its own version of the same SOP Instance UIDs: one
    version per instance wins, and the losers' files are all gone."""
    study_uid, series_uid = generate_uid(), generate_uid()
    sop_uids = [generate_uid() for _ in range(4)]
    bodies = [
        [
            make_ct(study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid, StudyDescription=f"client {client}")
            for sop_uid in sop_uids
        ]
        for client in range(CLIENTS)
    ]

    responses = stow_all_at_once(live_server, bodies, admin_headers(services))

    assert [response.status_code for response in responses] == [200] * CLIENTS, [r.text for r in responses]
    rows = assert_store_consistent(services)
    assert sorted(sop for sop, _, _ in rows) == sorted(sop_uids)
    versions = {hashlib.sha256(payload).hexdigest() for body in bodies for payload in body}
    assert {sha256 for _, _, sha256 in rows} <= versions


def test_stows_and_deletes_of_one_patients_studies_never_deadlock(
    live_server: str, services: Services, caplog: pytest.LogCaptureFixture,
) -> None:
    """Clients store instances into three studies of one patient, a few
    studies a request, while others delete those series and studies, so that
    a study is often created again by a STOW that also writes another one.
    On PostgreSQL such a STOW used to lock the other study's row, then create
    the first out of the rows' order, and deadlock with a STOW of both
    (0x0110 for its instances). A retry found nothing wrong in the data, so
    only the refusals and the server's error log show it."""
    if not services.engine.dialect.name == "postgresql":
        pytest.skip("SQLite writers take turns: they cannot deadlock")
    headers = admin_headers(services)
    study_uids = [generate_uid() for _ in range(3)]
    series_of = {study: [generate_uid(), generate_uid()] for study in study_uids}
    sops_of = {study: [generate_uid() for _ in range(10)] for study in study_uids}
    refused: list[int] = []
    barrier = threading.Barrier(CLIENTS)

    def client_work(seed: int) -> None:
        rnd = random.Random(seed)
        with httpx.Client(base_url=live_server, timeout=120, headers=headers) as client:
            barrier.wait()
            for _ in range(40):
                study = rnd.choice(study_uids)
                draw = rnd.random()
                if draw < 0.6:
                    payloads = []
                    for _ in range(rnd.randint(1, 3)):
                        other = rnd.choice(study_uids)
                        payloads.append(make_ct(
                            other, rnd.choice(series_of[other]), rnd.choice(sops_of[other]),
                            InstanceNumber=rnd.randint(1, 9), PatientID=rnd.choice(["PID-1", "PID-1", "PID-2"]),
                        ))
                    body, content_type = multipart_body(payloads)
                    response = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
                    failed = response.json().get("00081198", {}).get("Value", []) if response.content else []
                    refused.extend(item["00081197"]["Value"][0] for item in failed)
                elif draw < 0.8:
                    client.delete(f"/dicom-web/studies/{study}/series/{rnd.choice(series_of[study])}")
                else:
                    client.delete(f"/dicom-web/studies/{study}")

    with caplog.at_level(logging.ERROR), ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        list(pool.map(client_work, range(CLIENTS)))

    assert 0x0110 not in refused
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR] == []
    with services.engine.connect() as connection:
        stored = {row.study_instance_uid: row.id for row in connection.execute(select(studies))}
        for study in study_uids:
            body = connection.execute(select(fhir_resources.c.resource_json).where(
                fhir_resources.c.resource_type == "ImagingStudy", fhir_resources.c.resource_id == study,
                fhir_resources.c.deleted.is_(False),
            )).scalar()
            if study not in stored:
                assert body is None
                continue
            listed = {item["uid"] for part in orjson.loads(body)["series"] for item in part["instance"]}
            assert listed == set(connection.execute(
                select(instances.c.sop_instance_uid).where(instances.c.study_pk == stored[study])
            ).scalars())
