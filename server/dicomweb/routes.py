"""The DICOMweb route table (PS3.18 §10): every URL of the service, in one place.

Routes parse the request and hand it to the handler of their service
module; they hold no logic of their own.
"""

from functools import partial

import orjson
from fastapi import APIRouter, Request, WebSocket
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection
from starlette.responses import Response

from dicom.errors import InvalidRequest
from dicom.matching import parse_qido_query
from dicom.uids import require_uid
from dicom.workitem_events import FILTERED_WORKLIST, WORKLIST, require_ae_title
from dicom.workitems import (
    cancellation_request,
    order_from_dataset,
    requested_state,
    transaction_uid,
)
from server.audit.middleware import note_studies
from server.db import retried_on_conflict
from server.dicomweb import delete, qido, stow, wado, workitem_subscriptions, workitems
from server.dicomweb.answers import data_sets_response
from server.dicomweb.context import dicomweb_root, negotiated_model
from server.dicomweb.patient_writes import writes_compartment
from server.errors import error_response, warning_header
from server.services import services

router = APIRouter(tags=["DICOMweb"])
_MORE_RESULTS_WARNING = warning_header(
    "The number of results exceeded the maximum supported by the server. Additional results can be requested."
)


# --- STOW-RS -----------------------------------------------------------------
@router.post("/studies")
async def store(request: Request) -> Response:
    return await stow.store_instances(request, services(request), None)


@router.post("/studies/{study}")
async def store_in_study(request: Request, study: str) -> Response:
    return await stow.store_instances(request, services(request), study)


# --- QIDO-RS -----------------------------------------------------------------
async def _search(request: Request, level: str, scope: qido.Scope) -> Response:
    model = negotiated_model(request, "a QIDO-RS result")
    current = services(request)
    query = parse_qido_query(level, list(request.query_params.multi_items()), current.settings.qido_max_limit)
    if level == "workitem":
        page = await run_in_threadpool(workitems.search, current, query, dicomweb_root(request))
    else:
        page = await run_in_threadpool(qido.search, current.engine, query, scope, dicomweb_root(request))
        # Whose data the answer discloses, for its audit record, as a FHIR search names its matches' patients.
        note_studies(uid for result in page.results for uid in result.get("0020000D", {}).get("Value", ())[:1])
    # An empty match in JSON is 200 with [] (declared in the conformance
    # statement), so JSON clients need not special-case 204; in XML, whose
    # multipart body cannot be empty, it is 204. A page cut short by `limit` says so
    # with the Warning of PS3.18 §8.3.4.4, which clients use to page on.
    headers = {"Warning": _MORE_RESULTS_WARNING} if page.more else None
    return await data_sets_response(page.results, model, headers)


@router.get("/studies")
async def search_studies(request: Request) -> Response:
    return await _search(request, "study", qido.Scope())


@router.get("/series")
async def search_series(request: Request) -> Response:
    return await _search(request, "series", qido.Scope())


@router.get("/instances")
async def search_instances(request: Request) -> Response:
    return await _search(request, "instance", qido.Scope())


@router.get("/studies/{study}/series")
async def search_series_in_study(request: Request, study: str) -> Response:
    return await _search(request, "series", qido.Scope(require_uid(study, "StudyInstanceUID")))


@router.get("/studies/{study}/instances")
async def search_instances_in_study(request: Request, study: str) -> Response:
    return await _search(request, "instance", qido.Scope(require_uid(study, "StudyInstanceUID")))


@router.get("/studies/{study}/series/{series}/instances")
async def search_instances_in_series(request: Request, study: str, series: str) -> Response:
    scope = qido.Scope(require_uid(study, "StudyInstanceUID"), require_uid(series, "SeriesInstanceUID"))
    return await _search(request, "instance", scope)


# --- WADO-RS -----------------------------------------------------------------
@router.get("/studies/{study}")
async def retrieve_study(request: Request, study: str) -> Response:
    return await wado.retrieve_instances(request, services(request), study)


@router.get("/studies/{study}/series/{series}")
async def retrieve_series(request: Request, study: str, series: str) -> Response:
    return await wado.retrieve_instances(request, services(request), study, series)


@router.get("/studies/{study}/series/{series}/instances/{instance}")
async def retrieve_instance(request: Request, study: str, series: str, instance: str) -> Response:
    return await wado.retrieve_instances(request, services(request), study, series, instance)


@router.get("/studies/{study}/metadata")
async def study_metadata(request: Request, study: str) -> Response:
    return await wado.retrieve_metadata(request, services(request), study)


@router.get("/studies/{study}/series/{series}/metadata")
async def series_metadata(request: Request, study: str, series: str) -> Response:
    return await wado.retrieve_metadata(request, services(request), study, series)


@router.get("/studies/{study}/series/{series}/instances/{instance}/metadata")
async def instance_metadata(request: Request, study: str, series: str, instance: str) -> Response:
    return await wado.retrieve_metadata(request, services(request), study, series, instance)


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}")
async def retrieve_frames(request: Request, study: str, series: str, instance: str, frames: str) -> Response:
    return await wado.retrieve_frames(request, services(request), study, series, instance, frames)


@router.get("/studies/{study}/series/{series}/instances/{instance}/bulkdata/{tag_path:path}")
async def retrieve_bulk_data(request: Request, study: str, series: str, instance: str, tag_path: str) -> Response:
    return await wado.retrieve_bulk_data(request, services(request), study, series, instance, tag_path)


@router.get("/studies/{study}/series/{series}/instances/{instance}/rendered")
async def rendered_instance(request: Request, study: str, series: str, instance: str) -> Response:
    return await wado.retrieve_rendered(request, services(request), study, series, instance)


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered")
async def rendered_frame(request: Request, study: str, series: str, instance: str, frames: str) -> Response:
    return await wado.retrieve_rendered(request, services(request), study, series, instance, frames)


@router.get("/studies/{study}/pixeldata")
async def study_pixel_data(request: Request, study: str) -> Response:
    return await wado.retrieve_pixel_data(request, services(request), study)


@router.get("/studies/{study}/series/{series}/pixeldata")
async def series_pixel_data(request: Request, study: str, series: str) -> Response:
    return await wado.retrieve_pixel_data(request, services(request), study, series)


@router.get("/studies/{study}/series/{series}/instances/{instance}/pixeldata")
async def instance_pixel_data(request: Request, study: str, series: str, instance: str) -> Response:
    return await wado.retrieve_pixel_data(request, services(request), study, series, instance)


@router.get("/studies/{study}/rendered")
async def rendered_study(request: Request, study: str) -> Response:
    return await wado.retrieve_rendered_instances(request, services(request), study)


@router.get("/studies/{study}/series/{series}/rendered")
async def rendered_series(request: Request, study: str, series: str) -> Response:
    return await wado.retrieve_rendered_instances(request, services(request), study, series)


@router.get("/studies/{study}/thumbnail")
async def study_thumbnail(request: Request, study: str) -> Response:
    return await wado.retrieve_thumbnail(request, services(request), study)


@router.get("/studies/{study}/series/{series}/thumbnail")
async def series_thumbnail(request: Request, study: str, series: str) -> Response:
    return await wado.retrieve_thumbnail(request, services(request), study, series)


@router.get("/studies/{study}/series/{series}/instances/{instance}/thumbnail")
async def instance_thumbnail(request: Request, study: str, series: str, instance: str) -> Response:
    return await wado.retrieve_rendered(request, services(request), study, series, instance, as_thumbnail=True)


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/thumbnail")
async def frame_thumbnail(request: Request, study: str, series: str, instance: str, frames: str) -> Response:
    return await wado.retrieve_rendered(request, services(request), study, series, instance, frames, as_thumbnail=True)


# --- DELETE ------------------------------------------------------------------
async def _delete(request: Request, study: str, series: str | None = None, instance: str | None = None) -> Response:
    current = services(request)
    require_uid(study, "StudyInstanceUID")
    # A DELETE rewrites the study's FHIR resources and its jobs' results, which
    # workers write too: PostgreSQL may end it to break a deadlock, and it is run again.
    within = writes_compartment("d")
    removed = await run_in_threadpool(retried_on_conflict, partial(
        delete.delete_resources, current.engine, current.ingestor, study, series, instance, within))
    return Response(orjson.dumps({"deletedInstances": removed}), media_type="application/json")


@router.delete("/studies/{study}")
async def delete_study(request: Request, study: str) -> Response:
    return await _delete(request, study)


@router.delete("/studies/{study}/series/{series}")
async def delete_series(request: Request, study: str, series: str) -> Response:
    return await _delete(request, study, require_uid(series, "SeriesInstanceUID"))


@router.delete("/studies/{study}/series/{series}/instances/{instance}")
async def delete_instance(request: Request, study: str, series: str, instance: str) -> Response:
    return await _delete(
        request, study, require_uid(series, "SeriesInstanceUID"), require_uid(instance, "SOPInstanceUID")
    )


# --- UPS-RS (PS3.18 chapter 11) ------------------------------------------------
def _study_reading_refused(request: Request) -> Response | None:
    """A workitem shows its study's patient, and ordering one tells whether the
    study exists: beside the Task permission, both need the right to read
    studies, as ordering a Task does (checked before anything is looked up)."""
    principal = request.state.principal
    if principal.reads_every("ImagingStudy"):
        return None
    return error_response(403, f"{principal.name} may not read studies (ImagingStudy.r), which workitems show")


@router.post("/workitems")
async def create_workitem(request: Request) -> Response:
    if refused := _study_reading_refused(request):
        return refused
    current = services(request)
    uid = workitems.workitem_uid_parameter(list(request.query_params.multi_items()))
    order = order_from_dataset(await workitems.dataset_body(request, current) or {}, uid)
    created = await run_in_threadpool(retried_on_conflict, partial(workitems.create, current, order))
    headers = {"Location": workitems.workitem_url(dicomweb_root(request), created.uid)}
    if created.modified:  # PS3.18 §11.4.3.2
        headers["Warning"] = warning_header("The Workitem was created with modifications.")
    return Response(status_code=201, headers=headers)


@router.get("/workitems")
async def search_workitems(request: Request) -> Response:
    if refused := _study_reading_refused(request):
        return refused
    return await _search(request, "workitem", qido.Scope())


@router.get("/workitems/{uid}")
async def retrieve_workitem(request: Request, uid: str) -> Response:
    if refused := _study_reading_refused(request):
        return refused
    model = negotiated_model(request, "a workitem")
    dataset = await run_in_threadpool(workitems.retrieve, services(request), uid, dicomweb_root(request))
    return await data_sets_response([dataset], model)


@router.post("/workitems/{uid}/cancelrequest")
async def request_workitem_cancellation(request: Request, uid: str) -> Response:
    current = services(request)
    cancellation = cancellation_request(await workitems.dataset_body(request, current, optional=True))
    warning = await run_in_threadpool(
        retried_on_conflict, partial(workitems.request_cancellation, current, uid, cancellation)
    )
    return Response(status_code=202, headers={"Warning": warning_header(warning)} if warning else None)


@router.put("/workitems/{uid}/state")
async def change_workitem_state(request: Request, uid: str) -> Response:
    current = services(request)
    body = await workitems.dataset_body(request, current)
    state = requested_state(body or {})
    warning = await run_in_threadpool(workitems.refuse_state_change, current, uid, state)
    return Response(status_code=200, headers={"Warning": warning_header(warning)})


@router.post("/workitems/{uid}")
async def update_workitem(request: Request, uid: str) -> Response:
    current = services(request)
    body = await workitems.dataset_body(request, current)
    raise await run_in_threadpool(workitems.update_refusal, current, uid, transaction_uid(body or {}))


# --- UPS Watch (PS3.18 §11.10-11.13) --------------------------------------------
def _subscription_query(request: Request) -> None:
    """A subscription's query holds at most `deletionlock=true|false`. Either is
    granted: this server never deletes a workitem (PS3.4 CC.2.3.1)."""
    for name, value in request.query_params.multi_items():
        if name != "deletionlock" or value not in ("true", "false"):
            raise InvalidRequest(f"a subscription takes only deletionlock=true or false, not {name}={value}"[:200])


def _subscriber(connection: HTTPConnection, ae_title: str) -> workitem_subscriptions.Subscriber:
    """The AE title as the authenticated client's own (another's reports are not its to take)."""
    return workitem_subscriptions.Subscriber(connection.state.principal.name, require_ae_title(ae_title))


@router.post("/workitems/{uid}/subscribers/{ae_title}")
async def subscribe_to_workitems(request: Request, uid: str, ae_title: str) -> Response:
    if refused := _study_reading_refused(request):
        return refused
    if uid == FILTERED_WORKLIST:
        message = "Filtered Worklist Subscriptions are not supported."
        return error_response(403, message, {"Warning": warning_header(message)})
    subscriber = _subscriber(request, ae_title)
    _subscription_query(request)
    current = services(request)
    if uid == WORKLIST:
        subscribe = partial(workitem_subscriptions.subscribe_to_worklist, current, subscriber)
    else:
        subscribe = partial(workitem_subscriptions.subscribe, current, uid, subscriber)
    await run_in_threadpool(retried_on_conflict, subscribe)
    channel = workitem_subscriptions.channel_url(dicomweb_root(request), subscriber)
    return Response(status_code=201, headers={"Content-Location": channel})


@router.delete("/workitems/{uid}/subscribers/{ae_title}")
async def unsubscribe_from_workitems(request: Request, uid: str, ae_title: str) -> Response:
    subscriber = _subscriber(request, ae_title)
    engine = services(request).engine
    if uid == WORKLIST:
        unsubscribe = partial(workitem_subscriptions.unsubscribe_from_worklist, engine, subscriber)
    else:
        unsubscribe = partial(workitem_subscriptions.unsubscribe, engine, uid, subscriber)
    await run_in_threadpool(retried_on_conflict, unsubscribe)
    return Response(status_code=200)


@router.post("/workitems/{uid}/subscribers/{ae_title}/suspend")
async def suspend_worklist_subscription(request: Request, uid: str, ae_title: str) -> Response:
    subscriber = _subscriber(request, ae_title)
    if uid != WORKLIST:
        raise InvalidRequest(f"only a worklist subscription ({WORKLIST}) is suspended; unsubscribe from a workitem")
    await run_in_threadpool(
        retried_on_conflict, partial(workitem_subscriptions.suspend_worklist_subscription, services(request).engine,
                                     subscriber)
    )
    return Response(status_code=200)


@router.websocket("/subscribers/{ae_title}")
async def open_event_channel(websocket: WebSocket, ae_title: str) -> None:
    try:
        subscriber = _subscriber(websocket, ae_title)
    except InvalidRequest as error:
        await websocket.close(code=1008, reason=str(error)[:120])
        return
    await workitem_subscriptions.serve_channel(
        websocket, services(websocket).engine, subscriber, websocket.scope["state"]["still_admitted"]
    )
