"""Every error answer of the DICOMweb side, made in one place (STYLE 5).

Domain errors map to HTTP statuses by class; the body is a small JSON object
with the status and a message a person can act on. Nothing becomes a 500
unless it is a bug, and then the message says only that.
"""

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from dicom.errors import (
    DicomError,
    InvalidDicom,
    InvalidRequest,
    NotAcceptable,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from server.logs import request_id_var

log = logging.getLogger(__name__)

_STATUS_BY_ERROR: tuple[tuple[type[DicomError], int], ...] = (
    (InvalidRequest, 400),
    (InvalidDicom, 400),
    (NotFound, 404),
    (NotAcceptable, 406),
    (PayloadTooLarge, 413),
    (UnsupportedMediaType, 415),
)


def status_for(error: DicomError) -> int:
    for error_type, status in _STATUS_BY_ERROR:
        if isinstance(error, error_type):
            return status
    return 400


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps({"status": status, "message": message})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DicomError)
    async def _domain(_: Request, error: DicomError) -> Response:
        return error_response(status_for(error), error.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, error: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in issue['loc'])}: {issue['msg']}" for issue in error.errors()
        )
        return error_response(400, f"invalid request: {problems}")

    @app.exception_handler(HTTPException)
    async def _http(_: Request, error: HTTPException) -> Response:
        return error_response(error.status_code, str(error.detail), dict(error.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, error: Exception) -> Response:
        log.exception("unhandled error")
        # Starlette answers a 500 from outside every middleware, so the
        # request-id middleware cannot add its header here.
        request_id = request_id_var.get()
        return error_response(
            500,
            "internal error; the request id in X-Request-ID identifies the log entry",
            {"X-Request-ID": request_id} if request_id else None,
        )
