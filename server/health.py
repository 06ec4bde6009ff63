"""Liveness and readiness probes, for orchestrators and load balancers.

Liveness says only that the process answers; readiness says whether a STOW
could succeed now: the database answers and both the store and its tmp/
folder, where every payload lands first, are writable.
"""

from fastapi import APIRouter, Request
from sqlalchemy.exc import SQLAlchemyError
from starlette.responses import JSONResponse

from server.db import ping

router = APIRouter()


@router.get("/healthz", include_in_schema=False)
def healthz() -> JSONResponse:
    return JSONResponse({"status": "alive"})


@router.get("/readyz", include_in_schema=False)
def readyz(request: Request) -> JSONResponse:
    services = request.app.state.services
    checks = {"database": "ok", "storage": "ok"}
    try:
        ping(services.engine)
    except SQLAlchemyError as error:
        checks["database"] = f"unreachable: {type(error).__name__}"
    if not services.store.is_reachable():
        checks["storage"] = "storage or its temp folder missing or not writable"
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503)
