"""DICOM JSON model (PS3.18 Annex F) written from a pydicom Dataset.

Not pydicom's `to_json_dict`: that one inlines every binary value and keeps
group-length tags. Here binary values above a threshold become BulkDataURIs,
decided from the element's length alone, so a data set read with
`read_dataset_for_metadata` never has its pixel data loaded to build metadata.

Choices where Annex F is silent:
- FL/FD NaN and infinities cannot be JSON numbers; they are written as the
  strings "NaN", "Infinity" and "-Infinity" (the spelling JavaScript uses).
- IS/DS values that do not parse as finite numbers keep their original text.
- An element pydicom cannot convert keeps its raw text (string VRs) or is
  written without a Value (other VRs) rather than failing the whole response.
"""

import base64
import logging
import math
import os
import re
import struct
import sys
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

import pydicom
from pydicom import hooks
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_deferred_data_element
from pydicom.multival import MultiValue
from pydicom.valuerep import TEXT_VR_DELIMS, PersonName

from dicom.attributes import is_attribute
from dicom.errors import InvalidDicom
from dicom.transfer_syntax import swapped_words

logger = logging.getLogger(__name__)

Source = str | os.PathLike[str] | BinaryIO
TagPath = tuple[int, ...]
BulkDataUriFactory = Callable[[TagPath], str]

# Binary values longer than this many bytes are named by a BulkDataURI rather
# than sent inline.
INLINE_THRESHOLD = 1024
# Values above this many bytes stay on disk until asked for; it is above the
# inline threshold so anything deferred is a bulk data candidate.
DEFER_SIZE = 2048
# Sequences nested deeper than this do not occur in real objects. An object
# nesting deeper is refused as one that cannot be understood: its JSON would
# exceed what JSON encoders take (orjson stops at 255 levels, three a
# sequence), and the bulk data of every element it can hold stays reachable.
MAX_SEQUENCE_DEPTH = 64
UNDEFINED_LENGTH = 0xFFFFFFFF

# PS3.18 Table F.2.3-1: VRs whose value is InlineBinary or BulkDataURI.
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
# PS3.5 §6.2: string VRs that hold a single value, so a backslash is text.
SINGLE_VALUED_STRING_VRS = frozenset({"LT", "ST", "UT", "UR"})
STRING_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DT", "LO", "SH", "TM", "UC", "UI"}
) | SINGLE_VALUED_STRING_VRS
# PS3.18 Table F.2.3-1: PN component groups, in the order of PS3.5 §6.2.1.
PN_COMPONENTS = ("Alphabetic", "Ideographic", "Phonetic")

# PS3.5 §6.1.2.5.3: ISO 2022 escape state resets at these, and at the value
# delimiter; PN also at its component and group delimiters.
_TEXT_DELIMITERS = TEXT_VR_DELIMS | {0x5C}
_PN_DELIMITERS = _TEXT_DELIMITERS | {0x5E, 0x3D}

# What pydicom raises on data that is not DICOM or is cut short; OSError (a
# missing file) is deliberately not among them.
_READ_ERRORS = (
    InvalidDicomError,
    EOFError,
    ValueError,
    KeyError,
    TypeError,
    OverflowError,
    IndexError,
    AttributeError,
    struct.error,
)

_INTEGER_TEXT = re.compile(r"^[+-]?[0-9]+$")
# Beyond 2**53 a JSON number loses precision in JavaScript clients.
_MAX_SAFE_INTEGER = 2**53


def read_dataset_for_metadata(path_or_file: Source) -> Dataset:
    """Read a Part 10 file (or a bare data set without preamble) leaving large values on disk.

    A file object must stay open while the data set is used: deferred values
    are read from it on demand.
    """
    start = 0 if _is_path(path_or_file) else path_or_file.tell()  # type: ignore[union-attr]
    try:
        try:
            ds = pydicom.dcmread(path_or_file, defer_size=DEFER_SIZE)
        except InvalidDicomError:
            # Files written without preamble and meta header still occur;
            # `force` is only used once the first bytes look like an element.
            if not _starts_like_dataset(path_or_file, start):
                raise
            ds = pydicom.dcmread(path_or_file, defer_size=DEFER_SIZE, force=True)
        _check_not_truncated(ds, path_or_file)
    except InvalidDicom:
        raise
    except _READ_ERRORS as exc:
        raise InvalidDicom(f"not a readable DICOM data set: {exc}") from exc
    if len(ds) == 0:
        raise InvalidDicom("not a DICOM data set: no data elements")
    return ds


def _is_path(path_or_file: Source) -> bool:
    return isinstance(path_or_file, (str, os.PathLike))


def _open_source(path_or_file: Source) -> tuple[BinaryIO, bool]:
    if _is_path(path_or_file):
        return open(path_or_file, "rb"), True  # type: ignore[arg-type]
    return path_or_file, False  # type: ignore[return-value]


def _starts_like_dataset(path_or_file: Source, start: int) -> bool:
    """True when the data at `start` begins with a plausible element; leaves a file object there."""
    fp, owned = _open_source(path_or_file)
    try:
        fp.seek(start)
        head = fp.read(8)
        fp.seek(start)
    finally:
        if owned:
            fp.close()
    if len(head) < 8:
        return False
    # A data set begins with its lowest tag: command, meta or group 0008 in practice.
    return any(int.from_bytes(head[0:2], order) in (0x0000, 0x0002, 0x0008) for order in ("little", "big"))


def _check_not_truncated(ds: Dataset, path_or_file: Source) -> None:
    """Deferred values are skipped with a seek, which does not notice a file cut short."""
    # Offsets of a deflated data set point into pydicom's inflated buffer, not the file.
    fp, owned = _open_source(_deferred_source(ds) if _buffer_is_open(ds) else path_or_file)
    try:
        here = fp.tell()
        size = fp.seek(0, 2)
        fp.seek(here)
    finally:
        if owned:
            fp.close()
    for tag in ds.keys():
        elem = ds.get_item(tag, keep_deferred=True)
        if not isinstance(elem, RawDataElement) or elem.length == UNDEFINED_LENGTH:
            continue
        if elem.value_tell + elem.length > size or (elem.value is not None and len(elem.value) < elem.length):
            raise InvalidDicom(f"truncated DICOM file: element ({tag >> 16:04X},{tag & 0xFFFF:04X}) runs past the end")


def dataset_to_json(
    ds: Dataset,
    bulk_data_uri: BulkDataUriFactory | None = None,
    inline_threshold: int = INLINE_THRESHOLD,
) -> dict[str, Any]:
    """One data set in the DICOM JSON model: its attributes (`is_attribute`), so no
    file meta, group length, command or delimitation element."""
    return _Writer(ds, bulk_data_uri, inline_threshold).dataset(ds, ())


def has_bulk_data_uri(root: Dataset, ds: Dataset, tag: int) -> bool:
    """Whether the metadata of `root` names the value of element `tag` of `ds`
    (`root` or an item nested in it) by a BulkDataURI: decided by the writer
    itself, so bulk data is exactly what the metadata offers."""
    if not is_attribute(tag):
        return False
    element = _Writer(root, lambda tag_path: "", INLINE_THRESHOLD).element(ds, tag, (tag,), _fast_encoding(ds))
    return "BulkDataURI" in element


class _Writer:
    def __init__(self, root: Dataset, bulk_data_uri: BulkDataUriFactory | None, inline_threshold: int) -> None:
        self.root = root
        self.bulk_data_uri = bulk_data_uri
        self.inline_threshold = inline_threshold

    def dataset(self, ds: Dataset, path: TagPath) -> dict[str, Any]:
        if len(path) > 2 * MAX_SEQUENCE_DEPTH:
            raise InvalidDicom(f"sequences nest more than {MAX_SEQUENCE_DEPTH} deep")
        out: dict[str, Any] = {}
        # Once per data set: pydicom works the character set out again at every asking.
        encoding = _fast_encoding(ds)
        for tag in sorted(ds.keys()):
            if not is_attribute(tag):
                continue
            out[f"{tag:08X}"] = self.element(ds, tag, path + (int(tag),), encoding)
        return out

    def element(self, ds: Dataset, tag: int, path: TagPath, encoding: str | None) -> dict[str, Any]:
        """`encoding`: the data set's text encoding for the fast path (`_fast_encoding`)."""
        elem = ds.get_item(tag, keep_deferred=True)
        fast = _fast_element(ds, elem, encoding)
        if fast is not None:
            return fast
        if isinstance(elem, RawDataElement) and elem.value is None and elem.length:
            vr = _resolve_vr(raw_element_vr(elem, ds), ds, value_is_bytes=True)
            if vr in BINARY_VRS:
                # Only the length is needed to choose BulkDataURI: the value stays on disk.
                return self.binary(vr, ds, tag, path, elem.length)
        try:
            converted: DataElement = ds[tag]
        except Exception as exc:  # noqa: BLE001 - one bad element must not sink the response
            return self.unconvertible(ds, elem, exc)
        value = converted.value
        vr = _resolve_vr(converted.VR, ds, value_is_bytes=isinstance(value, bytes))
        if vr in BINARY_VRS:
            length = UNDEFINED_LENGTH if converted.is_undefined_length else len(value or b"")
            return self.binary(vr, ds, tag, path, length)
        if vr == "SQ":
            items = [self.dataset(item, path + (index,)) for index, item in enumerate(value or [])]
            return _with_value(vr, items)
        return _with_value(vr, _plain_values(vr, value))

    def binary(self, vr: str, ds: Dataset, tag: int, path: TagPath, length: int) -> dict[str, Any]:
        if length == 0:
            return {"vr": vr}
        if length == UNDEFINED_LENGTH:
            # Encapsulated pixel data is OB whatever VR its writer gave it (PS3.5 §A.4).
            vr = "OB"
        if self.bulk_data_uri is not None and (length == UNDEFINED_LENGTH or length > self.inline_threshold):
            return {"vr": vr, "BulkDataURI": self.bulk_data_uri(path)}
        value = ds[tag].value or b""
        if self.root.original_encoding[1] is False:
            # Binary values are sent as in Explicit VR Little Endian, inline as in bulk data (PS3.18 §8.7.3.3.1).
            value = swapped_words(value, vr)
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}

    def unconvertible(self, ds: Dataset, elem: DataElement | RawDataElement, exc: Exception) -> dict[str, Any]:
        logger.warning("keeping raw value of (%08X) that pydicom cannot convert: %s", int(elem.tag), exc)
        if not isinstance(elem, RawDataElement):
            return {"vr": elem.VR}
        try:
            vr = raw_element_vr(elem, ds)
        except Exception:  # noqa: BLE001 - the VR lookup itself may be what failed
            vr = "UN"
        if vr in BINARY_VRS or vr not in STRING_VRS | {"PN", "IS", "DS"}:
            return {"vr": vr}
        raw = (load_raw_element(ds, elem.tag) or elem).value
        encodings = convert_encodings(self.root.get("SpecificCharacterSet") or "ISO_IR 6")
        text = decode_bytes(raw or b"", encodings, _PN_DELIMITERS if vr == "PN" else _TEXT_DELIMITERS)
        parts = [text] if vr in SINGLE_VALUED_STRING_VRS else text.split("\\")
        return _with_value(vr, _plain_values(vr, [part.strip(" \x00") for part in parts]))


# The fast path below turns raw bytes into JSON values directly, skipping
# pydicom's per-element conversion, which is most of the cost of building
# metadata at ingest. It covers the common case (little endian, a single-byte
# or UTF-8 character set, a VR known without ambiguity); everything else takes
# the general path above. tests/test_json_model.py holds the two to the same
# output on every bundled file.
_FAST_ENCODINGS = {"iso8859": "latin-1", "latin_1": "latin-1", "UTF8": "utf-8"}
_FAST_TEXT_VRS = STRING_VRS | {"PN", "IS", "DS"}
# memoryview formats of the binary number VRs (PS3.5 Table 6.2-1), little endian.
_NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
_LITTLE_ENDIAN_HOST = sys.byteorder == "little"


def _fast_element(
    ds: Dataset, elem: DataElement | RawDataElement | None, encoding: str | None,
) -> dict[str, Any] | None:
    if not isinstance(elem, RawDataElement) or elem.value is None or not _LITTLE_ENDIAN_HOST:
        return None
    if not ds.original_encoding[1]:
        return None
    vr = elem.VR or _dictionary_vr(elem.tag)
    if vr is None:
        return None
    raw: bytes = elem.value
    if vr in _FAST_TEXT_VRS:
        if encoding is None:
            return None
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError:
            return None
        if vr in SINGLE_VALUED_STRING_VRS:
            text = text.rstrip(" \x00")
            parts = [text] if text else []
        else:
            text = text.rstrip(" \x00")
            parts = [part.strip(" \x00") for part in text.split("\\")] if text else []
        return _with_value(vr, _plain_values(vr, parts))
    number_format = _NUMBER_FORMATS.get(vr)
    if number_format is not None or vr == "AT":
        width = 2 if vr == "AT" else struct.calcsize(number_format)
        if len(raw) % width or (vr == "AT" and len(raw) % 4):
            return None
        numbers = memoryview(raw).cast("H" if vr == "AT" else number_format).tolist()
        if vr == "AT":
            return _with_value(vr, [f"{group:04X}{element:04X}" for group, element in zip(numbers[::2], numbers[1::2])])
        return _with_value(vr, _plain_values(vr, numbers))
    return None


def _fast_encoding(ds: Dataset) -> str | None:
    encodings = getattr(ds, "_character_set", None)
    if not encodings or len(encodings) != 1:
        return None
    return _FAST_ENCODINGS.get(encodings[0])


def _dictionary_vr(tag: int) -> str | None:
    if tag >> 16 & 1:  # private: only the file's own explicit VR is trustworthy
        return None
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return None if " or " in vr else vr


def load_raw_element(ds: Dataset, tag: int) -> DataElement | RawDataElement | None:
    """The element with a deferred value read in but not converted, so never validated."""
    elem = ds.get_item(tag, keep_deferred=True)
    if isinstance(elem, RawDataElement) and elem.value is None and elem.length:
        return read_deferred_data_element(ds.fileobj_type, _deferred_source(ds), ds.timestamp, elem)
    return elem


def _buffer_is_open(ds: Dataset) -> bool:
    return ds.buffer is not None and not getattr(ds.buffer, "closed", False)


def _deferred_source(ds: Dataset) -> Any:
    # Same preference as pydicom's own deferred read: an open buffer, else the file name.
    return ds.buffer if _buffer_is_open(ds) else ds.filename


def raw_element_vr(elem: RawDataElement, ds: Dataset) -> str:
    """The VR pydicom would give the element (looked up for Implicit VR), without converting it."""
    data: dict[str, Any] = {}
    hooks.raw_element_vr(elem, data, encoding=None, ds=ds)
    return str(data["VR"])


def _resolve_vr(vr: str, ds: Dataset, value_is_bytes: bool) -> str:
    """Pick one VR where pydicom left an ambiguous one such as 'US or SS' or 'OB or OW'."""
    if " or " not in vr:
        return vr
    choices = vr.split(" or ")
    if value_is_bytes:
        # Undecided raw bytes are written as words, as Implicit VR Little Endian does (PS3.5 §A.1).
        for binary in ("OW", "OB"):
            if binary in choices:
                return binary
    if "SS" in choices and ds.get("PixelRepresentation") == 1:
        return "SS"
    return choices[0]


def _with_value(vr: str, values: list[Any]) -> dict[str, Any]:
    return {"vr": vr, "Value": values} if values else {"vr": vr}


def _as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, (MultiValue, list, tuple)):
        return list(value)
    return [value]


def _plain_values(vr: str, value: Any) -> list[Any]:
    values = _as_list(value)
    if vr == "PN":
        return [_person_name(v) for v in values]
    if vr in ("IS", "DS"):
        return [_decimal_or_text(v, integer=vr == "IS") for v in values]
    if vr == "AT":
        return [f"{int(v):08X}" for v in values]
    if vr in ("FL", "FD"):
        return [_float(float(v)) for v in values]
    if vr in ("US", "SS", "UL", "SL", "SV", "UV"):
        return [int(v) for v in values]
    # Annex F.2.5: an empty component of a multi-valued string is null.
    # Padding of each value is insignificant except in the single-valued
    # text VRs, where only trailing spaces are (PS3.5 Table 6.2-1).
    if vr in SINGLE_VALUED_STRING_VRS:
        return [str(v) if v not in (None, "") else None for v in values]
    stripped = [str(v).strip(" ") if v is not None else "" for v in values]
    return [v or None for v in stripped]


def _person_name(value: Any) -> dict[str, str] | None:
    if isinstance(value, PersonName):
        groups: Sequence[str] = value.components
    else:
        groups = str(value or "").split("=")
    name = {key: group for key, group in zip(PN_COMPONENTS, groups) if group}
    return name or None


def _decimal_or_text(value: Any, integer: bool) -> int | float | str | None:
    # pydicom's IS/DS keep the text they were read from; parse that, not the float.
    text = str(getattr(value, "original_string", None) or value).strip()
    if text == "":
        return None
    if _INTEGER_TEXT.match(text):
        number = int(text)
        return number if abs(number) < _MAX_SAFE_INTEGER else text
    try:
        parsed = float(text)
    except ValueError:
        return text
    if not math.isfinite(parsed):
        return text
    if integer:
        # Legacy IS values such as "5.0" are still whole numbers; "5.5" is not.
        return int(parsed) if parsed.is_integer() and abs(parsed) < _MAX_SAFE_INTEGER else text
    return parsed


def _float(value: float) -> float | str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value
