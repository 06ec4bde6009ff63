"""WADO-RS (PS3.18 §10.4): instances, metadata, frames, bulk data, rendered.

Each handler negotiates first and streams second, so a 406 or 404 is
answered before any byte of a multipart body goes out.
"""

from collections.abc import AsyncIterator, Iterable, Iterator
from functools import partial

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicom.bulkdata import parse_tag_path, read_bulk_data
from dicom.errors import InvalidRequest, NotAcceptable
from dicom.frames import parse_frame_list, read_frames
from dicom.instance import BULK_DATA_BASE_MARKER
from dicom.media_types import MediaRange, admits_part
from dicom.multipart import (
    MultipartFraming,
    iter_multipart,
    map_file,
    multipart_related_type,
    new_boundary,
)
from dicom.rendering import parse_render_params, render_frame, thumbnail
from dicom.transfer_syntax import (
    can_decompress,
    choose_instance_syntax,
    is_native,
    transcode_to,
)
from dicom.video import is_video, read_video
from server.dicomweb.answers import data_sets_response
from server.dicomweb.context import (
    DICOM_JSON,
    dicomweb_root,
    negotiated_accept,
    negotiated_model,
)
from server.dicomweb.lookup import StoredInstance, find_instances
from server.methods import is_head
from server.services import Services

DICOM = "application/dicom"
OCTET_STREAM = "application/octet-stream"
_PIXEL_DATA_PATH = (0x7FE00010,)


def _instance_content_type(syntax: str) -> str:
    return f"{DICOM}; transfer-syntax={syntax}"


def _multipart(parts: Iterable[tuple[str, Iterator[bytes]]], part_type: str) -> StreamingResponse:
    boundary = new_boundary()
    return StreamingResponse(iter_multipart(boundary, parts), media_type=multipart_related_type(boundary, part_type))


# Files are mapped a group at a time in a worker thread, so the event loop
# never waits on a disk; a group is capped so that transcoded instances held
# in memory stay bounded.
_GROUP_FILES = 64
_GROUP_BYTES = 64 * 1024 * 1024


def _groups(chosen: list[tuple[StoredInstance, str]]) -> Iterator[list[tuple[StoredInstance, str]]]:
    group: list[tuple[StoredInstance, str]] = []
    size = 0
    for item in chosen:
        group.append(item)
        size += item[0].file_size
        if len(group) >= _GROUP_FILES or size >= _GROUP_BYTES:
            yield group
            group, size = [], 0
    if group:
        yield group


def _instance_bodies(group: list[tuple[StoredInstance, str]]) -> list[bytes | memoryview]:
    """Stored files memory-mapped (sent from the page cache without a copy into
    Python objects), transcoded ones encoded."""
    return [
        map_file(instance.absolute_path)
        if syntax == instance.transfer_syntax_uid
        else transcode_to(instance.absolute_path, syntax)
        for instance, syntax in group
    ]


async def _instances_body(
    framing: MultipartFraming, first_group: list[tuple[StoredInstance, str]], first_bodies: list[bytes | memoryview],
    later_groups: Iterator[list[tuple[StoredInstance, str]]],
) -> AsyncIterator[bytes | memoryview]:
    first = True
    group, bodies = first_group, first_bodies
    while group:
        for (_, syntax), body in zip(group, bodies, strict=True):
            yield framing.head(_instance_content_type(syntax), first=first)
            yield body
            first = False
        group = next(later_groups, [])
        # A later instance that cannot be transcoded ends the stream without
        # its closing boundary: the client sees an incomplete answer, never a
        # complete-looking one that lacks instances.
        bodies = await run_in_threadpool(_instance_bodies, group) if group else []
    yield framing.closing(after_parts=not first)


async def retrieve_instances(
    request: Request, services: Services, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> Response:
    accept = negotiated_accept(request)
    found = await run_in_threadpool(find_instances, services.engine, services.store, study_uid, series_uid, sop_uid)
    chosen = [
        (instance, choose_instance_syntax(accept, instance.transfer_syntax_uid, can_decompress(instance.transfer_syntax_uid)))
        for instance, _ in found
    ]
    boundary = new_boundary()
    framing = MultipartFraming(boundary)
    headers = None
    if all(syntax == instance.transfer_syntax_uid for instance, syntax in chosen):
        # Stored files only: the length is known before the first byte.
        length = framing.length((_instance_content_type(syntax), instance.file_size) for instance, syntax in chosen)
        headers = {"Content-Length": str(length)}
    groups = _groups(chosen)
    first_group = next(groups, [])
    # Before the status is sent: an instance of a single-instance or small
    # retrieve that cannot be transcoded is then a 406, not a broken 200.
    first_bodies = await run_in_threadpool(_instance_bodies, first_group)
    if is_head(request):
        groups = iter(())  # nobody reads the parts: the first group decided the status, and is all that is made
    return StreamingResponse(
        _instances_body(framing, first_group, first_bodies, groups),
        media_type=multipart_related_type(boundary, DICOM), headers=headers,
    )


async def retrieve_metadata(
    request: Request, services: Services, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> Response:
    model = negotiated_model(request, "metadata")
    found = await run_in_threadpool(
        partial(find_instances, services.engine, services.store, study_uid, series_uid, sop_uid, with_metadata=True)
    )
    root = dicomweb_root(request)
    stored = [metadata for _, metadata in found if metadata is not None]
    if model == DICOM_JSON:
        # Stored JSON goes out as it is, never parsed.
        return Response(_with_bulk_data_root(b"[" + b",".join(stored) + b"]", root), media_type=DICOM_JSON)
    # Parsed off the event loop: a study of thousands of instances takes a while.
    data_sets = await run_in_threadpool(lambda: [orjson.loads(_with_bulk_data_root(item, root)) for item in stored])
    return await data_sets_response(data_sets, model)


# Stored metadata names its bulk data relative to a marker, since the root
# depends on how the request came in. Only BulkDataURI values are rewritten
# (a stored text value may begin with the marker too), and the root is put
# in as JSON string content, escaped.
_STORED_BULK_DATA_URI = b'"BulkDataURI":"' + BULK_DATA_BASE_MARKER.encode()


def _with_bulk_data_root(metadata: bytes, root: str) -> bytes:
    return metadata.replace(_STORED_BULK_DATA_URI, b'"BulkDataURI":"' + orjson.dumps(root)[1:-1])


async def _one_instance(services: Services, study_uid: str, series_uid: str, sop_uid: str) -> StoredInstance:
    [(instance, _)] = await run_in_threadpool(
        find_instances, services.engine, services.store, study_uid, series_uid, sop_uid
    )
    return instance


async def _frames_response(instance: StoredInstance, numbers: list[int], accept: list[MediaRange]) -> Response:
    frames = await run_in_threadpool(read_frames, instance.absolute_path, numbers, accept)
    # The outer `type` names the first part's media type (PS3.18 §8.7.3.3);
    # parts differ only where frames of one instance do, which they do not.
    part_type = frames[0][0].split(";")[0]
    return _multipart([(content_type, iter((data,))) for content_type, data in frames], part_type)


async def retrieve_frames(
    request: Request, services: Services, study_uid: str, series_uid: str, sop_uid: str, frame_list: str
) -> Response:
    numbers = parse_frame_list(frame_list)
    instance = await _one_instance(services, study_uid, series_uid, sop_uid)
    return await _frames_response(instance, numbers, negotiated_accept(request))


async def retrieve_bulk_data(
    request: Request, services: Services, study_uid: str, series_uid: str, sop_uid: str, tag_path_text: str
) -> Response:
    tag_path = parse_tag_path(tag_path_text)
    accept = negotiated_accept(request)
    instance = await _one_instance(services, study_uid, series_uid, sop_uid)
    if tag_path == _PIXEL_DATA_PATH and is_video(instance.transfer_syntax_uid):
        content_type, video = await run_in_threadpool(
            read_video, instance.absolute_path, instance.transfer_syntax_uid, accept
        )
        return _multipart([(content_type, iter((video,)))], content_type.split(";")[0])
    if tag_path == _PIXEL_DATA_PATH and not is_native(instance.transfer_syntax_uid):
        # Encapsulated pixel data is only meaningful frame by frame (PS3.18 §8.7.3.3.2).
        return await _frames_response(instance, list(range(1, instance.number_of_frames + 1)), accept)
    if not any(admits_part(range_, OCTET_STREAM, OCTET_STREAM) for range_ in accept):
        raise NotAcceptable("bulk data is available as application/octet-stream")
    data = await run_in_threadpool(read_bulk_data, instance.absolute_path, tag_path)
    return _multipart([(OCTET_STREAM, iter((data,)))], OCTET_STREAM)


async def retrieve_rendered(
    request: Request,
    services: Services,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    frame_list: str | None = None,
    as_thumbnail: bool = False,
) -> Response:
    accept = negotiated_accept(request, keep_refused=True)
    params = parse_render_params(list(request.query_params.multi_items()), accept)
    instance = await _one_instance(services, study_uid, series_uid, sop_uid)
    if as_thumbnail:
        image = await run_in_threadpool(thumbnail, instance.absolute_path, params)
    else:
        numbers = parse_frame_list(frame_list) if frame_list else [1]
        if len(numbers) != 1:
            raise InvalidRequest("rendered frames are sent one at a time: ask for a single frame")
        image = await run_in_threadpool(render_frame, instance.absolute_path, numbers[0], params)
    return Response(image, media_type=params.media_type)

