"""Every error answer, made in one place (STYLE 5).

Domain errors map to HTTP statuses by class. On DICOMweb the body is a small
JSON object with the status and a message a person can act on; under /fhir
it is an OperationOutcome. Nothing becomes a 500 unless it is a bug, and
then the message says only that.
"""

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from dicom.errors import (
    Conflict,
    DicomError,
    Forbidden,
    InvalidDicom,
    InvalidRequest,
    NotAcceptable,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from fhir_mappings import errors as fhir
from fhir_mappings.outcome import operation_outcome
from inference.errors import InferenceError
from server.content_coding import ACCEPTED_CODINGS, UnsupportedContentCoding
from server.dimse.peers import PeerError, PeerExists, PeerNotFound
from server.fhir.negotiation import FHIR_JSON, Format, fhir_response, response_format
from server.jobs.registry import ActivationRefused, ModelNotFound
from server.logs import request_id_var
from server.methods import allowed_methods

log = logging.getLogger(__name__)

_STATUS_BY_ERROR: tuple[tuple[type[DicomError], int], ...] = (
    (InvalidRequest, 400),
    (InvalidDicom, 400),
    (Forbidden, 403),
    (NotFound, 404),
    (NotAcceptable, 406),
    (Conflict, 409),
    (PayloadTooLarge, 413),
    (UnsupportedMediaType, 415),
)


_FHIR_STATUS: tuple[tuple[type[fhir.FhirError], int], ...] = (
    (fhir.InvalidRequest, 400),
    (fhir.Forbidden, 403),
    (fhir.ResourceNotFound, 404),
    (fhir.MethodNotAllowed, 405),
    (fhir.NotAcceptable, 406),
    (fhir.ResourceConflict, 409),
    (fhir.ResourceGone, 410),
    (fhir.VersionConflict, 412),
    (fhir.PayloadTooLarge, 413),
    (fhir.UnsupportedMediaType, 415),
    (fhir.InvalidResource, 422),
)
# Issue codes for statuses that come from the framework, not from a FhirError.
_ISSUE_CODE_BY_STATUS = {400: "invalid", 401: "login", 403: "forbidden", 429: "throttled", 404: "not-found", 405: "not-supported", 406: "not-supported",
                         413: "too-costly", 415: "not-supported", 422: "invalid"}


def fhir_status_for(error: fhir.FhirError) -> int:
    for error_type, status in _FHIR_STATUS:
        if isinstance(error, error_type):
            return status
    return 400


def status_for(error: DicomError) -> int:
    for error_type, status in _STATUS_BY_ERROR:
        if isinstance(error, error_type):
            return status
    return 400


def warning_header(text: str) -> str:
    """A Warning header field of DICOMweb (PS3.18 §8.4.2: code 299, the
    service, the text) whose text is a quoted-string (RFC 9110 §5.6.4) of
    ASCII: what it quotes (a decoder's message, say) may hold anything."""
    quoted = " ".join(text.replace("\\", "\\\\").replace('"', '\\"').split()).encode("ascii", "replace").decode()
    return f'299 medaiflow: "{quoted}"'


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None, request: Request | None = None
) -> Response:
    if request is not None and _is_fhir(request):
        code = "exception" if status >= 500 else _ISSUE_CODE_BY_STATUS.get(status, "processing")
        return fhir_error_response(request, status, code, message, headers)
    body = orjson.dumps({"status": status, "message": message})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def fhir_error_response(
    request: Request, status: int, code: str, diagnostics: str, headers: dict[str, str] | None = None
) -> Response:
    """An OperationOutcome in the format the request asked for (R4 http.html:
    XML for a client that reads XML), or JSON where that cannot be told."""
    outcome = operation_outcome(code, diagnostics)
    try:
        fmt = response_format(request)
    except (fhir.FhirError, DicomError):  # the Accept itself is the error: answer in the default format
        fmt = Format(FHIR_JSON, pretty=False)
    try:
        return fhir_response(outcome, fmt, status, headers)
    except fhir.NotAcceptable:  # diagnostics XML cannot carry
        return fhir_response(outcome, Format(FHIR_JSON, pretty=False), status, headers)


def _is_fhir(request: Request) -> bool:
    path = request.url.path
    return path == "/fhir" or path.startswith("/fhir/")


def _unknown_fhir_type(request: Request) -> fhir.ResourceNotFound | None:
    """The 404 of a URL under a resource type the server lacks (`Nope/$validate`,
    `Nope/x/_history`): it names nothing, so no method is allowed on it, and
    its answer is the one every other URL of that type gets, not the 405 of
    the route its path looks like. `metadata`, `$export` and the like have no
    segment after theirs that a 405 could meet; a route that names its type
    itself (`Group/{id}/$export`, though Group is no type here) serves the
    URL, whose 405 stands."""
    parts = request.url.path.split("/")
    if len(parts) < 4 or parts[1] != "fhir" or parts[2].startswith("$"):
        return None
    if request.path_params.get("resource_type") != parts[2]:  # those of the route the path matched
        return None
    try:
        request.app.state.services.fhir.require_type(parts[2])
    except fhir.ResourceNotFound as error:
        return error
    return None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DicomError)
    async def _domain(request: Request, error: DicomError) -> Response:
        # Raised under /fhir too, by what both interfaces share (reading a body).
        headers = {"Accept-Encoding": ACCEPTED_CODINGS} if isinstance(error, UnsupportedContentCoding) else {}
        if error.warning is not None:
            headers["Warning"] = warning_header(error.warning)
        return error_response(status_for(error), error.message, headers or None, request)

    @app.exception_handler(fhir.FhirError)
    async def _fhir(request: Request, error: fhir.FhirError) -> Response:
        headers = {"Allow": error.allowed} if isinstance(error, fhir.MethodNotAllowed) else None
        return fhir_error_response(request, fhir_status_for(error), error.issue_code, error.diagnostics, headers)

    # The model administration API (/admin/models): JSON, like DICOMweb.
    @app.exception_handler(InferenceError)
    async def _inference(_: Request, error: InferenceError) -> Response:
        return error_response(422, error.message)

    @app.exception_handler(ModelNotFound)
    async def _no_model(_: Request, error: ModelNotFound) -> Response:
        return error_response(404, str(error))

    # The DIMSE peer administration API (/admin/dicom-peers): a peer that cannot be added or removed as asked.
    @app.exception_handler(PeerError)
    async def _peer(_: Request, error: PeerError) -> Response:
        status = 409 if isinstance(error, PeerExists) else 404 if isinstance(error, PeerNotFound) else 422
        return error_response(status, str(error))

    @app.exception_handler(ActivationRefused)
    async def _refused(_: Request, error: ActivationRefused) -> Response:
        return error_response(409, str(error))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, error: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in issue['loc'])}: {issue['msg']}" for issue in error.errors()
        )
        return error_response(400, f"invalid request: {problems}", request=request)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, error: HTTPException) -> Response:
        headers = dict(error.headers or {})
        detail = str(error.detail)
        unknown_type = _unknown_fhir_type(request) if error.status_code == 405 else None
        if unknown_type is not None:
            return await _fhir(request, unknown_type)
        if error.status_code == 405:
            # The router names only the methods of the first route whose path matched.
            headers["Allow"] = await allowed_methods(request)
            detail = f"{request.method} is not allowed on {request.url.path[:200]}; allowed: {headers['Allow']}"
        elif error.status_code == 404 and detail == "Not Found":  # the router's: no route has this path
            detail = f"nothing is served at {request.url.path[:200]} (no such resource type, operation or path)"
        return error_response(error.status_code, detail, headers, request)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> Response:
        log.exception("unhandled error")
        # Starlette answers a 500 from outside every middleware, so the
        # request-id middleware cannot add its header here.
        request_id = request_id_var.get()
        return error_response(
            500,
            "internal error; the request id in X-Request-ID identifies the log entry",
            {"X-Request-ID": request_id} if request_id else None,
            request,
        )
