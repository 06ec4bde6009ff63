"""Rendered frames and thumbnails (PS3.18 §10.4.1.1.3, query parameters §8.3.5.1).

Grayscale goes through the Modality LUT, then the VOI window (the request's,
else the frame's, else the frame's full range), then MONOCHROME1 inversion.
Colour (RGB, YBR converted to RGB by pydicom, PALETTE COLOR) is only scaled to
8 bits. Not supported: the `annotation` and `iccprofile` parameters (ignored),
VOI LUT Sequences (the full-range window is used instead) and the 6-value
`viewport` form with a source region (rejected).
"""

import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut

from dicom.errors import InvalidRequest, NotAcceptable, NotFound
from dicom.json_model import read_dataset_for_metadata
from dicom.media_types import MediaRange, type_matches
from dicom.pixels import decode_frame, frame_source
from dicom.transfer_syntax import EXPLICIT_VR_LE, swapped_words

# PS3.18 Table 8.7.4-1: rendered media types for single-frame images that we encode.
RENDERED_MEDIA_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}
DEFAULT_MEDIA_TYPE = "image/jpeg"
DEFAULT_JPEG_QUALITY = 90
THUMBNAIL_VIEWPORT = (128, 128)
# PS3.18 §8.3.5.1.4 window functions, and the VOI LUT Function (0028,1056) terms (PS3.3 C.11.2.1.3).
WINDOW_FUNCTIONS = ("linear", "linear-exact", "sigmoid")
_VOI_LUT_FUNCTIONS = {"LINEAR": "linear", "LINEAR_EXACT": "linear-exact", "SIGMOID": "sigmoid"}
# Large enough for any real display, small enough that a request cannot ask for gigapixels.
MAX_VIEWPORT_SIDE = 8192

Window = tuple[float, float, str]
Query = Mapping[str, str | Sequence[str]] | Iterable[tuple[str, str]]


@dataclass(frozen=True)
class RenderParams:
    media_type: str = DEFAULT_MEDIA_TYPE
    window: Window | None = None
    viewport: tuple[int, int] | None = None
    quality: int | None = None
    # The part of the image shown, as fractions of it: left, top, right, bottom (WADO-URI `region`).
    region: tuple[float, float, float, float] | None = None


def parse_render_params(query: Query, accept: Sequence[MediaRange] = (MediaRange("*/*", {}, 1.0),)) -> RenderParams:
    """Rendered-resource query parameters; `accept`: the client's media ranges,
    best first, those it refuses (q=0) among them (none acceptable: 406)."""
    values = query_values(query)
    return RenderParams(
        media_type=rendered_media_type(accept),
        window=_parse_window(values["window"]) if "window" in values else None,
        viewport=_parse_viewport(values["viewport"]) if "viewport" in values else None,
        quality=parse_quality(values["quality"], "quality") if "quality" in values else None,
    )


def query_values(query: Query) -> dict[str, str]:
    """Each parameter's value; one given twice with different values is refused."""
    pairs: list[tuple[str, str]] = []
    if isinstance(query, Mapping):
        for name, value in query.items():
            pairs.extend((name, v) for v in ([value] if isinstance(value, str) else value))
    else:
        pairs.extend(query)
    values: dict[str, str] = {}
    for name, value in pairs:
        if name in values and values[name] != value:
            raise InvalidRequest(f"{name}: given more than once")
        values[name] = value
    return values


def rendered_media_type(ranges: Sequence[MediaRange]) -> str:
    """The first rendered type the ranges admit, best first, and not refused
    by name with q=0 (RFC 9110 §12.4.2): a wildcard gives JPEG, else the next."""
    refused = {range_.media_type for range_ in ranges if range_.q == 0}
    for range_ in ranges:
        if range_.q == 0:
            continue
        admitted = [kind for kind in RENDERED_MEDIA_TYPES if type_matches(range_.media_type, kind)]
        if range_.media_type in ("*/*", "image/*"):
            admitted.sort(key=lambda kind: kind != DEFAULT_MEDIA_TYPE)
        for kind in admitted:
            if kind not in refused:
                return kind
    raise NotAcceptable(f"rendered images are available as {', '.join(RENDERED_MEDIA_TYPES)}")


def _parse_window(text: str) -> Window:
    parts = [part.strip() for part in text.split(",")]
    if len(parts) not in (2, 3):
        raise InvalidRequest("window: expected center,width,function")
    return checked_window(parts[0], parts[1], parts[2].lower() if len(parts) == 3 else "linear", "window")


def checked_window(center_text: str, width_text: str, function: str, name: str) -> Window:
    """A VOI window from the request's text; `name` is the parameter an error names."""
    try:
        center, width = float(center_text), float(width_text)
    except ValueError:
        raise InvalidRequest(f"{name}: center and width must be numbers") from None
    if function not in WINDOW_FUNCTIONS:
        raise InvalidRequest(f"{name}: function must be one of {', '.join(WINDOW_FUNCTIONS)}")
    if not (math.isfinite(center) and math.isfinite(width)):
        raise InvalidRequest(f"{name}: center and width must be finite")
    # PS3.3 C.11.2.1.2.1: linear needs width >= 1; the other functions width > 0.
    if width < 1 if function == "linear" else width <= 0:
        raise InvalidRequest(f"{name}: width {width:g} is too small for the {function} function")
    return center, width, function


def _parse_viewport(text: str) -> tuple[int, int]:
    parts = [part.strip() for part in text.split(",")]
    if len(parts) == 6:
        raise InvalidRequest("viewport: the source region form (vw,vh,sx,sy,sw,sh) is not supported; use vw,vh")
    if len(parts) != 2:
        raise InvalidRequest("viewport: expected vw,vh")
    try:
        width, height = int(parts[0]), int(parts[1])
    except ValueError:
        raise InvalidRequest("viewport: vw and vh must be whole numbers") from None
    if not (0 < width <= MAX_VIEWPORT_SIDE and 0 < height <= MAX_VIEWPORT_SIDE):
        raise InvalidRequest(f"viewport: vw and vh must be between 1 and {MAX_VIEWPORT_SIDE}")
    return width, height


def parse_quality(text: str, name: str) -> int:
    try:
        quality = int(text.strip())
    except ValueError:
        raise InvalidRequest(f"{name}: must be a whole number from 1 to 100") from None
    if not 1 <= quality <= 100:
        raise InvalidRequest(f"{name}: must be a whole number from 1 to 100")
    return quality


def render_frame(path: str, frame_number: int, params: RenderParams) -> bytes:
    """One frame (1-based) rendered as an 8-bit image of `params.media_type`."""
    ds = _image_header(path)
    frames = _number_of_frames(ds)
    if not 1 <= frame_number <= frames:
        raise NotFound(f"frame {frame_number} does not exist; the instance has {frames} frame(s)")
    return _render(path, ds, frame_number - 1, params)


def thumbnail(path: str, params: RenderParams, frame_number: int | None = None) -> bytes:
    """A frame (the middle one unless named), fitted into 128x128 unless the request gives a viewport."""
    if params.viewport is None:
        params = replace(params, viewport=THUMBNAIL_VIEWPORT)
    if frame_number is not None:
        return render_frame(path, frame_number, params)
    ds = _image_header(path)
    return _render(path, ds, (_number_of_frames(ds) - 1) // 2, params)


def _image_header(path: str) -> Dataset:
    ds = read_dataset_for_metadata(path)
    if "PixelData" not in ds:
        # It exists (404 would say otherwise); an image of it is what cannot be made.
        raise NotAcceptable("the instance has no pixel data: it cannot be rendered as an image; "
                            "ask for it as application/dicom")
    return ds


def _number_of_frames(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def _render(path: str, ds: Dataset, index: int, params: RenderParams) -> bytes:
    stored_syntax = str(ds.file_meta.get("TransferSyntaxUID", EXPLICIT_VR_LE))
    arr = decode_frame(frame_source(path, stored_syntax), index, stored_syntax)
    if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        image = _color_image(_palette_colours(arr, ds))
    elif int(ds.get("SamplesPerPixel") or 1) > 1:
        image = _color_image(arr)
    else:
        image = _grayscale_image(arr, ds, index, params.window)
    if params.region is not None:
        image = _cropped(image, params.region)
    if params.viewport is not None:
        image = _fit(image, params.viewport)
    return _encode(image, params)


def _cropped(image: Image.Image, region: tuple[float, float, float, float]) -> Image.Image:
    left, top, right, bottom = region
    box = (math.floor(left * image.width), math.floor(top * image.height),
           math.ceil(right * image.width), math.ceil(bottom * image.height))
    # At least one pixel, however small the region.
    return image.crop((box[0], box[1], max(box[2], box[0] + 1), max(box[3], box[1] + 1)))


# PS3.3 C.7.6.3.1.6: the non-segmented LUTs, OW.
_PALETTE_LUT_DATA = tuple(
    f"{colour}PaletteColorLookupTableData" for colour in ("Red", "Green", "Blue", "Alpha")
)


def _palette_colours(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """pydicom (3.0) reads non-segmented LUT words in the machine's byte
    order, little endian here, whatever the data set's; those of a big
    endian data set are swapped first (in `ds`, read for this rendering
    alone). It reads segmented LUTs in the data set's order itself."""
    if ds.original_encoding[1] is False:
        for keyword in _PALETTE_LUT_DATA:
            if keyword in ds:
                ds[keyword].value = swapped_words(ds[keyword].value, "OW")
    return apply_color_lut(arr, ds)


def _color_image(arr: np.ndarray) -> Image.Image:
    if arr.dtype != np.uint8:
        # Colour is shown as stored; only the bit depth is reduced.
        top = float(np.iinfo(arr.dtype).max) if arr.dtype.kind in "ui" else float(arr.max() or 1)
        arr = np.clip(arr.astype(np.float64) * (255.0 / top), 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(arr))


def _grayscale_image(arr: np.ndarray, ds: Dataset, index: int, window: Window | None) -> Image.Image:
    values = _modality_values(arr, ds, index)
    center, width, function = window or _file_window(ds, index) or _full_range_window(values)
    out = apply_window(values, center, width, function)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        out = 255 - out
    return Image.fromarray(out)


def _modality_values(arr: np.ndarray, ds: Dataset, index: int) -> np.ndarray:
    if "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    slope = _frame_attribute(ds, index, "PixelValueTransformationSequence", "RescaleSlope")
    intercept = _frame_attribute(ds, index, "PixelValueTransformationSequence", "RescaleIntercept")
    values = arr.astype(np.float64)
    if slope is not None:
        values *= float(slope)
    if intercept is not None:
        values += float(intercept)
    return values


def _file_window(ds: Dataset, index: int) -> Window | None:
    center = _frame_attribute(ds, index, "FrameVOILUTSequence", "WindowCenter")
    width = _frame_attribute(ds, index, "FrameVOILUTSequence", "WindowWidth")
    function = _frame_attribute(ds, index, "FrameVOILUTSequence", "VOILUTFunction") or "LINEAR"
    try:
        # Several windows may be offered; the first is the one to show by default (PS3.3 C.11.2.1.2).
        center_value, width_value = float(_first(center)), float(_first(width))
    except (TypeError, ValueError):
        return None
    name = _VOI_LUT_FUNCTIONS.get(str(function).upper(), "linear")
    if not (math.isfinite(center_value) and math.isfinite(width_value)) or width_value <= 0:
        return None
    return center_value, max(width_value, 1.0) if name == "linear" else width_value, name


def _first(value: Any) -> Any:
    if isinstance(value, (MultiValue, list, tuple)):
        return value[0] if len(value) else None
    return value


def _frame_attribute(ds: Dataset, index: int, macro: str, keyword: str) -> Any:
    """An attribute of one frame: per-frame, then shared functional groups (PS3.3 C.7.6.16), then top level."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    groups = []
    if per_frame is not None and index < len(per_frame):
        groups.append(per_frame[index])
    groups.extend(ds.get("SharedFunctionalGroupsSequence") or [])
    for group in groups:
        for item in group.get(macro) or []:
            if keyword in item:
                return item[keyword].value
    return ds.get(keyword)


def _full_range_window(values: np.ndarray) -> Window:
    low, high = float(values.min()), float(values.max())
    return (low + high) / 2, max(high - low, 1e-6), "linear-exact"


def apply_window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """VOI window to 8 bits with the functions of PS3.3 C.11.2.1.2.1 (linear) and C.11.2.1.3 (exact, sigmoid)."""
    if function == "sigmoid":
        scaled = 1.0 / (1.0 + np.exp(np.clip(-4.0 * (values - center) / width, -700, 700)))
    elif function == "linear-exact":
        scaled = (values - center) / width + 0.5
    else:
        scaled = (values - (center - 0.5)) / (width - 1) + 0.5 if width > 1 else (values > center - 0.5) * 1.0
    return np.clip(np.rint(np.clip(scaled, 0.0, 1.0) * 255.0), 0, 255).astype(np.uint8)


def _fit(image: Image.Image, viewport: tuple[int, int]) -> Image.Image:
    """Scale to fit the viewport, keeping the aspect ratio (PS3.18 §8.3.5.1.3)."""
    scale = min(viewport[0] / image.width, viewport[1] / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)


def _encode(image: Image.Image, params: RenderParams) -> bytes:
    buffer = io.BytesIO()
    image_format = RENDERED_MEDIA_TYPES[params.media_type]
    if image_format == "JPEG":
        image.save(buffer, image_format, quality=params.quality or DEFAULT_JPEG_QUALITY)
    else:
        image.save(buffer, image_format)
    return buffer.getvalue()
