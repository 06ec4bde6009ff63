"""C-FIND identifiers (PS3.4 C.4.1, C.6) as QIDO-RS queries, and matches as C-FIND responses.

A C-FIND and a QIDO-RS search match by the same rules (PS3.4 C.2.2.2, which
PS3.18 10.6 takes over), so an identifier becomes the query parameters a
QIDO-RS client would send, and `dicom.matching.parse_qido_query` turns those
into conditions: one parser, one set of matching rules for both. What
differs is only spelling: a list of UIDs is backslash-separated in an
identifier and comma-separated in a URL; a sequence key with an item is
`Sequence.Item=value`; an empty key is a return key (QIDO's includefield).
"""

from collections.abc import Sequence

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicom.errors import InvalidRequest

# Query/Retrieve Level (0008,0052) values (PS3.4 C.6.1.1, C.6.2.1) and the QIDO-RS level each searches.
FIND_LEVELS = {"STUDY": "study", "SERIES": "series", "IMAGE": "instance"}
# The unique key of each level (PS3.4 C.6.2.1.2): a response carries those of its level and the levels above.
_UNIQUE_KEYS = {"study": (0x0020000D,), "series": (0x0020000D, 0x0020000E),
                "instance": (0x0020000D, 0x0020000E, 0x00080018)}
_KEYWORDS = {0x0020000D: "StudyInstanceUID", 0x0020000E: "SeriesInstanceUID", 0x00080018: "SOPInstanceUID"}
_QUERY_RETRIEVE_LEVEL = 0x00080052
_SPECIFIC_CHARACTER_SET = 0x00080005
# Not keys: how the identifier is encoded, and which level it queries.
_NOT_KEYS = frozenset((_QUERY_RETRIEVE_LEVEL, _SPECIFIC_CHARACTER_SET))


def find_level(identifier: Dataset) -> str:
    """The QIDO-RS level an identifier queries; InvalidRequest when it names none this server answers."""
    level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
    if level not in FIND_LEVELS:
        raise InvalidRequest(f"Query/Retrieve Level {level!r} is not one of {', '.join(FIND_LEVELS)}")
    return FIND_LEVELS[level]


def retrieve_level(identifier: Dataset) -> str:
    """The QIDO-RS level a C-GET identifier retrieves at. A retrieval names
    what it wants (PS3.4 C.4.3.1.3.1, hierarchical): the unique key of each
    level above its own, one UID each, and of its own level one UID or a list
    of them; InvalidRequest for an empty key or a wildcard, which would
    otherwise retrieve every instance they match (a C-GET of no keys: the
    whole archive)."""
    level = find_level(identifier)
    *above, own = _UNIQUE_KEYS[level]
    for tag in (*above, own):
        element = identifier.get(tag)
        keyword = _KEYWORDS[tag]
        text = "" if element is None else _text(element)
        values = text.split(",")
        if not text or any(not value or "*" in value or "?" in value for value in values):
            raise InvalidRequest(f"a C-GET at {identifier.QueryRetrieveLevel} names its {keyword} and those of"
                                 f" the levels above it by UID, not {text!r}")
        if tag != own and len(values) > 1:
            raise InvalidRequest(f"a C-GET at {identifier.QueryRetrieveLevel} names one {keyword}, not {len(values)}")
    return level


def qido_parameters(identifier: Dataset) -> list[tuple[str, str]]:
    """The identifier's keys as QIDO-RS query parameters (name, value), in tag order."""
    parameters: list[tuple[str, str]] = []
    for element in identifier:
        if element.tag in _NOT_KEYS or element.tag.group in (0x0000, 0x0002):
            continue
        name = _name(element)
        if element.VR == "SQ":
            parameters += _sequence_parameters(name, element)
        else:
            parameters.append((name, _text(element)))
    return parameters


def _sequence_parameters(name: str, element: DataElement) -> list[tuple[str, str]]:
    """Sequence matching (PS3.4 C.2.2.2.6): the keys of its one item, or the whole sequence returned."""
    items: Sequence[Dataset] = element.value or []
    if len(items) > 1:
        raise InvalidRequest(f"the sequence key {name} holds {len(items)} items; a C-FIND key holds at most one")
    matched = [(f"{name}.{_name(item)}", _text(item)) for item in (items[0] if items else []) if _text(item)]
    return matched or [(name, "")]


def _name(element: DataElement) -> str:
    return element.keyword or f"{element.tag:08X}"


def _text(element: DataElement) -> str:
    """The value as a query parameter spells it: a list of values comma-separated."""
    value = element.value
    if value is None or value == "":
        return ""
    values = value if isinstance(value, MultiValue | list) else [value]
    return ",".join(str(item) for item in values)


def response_identifier(identifier: Dataset, level: str, match: Dataset) -> Dataset:
    """A pending response's identifier (PS3.4 C.4.1.1.3.2): each key asked
    for, with the match's value or empty when it has none, and the unique
    keys of the level and those above it. Text comes decoded from DICOM
    JSON: it goes out in UTF-8."""
    response = Dataset()
    response.SpecificCharacterSet = "ISO_IR 192"
    response.QueryRetrieveLevel = identifier.QueryRetrieveLevel
    for element in identifier:
        if element.tag in _NOT_KEYS or element.tag.group in (0x0000, 0x0002):
            continue
        response[element.tag] = match[element.tag] if element.tag in match else DataElement(
            element.tag, element.VR, [] if element.VR == "SQ" else None)
    for tag in _UNIQUE_KEYS[level]:
        if tag in match:
            response[tag] = match[tag]
    return response
