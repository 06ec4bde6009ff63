"""One AuditEvent per request, appended before the answer leaves.

The event is built when the handler starts its answer (the status decides the
outcome) and appended through the group-commit recorder; the answer waits
until its record is durable. When the record cannot be written the client
gets 503 instead of the answer: for reads and searches nothing was disclosed
(fail closed). A write has committed by then; its record is still attempted
and its failure answered 503, which is as close as a record outside the
action's own transaction gets (see the notes of issue 5).

Probes (/healthz, /readyz) are not audited: orchestrators call them every few
seconds and they touch no data.
"""

import logging
from datetime import UTC, datetime

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhir_mappings.audit_event import AuditKind, AuditRecord, Outcome, audit_event
from server.audit.recorder import AuditRecorder, AuditUnavailable
from server.errors import error_response
from server.logs import request_id_var

log = logging.getLogger(__name__)
_UNAUDITED = frozenset(("/healthz", "/readyz"))
_QIDO = frozenset(("studies", "series", "instances"))


def audit_kind(method: str, path: str) -> AuditKind | None:
    """What a request is, in audit terms; None for what is not audited."""
    parts = [part for part in path.split("/") if part]
    if not parts or path in _UNAUDITED:
        return None
    if parts[0] == "fhir":
        return _fhir_kind(method, parts[1:])
    if parts[0] == "dicom-web":
        if method == "POST":
            return AuditKind.STOW
        if method == "DELETE":
            return AuditKind.STUDY_DELETED
        return AuditKind.QIDO if parts[-1] in _QIDO else AuditKind.WADO
    if parts == ["auth", "token"]:
        return AuditKind.LOGIN
    if parts[0] == "admin":
        return AuditKind.APPLICATION_ACTIVITY if method != "GET" else AuditKind.SEARCH
    return None


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
    if method == "DELETE":
        return AuditKind.DELETE
    if len(parts) == 1:
        return AuditKind.SEARCH
    if parts[-1] == "_history":
        return AuditKind.HISTORY_TYPE if len(parts) == 2 else AuditKind.HISTORY
    return AuditKind.VREAD if "_history" in parts else AuditKind.READ


def _outcome(status: int) -> Outcome:
    if status >= 500:
        return Outcome.SERIOUS_FAILURE
    return Outcome.MINOR_FAILURE if status >= 400 else Outcome.SUCCESS


class AuditMiddleware:
    def __init__(self, app: ASGIApp, recorder: AuditRecorder, server_name: str) -> None:
        self.app = app
        self.recorder = recorder
        self.server_name = server_name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = audit_kind(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if kind is None:
            await self.app(scope, receive, send)
            return
        refused = False

        async def audited_send(message: Message) -> None:
            nonlocal refused
            if refused:
                return
            if message["type"] == "http.response.start":
                try:
                    await run_in_threadpool(self.recorder.record, self._event(scope, kind, message["status"]))
                except AuditUnavailable:
                    log.exception("a request went unanswered: its audit record could not be written")
                    refused = True
                    response = error_response(503, "the audit trail cannot record this request now; try again",
                                              {"Retry-After": "5"}, Request(scope))
                    await response(scope, receive, send)
                    return
            await send(message)

        await self.app(scope, receive, audited_send)

    def _event(self, scope: Scope, kind: AuditKind, status: int) -> dict:
        principal = scope.get("state", {}).get("principal")
        parts = [part for part in scope["path"].split("/") if part]
        resources = [f"{parts[1]}/{parts[2]}"] if parts[:1] == ["fhir"] and len(parts) >= 3 and not parts[2].startswith(("_", "$")) else []
        studies = [parts[2]] if parts[:2] == ["dicom-web", "studies"] and len(parts) >= 3 else []
        query = scope.get("query_string") or None
        return audit_event(AuditRecord(
            kind=kind, outcome=_outcome(status), recorded=datetime.now(UTC),
            client=principal.name if principal is not None else "anonymous", server=self.server_name,
            client_address=scope["client"][0] if scope.get("client") else None,
            description=f"{scope['method']} {scope['path']} answered {status}",
            request_id=request_id_var.get() or None, resources=resources, study_uids=studies, query=query,
        ))
