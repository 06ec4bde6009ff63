"""UPS Watch (PS3.18 §11.10-11.13): subscriptions by AE title and the event
reports of the WebSocket channel, on a real server in process with the demo
model (and once behind uvicorn, as `serve` runs it)."""

import time
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketDenialResponse
from websockets.sync.client import connect

from dicom.workitem_events import FILTERED_WORKLIST, WORKLIST
from dicom.workitems import derived_workitem_uid
from tests.conftest import admin_headers, served
from tests.inference_checks import order, run_queued
from tests.test_ups import UPS_JSON, _create, _stored, _workitem

STATE, CANCEL_REQUESTED, PROGRESS = 1, 2, 3
_WRONG_WORKLIST_ENTRY = {"00080100": {"vr": "SH", "Value": ["110514"]}, "00080102": {"vr": "SH", "Value": ["DCM"]},
                         "00080104": {"vr": "LO", "Value": ["Incorrect worklist entry selected"]}}


def _subscribe(client: TestClient, uid: str, ae_title: str, query: str = "") -> None:
    response = client.post(f"/dicom-web/workitems/{uid}/subscribers/{ae_title}{query}")
    assert response.status_code == 201, response.text
    # PS3.18 Table 11.10.3-2: where the subscriber opens its WebSocket channel.
    assert response.headers["content-location"] == f"ws://testserver/dicom-web/subscribers/{ae_title}"


def _report(channel: Any) -> tuple[str, int, dict[str, Any]]:
    """The workitem UID, event type and data set of the next event report."""
    report = channel.receive_json()
    # PS3.4 CC.2.4.2: the Affected SOP Class UID is UPS Push's, whatever the service.
    assert report["00000002"] == {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.34.6.1"]}
    assert list(report) == sorted(report)
    return report["00001000"]["Value"][0], report["00001002"]["Value"][0], report


def _state(report: dict[str, Any]) -> str:
    return report["00741000"]["Value"][0]  # type: ignore[no-any-return]


def _cancel(client: TestClient, uid: str, reason: str = "wrong study") -> None:
    body = {"00741238": {"vr": "LT", "Value": [reason]}, "0074100C": {"vr": "LO", "Value": ["Dr Who"]},
            "0074100E": {"vr": "SQ", "Value": [_WRONG_WORKLIST_ENTRY]}}
    response = client.post(f"/dicom-web/workitems/{uid}/cancelrequest", json=body, headers=UPS_JSON)
    assert response.status_code == 202, response.text


def test_a_subscriber_follows_its_workitem_to_completion(queued):
    client, services = queued
    uid = _create(client, _workitem(_stored(client, 81)))
    _subscribe(client, uid, "WATCHER", "?deletionlock=true")
    with client.websocket_connect("/dicom-web/subscribers/WATCHER") as channel:
        workitem, event, report = _report(channel)
        assert (workitem, event, _state(report)) == (uid, STATE, "SCHEDULED")  # PS3.4 CC.2.3.1: the state at once
        assert report["00404041"]["Value"] == ["READY"]
        run_queued(services)
        seen = []
        while not seen or seen[-1] != (STATE, "COMPLETED"):
            workitem, event, report = _report(channel)
            assert workitem == uid
            stage = report["00741002"]["Value"][0]["00741006"]["Value"][0] if event == PROGRESS else None
            seen.append((event, stage or _state(report)))
    states = [detail for event, detail in seen if event == STATE]
    assert states == ["IN PROGRESS", "COMPLETED"]
    progress = [detail for event, detail in seen if event == PROGRESS]
    assert progress and all(detail.startswith("running: ") for detail in progress)
    assert seen.index((STATE, "IN PROGRESS")) < seen.index((PROGRESS, progress[0]))


def test_a_cancel_request_is_reported_then_the_cancellation(queued):
    client, _ = queued
    uid = _create(client, _workitem(_stored(client, 82)))
    _subscribe(client, uid, "WATCHER")
    with client.websocket_connect("/dicom-web/subscribers/WATCHER") as channel:
        assert _report(channel)[1] == STATE
        _cancel(client, uid)
        workitem, event, requested = _report(channel)
        assert (workitem, event) == (uid, CANCEL_REQUESTED)
        assert requested["00741238"]["Value"] == ["wrong study"]
        assert requested["0074100C"]["Value"] == ["Dr Who"]
        # PS3.4 Table CC.2.4-1: 1C, required when the request gave them.
        assert requested["0074100E"] == {"vr": "SQ", "Value": [_WRONG_WORKLIST_ENTRY]}
        # PS3.4 Table CC.1.1-2, Request Cancel of a SCHEDULED UPS: reported IN PROGRESS, then CANCELED.
        workitem, event, claimed = _report(channel)
        assert (workitem, event, _state(claimed)) == (uid, STATE, "IN PROGRESS")
        workitem, event, canceled = _report(channel)
        assert (workitem, event, _state(canceled)) == (uid, STATE, "CANCELED")
        assert "wrong study" in canceled["00741238"]["Value"][0]


def test_a_scheduled_job_cancelled_through_fhir_is_reported_in_progress_then_canceled(queued):
    """PS3.4 CC.1.1: SCHEDULED reaches CANCELED only through IN PROGRESS, whoever cancels."""
    client, services = queued
    task = order(client, _stored(client, 90))
    uid = derived_workitem_uid(task["id"])
    _subscribe(client, uid, "WATCHER")
    with client.websocket_connect("/dicom-web/subscribers/WATCHER") as channel:
        assert _state(_report(channel)[2]) == "SCHEDULED"
        cancelled = client.put(f"/fhir/Task/{task['id']}", json={**task, "status": "cancelled"})
        assert cancelled.status_code == 200, cancelled.text
        assert [_state(_report(channel)[2]) for _ in range(2)] == ["IN PROGRESS", "CANCELED"]


def test_a_worklist_subscriber_sees_new_workitems_until_it_suspends(queued):
    client, services = queued
    study = _stored(client, 83)
    _subscribe(client, WORKLIST, "ALL")
    with client.websocket_connect("/dicom-web/subscribers/ALL") as channel:
        over_ups = _create(client, _workitem(study))
        assert _report(channel)[:2] == (over_ups, STATE)  # addressed by the UID the create gave it
        task = order(client, study, services.jobs.registry.get("medaiflow-demo-lesions@1.0.1").device_id)
        workitem, event, report = _report(channel)
        assert (workitem, event, _state(report)) == (derived_workitem_uid(task["id"]), STATE, "SCHEDULED")

        response = client.post(f"/dicom-web/workitems/{WORKLIST}/subscribers/ALL/suspend")
        assert response.status_code == 200, response.text
        _create(client, _workitem(study))  # not reported: the subscription is suspended
        later = _create(client, _workitem(study))
        _subscribe(client, later, "ALL")
        assert _report(channel)[0] == later
        _cancel(client, over_ups)  # subscriptions made before the suspension stay
        assert _report(channel)[:2] == (over_ups, CANCEL_REQUESTED)


def test_a_worklist_subscription_covers_the_workitems_not_yet_final(queued):
    client, _ = queued
    study = _stored(client, 84)
    done, waiting = _create(client, _workitem(study)), _create(client, _workitem(study))
    _cancel(client, done)
    _subscribe(client, WORKLIST, "ALL")
    with client.websocket_connect("/dicom-web/subscribers/ALL") as channel:
        assert _report(channel)[0] == waiting
        response = client.delete(f"/dicom-web/workitems/{WORKLIST}/subscribers/ALL")
        assert response.status_code == 200
        _cancel(client, waiting)  # unsubscribed from every workitem: not reported
        _subscribe(client, done, "ALL")
        assert _report(channel)[0] == done


def test_unsubscribing_stops_the_reports(queued):
    client, _ = queued
    study = _stored(client, 85)
    first, second = _create(client, _workitem(study)), _create(client, _workitem(study))
    _subscribe(client, first, "WATCHER")
    _subscribe(client, second, "WATCHER")
    assert client.delete(f"/dicom-web/workitems/{first}/subscribers/WATCHER").status_code == 200
    _cancel(client, first)
    _cancel(client, second)
    with client.websocket_connect("/dicom-web/subscribers/WATCHER") as channel:
        # The first workitem's report waiting from the subscription went with it (PS3.4 CC.2.3.2).
        reports = [_report(channel)[:2] for _ in range(3)]
        assert reports == [(second, STATE), (second, CANCEL_REQUESTED), (second, STATE)]


def test_two_channels_of_one_subscriber_never_send_a_report_twice(queued):
    """Each channel read the outbox, sent, then deleted: two at once sent the same reports."""
    import threading

    from server.dicomweb.workitem_subscriptions import Subscriber, _taken

    client, services = queued
    study = _stored(client, 92)
    for _ in range(6):
        _subscribe(client, _create(client, _workitem(study)), "TWICE")
    taken: list[bytes] = []

    def drain() -> None:
        while frames := _taken(services.engine, Subscriber("test-admin", "TWICE")):
            taken.extend(frames)

    threads = [threading.Thread(target=drain) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(taken) == 6 and len(set(taken)) == 6


def test_reports_expire_and_subscriptions_end_without_any_channel(queued, monkeypatch):
    from sqlalchemy import func, select

    import server.dicomweb.workitem_subscriptions as subscriptions
    from server.tables import workitem_events, workitem_subscriptions

    client, services = queued
    _subscribe(client, WORKLIST, "NEVER")  # and never connects
    first = _create(client, _workitem(_stored(client, 93)))
    _cancel(client, first)
    monkeypatch.setattr(subscriptions, "RETENTION_SECONDS", 0)
    _create(client, _workitem(_stored(client, 94)))

    def count(table):  # type: ignore[no-untyped-def]
        with services.engine.connect() as connection:
            return connection.execute(select(func.count()).select_from(table)).scalar_one()

    assert count(workitem_events) == 1  # only the newest report: the older ones expired as it was written
    assert count(workitem_subscriptions) == 1  # the canceled workitem's subscription ended with its final report


def test_one_subscriber_subscribing_at_once_from_many_requests_is_one_subscription(queued):
    """A check before the insert: on PostgreSQL, concurrent requests collided (500)."""
    from concurrent.futures import ThreadPoolExecutor

    client, _ = queued
    uid = _create(client, _workitem(_stored(client, 95)))
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(
            lambda target: client.post(f"/dicom-web/workitems/{target}/subscribers/DUP").status_code,
            [WORKLIST, uid] * 4,
        ))
    assert statuses == [201] * 8


def test_reports_wait_for_the_channel_and_are_sent_once(queued):
    client, _ = queued
    uid = _create(client, _workitem(_stored(client, 86)))
    _subscribe(client, uid, "WATCHER")
    with client.websocket_connect("/dicom-web/subscribers/WATCHER") as channel:
        assert _report(channel)[1] == STATE
    _cancel(client, uid)  # while no channel is open
    with client.websocket_connect("/dicom-web/subscribers/WATCHER") as channel:
        assert _report(channel)[1] == CANCEL_REQUESTED  # not the initial report again: it was sent
        assert [_state(_report(channel)[2]) for _ in range(2)] == ["IN PROGRESS", "CANCELED"]


def test_an_ae_title_is_the_subscribers_own_and_no_other_client_takes_its_reports(queued, app):
    """Reports are deleted once sent: anyone who could open another's channel
    by naming its AE title took them from the subscriber."""
    from server.auth.scopes import Role, role_grant

    client, services = queued
    uid = _create(client, _workitem(_stored(client, 89)))
    _subscribe(client, uid, "WATCHER")
    token, _ = services.auth.issuer.issue("another-operator", "ai-operator", str(role_grant(Role.AI_OPERATOR)),
                                          client=False)
    other = TestClient(app, base_url="http://testserver", headers={"Authorization": f"Bearer {token}"})
    _cancel(client, uid)
    with other.websocket_connect("/dicom-web/subscribers/WATCHER") as channel:
        time.sleep(0.6)  # past the channel's first look for reports: none is another's to send
        channel.close()
    with services.engine.connect() as connection:
        from sqlalchemy import func, select

        from server.tables import workitem_events

        assert connection.execute(select(func.count()).select_from(workitem_events)).scalar_one() == 4
    with client.websocket_connect("/dicom-web/subscribers/WATCHER") as channel:
        assert [_report(channel)[1] for _ in range(4)] == [STATE, CANCEL_REQUESTED, STATE, STATE]


def test_a_subscription_behind_a_tls_proxy_names_a_secure_channel(queued):
    client, _ = queued
    uid = _create(client, _workitem(_stored(client, 88)))
    response = client.post(f"/dicom-web/workitems/{uid}/subscribers/ST%20AE",
                           headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "pacs.example"})
    assert response.status_code == 201, response.text
    assert response.headers["content-location"] == "wss://pacs.example/dicom-web/subscribers/ST%20AE"


def test_subscriptions_that_cannot_be_made_are_refused(queued):
    client, _ = queued
    uid = _create(client, _workitem(_stored(client, 87)))
    for ae_title in ("%20%20", "A" * 17, "A%5CB", "A%07B"):
        assert client.post(f"/dicom-web/workitems/{uid}/subscribers/{ae_title}").status_code == 400
    assert client.post(f"/dicom-web/workitems/{uid}/subscribers/OK?deletionlock=maybe").status_code == 400
    assert client.post("/dicom-web/workitems/1.2.3.999/subscribers/OK").status_code == 404
    assert client.delete("/dicom-web/workitems/1.2.3.999/subscribers/OK").status_code == 404
    assert client.post(f"/dicom-web/workitems/{uid}/subscribers/OK/suspend").status_code == 400
    filtered = client.post(f"/dicom-web/workitems/{FILTERED_WORKLIST}/subscribers/OK?00741200=HIGH")
    assert filtered.status_code == 403
    assert "Filtered Worklist Subscriptions are not supported." in filtered.headers["warning"]


def test_the_channel_needs_credentials(queued, app):
    client, services = queued
    anonymous = TestClient(app, base_url="http://testserver")
    assert anonymous.post(f"/dicom-web/workitems/{WORKLIST}/subscribers/ALL").status_code == 401
    with pytest.raises(WebSocketDenialResponse) as refused:
        with anonymous.websocket_connect("/dicom-web/subscribers/ALL"):
            pass
    assert refused.value.status_code == 401
    with pytest.raises(WebSocketDenialResponse) as refused:
        with anonymous.websocket_connect("/dicom-web/subscribers/ALL?access_token=forged"):
            pass
    assert refused.value.status_code == 401
    token = admin_headers(services)["Authorization"].removeprefix("Bearer ")
    _subscribe(client, WORKLIST, "ALL")
    uid = _create(client, _workitem(_stored(client, 88)))
    with anonymous.websocket_connect(f"/dicom-web/subscribers/ALL?access_token={token}") as channel:
        assert _report(channel)[0] == uid
    opened = client.get("/fhir/AuditEvent", params={"_count": 200}).json()["entry"]
    descriptions = [entry["resource"].get("outcomeDesc", "") for entry in opened]
    assert sum("GET /dicom-web/subscribers/ALL answered 101" in text for text in descriptions) == 1
    assert sum("GET /dicom-web/subscribers/ALL answered 401" in text for text in descriptions) == 2


def test_a_channel_ends_when_its_token_does(queued, app, monkeypatch):
    """A channel outlives its handshake, not the token it opened with: each
    report would be refused to that token as a request."""
    from starlette.websockets import WebSocketDisconnect

    from server.dicomweb import workitem_subscriptions

    monkeypatch.setattr(workitem_subscriptions, "RECHECK_SECONDS", 0.2)
    client, services = queued
    _subscribe(client, WORKLIST, "ALL")
    uid = _create(client, _workitem(_stored(client, 86)))
    monkeypatch.setattr(services.auth.issuer, "lifetime_seconds", 2)
    token = admin_headers(services)["Authorization"].removeprefix("Bearer ")
    anonymous = TestClient(app, base_url="http://testserver")
    with anonymous.websocket_connect(f"/dicom-web/subscribers/ALL?access_token={token}") as channel:
        assert _report(channel)[0] == uid  # while the token holds
        time.sleep(2.5)
        _create(client, _workitem(_stored(client, 85)))  # its report is not sent: the close comes instead
        with pytest.raises(WebSocketDisconnect) as ended:
            channel.receive_json()
    assert ended.value.code == 1008
    assert "expired" in ended.value.reason


def test_the_channel_behind_uvicorn(queued, app):
    client, services = queued
    uid = _create(client, _workitem(_stored(client, 89)))
    _subscribe(client, uid, "LIVE")
    with served(app) as base:
        url = f"{base.replace('http', 'ws', 1)}/dicom-web/subscribers/LIVE"
        with connect(url, additional_headers=admin_headers(services), open_timeout=10) as channel:
            report = orjson.loads(channel.recv(timeout=10))
        assert report["00001000"]["Value"] == [uid]
        with pytest.raises(Exception, match="401"):
            connect(url, open_timeout=10)


@pytest.mark.parametrize("name", ["access_token", "access%5Ftoken"])
def test_a_token_sent_in_the_channels_query_stays_out_of_the_audit_trail(queued, app, name):
    """Whoever may read the audit trail could otherwise take the token and act as its holder until it expires."""
    import base64

    client, services = queued
    _subscribe(client, WORKLIST, "ALL")
    token = admin_headers(services)["Authorization"].removeprefix("Bearer ")
    anonymous = TestClient(app, base_url="http://testserver")
    with anonymous.websocket_connect(f"/dicom-web/subscribers/ALL?{name}={token}&x=1"):
        pass
    entries = client.get("/fhir/AuditEvent", params={"_count": 200}).json()["entry"]
    opened = [entry["resource"] for entry in entries
              if "GET /dicom-web/subscribers/ALL answered 101" in entry["resource"].get("outcomeDesc", "")]
    [query] = [base64.b64decode(entity["query"]) for entity in opened[0]["entity"] if "query" in entity]
    assert token.encode() not in query and b"x=1" in query
    assert token not in orjson.dumps(entries).decode()
