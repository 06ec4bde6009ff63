"""The routes of FHIR Bulk Data `$export` (hl7.org/fhir/uv/bulkdata/export.html,
v2.0.0): kick-off at system, Patient and Group level, status, delete and files.

Registered before the FHIR route table, whose `[type]/[id]` would otherwise
take `Patient/$export` and `Group/[id]/$export`. The URLs carry `$`, so the
audit trail records each as an operation; the authentication middleware
leaves the rights to these routes, which judge them type by type.
"""

from collections.abc import Iterator
from email.utils import format_datetime
from typing import IO, Any

import orjson
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse

from fhir_mappings.bulk_export import NDJSON, ExportRequest, Level, manifest, parse_export, patient_references
from fhir_mappings.date_ranges import from_micros, instant_text
from fhir_mappings.errors import FhirError, InvalidRequest, ResourceNotFound
from fhir_mappings.operation_parameters import parameter_pairs
from fhir_mappings.outcome import operation_outcome
from server.auth.access import Principal
from server.errors import fhir_error_response, fhir_status_for
from server.fhir.bulk_export import (
    COMPLETE,
    FAILED,
    ExportJob,
    TooManyExports,
    check_type_filters,
    exported_types,
    held_to_patient,
    with_group_members,
)
from server.fhir.negotiation import FHIR_JSON, Format, fhir_response, form_pairs, read_resource_body
from server.fhir.routes import fhir_base
from server.services import services

router = APIRouter(tags=["FHIR Bulk Data"])
STATUS_PATH = "$export-status"
FILE_PATH = "$export-file"
# How long a client should wait between polls of a running export (seconds).
_POLL_AFTER = "2"
_CHUNK = 1 << 16
_JSON = Format(FHIR_JSON, pretty=False)


@router.get("/$export")
@router.post("/$export")
async def system_export(request: Request) -> Response:
    return await _kick_off(request, Level.SYSTEM)


@router.get("/Patient/$export")
@router.post("/Patient/$export")
async def patient_export(request: Request) -> Response:
    return await _kick_off(request, Level.PATIENT)


@router.get("/Group/{group_id}/$export")
@router.post("/Group/{group_id}/$export")
async def group_export(request: Request, group_id: str) -> Response:
    return await _kick_off(request, Level.GROUP, group_id)


async def _kick_off(request: Request, level: Level, group_id: str | None = None) -> Response:
    """export.html#bulk-data-kick-off-request: its OperationOutcomes are FHIR
    JSON whatever the Accept, the one format the IG has for them."""
    try:
        return await _start(request, level, group_id)
    except FhirError as error:
        outcome = operation_outcome(error.issue_code, error.diagnostics)
        return fhir_response(outcome, _JSON, fhir_status_for(error))


async def _start(request: Request, level: Level, group_id: str | None) -> Response:
    preferences = _preferences(request)
    if "respond-async" not in preferences:
        raise InvalidRequest("$export runs asynchronously: send Prefer: respond-async")
    _require_fhir_json_accepted(request)
    pairs = form_pairs(request.scope["query_string"])
    patients = None
    if request.method == "POST":
        body = await read_resource_body(request, services(request).settings.fhir_max_body_bytes)
        patients, body = patient_references(body)
        pairs += parameter_pairs(body, "$export")
    fhir = services(request).fhir
    parsed = parse_export(level, pairs, patients, fhir.supported_types, preferences.get("handling") == "lenient")
    principal: Principal = request.state.principal
    parsed = held_to_patient(principal, parsed)
    if group_id is not None:
        parsed = await run_in_threadpool(with_group_members, principal, fhir, parsed, group_id)
    types = exported_types(principal, parsed, fhir.supported_types)
    check_type_filters(principal, parsed, fhir.supported_types)
    base = fhir_base(request)
    query = request.url.query
    asked = f"{base}{request.url.path.removeprefix('/fhir')}{'?' + query if query else ''}"
    exports = services(request).exports
    try:
        export_id = await run_in_threadpool(exports.jobs.start, principal, parsed, types, asked)
    except TooManyExports as error:
        outcome = operation_outcome("throttled", f"{error}; wait for one to finish or delete one")
        return fhir_response(outcome, _JSON, 429,
                             {"Retry-After": str(int(exports.retry_after_seconds))})
    exports.worker.wake()
    location = f"{base}/{STATUS_PATH}/{export_id}"
    return fhir_response(_accepted(parsed, types), _JSON, 202, {"Content-Location": location})


def _accepted(parsed: ExportRequest, types: tuple[str, ...]) -> dict[str, Any]:
    notes = f"exporting {', '.join(types)}"
    if parsed.group is not None and parsed.patients is not None:
        notes += f" for the member Patients of Group/{parsed.group} whose membership holds now: {len(parsed.patients)}"
    if parsed.ignored:
        notes += f"; ignored at the client's lenient request: {', '.join(parsed.ignored)}"
    return operation_outcome("informational", notes, severity="information")


@router.get(f"/{STATUS_PATH}/{{export_id}}")
async def export_status(request: Request, export_id: str) -> Response:
    """export.html#bulk-data-status-request"""
    job = await run_in_threadpool(services(request).exports.jobs.find, export_id, request.state.principal)
    if job.status == FAILED:  # the one answer of the protocol that is a 5xx (export.html#response---error-status-1)
        return fhir_error_response(request, 500, "exception", job.failure or "the export failed")
    if job.status != COMPLETE:
        return Response(status_code=202, headers={"X-Progress": job.progress or job.status, "Retry-After": _POLL_AFTER})
    expires = format_datetime(from_micros(job.expires_at), usegmt=True)  # when the files go
    return Response(_manifest_json(request, job), media_type="application/json", headers={"Expires": expires})


def _manifest_json(request: Request, job: ExportJob) -> bytes:
    files = f"{fhir_base(request)}/{FILE_PATH}/{job.export_id}"
    outputs = [{"type": output["type"], "url": f"{files}/{output['file']}", "count": output["count"]}
               for output in job.outputs]
    return orjson.dumps(manifest(instant_text(job.transaction_time), job.request_url, outputs, []))


@router.delete(f"/{STATUS_PATH}/{{export_id}}")
async def cancel_export(request: Request, export_id: str) -> Response:
    """export.html#bulk-data-delete-request: 202, and the status URL is then 404."""
    await run_in_threadpool(services(request).exports.jobs.cancel, export_id, request.state.principal)
    return Response(status_code=202)


@router.get(f"/{FILE_PATH}/{{export_id}}/{{name}}")
async def export_file(request: Request, export_id: str, name: str) -> Response:
    """export.html#file-request: the NDJSON as written, to the export's starter alone."""
    jobs = services(request).exports.jobs
    job = await run_in_threadpool(jobs.find, export_id, request.state.principal)
    try:
        # Opened before answering: a DELETE that removes it meanwhile leaves this reading whole.
        stream = await run_in_threadpool(jobs.file(job, name).open, "rb")
    except FileNotFoundError:
        raise ResourceNotFound(f"export {export_id[:64]} has no file {name[:64]!r} any more") from None
    return StreamingResponse(_chunks(stream), media_type=NDJSON)


def _chunks(stream: IO[bytes]) -> Iterator[bytes]:
    with stream:
        while chunk := stream.read(_CHUNK):
            yield chunk


def _preferences(request: Request) -> dict[str, str]:
    """Every `Prefer` token (RFC 7240) with its value ("" for none): `respond-async`, `handling=lenient`."""
    found = {}
    for header in request.headers.getlist("prefer"):
        for part in header.split(","):
            name, _, value = part.partition(";")[0].strip().partition("=")
            found[name.strip().lower()] = value.strip().strip('"').lower()
    return found


def _require_fhir_json_accepted(request: Request) -> None:
    """The kick-off answers (its OperationOutcomes) are FHIR JSON alone
    (export.html#headers): an Accept that rules it out is refused; none, or
    one that takes any type, takes it."""
    accepted = [item.split(";")[0].strip().lower() for item in request.headers.get("accept", "*/*").split(",")]
    if not {FHIR_JSON, "application/*", "*/*"} & set(accepted):
        raise InvalidRequest(f"$export answers in {FHIR_JSON}: send Accept: {FHIR_JSON}")
