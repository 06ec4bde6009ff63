"""The WADO-URI route (PS3.18 chapter 9) at `/wado`, where Orthanc and most
archives serve it: one instance as its Part 10 file or a rendered image."""

from functools import partial

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from dicom.media_types import MediaRange
from dicom.multipart import map_file
from dicom.rendering import render_frame
from dicom.transfer_syntax import EXPLICIT_VR_LE, can_decompress, choose_instance_syntax, transcode_to
from dicom.wado_uri import DICOM, WadoUriRequest, parse_wado_uri
from server.audit.middleware import note_studies
from server.dicomweb.lookup import StoredInstance, find_instance, read_addressed
from server.services import services

router = APIRouter(tags=["WADO-URI"])


@router.get("/wado")
async def wado_uri(request: Request) -> Response:
    wanted = parse_wado_uri(list(request.query_params.multi_items()), request.headers.getlist("accept"))
    note_studies([wanted.study_uid])
    current = services(request)
    lookup = partial(find_instance, current.engine, current.store, wanted.study_uid, wanted.series_uid, wanted.sop_uid)
    if wanted.media_type == DICOM:
        read = partial(_part10, syntax=wanted.transfer_syntax or EXPLICIT_VR_LE)
        return await run_in_threadpool(read_addressed, lookup, read)
    image = await run_in_threadpool(read_addressed, lookup, partial(_rendered, wanted=wanted))
    return Response(image, media_type=wanted.render.media_type)


def _rendered(instance: StoredInstance, wanted: WadoUriRequest) -> bytes:
    return render_frame(instance.absolute_path, wanted.frame_number, wanted.render)


def _part10(instance: StoredInstance, syntax: str) -> Response:
    # The same rules as WADO-RS: what can be sent in `syntax`, or 406.
    asked = [MediaRange(DICOM, {"transfer-syntax": syntax}, 1.0)]
    syntax = choose_instance_syntax(asked, instance.transfer_syntax_uid, can_decompress(instance.transfer_syntax_uid))
    if syntax == instance.transfer_syntax_uid:
        # Mapped now, while it is there: a DELETE or re-send may remove the file before it is sent.
        return Response(map_file(instance.absolute_path), media_type=DICOM)
    return Response(transcode_to(instance.absolute_path, syntax), media_type=DICOM)
