"""The server's own changes (a job's Task states, model and user changes) are
recorded in the audit chain inside the transactions that make them."""

from server.auth.scopes import Role


def _events(services, fhir, **params: str) -> list[dict]:  # type: ignore[no-untyped-def]
    services.audit.chain.project()
    return [entry["resource"] for entry in fhir.get("/fhir/AuditEvent", params={**params, "_count": 100}).json().get("entry", [])]


def test_the_servers_own_changes_are_recorded_in_their_transactions(services, fhir):
    from tests.inference_checks import order, run_queued, stored_study

    services.auth.identities.add_user("auditor-1", Role.AUDITOR, "a long auditor password")
    services.jobs.ensure_demo_model()  # registered, then activated: two model events
    task = order(fhir, stored_study(fhir, seed=91, lesions=1))
    run_queued(services, "audited-worker")

    security = _events(services, fhir, type="110113", subtype="110137")  # a Security Alert, of this type
    assert [event["outcomeDesc"] for event in security] == ["user auditor-1 added with role auditor"]
    models = _events(services, fhir, type="110100", action="U")
    descriptions = [event["outcomeDesc"] for event in models]
    assert any("inactive" in text for text in descriptions)
    assert any("active, activated without a passing validation" in text for text in descriptions)
    task_events = _events(services, fhir, entity=f"Task/{task['id']}", subtype="update")
    changes = sorted(event["outcomeDesc"] for event in task_events)
    assert changes == ["inference Task completed", "inference Task in-progress"]
    assert {event["agent"][0]["name"] for event in task_events} == {"audited-worker"}
    # The segmentation the job stored is a DICOM change of the server's own, in the study's record.
    [stored] = _events(services, fhir, type="110104", action="C", **{"agent-name": "medaiflow"})
    assert stored["outcomeDesc"] == "DICOM instances stored by the server"
    assert task["focus"]["reference"].removeprefix("ImagingStudy/") in str(stored["entity"])
    assert services.audit.chain.verify().intact


def test_a_segmentation_taken_out_by_the_server_is_recorded_as_its_deletion(services, fhir):
    """A withdrawn job's segmentation leaves its study without a request to record it."""
    from sqlalchemy import update

    from server.jobs.withdrawal import sweep
    from server.tables import inference_jobs
    from tests.inference_checks import order, run_queued, stored_study

    services.jobs.ensure_demo_model()
    task = order(fhir, stored_study(fhir, seed=94, lesions=1))
    run_queued(services, "audited-worker")
    with services.engine.begin() as connection:  # its results were stored, then the job failed for good
        failed = update(inference_jobs).where(inference_jobs.c.task_id == task["id"]).values(status="failed")
        connection.execute(failed)
    sweep(services.jobs.queue, services.ingestor)
    [deleted] = _events(services, fhir, type="110105", **{"agent-name": "medaiflow"})
    assert deleted["outcomeDesc"] == "DICOM instances deleted by the server"
    assert task["focus"]["reference"].removeprefix("ImagingStudy/") in str(deleted["entity"])


def test_a_job_moved_over_its_workers_head_is_recorded_as_the_servers_doing(services, fhir):
    """A cancel, or a lease that ran out, is the server's change, not the
    worker's that held the job (the cancelling client has its request's own record)."""
    from sqlalchemy import update

    from server.auth.identities import SERVER_AGENT
    from server.jobs.queue import now_micros
    from server.tables import inference_jobs
    from tests.inference_checks import order, stored_study

    services.jobs.ensure_demo_model()
    reaped, cancelled = (order(fhir, stored_study(fhir, seed=seed, lesions=1)) for seed in (92, 93))
    services.jobs.queue.claim("stalled-worker", 2)
    with services.engine.begin() as connection:
        connection.execute(update(inference_jobs).where(inference_jobs.c.task_id == reaped["id"])
                           .values(lease_expires=now_micros() - 1))
    assert services.jobs.queue.reap() == [reaped["id"]]
    running = fhir.get(f"/fhir/Task/{cancelled['id']}").json()
    assert fhir.put(f"/fhir/Task/{cancelled['id']}", json={**running, "status": "cancelled"}).status_code == 200

    for task, change in ((reaped, "inference Task on-hold"), (cancelled, "inference Task cancelled")):
        [event] = [event for event in _events(services, fhir, entity=f"Task/{task['id']}", subtype="update")
                   if event["outcomeDesc"] == change]
        requestors = [agent["name"] for agent in event["agent"] if agent["requestor"]]
        assert requestors == [SERVER_AGENT], (change, event["agent"])


def test_a_study_the_server_empties_is_recorded_with_its_patient(services, fhir):
    """The source series deleted, a job's segmentation is all its study has
    left; taken out by the server, the study is gone, and its record still
    names the patient whose study it was."""
    from server.jobs.withdrawal import sweep
    from tests.inference_checks import order, run_queued, stored_study

    services.jobs.ensure_demo_model()
    study_uid = stored_study(fhir, seed=95, lesions=1)
    patient = fhir.get(f"/fhir/ImagingStudy/{study_uid}").json()["subject"]["reference"]
    order(fhir, study_uid)
    run_queued(services, "audited-worker")
    [source] = [series["uid"] for series in fhir.get(f"/fhir/ImagingStudy/{study_uid}").json()["series"]
                if series["modality"]["code"] != "SEG"]
    assert fhir.delete(f"/dicom-web/studies/{study_uid}/series/{source}").status_code in (200, 202, 204)
    sweep(services.jobs.queue, services.ingestor)
    assert fhir.get(f"/fhir/ImagingStudy/{study_uid}").status_code == 410  # the study is gone
    [deleted] = _events(services, fhir, type="110105", **{"agent-name": "medaiflow"})
    assert study_uid in str(deleted["entity"])
    assert patient in [entity["what"].get("reference") for entity in deleted["entity"]]
