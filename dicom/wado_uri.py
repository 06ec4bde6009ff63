"""WADO-URI (PS3.18 chapter 9): one instance, named by query parameters, as
a Part 10 file (Retrieve DICOM Instance, §9.4) or as a rendered image
(Retrieve Rendered Instance, §9.5).

Older viewers, PACS and EHR image links still use it where WADO-RS is not
known. The two transactions differ only by the media type chosen: the
`contentType` parameter (a list, best first), else the Accept header; with
neither saying more than `*/*`, a JPEG (§9.3).

Choices where chapter 9 leaves room:
- `anonymize=yes` is refused (400) rather than ignored: an origin server
  that cannot de-identify must not send identifiable data to a client that
  asked it not to.
- `annotation`, `charset`, `presentationUID` and `presentationSeriesUID`
  are ignored (PS3.18 §8.3: what a server does not support it ignores), as
  are rendering parameters in a request for the Part 10 file.
- `transferSyntax` absent means Explicit VR Little Endian (§8.7.3.5.2).
"""

from collections.abc import Sequence
from dataclasses import dataclass

from dicom.errors import InvalidRequest, NotAcceptable
from dicom.media_types import MediaRange, accept_from_request, type_matches
from dicom.rendering import (
    MAX_VIEWPORT_SIDE,
    RENDERED_MEDIA_TYPES,
    RenderParams,
    checked_window,
    parse_quality,
    query_values,
    rendered_media_type,
)
from dicom.uids import require_uid

DICOM = "application/dicom"
URI_MEDIA_TYPES = (DICOM, *RENDERED_MEDIA_TYPES)


@dataclass(frozen=True)
class WadoUriRequest:
    study_uid: str
    series_uid: str
    sop_uid: str
    media_type: str  # DICOM, or one of RENDERED_MEDIA_TYPES
    transfer_syntax: str | None  # DICOM only; None: Explicit VR Little Endian
    frame_number: int  # rendered only
    render: RenderParams


def parse_wado_uri(query: Sequence[tuple[str, str]], accept_header: Sequence[str]) -> WadoUriRequest:
    values = query_values(query)
    if values.get("requestType") != "WADO":
        raise InvalidRequest('a WADO-URI request needs requestType=WADO (PS3.18 §9.1.2.1)')
    uids = [require_uid(values.get(name, ""), name) for name in ("studyUID", "seriesUID", "objectUID")]
    anonymize = values.get("anonymize")
    if anonymize is not None:
        raise InvalidRequest(
            "anonymize is not supported: this server cannot de-identify an instance"
            if anonymize == "yes" else f"anonymize takes the value yes, not {anonymize[:20]!r}"
        )
    media_type = _media_type(
        accept_from_request(values.get("contentType", "").split(","), accept_header, keep_refused=True)
    )
    if media_type == DICOM:
        syntax = values.get("transferSyntax")
        return WadoUriRequest(*uids, DICOM, require_uid(syntax, "transferSyntax") if syntax else None, 1,
                              RenderParams())
    frame_number = _whole_number(values.get("frameNumber"), "frameNumber") or 1
    return WadoUriRequest(*uids, media_type, None, frame_number, _render_params(media_type, values))


def _media_type(ranges: list[MediaRange]) -> str:
    """Best first: the Part 10 file when application/dicom (or application/*)
    comes before any image type and is not refused with q=0; else the
    rendered type the ranges prefer (`*/*` alone: a JPEG, §9.3)."""
    dicom_refused = any(range_.q == 0 and range_.media_type == DICOM for range_ in ranges)
    for range_ in (range_ for range_ in ranges if range_.q > 0):
        if range_.media_type != "*/*" and type_matches(range_.media_type, DICOM) and not dicom_refused:
            return DICOM
        if any(type_matches(range_.media_type, kind) for kind in RENDERED_MEDIA_TYPES):
            break
    try:
        return rendered_media_type(ranges)
    except NotAcceptable:
        raise NotAcceptable(f"WADO-URI answers {', '.join(URI_MEDIA_TYPES)}") from None


def _whole_number(text: str | None, name: str, maximum: int | None = None) -> int | None:
    if text is None:
        return None
    if not text.isdigit() or int(text) < 1 or (maximum is not None and int(text) > maximum):
        raise InvalidRequest(f"{name} must be a whole number from 1{f' to {maximum}' if maximum else ''}, "
                             f"not {text[:20]!r}")
    return int(text)


def _render_params(media_type: str, values: dict[str, str]) -> RenderParams:
    window = None
    if "windowCenter" in values or "windowWidth" in values:
        if not ("windowCenter" in values and "windowWidth" in values):
            raise InvalidRequest("windowCenter and windowWidth go together (PS3.18 §9.5.1.2.5)")
        window = checked_window(values["windowCenter"], values["windowWidth"], "linear", "windowCenter/windowWidth")
    rows = _whole_number(values.get("rows"), "rows", MAX_VIEWPORT_SIDE)
    columns = _whole_number(values.get("columns"), "columns", MAX_VIEWPORT_SIDE)
    # Each is a maximum, and the aspect ratio is kept (§9.5.1.2.3): one alone bounds only its own side.
    viewport = (columns or MAX_VIEWPORT_SIDE, rows or MAX_VIEWPORT_SIDE) if rows or columns else None
    quality = parse_quality(values["imageQuality"], "imageQuality") if "imageQuality" in values else None
    return RenderParams(media_type, window, viewport, quality, _region(values.get("region")))


def _region(text: str | None) -> tuple[float, float, float, float] | None:
    """x1,y1,x2,y2: the top left and bottom right corners, as fractions of the image (§9.5.1.2.4)."""
    if text is None:
        return None
    try:
        left, top, right, bottom = (float(part) for part in text.split(","))
    except ValueError:
        raise InvalidRequest(f"region must be four numbers x1,y1,x2,y2, not {text[:60]!r}") from None
    if not (0.0 <= left < right <= 1.0 and 0.0 <= top < bottom <= 1.0):
        raise InvalidRequest(
            "region: corners are fractions from 0 to 1, the top left above and left of the bottom right"
        )
    return left, top, right, bottom
