"""Bulk data addressed by a tag path, and the URL form of that path.

A tag path names one element: tags interleaved with 0-based item indexes,
e.g. (0x7FE00010,) or (0x00540016, 0, 0x00181072). Its URL form joins the
parts with slashes, tags as 8 uppercase hex digits: "00540016/0/00181072".
"""

import re

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from dicom.errors import InvalidRequest, NotFound
from dicom.json_model import (
    MAX_SEQUENCE_DEPTH,
    TagPath,
    has_bulk_data_uri,
    load_raw_element,
    raw_element_vr,
    read_dataset_for_metadata,
)
from dicom.transfer_syntax import swapped_words

_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_INDEX = re.compile(r"^(0|[1-9][0-9]{0,8})$")


def format_tag_path(tag_path: TagPath) -> str:
    parts = [f"{part:08X}" if position % 2 == 0 else str(part) for position, part in enumerate(tag_path)]
    return "/".join(parts)


def parse_tag_path(text: str) -> TagPath:
    parts = text.strip("/").split("/")
    if len(parts) % 2 == 0 or len(parts) > 2 * MAX_SEQUENCE_DEPTH + 1:
        raise InvalidRequest(f"bulk data path {text[:80]!r} must be tags and item indexes alternating, ending in a tag")
    tag_path: list[int] = []
    for position, part in enumerate(parts):
        pattern = _TAG if position % 2 == 0 else _INDEX
        if not pattern.match(part):
            what = "a tag of 8 hex digits" if position % 2 == 0 else "an item index"
            raise InvalidRequest(f"bulk data path {text[:80]!r}: {part[:20]!r} is not {what}")
        tag_path.append(int(part, 16) if position % 2 == 0 else int(part))
    return tuple(tag_path)


def read_bulk_data(path: str, tag_path: TagPath) -> bytes:
    """The value bytes of an element that the metadata names by a BulkDataURI
    (any other is no bulk data); encapsulated Pixel Data stays encapsulated.

    Words are little endian whatever the file's byte order: uncompressed bulk
    data is sent as in Explicit VR Little Endian (PS3.18 §8.7.3.3.1), which is
    also what the frames of the same pixel data are sent as.
    """
    if not tag_path or len(tag_path) % 2 == 0:
        raise InvalidRequest("a bulk data path must end in a tag")
    root = ds = read_dataset_for_metadata(path)
    for tag, index in zip(tag_path[0:-1:2], tag_path[1::2]):
        ds = _item(ds, tag, index)
    elem = load_raw_element(ds, tag_path[-1])
    if elem is None:
        raise NotFound(f"no bulk data at {format_tag_path(tag_path)}")
    if not has_bulk_data_uri(root, ds, tag_path[-1]):
        raise NotFound(f"the element at {format_tag_path(tag_path)} is not bulk data: the metadata holds its value")
    value: bytes = elem.value
    if ds.original_encoding[1] is False:  # big endian
        vr = raw_element_vr(elem, ds) if isinstance(elem, RawDataElement) else elem.VR
        return swapped_words(value, str(vr))
    return value


def _item(ds: Dataset, tag: int, index: int) -> Dataset:
    if tag not in ds:
        raise NotFound(f"no sequence {tag:08X}")
    sequence = ds[tag]
    if sequence.VR != "SQ":
        raise NotFound(f"{tag:08X} is not a sequence")
    if index >= len(sequence.value):
        raise NotFound(f"sequence {tag:08X} has no item {index}")
    item: Dataset = sequence.value[index]
    return item
