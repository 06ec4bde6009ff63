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
    assert services.audit.chain.verify().intact
