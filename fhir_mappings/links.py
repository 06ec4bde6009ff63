"""Where a resource names another: the places a transaction replaces the
fullUrls of its entries in (R4 http.html#trules). These are references,
elements of type uri, url, oid and uuid, and the narrative's links
(`<a href>`, `<img src>`); not canonicals, which R4 leaves as they are.

A resource is walked as the R4 models type it, before they have judged it:
what they do not know is left as it is, for validation to refuse.
"""

import re
from collections.abc import Callable
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

from fhir_mappings.elements import ELEMENT, Kind, element_kinds

_URI_TYPES = frozenset(("uri", "url", "oid", "uuid"))
_PLACEHOLDERS = ("urn:uuid:", "urn:oid:")
# Where a value can only be a link, so that a placeholder there names an entry
# of a Bundle or nothing. A uri, an oid or a uuid may be a name
# (Coding.system "urn:oid:2.16.840.1.113883.6.1", say), whether or not an entry has it.
_LINKS_ONLY = frozenset(("reference", "url", "narrative"))
# In quotes of either kind (XML 1.0 AttValue). A value is compared as written:
# no fullUrl and no `Type/id` holds a character XML escapes.
_NARRATIVE_LINK = re.compile(r"""(\s(?:href|src)\s*=\s*)(["'])(.*?)\2""")
_REFERENCE = get_fhir_model_class("Reference")

# `replace(kind, link)`: what to keep in place of `link`, whose kind is
# "reference", "narrative" or one of _URI_TYPES.
Replace = Callable[[str, str], str]


def with_links_replaced(resource: Any, replace: Replace) -> Any:
    """A copy of `resource` with `replace(kind, link)` in place of each of its
    links, its contained resources' included."""
    model = _model_of(resource)
    return resource if model is None else _replaced(resource, model, replace)


def placeholder_links(resource: Any) -> list[str]:
    """The `urn:uuid:` and `urn:oid:` placeholders in `resource` where only a link can be."""
    found: list[str] = []

    def note(kind: str, link: str) -> str:
        if kind in _LINKS_ONLY and link.startswith(_PLACEHOLDERS):
            found.append(link)
        return link

    with_links_replaced(resource, note)
    return found


def _model_of(resource: Any) -> type | None:
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        return None
    try:
        return get_fhir_model_class(resource["resourceType"])  # type: ignore[no-any-return]
    except (KeyError, ValueError):
        return None


def _replaced(node: dict[str, Any], model: type, replace: Replace) -> dict[str, Any]:
    kinds = element_kinds(model)

    def item_replaced(key: str, item: Any) -> Any:
        return _item_replaced(item, key, model, kinds.get(key.removeprefix("_")), replace)

    return {
        key: [item_replaced(key, item) for item in value] if isinstance(value, list) else item_replaced(key, value)
        for key, value in node.items()
    }


def _item_replaced(item: Any, key: str, model: type, kind: Kind | None, replace: Replace) -> Any:
    if kind is None:  # resourceType, or what the model does not know
        return item
    if key.startswith("_"):  # a primitive's id and extensions
        return _replaced(item, ELEMENT, replace) if isinstance(item, dict) else item
    if isinstance(item, str):
        if kind.type_name in _URI_TYPES:
            return replace(kind.type_name, item)
        if kind.type_name == "xhtml":
            return _NARRATIVE_LINK.sub(
                lambda link: f"{link[1]}{link[2]}{replace('narrative', link[3])}{link[2]}", item
            )
        return replace("reference", item) if model is _REFERENCE and key == "reference" else item
    if isinstance(item, dict) and not kind.primitive:
        child = _model_of(item) if kind.type_name == "Resource" else get_fhir_model_class(kind.type_name)
        return item if child is None else _replaced(item, child, replace)
    return item
