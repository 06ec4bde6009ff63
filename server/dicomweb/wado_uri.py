"""The WADO-URI route (PS3.18 chapter 9) at `/wado`, where Orthanc and most
archives serve it: one instance as its Part 10 file or a rendered image."""

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from dicom.media_types import MediaRange
from dicom.rendering import render_frame
from dicom.transfer_syntax import EXPLICIT_VR_LE, can_decompress, choose_instance_syntax, transcode_to
from dicom.wado_uri import DICOM, parse_wado_uri
from server.audit.middleware import note_studies
from server.dicomweb.lookup import StoredInstance, find_instances
from server.services import services

router = APIRouter(tags=["WADO-URI"])


@router.get("/wado")
async def wado_uri(request: Request) -> Response:
    wanted = parse_wado_uri(list(request.query_params.multi_items()), request.headers.getlist("accept"))
    note_studies([wanted.study_uid])
    current = services(request)
    [(instance, _)] = await run_in_threadpool(
        find_instances, current.engine, current.store, wanted.study_uid, wanted.series_uid, wanted.sop_uid
    )
    if wanted.media_type == DICOM:
        return await _part10(instance, wanted.transfer_syntax or EXPLICIT_VR_LE)
    image = await run_in_threadpool(render_frame, instance.absolute_path, wanted.frame_number, wanted.render)
    return Response(image, media_type=wanted.render.media_type)


async def _part10(instance: StoredInstance, syntax: str) -> Response:
    # The same rules as WADO-RS: what can be sent in `syntax`, or 406.
    asked = [MediaRange(DICOM, {"transfer-syntax": syntax}, 1.0)]
    syntax = choose_instance_syntax(asked, instance.transfer_syntax_uid, can_decompress(instance.transfer_syntax_uid))
    if syntax == instance.transfer_syntax_uid:
        return FileResponse(instance.absolute_path, media_type=DICOM)
    return Response(await run_in_threadpool(transcode_to, instance.absolute_path, syntax), media_type=DICOM)
