"""The model administration API: the `medaiflow models` commands over HTTP.

Paths name directories on the server's own disk (a bundle to register, a
labelled set to validate on), as the CLI does.
"""

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel
from starlette.responses import JSONResponse

from server.auth.access import Permission
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
        "weightsSha256": model.bundle.weights_sha256,
        "device": f"Device/{model.device_id}",
        "validation": None if validation is None else validation.to_json(),
    }


@router.get("/models")
def list_models(request: Request) -> JSONResponse:
    return JSONResponse([model_json(model) for model in services(request).jobs.registry.registered()])


@router.post("/models", status_code=201)
def add_model(request: Request, body: BundlePath) -> JSONResponse:
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
    if not request.state.principal.may(Permission("ImagingStudy", "r")):
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
def validate_model_route(request: Request, key: str, body: LabelledSet) -> JSONResponse:
    from server.jobs.validation import validate_model

    report, model = validate_model(services(request).jobs.registry, key, Path(body.directory))
    return JSONResponse({**model_json(model), "report": {"passed": report.passed, "summary": report.summary,
                                                         "cases": list(report.lines)}})
