"""A resource's narrative (`text.div`) checked as R4 narrative.html#xhtml asks.

The div is XHTML: well-formed XML, a `div` in the XHTML namespace at its
root, no entities that need a DTD (`&nbsp;`). txt-1 limits it to basic
formatting: no scripts, forms, frames, objects, styles sheets, event
attributes (`onclick`) or other active content, which a viewer showing the
narrative would run. txt-2 asks for some content. The element and attribute
lists are those the FHIR validator applies for txt-1 (its InstanceValidator).
"""

import re
from typing import Any

from lxml import etree

from fhir_mappings.errors import InvalidResource

XHTML = "http://www.w3.org/1999/xhtml"
_XML_NAMESPACE = "http://www.w3.org/XML/1998/namespace"

_ELEMENTS = frozenset((
    "p", "br", "div", "h1", "h2", "h3", "h4", "h5", "h6", "a", "span", "b", "em", "i", "strong", "small", "big",
    "tt", "dfn", "q", "var", "abbr", "acronym", "cite", "blockquote", "hr", "address", "bdo", "kbd", "sub", "sup",
    "ul", "ol", "li", "dl", "dt", "dd", "pre", "table", "caption", "colgroup", "col", "thead", "tr", "tfoot",
    "tbody", "th", "td", "code", "samp", "img", "map", "area",
))
_ANY_ELEMENT_ATTRIBUTES = frozenset((
    "title", "style", "class", "id", "lang", "dir", "accesskey", "tabindex",
    "span", "width", "align", "valign", "char", "charoff", "abbr", "axis", "headers", "scope", "rowspan", "colspan",
))
_ELEMENT_ATTRIBUTES = frozenset((
    "a.href", "a.name", "a.charset", "a.type", "a.hreflang", "a.rel", "a.rev", "a.shape", "a.coords",
    "img.src", "img.alt", "img.longdesc", "img.height", "img.width", "img.usemap", "img.ismap", "img.border",
    "map.name", "area.shape", "area.coords", "area.href", "area.nohref", "area.alt",
    "blockquote.cite", "q.cite", "table.summary", "table.width", "table.border", "table.frame", "table.rules",
    "table.cellspacing", "table.cellpadding", "pre.space", "td.nowrap",
))
# Where a link may lead: a place in the resource (`#x`), a relative URL, or
# one of these schemes. Any other (javascript:, vbscript:, data: with a
# document) would run code where the narrative is shown.
_LINK_SCHEMES = frozenset(("http", "https", "mailto", "urn", "tel"))
# Images may be inline, as pictures only (an SVG can hold scripts).
_IMAGE_DATA = re.compile(r"data:image/(png|jpeg|gif|webp)[;,]", re.IGNORECASE)
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
# What browsers drop from a URL before reading its scheme (WHATWG URL: tab
# and newlines anywhere, C0 controls and spaces around it).
_URL_IGNORED = re.compile(r"[\t\n\r]|^[\x00-\x20]+|[\x00-\x20]+$")

# No DTD, no entity expansion, no network: the div is data, not a document to fetch parts of.
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def check_narratives(body: dict[str, Any], path: str) -> None:
    """Raise InvalidResource for the first narrative in `body` (its own, or a
    contained resource's) that breaks the rules above."""
    pending: list[tuple[Any, str]] = [(body, path)]
    while pending:
        node, where = pending.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "text" and isinstance(value, dict) and isinstance(value.get("div"), str):
                    check_div(value["div"], f"{where}.text.div")
                pending.append((value, f"{where}.{key}"))
        elif isinstance(node, list):
            pending.extend((item, f"{where}[{index}]") for index, item in enumerate(node))


def check_div(div: str, where: str) -> None:
    try:
        root = etree.fromstring(div.encode(), _PARSER)
    except etree.XMLSyntaxError as error:
        raise InvalidResource(f"{where} is not well-formed XHTML: {error}") from error
    if root.getroottree().docinfo.doctype:
        raise InvalidResource(f"{where} has a document type declaration, which narrative may not")
    if root.tag != f"{{{XHTML}}}div":
        raise InvalidResource(f"{where} must be a div in the XHTML namespace ({XHTML})")
    has_content = False
    for element in root.iter():
        if isinstance(element, etree._Comment):
            continue
        if not isinstance(element.tag, str):  # a processing instruction, an entity
            raise InvalidResource(f"{where} holds XML other than elements, text and comments, which narrative may not")
        namespace, _, name = element.tag[1:].partition("}") if element.tag.startswith("{") else ("", "", element.tag)
        if namespace != XHTML or name not in _ELEMENTS:
            raise InvalidResource(f"{where} holds a <{name}> element, which narrative may not (txt-1)")
        if element.prefix is not None:
            # FHIR tools read the div as XHTML in the default namespace (as FHIR's own examples write it):
            # prefixed, it would reach them as elements they do not know.
            raise InvalidResource(f"{where} writes <{element.prefix}:{name}>: write XHTML as the default namespace")
        for attribute, value in element.attrib.items():
            _check_attribute(name, attribute, value, where)
        has_content = has_content or name == "img" or bool((element.text or "").strip() or (element.tail or "").strip())
    if not has_content:
        raise InvalidResource(f"{where} has no content but whitespace, which narrative may not (txt-2)")


def _check_attribute(element: str, attribute: str, value: str, where: str) -> None:
    if attribute.startswith("{"):
        namespace, _, local = attribute[1:].partition("}")
        allowed = namespace == _XML_NAMESPACE and local in ("lang", "space")
    else:
        local = attribute
        allowed = local in _ANY_ELEMENT_ATTRIBUTES or f"{element}.{local}" in _ELEMENT_ATTRIBUTES
    if not allowed:
        raise InvalidResource(f"{where}: <{element}> may not have the attribute {local!r} in narrative (txt-1)")
    if local in ("href", "src", "longdesc", "cite", "usemap") and not _safe_link(value, element == "img"):
        raise InvalidResource(
            f"{where}: <{element} {local}> must be a relative, http(s), mailto, urn or tel link"
            f"{' or an inline picture' if element == 'img' else ''}: narrative may not hold active content"
        )


def _safe_link(value: str, image: bool) -> bool:
    url = _URL_IGNORED.sub("", value)
    scheme = _SCHEME.match(url)
    if scheme is None:
        return True  # relative: within this server or this resource
    return scheme.group(1).lower() in _LINK_SCHEMES or (image and _IMAGE_DATA.match(url) is not None)
