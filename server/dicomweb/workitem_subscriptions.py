"""UPS Watch (PS3.18 §11.10-11.13, PS3.4 CC.2.3-CC.2.4): subscriptions by AE
title, kept in the database, and event reports sent over a WebSocket.

Subscribing to the worklist subscribes the AE title to every workitem not yet
final and to every one created later, as PS3.4 CC.2.3.1 has it: each
workitem's subscription is then its own row, which an unsubscribe from that
workitem removes; suspending the worklist subscription stops only the later
ones; unsubscribing from the worklist removes them all.

A subscriber is an AE title of the user or client that subscribed it: the
same AE title of another client is another subscriber, whose channel it
cannot open, so no one can take another's reports (they are deleted once
sent) by naming its AE title.

Reports go through a durable outbox: each is written, one row per
subscriber, in the transaction of the change it reports (the queue's `on_job`
hook, a cancel request), so it reaches its subscriber whichever process made
the change (a server thread, a Celery worker, another server process) and
outlives a restart. A channel (`Open Event Channel`, PS3.18 §8.10.4) polls the
rows of its subscriber, sends them in order, and deletes what it sent. Reports
wait for a channel at most `RETENTION_SECONDS` (PS3.18 lets a server drop
them while no channel is open; this one keeps them a while), and a workitem's
subscriptions end with its final report.
"""

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple
from urllib.parse import quote

import orjson
from sqlalchemy import Connection, Engine, and_, delete, insert, select, text
from sqlalchemy.dialects import postgresql, sqlite
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocket, WebSocketDisconnect

from dicom.errors import NotFound
from dicom.uids import require_uid
from dicom.workitem_events import addressed, cancel_requested, progress_report, state_report
from dicom.workitems import CANCELED, STATE_OF_TASK_STATUS, CancellationRequest
from dicom.workitems import IN_PROGRESS as UPS_IN_PROGRESS
from server.audit.middleware import note_resources
from server.db import write_connection
from server.jobs.queue import FINAL, IN_PROGRESS, Job, JobChange, JobQueue, Stage, now_micros, progress_percent
from server.services import Services
from server.tables import inference_jobs, workitem_events, workitem_subscriptions, workitems, worklist_subscriptions

RETENTION_SECONDS = 7 * 24 * 3600
POLL_SECONDS = 0.5
# How often an open channel's credentials are checked again: an expired token or
# a retired key ends the channel within this, as it would refuse its next request.
RECHECK_SECONDS = 5.0
_BATCH = 100
_STAGES = frozenset(stage.business_status for stage in Stage)


class Subscriber(NamedTuple):
    owner: str  # the user or client that subscribed the AE title
    ae_title: str


def _of(table: Any, subscriber: Subscriber) -> Any:
    return and_(table.c.owner == subscriber.owner, table.c.ae_title == subscriber.ae_title)


# --- subscriptions (PS3.18 §11.10-11.12) ---------------------------------------
def channel_url(dicomweb_root: str, subscriber: Subscriber) -> str:
    """Where `subscriber` opens its channel: the Content-Location a subscription
    answers with, in the WebSocket scheme (PS3.18 Table 11.10.3-2)."""
    scheme, rest = dicomweb_root.split(":", 1)
    return f"{'wss' if scheme == 'https' else 'ws'}:{rest}/subscribers/{quote(subscriber.ae_title, safe='')}"


def subscribe(current: Services, uid: str, subscriber: Subscriber) -> None:
    """Subscribe to one workitem: its state is reported at once (PS3.4 CC.2.3.1),
    final or not, so that the subscriber starts from what the workitem is."""
    with write_connection(current.engine) as connection:
        task_id = _task_id(connection, uid)
        _add_subscriptions(connection, subscriber, [task_id])
        _write(connection, [subscriber], task_id, _state_report(_job(current.jobs.queue, connection, task_id)))


def subscribe_to_worklist(current: Services, subscriber: Subscriber) -> None:
    """Every workitem not yet final, reported at once, and every one created from now on."""
    with write_connection(current.engine) as connection:
        # Exclusive against job creations' shared hold: a job committing meanwhile is seen here, or sees this.
        _worklist_lock(connection, exclusive=True)
        _insert_ignoring_duplicates(connection, worklist_subscriptions, [subscriber._asdict()])
        subscribed = select(workitem_subscriptions.c.task_id).where(_of(workitem_subscriptions, subscriber))
        open_jobs = connection.execute(
            select(inference_jobs.c.task_id)
            .join(workitems, workitems.c.task_id == inference_jobs.c.task_id)
            .where(inference_jobs.c.status.notin_(FINAL), inference_jobs.c.task_id.notin_(subscribed))
            .order_by(inference_jobs.c.created_at, inference_jobs.c.task_id)
        ).scalars().all()
        _add_subscriptions(connection, subscriber, open_jobs)
        for task_id in open_jobs:
            _write(connection, [subscriber], task_id, _state_report(_job(current.jobs.queue, connection, task_id)))


def unsubscribe(engine: Engine, uid: str, subscriber: Subscriber) -> None:
    """From one workitem, its reports not yet sent included (PS3.4 CC.2.3.2); a
    worklist subscription goes on for the workitems created later."""
    with write_connection(engine) as connection:
        task_id = _task_id(connection, uid)
        for table in (workitem_subscriptions, workitem_events):
            connection.execute(delete(table).where(_of(table, subscriber), table.c.task_id == task_id))


def unsubscribe_from_worklist(engine: Engine, subscriber: Subscriber) -> None:
    """From the worklist and from every workitem, with every report not yet sent (PS3.4 CC.2.3.1)."""
    with write_connection(engine) as connection:
        for table in (worklist_subscriptions, workitem_subscriptions, workitem_events):
            connection.execute(delete(table).where(_of(table, subscriber)))


def suspend_worklist_subscription(engine: Engine, subscriber: Subscriber) -> None:
    """No more workitems created from now on; the subscriptions made so far stay (PS3.4 CC.2.3.1)."""
    with write_connection(engine) as connection:
        connection.execute(delete(worklist_subscriptions).where(_of(worklist_subscriptions, subscriber)))


def _task_id(connection: Connection, uid: str) -> str:
    require_uid(uid, "the workitem UID")
    task_id = connection.execute(select(workitems.c.task_id).where(workitems.c.workitem_uid == uid)).scalar()
    if task_id is None:
        raise NotFound(f"there is no workitem {uid} on this server")
    note_resources([f"Task/{task_id}"])  # which workitem the subscription is to, for the audit record
    return str(task_id)


def _add_subscriptions(connection: Connection, subscriber: Subscriber, task_ids: Sequence[str]) -> None:
    rows = [{**subscriber._asdict(), "task_id": task_id} for task_id in task_ids]
    _insert_ignoring_duplicates(connection, workitem_subscriptions, rows)


def _insert_ignoring_duplicates(connection: Connection, table: Any, rows: list[dict[str, Any]]) -> None:
    """Subscribing twice, even at once, is one subscription: a check before the
    insert let concurrent requests of one subscriber collide (a 500 on PostgreSQL)."""
    if rows:
        dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
        connection.execute(dialect.insert(table).on_conflict_do_nothing(), rows)


def _worklist_lock(connection: Connection, exclusive: bool) -> None:
    """Job creations hold it shared (they do not wait on each other), a
    worklist subscription exclusively: without it, on PostgreSQL, a job
    created while an AE title subscribed read the subscriptions before that
    one committed, and the subscription read the jobs before that one did,
    so neither knew of the other. SQLite's writers take turns already."""
    if connection.dialect.name == "postgresql":
        function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        connection.execute(text(f"SELECT {function}(hashtextextended('medaiflow-worklist-subscriptions', 0))"))


def _job(queue: JobQueue, connection: Connection, task_id: str) -> Job:
    job = queue.get(task_id, connection)
    assert job is not None  # a workitem's job is never deleted
    return job


# --- reports --------------------------------------------------------------------
def _state_report(job: Job) -> dict[str, Any]:
    state = STATE_OF_TASK_STATUS[JobQueue.public_status(job)]
    return state_report(state, job.reason if state == CANCELED else None)


def job_changed(connection: Connection, job: Job, change: JobChange) -> None:
    """The queue's `on_job` hook: a new workitem to the worklist's subscribers,
    and a change of state or progress to the workitem's. One indexed read
    when nobody watches (and, on PostgreSQL, a shared lock on creation)."""
    if change == "created":
        _worklist_lock(connection, exclusive=False)
        watchers = [Subscriber(*row) for row in connection.execute(
            select(worklist_subscriptions.c.owner, worklist_subscriptions.c.ae_title)
        )]
        for watcher in watchers:
            _add_subscriptions(connection, watcher, [job.task_id])
        _write(connection, watchers, job.task_id, _state_report(job))
        return
    if change == "status" and not _ups_state_changed(job):
        return  # a retry: UPS shows the job IN PROGRESS while it waits
    if change == "stage" and not (job.status == IN_PROGRESS and job.business_status in _STAGES):
        return
    watchers = _watchers(connection, job.task_id)
    if watchers:
        if change == "status" and job.status in FINAL and job.attempts == 0:
            # Ended before any run: SCHEDULED reaches a final state only through IN PROGRESS, both reported
            # (PS3.4 Table CC.1.1-2, CC.2.2.3), whether UPS-RS, FHIR or the queue itself ended it.
            _write(connection, watchers, job.task_id, state_report(UPS_IN_PROGRESS))
        progress = progress_report(progress_percent(job), job.business_status) if change == "stage" else None
        _write(connection, watchers, job.task_id, progress or _state_report(job))
    if job.status in FINAL:
        # Nothing more will be reported of it: its subscriptions would only pile up.
        connection.execute(delete(workitem_subscriptions).where(workitem_subscriptions.c.task_id == job.task_id))


def _ups_state_changed(job: Job) -> bool:
    """Whether a status change moved the UPS state (PS3.4 Table CC.1.1-2): into
    a final state, or IN PROGRESS by a first claim. A retry's wait (on-hold)
    and the attempts after it stay IN PROGRESS."""
    return job.status in FINAL or (job.status == IN_PROGRESS and job.attempts == 1)


def report_cancel_requested(connection: Connection, task_id: str, request: CancellationRequest) -> None:
    """UPS Cancel Requested (PS3.4 CC.2.4.2), before the server, the performer, cancels."""
    watchers = _watchers(connection, task_id)
    if watchers:
        report = cancel_requested(
            request.reason, request.contact_name, request.contact_uri, request.discontinuation_codes
        )
        _write(connection, watchers, task_id, report)


def _watchers(connection: Connection, task_id: str) -> list[Subscriber]:
    return [Subscriber(*row) for row in connection.execute(
        select(workitem_subscriptions.c.owner, workitem_subscriptions.c.ae_title)
        .where(workitem_subscriptions.c.task_id == task_id)
    )]


def _write(connection: Connection, subscribers: Sequence[Subscriber], task_id: str, report: dict[str, Any]) -> None:
    if subscribers:
        body, now = orjson.dumps(report), now_micros()
        connection.execute(insert(workitem_events), [
            {**subscriber._asdict(), "task_id": task_id, "created_at": now, "report_json": body}
            for subscriber in subscribers
        ])
        # Whether or not any channel ever opens: a subscriber that never connects kept them all.
        connection.execute(delete(workitem_events).where(
            workitem_events.c.created_at < now - RETENTION_SECONDS * 1_000_000
        ))


# --- the channel (PS3.18 §8.10.4, §8.10.5, §11.13) ------------------------------
def _taken(engine: Engine, subscriber: Subscriber) -> list[bytes]:
    """The oldest reports waiting for `subscriber`, addressed, as text frames,
    and taken out of the outbox in the same transaction: of two channels of
    one subscriber, each report goes to one."""
    with write_connection(engine) as connection:
        rows = connection.execute(
            select(workitem_events.c.id, workitem_events.c.report_json, workitems.c.workitem_uid)
            .join(workitems, workitems.c.task_id == workitem_events.c.task_id)
            .where(_of(workitem_events, subscriber))
            .order_by(workitem_events.c.id).limit(_BATCH)
        ).all()
        if not rows:
            return []
        # What another channel took meanwhile is no longer there to delete: only what this delete returns is ours.
        ours = set(connection.execute(
            delete(workitem_events).where(workitem_events.c.id.in_([row.id for row in rows]))
            .returning(workitem_events.c.id)
        ).scalars())
    return [orjson.dumps(addressed(orjson.loads(row.report_json), row.workitem_uid)) for row in rows if row.id in ours]


async def serve_channel(
    websocket: WebSocket, engine: Engine, subscriber: Subscriber, still_admitted: Callable[[], Awaitable[str | None]]
) -> None:
    """Send the reports of `subscriber` until it goes, or until the credentials
    it opened with stop admitting it (`still_admitted` says why). A report
    leaves the outbox as it is sent: one whose frame a breaking connection
    drops is not seen again (at most once, as PS3.18 lets a server drop reports)."""
    await websocket.accept()
    gone = asyncio.ensure_future(_closed(websocket))
    checked = time.monotonic()
    try:
        while not gone.done():
            if time.monotonic() - checked >= RECHECK_SECONDS:
                refusal = await still_admitted()
                if refusal is not None:
                    await websocket.close(code=1008, reason=refusal[:120])  # policy violation (RFC 6455 §7.4.1)
                    return
                checked = time.monotonic()
            frames = await run_in_threadpool(_taken, engine, subscriber)
            for frame in frames:
                await websocket.send_text(frame.decode())
            if not frames:
                await asyncio.wait([gone], timeout=POLL_SECONDS)
    except WebSocketDisconnect:
        pass
    finally:
        gone.cancel()
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect):
            await gone


async def _closed(websocket: WebSocket) -> None:
    """Until the subscriber closes the channel; what it sends is of no use to the server."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
