"""The model administration API: the `medaiflow models` commands over HTTP.

Paths name directories on the server's own disk (a bundle to register, a
labelled set to validate on), as the CLI does. A bundle's configs are code
(monai.bundle runs their `$` expressions and `_target_`s in the server and
its workers): registering one and validating it, which runs it, are for an
admin user alone, beyond the Device scopes the route needs. Activating runs
only what an admin registered.
"""

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel
from starlette.responses import JSONResponse, Response

from server.auth.access import Principal
from server.auth.scopes import Role
from server.errors import error_response
from server.jobs.registry import RegisteredModel
from server.jobs.triggers import study_date
from server.services import services

router = APIRouter()


class BundlePath(BaseModel):
    path: str


class LabelledSet(BaseModel):
    directory: str


def model_json(model: RegisteredModel) -> dict[str, Any]:
    validation = model.validation
    return {
        "key": model.key,
        "name": model.bundle.card.name,
        "version": model.bundle.card.version,
        "active": model.active,
        "activatedWithoutPassingValidation": model.forced and model.active,
        "everActivatedWithoutPassingValidation": model.ever_forced,
        "weightsSha256": model.bundle.weights_sha256,
        "device": f"Device/{model.device_id}",
        "validation": None if validation is None else validation.to_json(),
    }


def _unless_admin(request: Request, what: str) -> Response | None:
    """403 for anyone but an admin user: a client's scopes never reach code the server runs."""
    principal: Principal = request.state.principal
    if principal.client or principal.role != Role.ADMIN.value:
        why = "a bundle's configs run as code in the server, so only an admin user may"
        return error_response(403, f"{principal.name} may not {what}: {why}")
    return None


@router.get("/models")
def list_models(request: Request) -> JSONResponse:
    return JSONResponse([model_json(model) for model in services(request).jobs.registry.registered()])


@router.post("/models", status_code=201)
def add_model(request: Request, body: BundlePath) -> Response:
    refused = _unless_admin(request, "register a model bundle")
    if refused is not None:
        return refused
    model, created = services(request).jobs.registry.add(Path(body.path))
    return JSONResponse(model_json(model), status_code=201 if created else 200)


@router.get("/models/{key}")
def get_model(request: Request, key: str) -> JSONResponse:
    return JSONResponse(model_json(services(request).jobs.registry.get(key)))


@router.post("/models/{key}/activate")
def activate_model(request: Request, key: str, force: bool = False) -> JSONResponse:
    return JSONResponse(model_json(services(request).jobs.registry.activate(key, force=force)))


@router.post("/models/{key}/run-stored")
def run_model_on_stored_studies(
    request: Request, key: str, study_date_from: str | None = Query(None, alias="studyDateFrom"),
) -> JSONResponse:
    """Queue an active model on the studies already stored (`medaiflow models run-stored`).
    Its jobs read studies, as an order does: it needs `ImagingStudy.r` beside `Task.c`."""
    if not request.state.principal.reads_every("ImagingStudy"):
        return error_response(403, f"{request.state.principal.name} may not run a model on studies it may not read")
    if study_date_from is not None:
        try:
            study_date(study_date_from)
        except ValueError as error:
            return error_response(400, f"studyDateFrom: {error}")
    started = services(request).jobs.triggers.run_stored(key, study_date_from)
    return JSONResponse({"queued": len(started), "tasks": [f"Task/{task_id}" for task_id in started]})


@router.post("/models/{key}/deactivate")
def deactivate_model(request: Request, key: str) -> JSONResponse:
    return JSONResponse(model_json(services(request).jobs.registry.deactivate(key)))


@router.post("/models/{key}/validate")
def validate_model_route(request: Request, key: str, body: LabelledSet) -> Response:
    from server.jobs.validation import validate_model

    refused = _unless_admin(request, "validate a model bundle")
    if refused is not None:
        return refused
    report, model = validate_model(services(request).jobs.registry, key, Path(body.directory))
    return JSONResponse({**model_json(model), "report": {"passed": report.passed, "summary": report.summary,
                                                         "cases": list(report.lines)}})
