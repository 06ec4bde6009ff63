"""A DICOM JSON data set a client sends (PS3.18 Annex F), checked before it is
kept: every attribute as the model writes it, so that what the server later
answers with (in JSON, or in XML written from it) is what the model allows.

pydicom's reader takes a person name as a plain string, a VR it does not
know, a group length or a NUL inside text, and fails on a sequence item that
is no object: none of that may be stored and served back.
"""

import base64
import binascii
import re
from typing import Any

from pydicom.datadict import dictionary_VR

from dicom.errors import InvalidRequest

_KEY = re.compile(r"[0-9A-F]{8}")
_INTEGER_VRS = frozenset(("SL", "SS", "SV", "UL", "US", "UV"))
_FLOAT_VRS = frozenset(("FD", "FL"))
_NUMBER_STRING_VRS = frozenset(("DS", "IS"))  # JSON numbers; a string keeps a value as written
_BINARY_VRS = frozenset(("OB", "OD", "OF", "OL", "OV", "OW", "UN"))
_TEXT_VRS = frozenset(("AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"))
_PERSON_NAME_GROUPS = frozenset(("Alphabetic", "Ideographic", "Phonetic"))
_VRS = _INTEGER_VRS | _FLOAT_VRS | _NUMBER_STRING_VRS | _BINARY_VRS | _TEXT_VRS | {"AT", "PN", "SQ"}
# C0 controls that text VRs do not allow (PS3.5 §6.1.3: only ESC, and LF, FF, CR and TAB in texts).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f]")
_DEPTH_LIMIT = 32


def require_dicom_json(body: Any, depth: int = 0) -> dict[str, Any]:
    """`body` itself once it is one DICOM JSON data set; InvalidRequest names
    the first attribute that is not as Annex F writes it."""
    if not isinstance(body, dict):
        raise InvalidRequest("a DICOM JSON data set is an object of attributes")
    if depth > _DEPTH_LIMIT:
        raise InvalidRequest(f"sequences nest deeper than {_DEPTH_LIMIT} levels")
    for key, element in body.items():
        _check_attribute(key, element, depth)
    return body


def _check_attribute(key: str, element: Any, depth: int) -> None:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise InvalidRequest(f"{str(key)[:20]!r} is not a DICOM JSON attribute key (8 upper-case hex digits)")
    tag = int(key, 16)
    if tag & 0xFFFF == 0:
        raise InvalidRequest(f"attribute {key}: group lengths are not part of the DICOM JSON model (PS3.18 F.2)")
    if not isinstance(element, dict) or not isinstance(element.get("vr"), str):
        raise InvalidRequest(f"attribute {key}: a DICOM JSON attribute is an object with a 'vr'")
    vr = element["vr"]
    if vr not in _VRS:
        raise InvalidRequest(f"attribute {key}: {vr[:8]!r} is not a value representation")
    expected = _dictionary_vrs(tag)
    if expected and vr not in expected:
        raise InvalidRequest(f"attribute {key} has the VR {' or '.join(sorted(expected))}, not {vr}")
    forms = [name for name in ("Value", "InlineBinary", "BulkDataURI") if name in element]
    if len(forms) > 1:
        raise InvalidRequest(f"attribute {key}: one of Value, InlineBinary and BulkDataURI, not {' and '.join(forms)}")
    if "BulkDataURI" in element:
        raise InvalidRequest(f"attribute {key}: send the value inline; this request takes no bulk data")
    if "InlineBinary" in element:
        _check_inline_binary(key, vr, element["InlineBinary"])
    elif "Value" in element:
        values = element["Value"]
        if not isinstance(values, list):
            raise InvalidRequest(f"attribute {key}: 'Value' must be an array")
        for value in values:
            _check_value(key, vr, value, depth)


def _dictionary_vrs(tag: int) -> frozenset[str]:
    """The VRs the data dictionary allows a public attribute; none for a private one."""
    if (tag >> 16) % 2:
        return frozenset()
    try:
        return frozenset(part.strip() for part in dictionary_VR(tag).split(" or "))
    except KeyError:
        return frozenset()


def _check_inline_binary(key: str, vr: str, text: Any) -> None:
    if vr not in _BINARY_VRS:
        raise InvalidRequest(f"attribute {key}: InlineBinary is for binary VRs, not {vr}")
    try:
        base64.b64decode(text if isinstance(text, str) else b"!", validate=True)
    except binascii.Error:
        raise InvalidRequest(f"attribute {key}: InlineBinary must be base64") from None


def _check_value(key: str, vr: str, value: Any, depth: int) -> None:
    if value is None and vr != "SQ":
        return  # an empty value among others (PS3.18 F.2.5)
    if vr == "SQ":
        if not isinstance(value, dict):
            _refuse(key, "data sets (objects)")
        require_dicom_json(value, depth + 1)
    elif vr == "PN":
        _check_person_name(key, value)
    elif vr == "AT":
        if not (isinstance(value, str) and _KEY.fullmatch(value)):
            _refuse(key, "tags of 8 upper-case hex digits")
    elif vr in _INTEGER_VRS:
        if isinstance(value, bool) or not isinstance(value, int):
            _refuse(key, "whole JSON numbers")
    elif vr in _FLOAT_VRS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            _refuse(key, "JSON numbers")
    elif vr in _NUMBER_STRING_VRS:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            _refuse(key, "JSON numbers")
        if isinstance(value, str):
            _check_text(key, value)
    elif vr in _BINARY_VRS:
        raise InvalidRequest(f"attribute {key}: a {vr} value is sent as InlineBinary, not in 'Value'")
    else:
        if not isinstance(value, str):
            _refuse(key, "JSON strings")
        _check_text(key, value)


def _check_person_name(key: str, value: Any) -> None:
    if not isinstance(value, dict) or not set(value) <= _PERSON_NAME_GROUPS:
        raise InvalidRequest(
            f"attribute {key}: a person name is an object of Alphabetic, Ideographic and Phonetic (PS3.18 F.2.2)"
        )
    for group in value.values():
        if not isinstance(group, str):
            _refuse(key, "person names whose groups are strings")
        _check_text(key, group)


def _check_text(key: str, text: str) -> None:
    if _CONTROL.search(text):
        raise InvalidRequest(f"attribute {key}: a control character (such as NUL) is in no DICOM text")


def _refuse(key: str, expected: str) -> None:
    raise InvalidRequest(f"attribute {key}: the values of its VR are {expected}")
