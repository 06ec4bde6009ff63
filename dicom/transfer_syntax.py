"""Transfer syntaxes: what each one is, which media type carries it, and which
one to send when a client asks for instances (PS3.18 §8.7.3).
"""

import io
import struct
from collections.abc import Sequence

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID

from dicom.attributes import is_attribute
from dicom.errors import NotAcceptable
from dicom.media_types import MediaRange, admits_part, refuses, transfer_syntax_param
from dicom.pixels import DECODE_ERRORS, only_as_stored, undecodable

# Transfer Syntax UIDs, PS3.6 Table A-1.
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_2000 = "1.2.840.10008.1.2.4.91"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_LOSSLESS_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"

DICOM = "application/dicom"
OCTET_STREAM = "application/octet-stream"

# Syntaxes whose pixel data is native (not encapsulated): the data set can be
# re-encoded as another native syntax without any image codec.
NATIVE_SYNTAXES = frozenset({IMPLICIT_VR_LE, EXPLICIT_VR_LE, DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_BE})
# What we can write: pydicom encodes these without a codec.
_PRODUCIBLE = frozenset({EXPLICIT_VR_LE, IMPLICIT_VR_LE})

# Media type of compressed bulk data (frames, pixel data) per transfer syntax,
# PS3.18 §8.7.3.3.2, Table 8.7.3-2. Video syntaxes are in VIDEO_MEDIA_TYPES;
# JPIP syntaxes are left out: we serve them only inside application/dicom.
# Native syntaxes map to application/octet-stream (PS3.18 §8.7.3.3.1).
BULK_DATA_MEDIA_TYPES: dict[str, str] = {
    JPEG_BASELINE: "image/jpeg",
    JPEG_EXTENDED: "image/jpeg",
    JPEG_LOSSLESS: "image/jpeg",
    JPEG_LOSSLESS_SV1: "image/jpeg",
    JPEG_LS_LOSSLESS: "image/jls",
    JPEG_LS_NEAR_LOSSLESS: "image/jls",
    JPEG_2000_LOSSLESS: "image/jp2",
    JPEG_2000: "image/jp2",
    HTJ2K_LOSSLESS: "image/jphc",
    HTJ2K_LOSSLESS_RPCL: "image/jphc",
    HTJ2K: "image/jphc",
    RLE_LOSSLESS: "image/dicom-rle",
}

# Media type of video pixel data per transfer syntax, PS3.18 Table 8.7.3-2.
# A video is one stream, sent whole as the Pixel Data bulk data, never as
# frames. A fragmentable syntax (".1") splits the same stream differently.
VIDEO_MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.4.100": "video/mpeg",  # MPEG2 Main Profile / Main Level
    "1.2.840.10008.1.2.4.100.1": "video/mpeg",
    "1.2.840.10008.1.2.4.101": "video/mpeg",  # MPEG2 Main Profile / High Level
    "1.2.840.10008.1.2.4.101.1": "video/mpeg",
    "1.2.840.10008.1.2.4.102": "video/mp4",  # MPEG-4 AVC/H.264 High Profile / Level 4.1
    "1.2.840.10008.1.2.4.102.1": "video/mp4",
    "1.2.840.10008.1.2.4.103": "video/mp4",  # ... BD-compatible High Profile / Level 4.1
    "1.2.840.10008.1.2.4.103.1": "video/mp4",
    "1.2.840.10008.1.2.4.104": "video/mp4",  # ... High Profile / Level 4.2 For 2D Video
    "1.2.840.10008.1.2.4.104.1": "video/mp4",
    "1.2.840.10008.1.2.4.105": "video/mp4",  # ... High Profile / Level 4.2 For 3D Video
    "1.2.840.10008.1.2.4.105.1": "video/mp4",
    "1.2.840.10008.1.2.4.106": "video/mp4",  # ... Stereo High Profile / Level 4.2
    "1.2.840.10008.1.2.4.106.1": "video/mp4",
    "1.2.840.10008.1.2.4.107": "video/H265",  # HEVC/H.265 Main Profile / Level 5.1
    "1.2.840.10008.1.2.4.108": "video/H265",  # HEVC/H.265 Main 10 Profile / Level 5.1
}


def is_native(syntax: str) -> bool:
    return syntax in NATIVE_SYNTAXES


def bulk_data_media_type(syntax: str) -> str | None:
    """The media type a frame in `syntax` is sent as unchanged; None when unknown."""
    return OCTET_STREAM if is_native(syntax) else BULK_DATA_MEDIA_TYPES.get(syntax)


def can_decompress(syntax: str) -> bool:
    """Whether pixel data in `syntax` can be turned into native pixel data here."""
    if is_native(syntax):
        return True
    try:
        return bool(get_decoder(syntax).is_available)
    except NotImplementedError:
        return False


def _producible(target: str, stored_syntax: str, can_decode: bool) -> bool:
    if target == stored_syntax:
        return True
    return target in _PRODUCIBLE and (is_native(stored_syntax) or can_decode)


def choose_instance_syntax(accept: Sequence[MediaRange], stored_syntax: str, can_decode: bool) -> str:
    """The transfer syntax to send an instance in, as application/dicom alone or
    inside multipart/related (PS3.18 §8.7.3.5.2). Ranges come best first,
    the refused ones (q=0) among them."""
    return instance_syntaxes(accept, stored_syntax, can_decode)[0]


def instance_syntaxes(accept: Sequence[MediaRange], stored_syntax: str, can_decode: bool) -> list[str]:
    """Every syntax the client takes an instance in and that can be produced
    from `stored_syntax`, best first: the next serves where decoding the
    pixel data for the first fails (`*/*` takes the stored syntax then)."""
    chosen: list[str] = []
    for range_ in accept:
        if range_.q == 0 or not admits_part(range_, DICOM, default_inner=DICOM):
            continue
        for target in _syntaxes_admitted(range_, stored_syntax):
            if (target not in chosen and _producible(target, stored_syntax, can_decode)
                    and not refuses(accept, DICOM, target, DICOM)):
                chosen.append(target)
    if chosen:
        return chosen
    asked_for = ", ".join(_describe(range_) for range_ in accept if range_.q > 0) or "nothing"
    raise NotAcceptable(
        f"cannot send the instance in any accepted form: asked for {asked_for}; stored as {stored_syntax}"
        + ("" if is_native(stored_syntax) or can_decode else ", which cannot be decompressed here")
    )


def _syntaxes_admitted(range_: MediaRange, stored_syntax: str) -> list[str]:
    """What a range asks for, in the order to offer it. `*` is the stored
    syntax, and a wildcard type any syntax: another one serves where the
    client refuses the first with q=0."""
    asked = transfer_syntax_param(range_)
    if asked == "*":
        return [stored_syntax, EXPLICIT_VR_LE, IMPLICIT_VR_LE]
    if asked:
        return [asked]
    # No transfer-syntax parameter means Explicit VR Little Endian (PS3.18 §8.7.3.5.2).
    if range_.media_type == "*/*":
        return [EXPLICIT_VR_LE, stored_syntax, IMPLICIT_VR_LE]
    return [EXPLICIT_VR_LE]


def _describe(range_: MediaRange) -> str:
    params = "".join(f"; {name}={value}" for name, value in range_.params.items())
    return range_.media_type + params


def transcode_to(path: str, target_syntax: str) -> bytes:
    """The whole file (preamble, file meta, data set) re-encoded in a native
    little-endian syntax; compressed pixel data is decoded first. Only the
    data set's attributes are written (`is_attribute`)."""
    if target_syntax not in _PRODUCIBLE:
        raise NotAcceptable(f"cannot encode instances in transfer syntax {target_syntax}")
    dataset = pydicom.dcmread(path)
    stored_syntax = str(dataset.file_meta.get("TransferSyntaxUID", EXPLICIT_VR_LE))
    if not is_native(stored_syntax):
        if not can_decompress(stored_syntax):
            raise NotAcceptable(f"no decoder for transfer syntax {stored_syntax}: cannot send it as {target_syntax}")
        try:
            # Also converts YCbCr to RGB and updates Photometric Interpretation.
            # Not pydicom's default of a new SOP Instance UID: decompressing makes
            # no new instance, only lossy compression would (PS3.5 §8.2).
            dataset.decompress(generate_instance_uid=False)
        except DECODE_ERRORS as error:
            raise undecodable(stored_syntax, error) from error
    try:
        return _encoded(dataset, stored_syntax, target_syntax)
    except _ENCODE_ERRORS as error:
        problem = f"the instance (stored as {stored_syntax}) cannot be encoded in {target_syntax}"
        raise only_as_stored(problem, error) from error


# What pydicom raises converting an element as read, or writing it, where the
# new encoding cannot hold it: a value that is no whole number of values
# (BytesLengthException), an ambiguous VR that the data set does not resolve
# (AttributeError), a VR it does not know (NotImplementedError), a value it
# cannot encode (the rest). STOW stores such files: they can be sent as stored.
_ENCODE_ERRORS = (
    AttributeError, BytesLengthException, NotImplementedError, OverflowError, TypeError, ValueError, struct.error
)


def _encoded(dataset: Dataset, stored_syntax: str, target_syntax: str) -> bytes:
    _keep_attributes_only(dataset)
    if stored_syntax == EXPLICIT_VR_BE:
        _swap_binary_values(dataset)
    dataset.file_meta.TransferSyntaxUID = UID(target_syntax)
    out = io.BytesIO()
    pydicom.dcmwrite(out, dataset, enforce_file_format=True)
    return out.getvalue()


def _keep_attributes_only(dataset: Dataset) -> None:
    """Leave out, at every level, what a Part 10 file may not hold (command and
    stray delimitation elements: pydicom refuses to write them) or would hold
    stale (group lengths)."""
    for tag in [tag for tag in dataset.keys() if not is_attribute(tag)]:
        del dataset[tag]
    for element in dataset:
        if element.VR == "SQ":
            for item in element.value:
                _keep_attributes_only(item)


# Width of the words in which binary VRs hold their values (PS3.5 §6.2).
_WORD_WIDTH = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def _swap_binary_values(dataset: Dataset) -> None:
    """pydicom converts numbers from big endian when it parses them but leaves
    OW/OF/OL/OD/OV bytes as read (see `pydicom.dcmwrite`), so swap them here."""
    for element in dataset.iterall():
        if isinstance(element.value, bytes):
            element.value = swapped_words(element.value, str(element.VR))


def swapped_words(value: bytes, vr: str) -> bytes:
    """The value of a binary VR with the byte order of each word reversed
    (big to little endian and back); bytes (OB, UN) and values that are not
    whole words are returned as they are."""
    width = _WORD_WIDTH.get(vr)
    if width is None or len(value) % width:
        return value
    words = bytearray(value)
    for offset in range(width // 2):
        # Reverse the byte order within each word via strided slices.
        low = words[offset::width]
        words[offset::width] = words[width - 1 - offset :: width]
        words[width - 1 - offset :: width] = low
    return bytes(words)
