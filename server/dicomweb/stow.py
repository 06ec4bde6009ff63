"""STOW-RS (PS3.18 §10.5): stream the request's parts to disk, then store them.

Nothing is stored until the whole body has arrived and its framing checked:
a request that dies half way, or whose multipart body never closes, leaves
nothing behind.
"""

import asyncio
import logging
from dataclasses import dataclass

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from dicom.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from dicom.multipart import (
    MultipartReader,
    PartData,
    PartEnd,
    PartStart,
    parse_content_type,
)
from dicom.native_xml import native_xml
from dicom.stow import FailureReason, InstanceOutcome, stow_response, stow_status
from dicom.uids import require_uid
from server.content_coding import decoded_body
from server.dicomweb.context import (
    DICOM_JSON,
    DICOM_XML,
    dicomweb_root,
    preferred_model,
)
from server.dicomweb.patient_writes import PatientWrites, require_within_patient, writes_compartment
from server.ingest import PreparedFile, prepare
from server.services import Services
from server.storage import ReceivedFile, TempFileWriter, disk_out_of_room

log = logging.getLogger(__name__)

DICOM_MEDIA_TYPE = "application/dicom"


def _boundary_of(content_type_header: str | None) -> str:
    if not content_type_header:
        raise UnsupportedMediaType("STOW-RS needs Content-Type multipart/related; type=\"application/dicom\"")
    content_type = parse_content_type(content_type_header)
    if content_type.media_type != "multipart/related":
        raise UnsupportedMediaType(
            f"STOW-RS takes multipart/related; type=\"application/dicom\", not {content_type.media_type}"
        )
    part_type = content_type.params.get("type", DICOM_MEDIA_TYPE).lower()
    if part_type != DICOM_MEDIA_TYPE:
        raise UnsupportedMediaType(
            f"this server stores Part 10 files (type=\"application/dicom\"); type=\"{part_type}\" is not supported"
        )
    boundary = content_type.params.get("boundary")
    if not boundary:
        raise InvalidRequest("the multipart/related Content-Type has no boundary parameter")
    return boundary


@dataclass(frozen=True)
class _DicomPart:
    received: ReceivedFile
    # Described in a worker thread while the rest of the body is still arriving.
    description: "asyncio.Future[PreparedFile]"


@dataclass(frozen=True)
class _RefusedPart:
    failure: FailureReason
    detail: str


_EMPTY_PART = _RefusedPart(FailureReason.CANNOT_UNDERSTAND, "empty part")
_NO_ROOM = "the server has no room left to receive this part (disk full or quota spent); try again later"


def _write_failure(error: OSError) -> _RefusedPart:
    """A part whose payload could not be written: the client may try again
    later when the disk is full (0xA700), not when the disk failed (0x0110)."""
    if disk_out_of_room(error):
        return _RefusedPart(FailureReason.OUT_OF_RESOURCES, _NO_ROOM)
    return _RefusedPart(FailureReason.PROCESSING_FAILURE, f"the server could not write this part: {error.strerror}")


async def _receive_parts(request: Request, services: Services, boundary: str) -> list[_DicomPart | _RefusedPart]:
    """Each part as a temp file being described, or as the reason it was refused;
    raises if the body is malformed. A part that cannot be written (the disk
    is full) is refused alone: the rest of the body is still read, so that the
    parts written before it, and any after it that fit, can be stored."""
    limit = services.settings.max_stow_bytes
    reader = MultipartReader(boundary, DICOM_MEDIA_TYPE)
    parts: list[_DicomPart | _RefusedPart] = []
    writer: TempFileWriter | None = None
    refused: _RefusedPart | None = None
    try:
        async for chunk in decoded_body(request, limit):
            for event in reader.feed(chunk):
                if isinstance(event, PartData):
                    if writer is not None:
                        try:
                            writer.write(event.data)
                        except OSError as error:
                            writer.abort()
                            writer, refused = None, _write_failure(error)
                elif isinstance(event, PartStart):
                    if event.content_type.split(";")[0].strip().lower() == DICOM_MEDIA_TYPE:
                        try:
                            writer = services.store.new_temp_file()
                        except OSError as error:
                            refused = _write_failure(error)
                    else:
                        refused = _RefusedPart(
                            FailureReason.CANNOT_UNDERSTAND,
                            f"a part of type {event.content_type[:60]!r} is not application/dicom",
                        )
                elif isinstance(event, PartEnd):
                    ended = _finished(writer) if writer is not None else refused or _EMPTY_PART
                    if isinstance(ended, ReceivedFile):
                        ended = _DicomPart(ended, asyncio.ensure_future(asyncio.to_thread(prepare, ended)))
                    parts.append(ended)
                    writer, refused = None, None
        reader.close()
    except ClientDisconnect:
        _discard(parts, writer)
        raise InvalidRequest("the client closed the connection before the body was complete") from None
    except BaseException:
        _discard(parts, writer)
        raise
    return parts


def _finished(writer: TempFileWriter) -> ReceivedFile | _RefusedPart:
    try:
        return writer.finish()
    except OSError as error:  # what was still buffered did not fit
        writer.abort()
        return _write_failure(error)


def _discard(parts: list[_DicomPart | _RefusedPart], writer: TempFileWriter | None) -> None:
    # A description still running on a removed file ends as a problem, not an error.
    if writer is not None:
        writer.abort()
    for part in parts:
        if isinstance(part, _DicomPart):
            part.received.temp_path.unlink(missing_ok=True)


async def store_instances(request: Request, services: Services, study_uid: str | None) -> Response:
    if study_uid is not None:
        require_uid(study_uid, "StudyInstanceUID")
    boundary = _boundary_of(request.headers.get("content-type"))
    model = _response_model(request)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > services.settings.max_stow_bytes:
        raise PayloadTooLarge(f"the request body is larger than the limit of {services.settings.max_stow_bytes} bytes")
    parts = await _receive_parts(request, services, boundary)
    if not parts:
        raise InvalidRequest("the multipart body has no parts")
    try:
        prepared = await asyncio.gather(*(part.description for part in parts if isinstance(part, _DicomPart)))
        patient = writes_compartment("c")
        guard = PatientWrites(patient) if patient is not None else None
        if patient is not None:
            await asyncio.to_thread(require_within_patient, services.engine, prepared, patient)
        stored = iter(await asyncio.to_thread(services.ingestor.store_batch, list(prepared), study_uid, guard))
    except BaseException:
        _discard(parts, None)
        raise
    outcomes = [
        next(stored)
        if isinstance(part, _DicomPart)
        else InstanceOutcome(None, None, None, None, failure=part.failure, detail=part.detail)
        for part in parts
    ]
    _log_refusals(outcomes)
    body = stow_response(outcomes, dicomweb_root(request), study_uid)
    if model == DICOM_XML:
        return Response(native_xml(body), status_code=stow_status(outcomes), media_type=DICOM_XML)
    return Response(orjson.dumps(body), status_code=stow_status(outcomes), media_type=DICOM_JSON)


def _log_refusals(outcomes: list[InstanceOutcome]) -> None:
    """Why each refused part was refused: the response carries only a
    FailureReason code (PS3.18 Table 10.5.3-3), which says "cannot
    understand" for a dozen causes an administrator must tell apart."""
    for position, outcome in enumerate(outcomes, start=1):
        if outcome.failure is not None:
            reason = outcome.detail or outcome.failure.name
            log.warning(
                "STOW-RS refused part %d (SOP Instance UID %s) with FailureReason %04X: %s",
                position, outcome.sop_instance_uid or "unknown", outcome.failure, reason,
            )


def _response_model(request: Request) -> str:
    """DICOM XML when the client prefers it (PS3.18 §10.5.3.1), else DICOM JSON.

    Instances are never refused for what the client accepts: a missing,
    malformed or unsatisfiable Accept gets the JSON model.
    """
    try:
        return preferred_model(request) or DICOM_JSON
    except InvalidRequest:
        return DICOM_JSON
