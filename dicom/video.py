"""Video pixel data (MPEG-2, MPEG-4 AVC/H.264, HEVC/H.265) as bulk data.

A video's Pixel Data is one stream cut into the fragments of the
encapsulated value, not a fragment per frame (PS3.5 Annex A.4): it is sent
whole, the fragments joined, in the media type PS3.18 Table 8.7.3-2 gives
its transfer syntax. Nothing here decodes it.
"""

from collections.abc import Sequence

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.encaps import generate_fragments, parse_basic_offsets

from dicom.errors import NotAcceptable, NotFound
from dicom.frames import admits_stored
from dicom.media_types import MediaRange, refuses
from dicom.transfer_syntax import OCTET_STREAM, VIDEO_MEDIA_TYPES

_PIXEL_DATA = 0x7FE00010


def is_video(syntax: str) -> bool:
    return syntax in VIDEO_MEDIA_TYPES


def read_video(path: str, syntax: str, accept: Sequence[MediaRange]) -> tuple[str, bytes]:
    """The part Content-Type and the stream of an instance stored in video `syntax`; `accept` best first."""
    media_type = VIDEO_MEDIA_TYPES[syntax]
    admitted = any(range_.q > 0 and admits_stored(range_, media_type, syntax) for range_ in accept)
    if not admitted or refuses(accept, media_type, syntax, OCTET_STREAM):
        raise NotAcceptable(f"the video is available as {media_type} only (stored as {syntax})")
    # Only where the value starts is wanted: values are skipped over, not kept.
    element = pydicom.dcmread(path, defer_size=1).get_item(_PIXEL_DATA, keep_deferred=True)
    if not isinstance(element, RawDataElement):
        raise NotFound("the instance has no pixel data")
    with open(path, "rb") as file:
        file.seek(element.value_tell)
        try:
            parse_basic_offsets(file)  # empty for a video; read past it
            stream = b"".join(generate_fragments(file))
        except ValueError as error:
            raise NotFound(f"cannot read the video from the encapsulated pixel data: {error}") from error
    return f"{media_type}; transfer-syntax={syntax}", stream
