"""FHIR XML (R4 xml.html) read into FHIR JSON (json.html), the form this
server checks and stores, so that an XML body takes the same path as a JSON
one: the same validation, the same stored bytes; and stored JSON written as
XML for the answers that ask for it.

The R4 models say which elements repeat, which type each has and in which
order they come. The reader is strict where a lenient one would lose data
without a word: an element it does not know, one that may appear once
appearing twice, text where FHIR has none, or an attribute it does not read
is an error, not skipped. A DTD is refused outright (no entity can reach the
file system or the network). The writer writes each value as stored, a
decimal's digits and a time's zone included.
"""

import copy
import re
from functools import cache
from itertools import zip_longest
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.resource import Resource
from lxml import etree

from fhir_mappings.elements import ELEMENT, Kind, element_kinds
from fhir_mappings.errors import InvalidRequest
from fhir_mappings.fhir_json import WrittenDecimal

FHIR_NS = "http://hl7.org/fhir"
XHTML_NS = "http://www.w3.org/1999/xhtml"
_XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"  # xsi:schemaLocation, which examples carry: no data

# JSON types of the primitives that are not strings (R4 json.html#primitive).
_INTEGERS = frozenset(("integer", "positiveInt", "unsignedInt"))
_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]*)")  # datatypes.html#integer
_DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")  # datatypes.html#decimal


def loads(raw: bytes) -> dict[str, Any]:
    """The resource an XML body holds, as FHIR JSON; InvalidRequest (400) for
    XML that is not well-formed or not FHIR."""
    try:
        root = etree.fromstring(raw, _parser(remove_comments=True, remove_pis=True))
    except etree.XMLSyntaxError as error:
        raise InvalidRequest(f"the body is not well-formed XML: {error}") from error
    if root.getroottree().docinfo.doctype:
        raise InvalidRequest("the body declares a DTD, which FHIR XML may not (xml.html)")
    return _resource(root, None)


def dumps(resource: dict[str, Any], pretty: bool = False) -> bytes:
    """A stored resource (FHIR JSON, as `fhir_json.loads` reads it) as FHIR
    XML. ValueError for what XML cannot carry (a narrative that is not XML,
    a character XML has not); SyntaxError is lxml's XMLSyntaxError."""
    root = _resource_element(resource)
    if pretty:
        _indent_around_narratives(root)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")  # type: ignore[no-any-return]


def _indent_around_narratives(root: Any) -> None:
    """Indented for reading, but not inside a narrative, where whitespace is
    content: between inline elements, in a <pre>."""
    narratives = [
        (div, div.text, list(div)) for div in root.iter(f"{{{XHTML_NS}}}div")
        if etree.QName(div.getparent()).namespace == FHIR_NS
    ]
    for div, _, children in narratives:
        div.text = None
        for child in children:
            div.remove(child)  # its tail goes with it
    etree.indent(root, space="  ")
    for div, text, children in narratives:
        div.text = text
        div.extend(children)


def _resource_element(resource: dict[str, Any]) -> Any:
    name = resource["resourceType"]
    element = etree.Element(f"{{{FHIR_NS}}}{name}", nsmap={None: FHIR_NS})
    _write(element, resource, get_fhir_model_class(name))
    return element


def _write(element: Any, document: dict[str, Any], model: type) -> None:
    """`document`'s members as `element`'s attributes and children, in the order FHIR gives them."""
    is_resource, is_extension = _is_resource_or_extension(model)
    kinds = element_kinds(model)
    unknown = {key.removeprefix("_") for key in document} - kinds.keys() - {"resourceType"}
    if unknown:
        raise ValueError(f"{model.get_resource_type()} has no element {sorted(unknown)[0]!r}")  # type: ignore[attr-defined]
    for name in _sequence(model):
        value, extra = document.get(name), document.get(f"_{name}")
        if value is None and extra is None:
            continue
        if name == "id" and not is_resource or name == "url" and is_extension:
            element.set(name, value)
            continue
        kind = kinds[name]
        values, extras = (value or [], extra or []) if kind.repeats else ([value], [extra])
        for item, item_extra in zip_longest(values, extras):
            if kind.type_name == "xhtml":
                # As bytes: the narrative check read it so, and a str may not declare an encoding.
                element.append(etree.fromstring(item.encode(), _parser()))
                continue
            child = etree.SubElement(element, f"{{{FHIR_NS}}}{name}")
            if kind.type_name == "Resource":
                child.append(_resource_element(item))
            elif kind.primitive:
                if item is not None:
                    child.set("value", _primitive_text(item))
                if item_extra:
                    _write(child, item_extra, ELEMENT)
            else:
                _write(child, item, get_fhir_model_class(kind.type_name))


def _parser(**options: bool) -> Any:
    """One per document: lxml parsers are not to be shared between threads.
    No entity is resolved and nothing is loaded, from disk or the network."""
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, **options)


def _primitive_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not isinstance(value, WrittenDecimal):
        return repr(value)  # the shortest text that reads back as this float, as JSON writes it
    return str(value)


def _resource(element: Any, where: str | None) -> dict[str, Any]:
    """`where`: the path of the element that holds it (`Bundle.entry.resource`), None for the body itself."""
    namespace, name = _name(element)
    place = where or "the body"
    if namespace != FHIR_NS:
        raise InvalidRequest(f"{place} must be a FHIR resource in the namespace {FHIR_NS}, not <{element.tag}>")
    try:
        model = get_fhir_model_class(name)
    except (KeyError, ValueError) as error:
        raise InvalidRequest(f"<{name}> in {place} is not a FHIR R4 resource type") from error
    if not issubclass(model, Resource):
        raise InvalidRequest(f"<{name}> in {place} is not a FHIR R4 resource type")
    return {"resourceType": name, **_content(element, model, name if where is None else f"{where}.{name}")}


def _content(element: Any, model: type, path: str, value_attribute: bool = False) -> dict[str, Any]:
    """The JSON members of a resource or a complex element; with
    `value_attribute`, of a primitive, whose value is read by the caller."""
    document: dict[str, Any] = {}
    is_resource, is_extension = _is_resource_or_extension(model)
    for attribute, value in element.attrib.items():
        if attribute == "id" and not is_resource:
            document["id"] = value  # an element's id is an attribute; a resource's is an element
        elif attribute == "url" and is_extension:
            document["url"] = value
        elif not (attribute == "value" and value_attribute or attribute.startswith(f"{{{_XSI_NS}}}")):
            raise InvalidRequest(f"{path} has an attribute {attribute!r}, which FHIR XML does not have there")
    _refuse_text(element.text, path)
    elements = element_kinds(model)
    for child in element:
        _refuse_text(child.tail, path)
        namespace, name = _name(child)
        child_path = f"{path}.{name}"
        kind = elements.get(name)
        if kind is None or name == "id" and not is_resource or name == "url" and is_extension:
            raise InvalidRequest(f"{child_path} is not an element of {model.get_resource_type()} in FHIR R4 XML")
        expected = XHTML_NS if kind.type_name == "xhtml" else FHIR_NS
        if namespace != expected:
            raise InvalidRequest(f"{child_path} is in the namespace {namespace!r}, not {expected}")
        value, extension = _value(child, kind, child_path)
        if kind.repeats:
            values = document.setdefault(name, [])
            values.append(value)
            if extension is not None or f"_{name}" in document:
                # JSON keeps a repeating primitive's extensions in a parallel array (json.html#primitive).
                document.setdefault(f"_{name}", [None] * (len(values) - 1)).append(extension)
        elif name in document or f"_{name}" in document:
            raise InvalidRequest(f"{child_path} appears more than once, and FHIR R4 allows it once")
        else:
            if value is not None:
                document[name] = value
            if extension is not None:
                document[f"_{name}"] = extension
    return document


def _value(element: Any, kind: Kind, path: str) -> tuple[Any, dict[str, Any] | None]:
    """An element's JSON value and, for a primitive, its id and extensions
    (JSON's `_name`), or None for either that it lacks."""
    type_name = kind.type_name
    if type_name == "xhtml":
        # On its own, without the namespaces it inherits but does not use (xmlns:xsi, say).
        div = copy.deepcopy(element)
        etree.cleanup_namespaces(div)
        return etree.tostring(div, encoding=str, with_tail=False), None
    if type_name == "Resource":
        children = list(element)
        if len(children) != 1:
            raise InvalidRequest(f"{path} must hold exactly one resource")
        _refuse_text(element.text, path)
        _refuse_text(children[0].tail, path)
        return _resource(children[0], path), None
    if not kind.primitive:
        return _content(element, get_fhir_model_class(type_name), path), None
    text = element.get("value")
    if len(element) == 0 and len(element.attrib) == (text is not None):  # the common case: a value alone
        _refuse_text(element.text, path)
        extension = None
    else:
        extension = _content(element, ELEMENT, path, value_attribute=True) or None
    if text is None and extension is None:
        raise InvalidRequest(f"{path} has neither a value nor an extension")
    return (None if text is None else _primitive(text, type_name, path)), extension


def _primitive(text: str, type_name: str, path: str) -> Any:
    if type_name == "boolean":
        if text not in ("true", "false"):
            raise InvalidRequest(f"{path} must be true or false, not {text[:40]!r}")
        return text == "true"
    if type_name in _INTEGERS:
        if not _INTEGER.fullmatch(text):
            raise InvalidRequest(f"{path} must be an integer, not {text[:40]!r}")
        return int(text)
    if type_name == "decimal":
        if not _DECIMAL.fullmatch(text):
            raise InvalidRequest(f"{path} must be a decimal, not {text[:40]!r}")
        return WrittenDecimal(text)
    return text


def _refuse_text(text: str | None, path: str) -> None:
    if text is not None and text.strip():
        raise InvalidRequest(f"{path} holds the text {text.strip()[:40]!r}; FHIR XML keeps values in value attributes")


def _name(element: Any) -> tuple[str | None, str]:
    if not isinstance(element.tag, str):  # an entity reference left unresolved
        raise InvalidRequest("the body holds an entity reference, which FHIR XML may not")
    qualified = etree.QName(element)
    return qualified.namespace, qualified.localname


@cache
def _sequence(model: type) -> tuple[str, ...]:
    """A model's elements in the order FHIR XML writes them."""
    return tuple(model.elements_sequence())  # type: ignore[attr-defined]


@cache
def _is_resource_or_extension(model: type) -> tuple[bool, bool]:
    return issubclass(model, Resource), model.get_resource_type() == "Extension"  # type: ignore[attr-defined]
