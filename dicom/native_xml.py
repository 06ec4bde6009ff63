"""The Native DICOM Model (PS3.19 §A.1): DICOM XML, written from the DICOM JSON model.

Every DICOMweb answer is built as DICOM JSON first (PS3.18 Annex F); the XML
form is a rendering of that, so both say the same thing by construction and
stored metadata needs no second copy.

What the JSON model leaves to this rendering:
- `keyword` names public attributes. A private one whose block has a
  Private Creator (PS3.5 §7.8.1) carries it as `privateCreator`, and its tag
  drops the block number (gggg00ee), so the XML does not depend on which
  block a writer happened to reserve; dcm4che and dcmtk write them so. The
  Private Creator elements themselves stay, as dcmtk keeps them.
- An empty value is a `Value` (or `PersonName`) with no content, so the
  numbering of the values after it holds.
- PN component groups are split into their five components; empty ones,
  and groups with no component, are left out, as dcmtk's
  `dcm2xml --native-format` does.
- XML 1.0 cannot carry most C0 control characters (nor lone surrogates),
  not even as character references: one in a text value is written as
  U+FFFD rather than producing a document no parser accepts.
"""

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from pydicom.datadict import keyword_for_tag

NAMESPACE = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
PN_COMPONENTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")

_NOT_XML_CHARACTERS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# An XML parser turns a raw CR, or CR LF, into LF (XML 1.0 §2.11): CR is sent
# as a character reference to reach the client.
_TEXT_ENTITIES = {"\r": "&#13;"}
_HEAD = f'<?xml version="1.0" encoding="UTF-8"?>\n<NativeDicomModel xmlns="{NAMESPACE}" xml:space="preserve">'


def native_xml(dataset: Mapping[str, Any]) -> bytes:
    """One NativeDicomModel document for a data set in the DICOM JSON model."""
    pieces = [_HEAD]
    _write_attributes(dataset, pieces)
    pieces.append("</NativeDicomModel>\n")
    return "".join(pieces).encode("utf-8")


def _xml_characters(text: str) -> str:
    return _NOT_XML_CHARACTERS.sub("\ufffd", text)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return escape(_xml_characters(value), _TEXT_ENTITIES)
    return str(value)  # IS, DS, US, FD ... numbers: shortest form that reads back the same


@lru_cache(maxsize=8192)
def _keyword(tag: int) -> str:
    # pydicom's lookup parses the tag and tries repeating groups on every call.
    return keyword_for_tag(tag)


def _private_creator(dataset: Mapping[str, Any], tag: int) -> str | None:
    """The creator of a private data element's block (gggg,00xx), when it has one."""
    group, element = tag >> 16, tag & 0xFFFF
    if not group % 2 or element < 0x1000:
        return None
    creator = dataset.get(f"{group:04X}{element >> 8:04X}", {}).get("Value")
    return creator[0] if creator and isinstance(creator[0], str) else None


def _write_attributes(dataset: Mapping[str, Any], pieces: list[str]) -> None:
    # The JSON model already has its keys in ascending tag order (PS3.18 §F.2.1.1).
    for key, attribute in dataset.items():
        tag = int(key, 16)
        vr = attribute.get("vr", "UN")
        naming = ""
        if tag >> 16 & 1:
            creator = _private_creator(dataset, tag)
            if creator is not None:
                key = f"{tag & 0xFFFF00FF:08X}"
                naming = f" privateCreator={quoteattr(_xml_characters(creator))}"
        elif keyword := _keyword(tag):
            naming = f' keyword="{keyword}"'
        pieces.append(f'\n<DicomAttribute tag="{key}" vr="{vr}"{naming}>')
        _write_content(vr, attribute, pieces)
        pieces.append("</DicomAttribute>")


def _write_content(vr: str, attribute: Mapping[str, Any], pieces: list[str]) -> None:
    if "BulkDataURI" in attribute:
        pieces.append(f"<BulkData uri={quoteattr(attribute['BulkDataURI'])}/>")
    elif "InlineBinary" in attribute:
        pieces.append(f"<InlineBinary>{attribute['InlineBinary']}</InlineBinary>")
    elif vr == "SQ":
        for number, item in enumerate(attribute.get("Value", ()), start=1):
            pieces.append(f'\n<Item number="{number}">')
            _write_attributes(item or {}, pieces)
            pieces.append("</Item>")
    elif vr == "PN":
        for number, name in enumerate(attribute.get("Value", ()), start=1):
            pieces.append(f'<PersonName number="{number}">')
            _write_person_name(name or {}, pieces)
            pieces.append("</PersonName>")
    else:
        pieces.extend(_values(attribute.get("Value", ())))


def _values(values: Iterable[Any]) -> Iterable[str]:
    for number, value in enumerate(values, start=1):
        yield f'<Value number="{number}">{"" if value is None else _text(value)}</Value>'


def _write_person_name(name: Mapping[str, str], pieces: list[str]) -> None:
    for group in PN_GROUPS:
        components = name.get(group, "").split("^")
        if not any(components):
            continue
        # More than five components is malformed; the excess stays in the
        # suffix rather than being dropped.
        components[4:] = ["^".join(components[4:])] if len(components) > 4 else []
        pieces.append(f"<{group}>")
        for component, text in zip(PN_COMPONENTS, components):
            if text:
                pieces.append(f"<{component}>{_text(text)}</{component}>")
        pieces.append(f"</{group}>")
