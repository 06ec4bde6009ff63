"""WADO-RS (PS3.18 §10.4): instances, metadata, frames, bulk data, rendered.

Each handler negotiates first and streams second, so a 406 or 404 is
answered before any byte of a multipart body goes out.
"""

import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from tempfile import SpooledTemporaryFile
from typing import IO

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicom.bulkdata import parse_tag_path, read_bulk_data
from dicom.errors import DicomError, InvalidRequest, NotAcceptable, NotFound
from dicom.frames import check_frame_numbers, frame_content_type, parse_frame_list, read_pixel_frames
from dicom.instance import BULK_DATA_BASE_MARKER
from dicom.json_model import TagPath
from dicom.media_types import MULTIPART_RELATED, MediaRange, admits_part, inner_type, refuses
from dicom.multipart import (
    MultipartFraming,
    iter_multipart,
    map_file,
    multipart_related_type,
    new_boundary,
)
from dicom.rendering import DEFAULT_MEDIA_TYPE, RenderParams, parse_render_params, render_frame, thumbnail
from dicom.transfer_syntax import (
    EXPLICIT_VR_LE,
    can_decompress,
    instance_syntaxes,
    is_native,
    transcode_to,
)
from dicom.video import is_video, read_video
from server.audit.middleware import note_cut_short
from server.dicomweb.answers import data_sets_response
from server.dicomweb.context import (
    DICOM_JSON,
    dicomweb_root,
    negotiated_accept,
    negotiated_model,
)
from server.dicomweb.lookup import (
    StoredInstance,
    current_instance,
    find_instance,
    find_instances,
    read_addressed,
    read_current,
    representative_image,
)
from server.errors import warning_header
from server.methods import is_head
from server.services import Services

log = logging.getLogger(__name__)

DICOM = "application/dicom"
OCTET_STREAM = "application/octet-stream"
_PIXEL_DATA_PATH = (0x7FE00010,)


def _instance_content_type(syntax: str) -> str:
    return f"{DICOM}; transfer-syntax={syntax}"


def _multipart(parts: Iterable[tuple[str, Iterator[bytes]]], part_type: str) -> StreamingResponse:
    boundary = new_boundary()
    return StreamingResponse(iter_multipart(boundary, parts), media_type=multipart_related_type(boundary, part_type))


# Files are mapped a group at a time in a worker thread, so the event loop
# never waits on a disk; a group is capped so that what it holds in memory
# stays bounded.
_GROUP_FILES = 64
_GROUP_BYTES = 64 * 1024 * 1024
# The instances a partial answer's Warning names; the rest are counted.
_WARNING_NAMES = 5


@dataclass(frozen=True)
class _Part:
    """An instance as it is sent: its stored file (`syntaxes`: its stored one),
    its transcoding kept in the request's spool at `spooled` (offset,
    length), or, for native pixel data, which needs no decoding, transcoded
    as it is sent, into the first of `syntaxes` that it can be."""

    instance: StoredInstance
    syntaxes: tuple[str, ...]
    spooled: tuple[int, int] | None = None

    @property
    def on_the_way(self) -> bool:
        return self.spooled is None and self.syntaxes[0] != self.instance.transfer_syntax_uid

    @property
    def size(self) -> int:
        """Its length; for one transcoded on the way, the stored file's, to bound a group by."""
        return self.instance.file_size if self.spooled is None else self.spooled[1]


def _groups(parts: list[_Part]) -> Iterator[list[_Part]]:
    group: list[_Part] = []
    size = 0
    for part in parts:
        group.append(part)
        size += part.size
        if len(group) >= _GROUP_FILES or size >= _GROUP_BYTES:
            yield group
            group, size = [], 0
    if group:
        yield group


def _negotiated(
    accept: list[MediaRange], found: list[StoredInstance]
) -> tuple[list[tuple[StoredInstance, list[str]]], list[tuple[StoredInstance, NotAcceptable]]]:
    """Each instance with the syntaxes to send it in, best first, and those no accepted form holds."""
    chosen, refused = [], []
    for instance in found:
        try:
            syntaxes = instance_syntaxes(
                accept, instance.transfer_syntax_uid, can_decompress(instance.transfer_syntax_uid)
            )
        except NotAcceptable as refusal:
            refused.append((instance, refusal))
        else:
            chosen.append((instance, syntaxes))
    return chosen, refused


# The instance's part as it is stored now, or None when it is no longer stored.
_CurrentPart = Callable[[StoredInstance], _Part | None]


def _prepared(
    chosen: list[tuple[StoredInstance, list[str]]], spool: IO[bytes], current: _CurrentPart
) -> tuple[list[_Part], list[tuple[StoredInstance, NotAcceptable]]]:
    """The parts to send, and the instances that turned out not to transcode
    into any syntax the client takes. Compressed pixel data is decoded now,
    into `spool`, before the status is sent: decoding is what fails on files
    that are otherwise sound (a 12-bit JPEG no decoder here reads). Native
    pixel data is only re-encoded, which fails only on a corrupt file: the
    first group now (the answer for an instance or a small series is then
    exact), the rest as it is sent, so that a big study of an Implicit VR
    archive starts streaming after one group. An instance deleted since its
    row was read is left out, as if asked for after the DELETE; one re-sent
    is prepared as it is stored now."""
    parts, failed = [], []
    for position, (instance, syntaxes) in enumerate(chosen):
        later = position >= _GROUP_FILES and is_native(instance.transfer_syntax_uid)
        if syntaxes[0] == instance.transfer_syntax_uid or later:
            parts.append(_Part(instance, tuple(syntaxes)))
            continue
        try:
            prepared = read_current(
                _Part(instance, tuple(syntaxes)), partial(_decoded_part, spool=spool), partial(_now_stored, current)
            )
        except NotFound:
            continue
        if isinstance(prepared, _Part):
            parts.append(prepared)
        else:
            failed.append((instance, prepared))
    return parts, failed


def _now_stored(current: _CurrentPart, part: _Part) -> _Part:
    now = current(part.instance)
    if now is None:
        raise NotFound(f"instance {part.instance.sop_uid} was deleted, or cannot be sent as it is stored now")
    return now


def _decoded_part(part: _Part, spool: IO[bytes]) -> _Part | NotAcceptable:
    """The part in the first of its syntaxes that it transcodes into,
    written to `spool`; the first refusal when it transcodes into none."""
    refusal = None
    for syntax in part.syntaxes:
        if syntax == part.instance.transfer_syntax_uid:
            return _Part(part.instance, (syntax,))
        try:
            body = transcode_to(part.instance.absolute_path, syntax)
        except NotAcceptable as error:
            refusal = refusal or error
            continue
        spooled = _Part(part.instance, (syntax,), (spool.tell(), len(body)))
        spool.write(body)
        return spooled
    assert refusal is not None
    return refusal


class _AnswerCutShort(Exception):
    """An instance of an answer already under way can no longer be sent.

    Such an answer is cut off: the exception goes on to the HTTP server,
    which closes the connection before the body's end (no last chunk, or
    fewer bytes than its Content-Length), and every HTTP client reports
    that. A body ended without its closing boundary alone looked complete
    to clients: dicomweb-client takes what follows the last boundary as the
    last part."""


def _bodies(
    group: list[_Part], spool: IO[bytes], current: _CurrentPart, declared_length: bool
) -> list[tuple[str, bytes | memoryview]]:
    """Each part's syntax and body: a stored file memory-mapped (sent from the
    page cache without a copy into Python objects), a spooled transcoding
    read back, another transcoded now. One of those that fails into every
    syntax the client takes cuts the answer off (_AnswerCutShort): the client
    sees an incomplete answer, never a complete-looking one that lacks an
    instance."""
    bodies: list[tuple[str, bytes | memoryview]] = []
    for part in group:
        try:
            bodies.append(_body(part, spool))
        except FileNotFoundError:
            bodies.append(_body_of_current(part, current, declared_length))
    return bodies


def _body(part: _Part, spool: IO[bytes]) -> tuple[str, bytes | memoryview]:
    if part.spooled is not None:
        spool.seek(part.spooled[0])
        return part.syntaxes[0], spool.read(part.spooled[1])
    if not part.on_the_way:
        return part.syntaxes[0], map_file(part.instance.absolute_path)
    return _transcoded_on_the_way(part)


def _body_of_current(part: _Part, current: _CurrentPart, declared_length: bool) -> tuple[str, bytes | memoryview]:
    """A part whose file went after the answer's rows were read: a re-send
    replaced it (its current file goes instead), or a DELETE removed it."""
    sop_uid = part.instance.sop_uid
    replacement = current(part.instance)
    if replacement is None:
        raise _AnswerCutShort(f"instance {sop_uid} was deleted, or cannot be sent as it is stored now")
    try:
        syntax, body = _transcoded_on_the_way(replacement)
    except FileNotFoundError:
        raise _AnswerCutShort(f"instance {sop_uid} was replaced again while being sent") from None
    # An answer whose Content-Length went out can carry only a part of the length it declared.
    if declared_length and (syntax != part.syntaxes[0] or len(body) != part.size):
        raise _AnswerCutShort(
            f"instance {sop_uid} was re-sent with content of another length than the answer's Content-Length counted"
        )
    return syntax, body


def _transcoded_on_the_way(part: _Part) -> tuple[str, bytes | memoryview]:
    refusal: NotAcceptable | None = None
    for syntax in part.syntaxes:
        if syntax == part.instance.transfer_syntax_uid:
            return syntax, map_file(part.instance.absolute_path)
        try:
            return syntax, transcode_to(part.instance.absolute_path, syntax)
        except NotAcceptable as error:
            refusal = refusal or error
    assert refusal is not None
    raise refusal


async def _parts_body(
    framing: MultipartFraming, parts: list[_Part], spool: IO[bytes], current: _CurrentPart, declared_length: bool
) -> AsyncIterator[bytes | memoryview]:
    try:
        first = True
        for group in _groups(parts):
            for syntax, body in await run_in_threadpool(_bodies, group, spool, current, declared_length):
                yield framing.head(_instance_content_type(syntax), first=first)
                yield body
                first = False
        yield framing.closing(after_parts=not first)
    except _AnswerCutShort as reason:
        # Not a server error: the store changed under a long answer.
        log.warning("a WADO-RS answer ends incomplete: %s", reason)
        note_cut_short(str(reason))
        raise  # cut off, as _AnswerCutShort says why
    finally:
        spool.close()


def _current_part(services: Services, accept: list[MediaRange], instance: StoredInstance) -> _Part | None:
    current = current_instance(services.engine, services.store, instance.study_uid, instance.sop_uid)
    if current is None:
        return None
    chosen, _ = _negotiated(accept, [current])
    return _Part(current, tuple(chosen[0][1])) if chosen else None


def _left_out_warning(left_out: list[tuple[StoredInstance, DicomError]]) -> str:
    named = "; ".join(f"{instance.sop_uid}: {refusal}" for instance, refusal in left_out[:_WARNING_NAMES])
    more = f"; and {len(left_out) - _WARNING_NAMES} more" if len(left_out) > _WARNING_NAMES else ""
    return warning_header(
        f"{len(left_out)} instance(s) cannot be sent in a form the request accepts, left out: {named}{more}"
    )


async def retrieve_instances(
    request: Request, services: Services, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> Response:
    """An instance, or a series' or study's: those that cannot be sent in an
    accepted form are left out of a 206 answer, whose Warning names them;
    when none can, 406 (PS3.18 §10.4.3.2, Table 10.4.3-2)."""
    accept = negotiated_accept(request, keep_refused=True)
    found = await run_in_threadpool(find_instances, services.engine, services.store, study_uid, series_uid, sop_uid)
    chosen, left_out = _negotiated(accept, [instance for instance, _ in found])
    # Compressed pixel data is decoded before the status goes out: an instance
    # that does not decode is then left out of the answer, not the end of a
    # broken one. Decodings beyond the spool's memory go to a temporary file.
    spool = SpooledTemporaryFile(max_size=_GROUP_BYTES)
    current = partial(_current_part, services, accept)
    try:
        parts, failed = await run_in_threadpool(_prepared, chosen, spool, current)
    except BaseException:
        spool.close()
        raise
    left_out += failed
    if not parts:
        spool.close()
        if not left_out:
            raise NotFound("what was asked for was deleted while the answer was prepared")
        raise left_out[0][1]
    boundary = new_boundary()
    framing = MultipartFraming(boundary)
    headers = {}
    declared_length = not any(part.on_the_way for part in parts)  # every length known before the first byte
    if declared_length:
        length = framing.length((_instance_content_type(part.syntaxes[0]), part.size) for part in parts)
        headers["Content-Length"] = str(length)
    if left_out:
        headers["Warning"] = _left_out_warning(left_out)
    status = 206 if left_out else 200
    media_type = multipart_related_type(boundary, DICOM)
    if is_head(request):  # what a GET answers, without its parts: chunked too when their lengths are not known
        spool.close()
        return StreamingResponse(iter(()), status_code=status, media_type=media_type, headers=headers)
    body = _parts_body(framing, parts, spool, current, declared_length)
    return StreamingResponse(body, status_code=status, media_type=media_type, headers=headers)


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


# --- Answers of many parts, read a piece at a time ------------------------------
# Frames and rendered images of a series or study are read a piece at a time,
# each in a worker thread, and sent as they come: what is held in memory is a
# piece, never the study. A piece is one rendered image, or a few frames of
# one instance, their stored bytes about this many at most (decoded ones are
# larger).
_PIECE_BYTES = 8 * 1024 * 1024
_PIECE_FRAMES = 16

# The parts of a piece: Content-Type, body, further part headers.
_PiecePart = tuple[str, bytes, dict[str, str]]


@dataclass(frozen=True)
class _Piece:
    """Something of one instance that is read as parts: `read` makes them of
    the instance as it is stored now."""

    instance: StoredInstance
    read: Callable[[StoredInstance], list[_PiecePart]]


def _read_piece(services: Services, piece: _Piece) -> list[_PiecePart]:
    return read_current(piece.instance, piece.read, partial(_stored_now, services))


def _stored_now(services: Services, instance: StoredInstance) -> StoredInstance:
    now = current_instance(services.engine, services.store, instance.study_uid, instance.sop_uid)
    if now is None:
        raise NotFound(f"no such instance is stored here: {instance.sop_uid} was deleted while being read")
    return now


def _opening(
    services: Services, pieces: list[_Piece]
) -> tuple[int, list[_PiecePart], list[tuple[StoredInstance, DicomError]]]:
    """The first piece that reads, where it is in `pieces`, and the instances
    left out before it: read before the status goes out, so that an
    instance's refusal is its answer, and a study's first instances that
    cannot be read are named in a Warning instead of ending a broken answer."""
    failed: list[tuple[StoredInstance, DicomError]] = []
    for position, piece in enumerate(pieces):
        if failed and failed[-1][0] is piece.instance:
            continue  # the rest of an instance whose first piece failed
        try:
            return position, _read_piece(services, piece), failed
        except (NotAcceptable, NotFound) as refusal:
            failed.append((piece.instance, refusal))
    return len(pieces), [], failed


async def _pieces_answer(
    request: Request, services: Services, pieces: list[_Piece], left_out: list[tuple[StoredInstance, DicomError]]
) -> Response:
    """The parts of `pieces`, in order, as one multipart/related answer: 206
    with a Warning naming the instances left out, or, when nothing can be
    sent, the first refusal. A piece that fails once the answer is under way
    cuts it off, as _AnswerCutShort does: the client sees it incomplete."""
    position, parts, failed = await run_in_threadpool(_opening, services, pieces)
    left_out = left_out + failed
    if not parts:
        assert left_out, "an answer without pieces is refused before it is read"
        raise left_out[0][1]
    boundary = new_boundary()
    headers = {"Warning": _left_out_warning(left_out)} if left_out else {}
    status = 206 if left_out else 200
    media_type = multipart_related_type(boundary, parts[0][0].split(";")[0])
    if is_head(request):
        return StreamingResponse(iter(()), status_code=status, media_type=media_type, headers=headers)
    body = _pieces_body(MultipartFraming(boundary), parts, pieces[position + 1 :], partial(_read_piece, services))
    return StreamingResponse(body, status_code=status, media_type=media_type, headers=headers)


async def _pieces_body(
    framing: MultipartFraming,
    opening: list[_PiecePart],
    rest: list[_Piece],
    read: Callable[[_Piece], list[_PiecePart]],
) -> AsyncIterator[bytes]:
    first = True
    try:
        parts = opening
        for piece in (None, *rest):
            if piece is not None:
                parts = await run_in_threadpool(read, piece)
            # A piece goes out in one write: frames can be a few hundred bytes each.
            chunks = []
            for content_type, data, extra in parts:
                chunks += (framing.head(content_type, extra, first=first), data)
                first = False
            yield b"".join(chunks)
        yield framing.closing(after_parts=True)
    except DicomError as reason:
        log.warning("a WADO-RS answer ends incomplete: %s", reason)
        note_cut_short(str(reason))
        raise  # cut off, as _AnswerCutShort says why


def _frame_pieces(
    instance: StoredInstance, numbers: list[int], accept: list[MediaRange], location: str | None
) -> list[_Piece]:
    """`numbers` of the instance's frames, a few per piece; `location`: the
    URI each part names as its Content-Location, with the tag of the element
    that holds the frames appended."""
    per_frame = max(1, instance.file_size // instance.number_of_frames)
    size = max(1, min(_PIECE_FRAMES, _PIECE_BYTES // per_frame))
    read = partial(_frame_parts, accept=accept, location=location)
    return [_Piece(instance, partial(read, numbers=numbers[at : at + size])) for at in range(0, len(numbers), size)]


def _frame_parts(
    instance: StoredInstance, numbers: list[int], accept: list[MediaRange], location: str | None
) -> list[_PiecePart]:
    content_type, tag, frames = read_pixel_frames(instance.absolute_path, numbers, accept)
    extra = {"Content-Location": f"{location}{tag:08X}"} if location else {}
    return [(content_type, frame, extra) for frame in frames]


async def _frames_answer(
    request: Request, services: Services, found: list[StoredInstance], numbers: list[int] | None = None
) -> Response:
    """Frames of the instances `found`: `numbers` of each, or all of them as
    the Pixel Data resource sends them, each part named by its instance's
    Pixel Data BulkDataURI (PS3.18 §10.4.3.3.6). Negotiated as a frame is
    (PS3.18 §8.7.3.3), from each instance's stored syntax, before any is read."""
    accept = negotiated_accept(request, keep_refused=True)
    root = None if numbers else dicomweb_root(request)
    pieces: list[_Piece] = []
    left_out: list[tuple[StoredInstance, DicomError]] = []
    for instance in found:
        try:
            frame_content_type(accept, instance.transfer_syntax_uid)
        except NotAcceptable as refusal:
            left_out.append((instance, refusal))
            continue
        if numbers:
            check_frame_numbers(numbers, instance.number_of_frames)
        location = (
            f"{root}/studies/{instance.study_uid}/series/{instance.series_uid}/instances/{instance.sop_uid}/bulkdata/"
            if root else None
        )
        wanted = numbers or list(range(1, instance.number_of_frames + 1))
        pieces.extend(_frame_pieces(instance, wanted, accept, location))
    return await _pieces_answer(request, services, pieces, left_out)


async def retrieve_frames(
    request: Request, services: Services, study_uid: str, series_uid: str, sop_uid: str, frame_list: str
) -> Response:
    numbers = parse_frame_list(frame_list)
    instance = await run_in_threadpool(find_instance, services.engine, services.store, study_uid, series_uid, sop_uid)
    return await _frames_answer(request, services, [instance], numbers)


async def retrieve_pixel_data(
    request: Request, services: Services, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> Response:
    """Every frame of every image of a study, series or instance (the Pixel
    Data resource, PS3.18 §10.4.1.1.6), in series then instance order, as
    the metadata lists them. Instances without pixel data have none to
    send; a level with none is 404, as such an instance's frames are."""
    images = await _images(services, NotFound, study_uid, series_uid, sop_uid)
    return await _frames_answer(request, services, images)


async def _images(
    services: Services,
    refusal: type[NotFound | NotAcceptable],
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> list[StoredInstance]:
    """The instances of a level that have pixel data; `refusal` when it has none."""
    found = await run_in_threadpool(find_instances, services.engine, services.store, study_uid, series_uid, sop_uid)
    images = [instance for instance, _ in found if instance.has_pixels]
    if not images:
        what = "instance" if sop_uid else "series" if series_uid else "study"
        raise refusal(f"the {what} has no pixel data")
    return images


async def retrieve_bulk_data(
    request: Request, services: Services, study_uid: str, series_uid: str, sop_uid: str, tag_path_text: str
) -> Response:
    tag_path = parse_tag_path(tag_path_text)
    accept = negotiated_accept(request, keep_refused=True)
    lookup = partial(find_instance, services.engine, services.store, study_uid, series_uid, sop_uid)
    instance = await run_in_threadpool(lookup)
    syntax = instance.transfer_syntax_uid
    if tag_path == _PIXEL_DATA_PATH and not is_native(syntax) and not is_video(syntax):
        # Encapsulated pixel data is only meaningful frame by frame (PS3.18 §8.7.3.3.2): the Pixel Data resource's.
        return await _frames_answer(request, services, [instance])
    read = partial(_bulk_data_response, tag_path=tag_path, accept=accept)
    return await run_in_threadpool(read_current, instance, read, lambda _: lookup())


def _bulk_data_response(instance: StoredInstance, tag_path: TagPath, accept: list[MediaRange]) -> Response:
    if tag_path == _PIXEL_DATA_PATH and is_video(instance.transfer_syntax_uid):
        content_type, video = read_video(instance.absolute_path, instance.transfer_syntax_uid, accept)
        return _multipart([(content_type, iter((video,)))], content_type.split(";")[0])
    admitted = any(range_.q > 0 and admits_part(range_, OCTET_STREAM, OCTET_STREAM) for range_ in accept)
    if not admitted or refuses(accept, OCTET_STREAM, EXPLICIT_VR_LE, OCTET_STREAM):
        raise NotAcceptable("bulk data is available as application/octet-stream")
    data = read_bulk_data(instance.absolute_path, tag_path)
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
    params = _render_params(request)
    frame_number = _single_frame(frame_list) if frame_list else None
    lookup = partial(find_instance, services.engine, services.store, study_uid, series_uid, sop_uid)
    if as_thumbnail:
        read = partial(_thumbnail_of, params=params, frame_number=frame_number)
    else:
        read = partial(_rendered, params=params, frame_number=frame_number or 1)
    image = await run_in_threadpool(read_addressed, lookup, read)
    return Response(image, media_type=params.media_type)


async def retrieve_rendered_instances(
    request: Request, services: Services, study_uid: str, series_uid: str | None = None
) -> Response:
    """A study's or series' images rendered (PS3.18 §10.4.1.1.3), one part
    each, in series then instance order: each as its instance's rendered
    resource gives it, named by that resource's URL. A level without images
    is 406, as an instance without pixel data is: it exists, but no image
    of it can be made."""
    params = _render_params(request, in_parts=True)
    images = await _images(services, NotAcceptable, study_uid, series_uid)
    root = dicomweb_root(request)
    pieces = [_Piece(image, partial(_rendered_part, params=params, root=root)) for image in images]
    return await _pieces_answer(request, services, pieces, [])


def _rendered_part(instance: StoredInstance, params: RenderParams, root: str) -> list[_PiecePart]:
    location = f"{root}/studies/{instance.study_uid}/series/{instance.series_uid}/instances/{instance.sop_uid}/rendered"
    return [(params.media_type, _rendered(instance, params, 1), {"Content-Location": location})]


async def retrieve_thumbnail(
    request: Request, services: Services, study_uid: str, series_uid: str | None = None
) -> Response:
    """A study's or series' thumbnail (PS3.18 §10.4.4): an image that stands for it, chosen here."""
    params = _render_params(request)
    lookup = partial(representative_image, services.engine, services.store, study_uid, series_uid)
    image = await run_in_threadpool(read_addressed, lookup, partial(_thumbnail_of, params=params))
    return Response(image, media_type=params.media_type)


def _thumbnail_of(instance: StoredInstance, params: RenderParams, frame_number: int | None = None) -> bytes:
    return thumbnail(instance.absolute_path, params, frame_number)


def _rendered(instance: StoredInstance, params: RenderParams, frame_number: int) -> bytes:
    return render_frame(instance.absolute_path, frame_number, params)


def _render_params(request: Request, in_parts: bool = False) -> RenderParams:
    """`in_parts`: for an answer of many images, multipart/related, whose
    ranges name the images' type as `type` (JPEG when they name none); a
    bare image range is taken too, as clients that ask for one image ask."""
    accept = negotiated_accept(request, keep_refused=True)
    if in_parts:
        accept = [
            MediaRange(inner_type(range_) or DEFAULT_MEDIA_TYPE, range_.params, range_.q)
            if range_.media_type == MULTIPART_RELATED else range_
            for range_ in accept
        ]
    return parse_render_params(list(request.query_params.multi_items()), accept)


def _single_frame(frame_list: str) -> int:
    numbers = parse_frame_list(frame_list)
    if len(numbers) != 1:
        raise InvalidRequest("rendered frames are sent one at a time: ask for a single frame")
    return numbers[0]

