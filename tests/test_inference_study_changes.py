"""Jobs and results follow their study (`server.jobs.study_changes`, and the
automatic trigger): a corrected PatientID moves them to the new Patient, a
deleted source withdraws them, and a series that changed is run again."""


import pytest
from sqlalchemy import select, update

from inference.demo.phantom import phantom_datasets, phantom_payloads
from inference.seg import SegIdentity
from server.jobs.run import JobRunner, SeriesChanged
from server.jobs.seg_patients import refresh_seg_patients
from server.jobs.withdrawal import sweep
from server.tables import inference_jobs
from tests.inference_checks import (
    order,
    phantom,
    run_queued,
    series_bytes,
    stored_study,
    stow,
    study_uid,
)


def _renamed(seed: int, patient_id: str) -> list[bytes]:
    return phantom_payloads(phantom(seed), patient_id)


def _results(client, task_id: str) -> tuple[dict, list[dict]]:  # type: ignore[no-untyped-def]
    report = client.get(f"/fhir/DiagnosticReport/{task_id}").json()
    observations = [client.get(f"/fhir/{ref['reference']}").json() for ref in report["result"]]
    return report, observations


def _subject_of_study(client, uid: str) -> str:  # type: ignore[no-untyped-def]
    return client.get(f"/fhir/ImagingStudy/{uid}").json()["subject"]["reference"]


def _seg_patient_id(client, uid: str) -> str:  # type: ignore[no-untyped-def]
    [seg] = client.get(f"/dicom-web/studies/{uid}/series", params={"Modality": "SEG"}).json()
    series_uid = seg["0020000E"]["Value"][0]
    metadata = client.get(f"/dicom-web/studies/{uid}/series/{series_uid}/metadata").json()
    return metadata[0]["00100020"]["Value"][0]  # type: ignore[no-any-return]


def test_a_corrected_patient_id_moves_published_results_to_the_new_patient(queued):
    client, services = queued
    study = phantom(81)
    stow(client, series_bytes(study))
    uid = study_uid(study)
    old_patient = _subject_of_study(client, uid)
    task = order(client, uid)
    assert run_queued(services) == [task["id"]]

    stow(client, _renamed(81, "CORRECTED-81"))
    new_patient = _subject_of_study(client, uid)
    assert new_patient != old_patient
    assert client.get(f"/fhir/{old_patient}").status_code == 410
    assert client.get(f"/fhir/Task/{task['id']}").json()["for"]["reference"] == new_patient
    report, observations = _results(client, task["id"])
    assert report["subject"]["reference"] == new_patient and report["meta"]["versionId"] == "2"
    assert {observation["subject"]["reference"] for observation in observations} == {new_patient}
    found = client.get("/fhir/DiagnosticReport", params={"subject": new_patient}).json()
    assert [entry["resource"]["id"] for entry in found.get("entry", [])] == [task["id"]]

    assert _seg_patient_id(client, uid) == "PHANTOM-81"  # as the job wrote it
    refresh_seg_patients(services.engine, services.ingestor, services.store)
    assert _seg_patient_id(client, uid) == "CORRECTED-81"  # a PACS retrieving the study gets it under the new patient
    with services.engine.connect() as connection:
        assert not connection.execute(select(inference_jobs.c.seg_patient_stale)).scalar_one()
    assert services.jobs.triggers.scan() == []  # storing it again starts nothing


def test_a_job_queued_when_the_patient_id_is_corrected_publishes_under_the_new_patient(queued):
    client, services = queued
    study = phantom(82)
    stow(client, series_bytes(study))
    task = order(client, study_uid(study))
    stow(client, _renamed(82, "CORRECTED-82"))
    assert run_queued(services) == [task["id"]]
    report, _ = _results(client, task["id"])
    assert report["subject"]["reference"] == _subject_of_study(client, study_uid(study))


def _run_automatically(client, services, seed: int):  # type: ignore[no-untyped-def]
    """A phantom study stored, its automatic job started and run: the study, its UID and the job's task id."""
    services.jobs.triggers.quiet_seconds = 0
    study = phantom(seed)
    stow(client, series_bytes(study))
    [task_id] = services.jobs.triggers.scan()
    assert run_queued(services) == [task_id]
    return study, study_uid(study), task_id


def _first_slices_triggered(client, services, seed: int):  # type: ignore[no-untyped-def]
    """A phantom's first 40 slices stored and their automatic job queued: the phantom, its slices, the task id."""
    services.jobs.triggers.quiet_seconds = 0
    study = phantom(seed)
    payloads = series_bytes(study)
    stow(client, payloads[:40])
    [first] = services.jobs.triggers.scan()
    return study, payloads, first


def test_deleting_the_source_withdraws_the_results_and_sending_it_again_runs_it_again(queued):
    client, services = queued
    study, uid, first = _run_automatically(client, services, 83)
    assert services.jobs.triggers.scan() == []  # its own SEG changed the study, not the series

    assert client.delete(f"/dicom-web/studies/{uid}").status_code in (200, 204)
    report, observations = _results(client, first)
    assert report["status"] == "entered-in-error"
    assert {observation["status"] for observation in observations} == {"entered-in-error"}
    assert client.get(f"/fhir/Task/{first}").json()["status"] == "completed"  # what ran, ran

    stow(client, series_bytes(study))
    [second] = services.jobs.triggers.scan()
    assert second != first
    assert run_queued(services) == [second]
    assert _results(client, second)[0]["status"] == "preliminary"
    assert _results(client, first)[0]["meta"]["versionId"] == "2"  # withdrawn once, left so


def test_a_series_that_grew_after_its_automatic_job_is_run_again(queued):
    client, services = queued
    study, payloads, first = _first_slices_triggered(client, services, 84)
    assert run_queued(services) == [first]
    stow(client, payloads[:40])  # sent again, unchanged: nothing new to run
    assert services.jobs.triggers.scan() == []
    stow(client, payloads[40:])
    [second] = services.jobs.triggers.scan()
    assert run_queued(services) == [second]
    task = client.get(f"/fhir/Task/{second}").json()
    assert task["status"] == "completed"

    # The second run supersedes the first: one current report, which names the one it revises, and one SEG.
    uid = study_uid(study)
    assert _results(client, first)[0]["status"] == "entered-in-error"
    assert _results(client, second)[0]["status"] == "preliminary"
    current = client.get(
        "/fhir/DiagnosticReport", params={"_id": f"{first},{second}", "status:not": "entered-in-error"}
    ).json()
    assert [entry["resource"]["id"] for entry in current["entry"]] == [second]
    provenance = client.get(f"/fhir/Provenance/{second}").json()
    assert {"role": "revision", "what": {"reference": f"DiagnosticReport/{first}"}} in provenance["entity"]
    assert len(_seg_series(client, uid)) == 2  # the first SEG leaves with the scheduler's next sweep
    sweep(services.jobs.queue, services.ingestor)
    assert _seg_series(client, uid) == [SegIdentity.for_job(second).series_instance_uid]
    assert services.jobs.triggers.scan() == []  # taking the SEG out starts nothing


def test_a_job_that_read_slices_sent_after_its_trigger_stands_for_them(queued):
    client, services = queued
    _, payloads, first = _first_slices_triggered(client, services, 91)
    stow(client, payloads[40:])  # before the job ran: it reads the whole series
    assert run_queued(services) == [first]
    assert services.jobs.triggers.scan() == []  # no second run on what the first one read
    assert _results(client, first)[0]["status"] == "preliminary"


def test_a_job_queued_before_contents_were_recorded_stands_for_what_it_read(queued):
    client, services = queued
    services.jobs.triggers.quiet_seconds = 0
    study = phantom(93)
    stow(client, series_bytes(study))
    [first] = services.jobs.triggers.scan()
    with services.engine.begin() as connection:  # as migration 0009 left the jobs queued before it
        connection.execute(update(inference_jobs).where(inference_jobs.c.task_id == first).values(series_content=None))
    assert run_queued(services) == [first]
    with services.engine.connect() as connection:
        content = connection.execute(
            select(inference_jobs.c.series_content).where(inference_jobs.c.task_id == first)
        ).scalar_one()
    assert content is not None
    assert services.jobs.triggers.scan() == []


def test_a_job_queued_for_content_another_job_read_first_still_runs(queued):
    client, services = queued
    _, payloads, first = _first_slices_triggered(client, services, 92)
    stow(client, payloads[40:])
    [second] = services.jobs.triggers.scan()  # queued for the whole series before the first job ran
    assert sorted(run_queued(services)) == sorted([first, second])
    statuses = sorted(_results(client, task)[0]["status"] for task in (first, second))
    assert statuses == ["entered-in-error", "preliminary"]
    assert services.jobs.triggers.scan() == []


def test_a_later_order_supersedes_an_earlier_run_of_the_model_on_the_series(queued):
    client, services = queued
    uid, first = _ordered(client, 87)
    assert run_queued(services) == [first["id"]]
    second = order(client, uid)
    assert run_queued(services) == [second["id"]]
    assert _results(client, first["id"])[0]["status"] == "entered-in-error"
    assert _results(client, second["id"])[0]["status"] == "preliminary"
    sweep(services.jobs.queue, services.ingestor)
    assert _seg_series(client, uid) == [SegIdentity.for_job(second["id"]).series_instance_uid]


def test_deleting_only_the_source_series_withdraws_the_results_and_takes_the_seg_out(queued):
    client, services = queued
    uid, task = _ordered(client, 88)
    assert run_queued(services) == [task["id"]]
    [source] = [uid_ for uid_ in _series(client, uid) if uid_ not in _seg_series(client, uid)]
    assert client.delete(f"/dicom-web/studies/{uid}/series/{source}").status_code in (200, 204)
    assert _results(client, task["id"])[0]["status"] == "entered-in-error"
    assert _seg_series(client, uid) == [SegIdentity.for_job(task["id"]).series_instance_uid]  # until the sweep
    sweep(services.jobs.queue, services.ingestor)
    assert client.get(f"/fhir/ImagingStudy/{uid}").status_code == 410  # nothing was left in it
    with services.engine.connect() as connection:
        assert not connection.execute(select(inference_jobs.c.seg_removal_due)).scalar_one()


def _series(client, uid: str) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(item["0020000E"]["Value"][0] for item in client.get(f"/dicom-web/studies/{uid}/series").json())


def _seg_series(client, uid: str) -> list[str]:  # type: ignore[no-untyped-def]
    found = client.get(f"/dicom-web/studies/{uid}/series", params={"Modality": "SEG"}).json()
    return sorted(item["0020000E"]["Value"][0] for item in found)


def _before_publishing(monkeypatch, action) -> None:  # type: ignore[no-untyped-def]
    """Run `action` once, just before a job publishes its results: a STOW or
    DELETE from another request that lands in the last moment of a job."""
    from server.jobs.run import JobRunner

    publish = JobRunner._publish
    done: list[bool] = []

    def late(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not done:
            done.append(True)
            action()
        return publish(self, *args, **kwargs)

    monkeypatch.setattr(JobRunner, "_publish", late)


def _ordered(client, seed: int) -> tuple[str, dict]:  # type: ignore[no-untyped-def,type-arg]
    """A phantom study stored, and a client's order for it: its UID and Task."""
    uid = stored_study(client, seed)
    return uid, order(client, uid)


def test_a_study_deleted_as_its_job_publishes_gets_no_results(queued, monkeypatch):
    client, services = queued
    uid, task = _ordered(client, 85)
    _before_publishing(monkeypatch, lambda: client.delete(f"/dicom-web/studies/{uid}"))
    assert run_queued(services) == [task["id"]]
    ended = client.get(f"/fhir/Task/{task['id']}").json()
    assert ended["status"] == "failed" and "deleted while the job ran" in ended["statusReason"]["text"]
    assert client.get(f"/fhir/DiagnosticReport/{task['id']}").status_code == 404
    assert client.get(f"/fhir/ImagingStudy/{uid}").status_code == 410  # its SEG was taken back with it


def test_a_patient_id_corrected_as_the_job_publishes_makes_it_run_again_for_the_new_patient(queued, monkeypatch):
    client, services = queued
    uid, task = _ordered(client, 86)
    _before_publishing(monkeypatch, lambda: stow(client, _renamed(86, "CORRECTED-86")))
    assert run_queued(services) == [task["id"]]
    assert client.get(f"/fhir/Task/{task['id']}").json()["status"] == "on-hold"  # it read the old files
    with services.engine.begin() as connection:
        connection.execute(update(inference_jobs).values(not_before=0))  # no backoff wait
    assert run_queued(services) == [task["id"]]
    report, _ = _results(client, task["id"])
    assert report["subject"]["reference"] == _subject_of_study(client, uid)
    assert _seg_patient_id(client, uid) == "CORRECTED-86"  # the SEG copies the corrected patient


def test_a_series_sent_back_to_content_a_superseded_run_stood_for_runs_again(queued):
    client, services = queued
    study, payloads, first = _first_slices_triggered(client, services, 89)
    uid, datasets = study_uid(study), phantom_datasets(study)
    assert run_queued(services) == [first]
    stow(client, payloads[40:])
    [second] = services.jobs.triggers.scan()
    assert run_queued(services) == [second]
    # The extra slices were sent by mistake: taken out, the series holds what the first run saw.
    for dataset in datasets[40:]:
        address = f"/dicom-web/studies/{uid}/series/{dataset.SeriesInstanceUID}/instances/{dataset.SOPInstanceUID}"
        assert client.delete(address).status_code in (200, 204)
    [third] = services.jobs.triggers.scan()  # the superseded first run no longer stands for it
    assert run_queued(services) == [third]
    assert [_results(client, task)[0]["status"] for task in (first, second, third)] == [
        "entered-in-error", "entered-in-error", "preliminary"
    ]


def test_a_superseded_seg_stored_again_by_a_late_patient_refresh_is_taken_out_again(queued, monkeypatch):
    """Each server process (`serve --workers N`) runs the sweep and the refresh: one may store a SEG again
    after another's sweep took it out."""
    import server.jobs.seg_patients as seg_patients

    client, services = queued
    uid, first = _ordered(client, 90)
    assert run_queued(services) == [first["id"]]
    stow(client, _renamed(90, "CORRECTED-90"))  # the first SEG now waits for its new patient
    read_seg = seg_patients._with_patient
    second: list[str] = []

    def meanwhile(*args, **kwargs):  # type: ignore[no-untyped-def]
        dataset = read_seg(*args, **kwargs)
        if not second:  # another process: a new run supersedes the first, and its sweep takes the first SEG out
            second.append(order(client, uid)["id"])
            assert run_queued(services) == second
            sweep(services.jobs.queue, services.ingestor)
        return dataset

    monkeypatch.setattr(seg_patients, "_with_patient", meanwhile)
    refresh_seg_patients(services.engine, services.ingestor, services.store)
    assert len(_seg_series(client, uid)) == 2  # the first SEG came back
    sweep(services.jobs.queue, services.ingestor)
    assert _seg_series(client, uid) == [SegIdentity.for_job(second[0]).series_instance_uid]


def test_an_order_on_content_an_automatic_run_stood_for_starts_no_other_run(queued):
    client, services = queued
    study, uid, _ = _run_automatically(client, services, 96)
    ordered = order(client, uid)["id"]
    assert run_queued(services) == [ordered]  # supersedes the automatic run, on the same content
    assert services.jobs.triggers.scan() == []  # the order's results stand for that content
    assert _results(client, ordered)[0]["status"] == "preliminary"
    stow(client, series_bytes(study))  # sent again, unchanged
    assert services.jobs.triggers.scan() == []


def test_a_seg_stays_due_until_a_sweep_has_seen_it_gone(queued, monkeypatch):
    """Another server process may store it again right after the delete (a late patient refresh), or the
    sweep may die halfway: either way the job stays marked, and a later sweep takes the SEG out."""
    import server.jobs.withdrawal as withdrawal

    client, services = queued
    uid, first = _ordered(client, 97)
    assert run_queued(services) == [first["id"]]
    second = order(client, uid)["id"]
    assert run_queued(services) == [second]
    delete_seg = withdrawal._delete_seg

    def due() -> bool:
        with services.engine.connect() as connection:
            return bool(connection.execute(select(inference_jobs.c.seg_removal_due)
                                           .where(inference_jobs.c.task_id == first["id"])).scalar_one())

    monkeypatch.setattr(withdrawal, "_delete_seg", lambda *args: None)  # deleted, and at once stored again
    sweep(services.jobs.queue, services.ingestor)
    assert due()

    def dying(*args):  # type: ignore[no-untyped-def]
        raise SystemExit("the process is stopped mid-sweep")

    monkeypatch.setattr(withdrawal, "_delete_seg", dying)
    with pytest.raises(SystemExit):
        sweep(services.jobs.queue, services.ingestor)
    assert due()
    monkeypatch.setattr(withdrawal, "_delete_seg", delete_seg)
    sweep(services.jobs.queue, services.ingestor)
    assert not due() and _seg_series(client, uid) == [SegIdentity.for_job(second).series_instance_uid]


def test_an_automatic_job_whose_series_changed_as_it_ran_gives_way_to_the_job_the_change_queued(queued, monkeypatch):
    client, services = queued
    _, payloads, first = _first_slices_triggered(client, services, 86)
    stow(client, payloads[40:])
    [second] = services.jobs.triggers.scan()

    def changed_meanwhile(self, prepared, connection=None):  # type: ignore[no-untyped-def]
        raise SeriesChanged()

    with monkeypatch.context() as patched:
        patched.setattr(JobRunner, "_check_series_unchanged", changed_meanwhile)
        runner = services.jobs.make_runner()
        try:
            jobs = services.jobs.queue.claim("test-worker", 1, task_id=first)
            runner.run(jobs)
        finally:
            runner.close()
    task = client.get(f"/fhir/Task/{first}").json()
    assert task["status"] == "failed", task  # not retried: two runs on one content would publish twice
    assert second in task["statusReason"]["text"]
    assert run_queued(services) == [second]
    assert client.get(f"/fhir/Task/{second}").json()["status"] == "completed"
    reports = client.get("/fhir/DiagnosticReport", params={"status": "preliminary,final"}).json()
    assert [entry["resource"]["id"] for entry in reports.get("entry", [])] == [second]
