"""Frame retrieval (PS3.18 §10.4.1.1.2 frame list; §8.7.3.3 bulk data media types).

Frames are sent as stored when the client takes the stored media type, and as
native little-endian pixels otherwise. Native frames are read straight from
their byte range in the file, so a 1000-frame instance is not loaded to send
one frame.
"""

import re
from collections.abc import Sequence
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom import encaps
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from dicom.errors import InvalidRequest, NotAcceptable, NotFound
from dicom.json_model import raw_element_vr
from dicom.media_types import MediaRange, admits_part, refuses, transfer_syntax_param
from dicom.pixels import decode_frame, frame_source
from dicom.transfer_syntax import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    OCTET_STREAM,
    bulk_data_media_type,
    can_decompress,
    swapped_words,
)

_FRAME_NUMBER = re.compile(r"[0-9]+")
# Pixel Data, Float Pixel Data, Double Float Pixel Data: whichever one is present holds the frames.
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
_EXTENDED_OFFSET_TABLE = 0x7FE00001
_EXTENDED_OFFSET_TABLE_LENGTHS = 0x7FE00002
# Elements larger than this are not read when the data set is parsed.
_DEFER_SIZE = 4096
# The frame bytes we send as application/octet-stream are little endian, as in Explicit VR LE.
NATIVE_FRAME_TYPE = f"{OCTET_STREAM}; transfer-syntax={EXPLICIT_VR_LE}"
# Syntaxes a client may name for native frames: the pixel bytes are identical.
_NATIVE_LE_NAMES = frozenset({"*", EXPLICIT_VR_LE, IMPLICIT_VR_LE})


def parse_frame_list(text: str) -> list[int]:
    """Parse a frame list such as "1,3,5": 1-based frame numbers, in the order asked."""
    pieces = [piece.strip() for piece in text.split(",")]
    if not all(_FRAME_NUMBER.fullmatch(piece) and int(piece) > 0 for piece in pieces):
        raise InvalidRequest(f"invalid frame list {text[:200]!r}: expected positive integers separated by commas")
    return [int(piece) for piece in pieces]


def read_pixel_frames(
    path: str, numbers: Sequence[int], accept: Sequence[MediaRange]
) -> tuple[str, int, list[bytes]]:
    """The frames' part Content-Type, the tag of the element that holds them
    (Pixel Data, Float or Double Float Pixel Data) and the frames asked for,
    1-based, in the order asked; `accept` best first."""
    dataset = pydicom.dcmread(path, defer_size=_DEFER_SIZE)
    stored_syntax = str(dataset.file_meta.get("TransferSyntaxUID", EXPLICIT_VR_LE))
    frame_count = _frame_count(dataset)
    check_frame_numbers(numbers, frame_count)
    tag = next((tag for tag in _PIXEL_TAGS if tag in dataset), None)
    if tag is None:
        raise NotFound("the instance has no pixel data")

    content_type = frame_content_type(accept, stored_syntax)
    if content_type != NATIVE_FRAME_TYPE:
        return content_type, tag, _encapsulated_frames(path, dataset, numbers, frame_count)
    if stored_syntax in (IMPLICIT_VR_LE, EXPLICIT_VR_LE, EXPLICIT_VR_BE):
        return content_type, tag, _native_frames(path, dataset, tag, numbers, stored_syntax)
    return content_type, tag, _decoded_frames(path, dataset, stored_syntax, numbers)


def check_frame_numbers(numbers: Sequence[int], frame_count: int) -> None:
    """A frame list the instance answers: each number one of its frames."""
    if len(numbers) > frame_count:
        # Repeats are allowed, but not unbounded: each listed frame is read and sent.
        raise InvalidRequest(f"the frame list names {len(numbers)} frames; the instance has {frame_count}")
    for number in numbers:
        if not 0 < number <= frame_count:
            raise NotFound(f"frame {number} does not exist: the instance has {frame_count} frame(s)")


def frame_content_type(accept: Sequence[MediaRange], stored_syntax: str) -> str:
    """The Content-Type that frames stored in `stored_syntax` are sent in:
    as stored, or native; NotAcceptable when `accept` takes neither. Known
    from the syntax alone, so that an answer of many instances' frames is
    negotiated before its first byte."""
    stored_type = bulk_data_media_type(stored_syntax)
    as_stored = _choose_as_stored(accept, stored_syntax, stored_type)
    if as_stored is None:
        raise NotAcceptable(
            f"cannot send frames in any accepted form: stored as {stored_syntax}"
            f" ({stored_type or 'no known bulk data media type'})"
            + ("" if can_decompress(stored_syntax) else ", which cannot be decoded here")
        )
    return f"{stored_type}; transfer-syntax={stored_syntax}" if as_stored else NATIVE_FRAME_TYPE


def _frame_count(dataset: Dataset) -> int:
    try:
        return max(int(dataset.get("NumberOfFrames") or 1), 1)
    except (TypeError, ValueError):
        return 1  # an unreadable Number of Frames on a legacy file: treat as single frame


def _choose_as_stored(accept: Sequence[MediaRange], stored_syntax: str, stored_type: str | None) -> bool | None:
    """True: send the compressed frames as stored; False: send native frames;
    None: nothing acceptable. The best range we can satisfy decides, unless
    a q=0 range refuses what it admits."""
    compressed = stored_type is not None and stored_type != OCTET_STREAM
    decodable = can_decompress(stored_syntax) and not refuses(accept, OCTET_STREAM, EXPLICIT_VR_LE, OCTET_STREAM)
    if compressed and refuses(accept, stored_type or "", stored_syntax, OCTET_STREAM):
        compressed = False
    for range_ in accept:
        if range_.q == 0:
            continue
        if compressed and admits_stored(range_, stored_type or "", stored_syntax):
            return True
        if decodable and _admits_native(range_):
            return False
    return None


def admits_stored(range_: MediaRange, stored_type: str, stored_syntax: str) -> bool:
    """A range for the stored media type without a transfer-syntax parameter is
    taken as asking for the stored syntax: the part's Content-Type names it,
    and transcoding between compressed syntaxes would only lose quality.
    OHIF asks `multipart/related; type="application/octet-stream"; transfer-syntax=*`
    and expects frames as stored."""
    asked = transfer_syntax_param(range_)
    if range_.media_type == "*/*":
        return True
    if asked == "*" and admits_part(range_, OCTET_STREAM, OCTET_STREAM):
        return True
    return admits_part(range_, stored_type, OCTET_STREAM) and asked in (None, "*", stored_syntax)


def _admits_native(range_: MediaRange) -> bool:
    asked = transfer_syntax_param(range_)
    return admits_part(range_, OCTET_STREAM, OCTET_STREAM) and (asked is None or asked in _NATIVE_LE_NAMES)


def _frame_length_bits(dataset: Dataset) -> int:
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        samples, bits = int(dataset.get("SamplesPerPixel") or 1), int(dataset.BitsAllocated)
    except (AttributeError, TypeError, ValueError) as error:
        raise NotAcceptable(
            f"the image header does not say how the frames are laid out ({error}):"
            " the pixel data can be retrieved whole, as bulk data"
        ) from error
    if dataset.get("PhotometricInterpretation") == "YBR_FULL_422":
        # Two chroma samples are shared by each pair of pixels (PS3.3 C.7.6.3.1.2).
        return rows * columns * 2 * bits
    return rows * columns * samples * bits


def _raw_element(dataset: Dataset, tag: int) -> RawDataElement:
    """The element as parsed, whose `value_tell` is the file offset of its value;
    nothing in this module touches the value, so it is still raw."""
    element = dataset.get_item(tag, keep_deferred=True)
    if not isinstance(element, RawDataElement):
        raise TypeError(f"pixel data element {tag:08X} was already converted")
    return element


def _native_frames(path: str, dataset: Dataset, tag: int, numbers: Sequence[int], stored_syntax: str) -> list[bytes]:
    element = _raw_element(dataset, tag)
    frame_bits = _frame_length_bits(dataset)
    value_start = element.value_tell
    value_length = element.length
    frames: list[bytes] = []
    with open(path, "rb") as file:
        if stored_syntax == EXPLICIT_VR_BE:
            # Swapped as one value in words of its VR (16 bits for OW, whatever
            # Bits Allocated says, PS3.5 §7.3), as its bulk data and the
            # transcoded instance are, and as DCMTK swaps it: a client gets one
            # answer for the same pixels whichever resource it asks.
            file.seek(value_start)
            value = swapped_words(file.read(value_length), raw_element_vr(element, dataset))

            def stored(first: int, last: int) -> bytes:
                return value[first:last]
        else:

            def stored(first: int, last: int) -> bytes:
                file.seek(value_start + first)
                return file.read(last - first)

        for number in numbers:
            start_bit = (number - 1) * frame_bits
            first_byte, last_byte = start_bit // 8, -(-(start_bit + frame_bits) // 8)
            if last_byte > value_length:
                raise NotFound(f"frame {number} lies beyond the stored pixel data ({value_length} bytes)")
            data = stored(first_byte, last_byte)
            aligned = start_bit % 8 == 0 and frame_bits % 8 == 0
            frames.append(data if aligned else _realign_bits(data, start_bit % 8, frame_bits))
    return frames


def _realign_bits(data: bytes, offset: int, length: int) -> bytes:
    """With Bits Allocated 1, frames are packed back to back, not byte aligned
    (PS3.5 §8.1.1); shift this one to start at bit 0 and clear the bits of the
    next frame after it. DICOM puts the first pixel in the least significant bit."""
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    return np.packbits(bits[offset : offset + length], bitorder="little").tobytes()


def _encapsulated_frames(path: str, dataset: Dataset, numbers: Sequence[int], frame_count: int) -> list[bytes]:
    element = _raw_element(dataset, 0x7FE00010)
    extended_offsets = None
    if _EXTENDED_OFFSET_TABLE in dataset and _EXTENDED_OFFSET_TABLE_LENGTHS in dataset:
        extended_offsets = (dataset[_EXTENDED_OFFSET_TABLE].value, dataset[_EXTENDED_OFFSET_TABLE_LENGTHS].value)
    with open(path, "rb") as file:
        file.seek(element.value_tell)
        try:
            fragments = None if extended_offsets else _fragment_per_frame(file, frame_count)
            if fragments is not None:
                return [_fragment(file, fragments[number - 1]) for number in numbers]
            return [
                encaps.get_frame(file, number - 1, number_of_frames=frame_count, extended_offsets=extended_offsets)
                for number in numbers
            ]
        except ValueError as error:
            raise NotFound(f"cannot locate the frame in the encapsulated pixel data: {error}") from error


def _fragment_per_frame(file: BinaryIO, frame_count: int) -> list[int] | None:
    """Where each frame's one fragment starts, when the Basic Offset Table is
    empty and there are as many fragments as frames (RLE always, JPEG
    usually); None otherwise. `encaps.get_frame` walks every fragment to find each
    such frame: read 16 at a time, as the Pixel Data resource reads them,
    the frames of a 2,000-frame RLE instance took 12.2 s here, 1.4 s so."""
    start = file.tell()
    try:
        if encaps.parse_basic_offsets(file):
            return None  # get_frame seeks straight to each frame
        count, offsets = encaps.parse_fragments(file)
        return offsets if count == frame_count else None
    finally:
        file.seek(start)


def _fragment(file: BinaryIO, offset: int) -> bytes:
    file.seek(offset)
    return next(encaps.generate_fragments(file))


def _decoded_frames(path: str, dataset: Dataset, stored_syntax: str, numbers: Sequence[int]) -> list[bytes]:
    """Frames decoded to native pixels in little-endian byte order.

    Compressed colour is converted to RGB as `Dataset.decompress` does, so a
    frame matches the instance sent transcoded; deflated native data keeps
    its stored colour space.
    """
    source = frame_source(path, stored_syntax)
    raw = stored_syntax == DEFLATED_EXPLICIT_VR_LE
    frames: list[bytes] = []
    for number in numbers:
        array = decode_frame(source, number - 1, stored_syntax, raw=raw)
        if dataset.get("BitsAllocated") == 1:
            frames.append(np.packbits(array.astype(np.uint8).ravel(), bitorder="little").tobytes())
        else:
            frames.append(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    return frames
