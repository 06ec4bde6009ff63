"""One AuditEvent per request.

A request that writes has its event appended inside its first write
transaction that commits (the commit witness of `server.db`): the change and
its record commit together, or neither does. Every other request (reads,
searches, refusals, writes that changed nothing) has its event appended by
the group-commit recorder when the answer starts, and the answer waits until
the record is durable; when it cannot be written the client gets 503 instead,
so nothing is disclosed unrecorded (fail closed).

An answer recorded as it started that then does not end whole (the client
closes the connection partway through a streamed study or export file, or
the stream fails) gets a second event, of the same request (same request id
and entities), that says so: outcome 4 when the client went, 8 when the
server could not finish, and how many bytes had gone out. The first record
stays as written, since the chain is append-only, and it has to be durable
before the first byte goes out: writing the record only once the body ended
would disclose data unrecorded, and lose the record of a long answer
entirely when the process dies during it. An answer that ends whole adds
nothing.

Probes (/healthz, /readyz) are not audited: orchestrators call them every few
seconds and they touch no data.

A WebSocket (the UPS Watch channel) is recorded once, as it opens or is
refused, and opens only once its record is durable; the event reports it
carries later are what the subscriptions, each recorded, asked for.
"""

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

from sqlalchemy import Connection
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicom.uids import is_safe_uid
from fhir_mappings.audit_event import AuditKind, AuditRecord, Outcome, audit_event, audit_events
from fhir_mappings.json_types import is_relative_reference
from server.audit.chain import AuditChain
from server.audit.recorder import AuditRecorder, AuditUnavailable
from server.auth.identities import ANONYMOUS
from server.db import commit_witness, reading, written
from server.errors import error_response
from server.logs import request_id_var
from server.methods import HEAD_MARK

log = logging.getLogger(__name__)
_UNAUDITED = frozenset(("/healthz", "/readyz"))
_QIDO = frozenset(("studies", "series", "instances"))
_WRITES = frozenset((AuditKind.CREATE, AuditKind.UPDATE, AuditKind.PATCH, AuditKind.DELETE, AuditKind.BATCH,
                     AuditKind.TRANSACTION, AuditKind.STOW, AuditKind.STUDY_DELETED, AuditKind.APPLICATION_ACTIVITY))
_RECORD_TIMEOUT_S = 30.0
# How much of an answer may go out between looks for a client that left: what its record counts as sent
# may exceed what was by up to this much.
_LOOK_EVERY = 256 * 1024
# The Patient id of each of some studies, read on the connection given.
PatientsOfStudies = Callable[[Connection, Iterable[str]], dict[str, str]]


def note_studies(study_uids: Iterable[str]) -> bool:
    """The studies the current request touched (beyond its path), for its audit
    record; their patients are looked up when the record is made. False when
    no request is being recorded (the server changed them on its own)."""
    audit = _current.get()
    if audit is not None:
        audit.studies.update(study_uids)
    return audit is not None


def note_resources(references: Iterable[str]) -> None:
    """What the current request read (`Type/id`) where its path names none."""
    audit = _current.get()
    if audit is not None:
        audit.resources.update(references)


def note_patients(patient_ids: Iterable[str]) -> None:
    """The Patient ids the current request disclosed or changed."""
    audit = _current.get()
    if audit is not None:
        audit.patients.update(patient_ids)


def note_cut_short(reason: str) -> None:
    """Why the current answer, already under way, is cut off before holding
    all it should (the store changed under it, an image would not decode):
    for its record, which would otherwise only say that the server failed."""
    audit = _current.get()
    if audit is not None:
        audit.cut_short = reason


def note_refusal(scope: Scope, why: str) -> None:
    """The current answer refuses what was asked whatever its status says (a
    SMART login page sends the browser back with 303 whether the user let the
    app in or not): recorded as a failure, with why."""
    scope.setdefault("state", {})[_REFUSAL] = why


def note_unrecorded_refusals(scope: Scope, recorded: bool, unrecorded: int) -> None:
    """A refusal of an address over its limit of requests without valid
    credentials (`server.auth.limits`): such refusals disclose nothing, and
    recording each would let the address flood the trail, so only the first
    of each window is recorded, with how many before it were not."""
    scope.setdefault("state", {})[_UNRECORDED] = (recorded, unrecorded)


def note_transaction() -> None:
    """The current `POST /fhir` carries a transaction, not a batch: only its body says which."""
    audit = _current.get()
    if audit is not None and audit.kind is AuditKind.BATCH:
        audit.kind = AuditKind.TRANSACTION


def audit_kind(method: str, path: str) -> AuditKind | None:
    """What a request is, in audit terms; None for what is not audited."""
    parts = [part for part in path.split("/") if part]
    if not parts or path in _UNAUDITED or method == "OPTIONS":  # CORS preflights carry no credentials
        return None
    if parts[0] == "fhir":
        return _fhir_kind(method, parts[1:])
    if parts[:2] == ["dicom-web", "workitems"]:
        return _workitem_kind(method, parts[2:])
    if parts[:2] == ["dicom-web", "subscribers"]:
        return AuditKind.READ  # the channel of a subscriber's event reports on workitems
    if parts[0] == "dicom-web":
        if method == "POST":
            return AuditKind.STOW
        if method == "DELETE":
            return AuditKind.STUDY_DELETED
        return AuditKind.QIDO if parts[-1] in _QIDO else AuditKind.WADO
    if parts == ["wado"]:
        return AuditKind.WADO
    if parts == ["auth", "token"] or (parts == ["auth", "authorize"] and method == "POST"):  # a SMART app's login page
        return AuditKind.LOGIN
    if parts[0] == "admin":
        if method != "GET":
            return AuditKind.APPLICATION_ACTIVITY
        return AuditKind.SEARCH if len(parts) == 2 else AuditKind.READ  # the models, or one of them
    if parts[0] == ".well-known":
        return None  # public keys and discovery: no data, and polled by every client
    return AuditKind.READ


def _workitem_kind(method: str, parts: list[str]) -> AuditKind:
    """UPS-RS, on the jobs' Tasks: a search is a DICOM query, the rest FHIR-like interactions on a Task."""
    if method in ("GET", "HEAD"):
        return AuditKind.READ if parts else AuditKind.QIDO
    return AuditKind.CREATE if method == "POST" and not parts else AuditKind.UPDATE


def _fhir_kind(method: str, parts: list[str]) -> AuditKind:
    if not parts:
        return AuditKind.BATCH
    if parts == ["metadata"]:
        return AuditKind.CAPABILITIES
    if any(part.startswith("$") for part in parts):
        return AuditKind.OPERATION
    if method == "POST":
        return AuditKind.SEARCH if parts[-1] == "_search" else AuditKind.CREATE
    if method == "PUT":
        return AuditKind.UPDATE
    if method == "PATCH":  # written as an update, recorded as what was asked (R4 restful-interaction has both)
        return AuditKind.PATCH
    if method == "DELETE":
        return AuditKind.DELETE
    if parts == ["_history"]:
        return AuditKind.HISTORY_SYSTEM
    if len(parts) == 1 or (len(parts) == 3 and parts[2] != "_history"):  # a type, or a type in a compartment
        return AuditKind.SEARCH
    if parts[-1] == "_history":
        return AuditKind.HISTORY_TYPE if len(parts) == 2 else AuditKind.HISTORY
    return AuditKind.VREAD if "_history" in parts else AuditKind.READ


def _outcome(status: int) -> Outcome:
    if status >= 500:
        return Outcome.SERIOUS_FAILURE
    return Outcome.MINOR_FAILURE if status >= 400 else Outcome.SUCCESS


@dataclass
class _RequestAudit:
    """One request's record: written once, in a write transaction or by the recorder."""

    scope: Scope
    kind: AuditKind
    chain: AuditChain
    server_name: str
    patients_of_studies: PatientsOfStudies
    studies: set[str] = field(default_factory=set)
    patients: set[str] = field(default_factory=set)
    resources: set[str] = field(default_factory=set)  # what it wrote, where its path names nothing
    recorded: bool = False
    answering: bool = False  # once the answer starts, later writes are not this request's action
    status: int = 0
    sent: int = 0  # bytes of the answer's body handed to the connection while the client was there
    complete: bool = False  # the body's last message went out while the client was there
    disconnected: bool = False
    cut_short: str | None = None  # why the answer ends incomplete, as the handler knows (`note_cut_short`)
    _appended: bool = False

    def __post_init__(self) -> None:
        parts = [part for part in self.scope["path"].split("/") if part]
        # Only a UID: the request may be refused for its path, and its record must still be written.
        if parts[:2] == ["dicom-web", "studies"] and len(parts) >= 3 and is_safe_uid(parts[2]):
            self.studies.add(parts[2])

    def before_commit(self, connection: Connection) -> None:
        # Only the action itself: authentication may write (failed-login counts, rehashes) before it is allowed.
        batch = self.kind is AuditKind.BATCH
        if (self.kind in _WRITES and (batch or not self.recorded) and not self.answering
                and self.scope["state"].get("authorized")):
            changed = written(connection)
            self.patients |= changed.patients  # the answer names every patient the request touched
            if batch:
                # Each entry of a batch commits on its own, and is recorded with what it wrote, not what others did.
                events = self.event(Outcome.SUCCESS, "committed", changed.resources, changed.patients, ())
            else:
                # The studies this transaction wrote are visible to it; those it synced need no look-up.
                self.resolve_patients(connection, changed.study_patients)
                self.resources |= changed.resources
                events = self.event(Outcome.SUCCESS, "committed")
            self.chain.append(connection, events)
            self._appended = True

    def resolve_patients(self, connection: Connection, known: Mapping[str, str | None] | None = None) -> None:
        """The patients of the request's studies; `known`: the Patient id of
        studies whose ImagingStudy the committing transaction wrote (None:
        gone), which a one-instance STOW would otherwise read back at once."""
        known = known or {}
        self.patients.update(patient for study, patient in known.items() if patient and study in self.studies)
        unknown = self.studies - known.keys()
        if unknown:
            self.patients.update(self.patients_of_studies(connection, unknown).values())

    def committed(self) -> None:
        if self._appended:
            self.recorded = True

    def answer_event(self, status: int | None) -> list[dict[str, Any]]:
        """The record of the answer (None: a WebSocket closed without one);
        none for a refusal left unrecorded (`note_unrecorded_refusals`)."""
        result = f"answered {status}"
        refusal = self.scope["state"].get(_REFUSAL)
        if refusal is not None:
            return self.event(Outcome.MINOR_FAILURE, f"{result}: {refusal}")
        quiet = self.scope["state"].get(_UNRECORDED)
        if quiet is not None:
            recorded, unrecorded = quiet
            if not recorded:
                return []
            result += (f", over its address's limit of requests without valid credentials: the others of its window"
                       f" go unrecorded ({unrecorded} did since the last such record)")
        return self.event(_outcome(status or 500), result)

    def unfinished_event(self, failed: bool) -> list[dict[str, Any]]:
        """The second record of an answer that was recorded as it started but
        did not end whole (`failed`: the application raised); none otherwise."""
        if not (self.recorded and self.answering) or (self.complete and self.cut_short is None):
            return []
        if self.cut_short is not None or failed or not self.disconnected:
            outcome, why = Outcome.SERIOUS_FAILURE, self.cut_short or "the server failed to send the rest"
        else:
            outcome, why = Outcome.MINOR_FAILURE, "the client closed the connection"
        return self.event(outcome, f"answered {self.status}, but the answer was cut short after {self.sent} bytes: "
                                   f"{why}")

    def login_event(self) -> dict[str, Any]:
        """A password checked by HTTP Basic (DCM 110114 User Authentication)."""
        name, succeeded = self.scope["state"]["basic_login"]
        scope = self.scope
        return audit_event(AuditRecord(
            kind=AuditKind.LOGIN, outcome=Outcome.SUCCESS if succeeded else Outcome.MINOR_FAILURE,
            recorded=datetime.now(UTC), client=name or ANONYMOUS, server=self.server_name,
            client_address=scope["client"][0] if scope.get("client") else None,
            description=f"HTTP Basic login of {name} {'succeeded' if succeeded else 'failed'}",
            request_id=request_id_var.get() or None,
        ))

    def event(self, outcome: Outcome, result: str, resources: Iterable[str] | None = None,
              patients: Iterable[str] | None = None, studies: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """The request's record, its events (`audit_events`: several when it
        names many patients); a batch entry's names what that entry wrote instead."""
        scope = self.scope
        principal = scope["state"].get("principal")
        # Before anyone is authenticated, a token request names who is logging in (`note_login`).
        client = principal.name if principal is not None else scope["state"].get(_LOGIN_NAME, ANONYMOUS)
        app = principal.app if principal is not None else scope["state"].get(_LOGIN_APP)
        parts = [part for part in scope["path"].split("/") if part]
        if resources is None:
            # The resource the URL names, when it names one: `Nope/x` or `Task/bad id` is no reference,
            # and the record would be an AuditEvent this server itself refuses (the description keeps the URL).
            named = f"{parts[1]}/{parts[2]}" if parts[:1] == ["fhir"] and len(parts) >= 3 else ""
            resources = [named] if is_relative_reference(named) else self.resources
        query = _without_credentials(scope.get("query_string") or b"") or None
        named = set(self.patients if patients is None else patients)
        # A request under a patient context is about that patient, found or not: named first, by the first event.
        context = [principal.patient] if principal is not None and principal.patient is not None else []
        return audit_events(AuditRecord(
            kind=self.kind, outcome=outcome, recorded=datetime.now(UTC),
            client=client, server=self.server_name,
            client_address=scope["client"][0] if scope.get("client") else None,
            description=f"{'HEAD' if scope.get(HEAD_MARK) else scope.get('method', 'GET')} {scope['path']} {result}",
            request_id=request_id_var.get() or None, resources=sorted(resources),
            study_uids=sorted(self.studies if studies is None else studies),
            patients=[*context, *sorted(named.difference(context))], query=query, application=app,
        ))


def _without_credentials(query: bytes) -> bytes:
    """The query as received, but for the value of an `access_token` (how a
    WebSocket brings its Bearer token, RFC 6750 2.3): whoever may read the
    audit trail could otherwise act as that token's holder until it expires."""
    if b"access_token" not in query and b"%" not in query:  # the common case, on every request: nothing to hide
        return query
    parts = query.split(b"&")
    return b"&".join(_REDACTED if unquote_plus(part.split(b"=", 1)[0].decode("latin-1")) == "access_token" else part
                     for part in parts)


_REDACTED = b"access_token=redacted"
_current: ContextVar[_RequestAudit | None] = ContextVar("request_audit", default=None)
_LOGIN_NAME = "login_name"
_LOGIN_APP = "login_app"
_UNRECORDED = "unrecorded_refusal"
_REFUSAL = "refusal"


def note_login(scope: Scope, name: str, app: str | None = None) -> None:
    """The user or client a token request logs in (and the app a user logs
    in to), for its audit record, whether it succeeds or not."""
    state = scope.setdefault("state", {})
    state[_LOGIN_NAME] = name
    if app is not None:
        state[_LOGIN_APP] = app


class AuditMiddleware:
    def __init__(self, app: ASGIApp, chain: AuditChain, recorder: AuditRecorder, server_name: str,
                 patients_of_studies: PatientsOfStudies) -> None:
        self.app = app
        self.chain = chain
        self.recorder = recorder
        self.server_name = server_name
        self.patients_of_studies = patients_of_studies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = scope["type"] == "websocket"
        kind = audit_kind(scope.get("method", "GET"), scope["path"]) if scope["type"] == "http" or websocket else None
        if kind is None:
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})
        audit = _RequestAudit(scope, kind, self.chain, self.server_name, self.patients_of_studies)
        if websocket:
            await self._channel(audit, scope, receive, send)
            return
        refused = False

        async def watched_receive() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                audit.disconnected = True  # the server drops what is sent from now on
            return message

        unlooked = 0  # bytes sent since the last look for the client's leaving

        async def audited_send(message: Message) -> None:
            nonlocal refused, unlooked
            if refused:
                return
            if message["type"] == "http.response.body":
                await send(message)
                more, size = message.get("more_body", False), len(message.get("body", b""))
                unlooked += size
                if more and unlooked >= _LOOK_EVERY:
                    # The server drops what is sent after the client left, without a word (ASGI 2.3), and a body
                    # whose parts are at hand never waits: this lets the client's leaving be seen (and the rest
                    # go unmade). Not at every part: for an answer of many small ones that cost a sixth more CPU.
                    unlooked = 0
                    await asyncio.sleep(0)
                if not audit.disconnected:
                    audit.sent += size
                    audit.complete = not more
                return
            if message["type"] == "http.response.start":
                audit.answering, audit.status = True, message["status"]
                events = [audit.login_event()] if "basic_login" in scope["state"] else []
                # A batch's entries that committed were recorded as they did; its answer is recorded as well,
                # for the entries that read, failed or were refused.
                if not audit.recorded or audit.kind is AuditKind.BATCH:
                    if audit.studies:
                        await run_in_threadpool(self._resolve_patients, audit)
                    events += audit.answer_event(message["status"])
                if events:
                    try:
                        await self._record(events)
                        audit.recorded = True
                    except AuditUnavailable:
                        log.exception("a request went unanswered: its audit record could not be written")
                        refused = True
                        response = error_response(503, "the audit trail cannot record this request now; try again",
                                                  {"Retry-After": "5"}, Request(scope))
                        await response(scope, receive, send)
                        return
            await send(message)

        witness, current = commit_witness.set(audit), _current.set(audit)
        try:
            await self.app(scope, watched_receive, audited_send)
        except Exception:
            if not audit.answering:
                # A bug: the 500 is answered outside this middleware, so record it here.
                failure = [] if audit.recorded else audit.event(_outcome(500), "answered 500: the server failed")
            else:
                failure = audit.unfinished_event(failed=True)
            if failure:
                await self._record_after_answer(failure)
            raise
        else:
            unfinished = audit.unfinished_event(failed=False)
            if unfinished:
                await self._record_after_answer(unfinished)
        finally:
            _current.reset(current)
            commit_witness.reset(witness)

    async def _channel(self, audit: _RequestAudit, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket: recorded by its first message, which opens it (101),
        refuses it with an HTTP answer, or closes it unopened (403)."""

        async def audited_send(message: Message) -> None:
            if not audit.recorded:
                audit.recorded = True
                status = {"websocket.accept": 101, "websocket.close": 403}.get(message["type"], message.get("status"))
                events = [audit.login_event()] if "basic_login" in scope["state"] else []
                events += audit.answer_event(status)
                try:
                    await self._record(events)
                except AuditUnavailable:
                    log.exception("a WebSocket went unopened: its audit record could not be written")
                    if message["type"] == "websocket.accept":
                        await send({"type": "websocket.close", "code": 1011})
                    raise
            await send(message)

        current = _current.set(audit)
        try:
            await self.app(scope, receive, audited_send)
        finally:
            _current.reset(current)

    def _resolve_patients(self, audit: _RequestAudit) -> None:
        with reading(self.chain.engine) as connection:
            audit.resolve_patients(connection)

    async def _record_after_answer(self, events: list[dict[str, Any]]) -> None:
        """What happened once the answer was under way: nobody waits for it to be answered any more."""
        try:
            await self._record(events)
        except AuditUnavailable:
            log.exception("the end of a request could not be recorded in the audit trail")

    async def _record(self, events: list[dict[str, Any]]) -> None:
        if not events:  # a refusal left unrecorded
            return
        try:
            # One action's events, appended in one transaction: all or none.
            await asyncio.wait_for(self.recorder.submit(*events), _RECORD_TIMEOUT_S)
        except AuditUnavailable:
            raise
        except Exception as error:
            raise AuditUnavailable(f"the audit record could not be written: {error}") from error
