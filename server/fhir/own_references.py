"""References written with this server's own base URL, made relative.

A reference is local when it is relative (`Patient/p1`) or names this
server's FHIR base; any other absolute URL points at another server, and is
stored and indexed as the external reference it is (never as the local
resource that happens to have the same type and id). Clients that write or
search with the server's own base get what they meant, as with `Type/id`.
"""

import re
from collections.abc import Collection
from typing import Any

from fhir_mappings.errors import InvalidRequest
from fhir_mappings.search_parameters import reference_parameters
from fhir_mappings.search_query import chain_target

# What follows the base: a resource (`Type/id`, maybe versioned), or a
# conditional reference (`Type?query`), which a transaction resolves.
_LOCAL_PART = re.compile(r"[A-Z][A-Za-z]+(?:/[A-Za-z0-9\-.]{1,64}(?:/_history/[0-9]+)?|\?.*)")


def relative(reference: str, base: str) -> str:
    prefix = base.rstrip("/") + "/"
    if reference.startswith(prefix) and _LOCAL_PART.fullmatch(reference, len(prefix)):
        return reference[len(prefix):]
    return reference


def with_relative_references(node: Any, base: str) -> Any:
    """A resource body with every Reference.reference to this server made relative."""
    if isinstance(node, dict):
        return {
            key: relative(value, base) if key == "reference" and isinstance(value, str)
            else with_relative_references(value, base)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [with_relative_references(item, base) for item in node]
    return node


def with_relative_search_values(
    resource_type: str, pairs: list[tuple[str, str]], base: str
) -> list[tuple[str, str]]:
    """A search on `resource_type` with the (comma-separated) values of its
    reference parameters that name resources of this server by URL made
    relative. Other values stay as sent: an identifier may be a URL too."""
    references = reference_parameters(resource_type)
    return [
        (name, ",".join(relative(item, base) for item in value.split(",")))
        if _names_references(name, references) or _ends_in_reference(resource_type, name) else (name, value)
        for name, value in pairs
    ]


def _ends_in_reference(resource_type: str, name: str) -> bool:
    """A chain whose parameter at the far end, one of the other type's, is a
    reference parameter: its values are references too. Reverse,
    `_has:[type]:[reference]:[parameter]` (search.html#has); forward,
    `[reference][:type].[parameter]` (search.html#chaining)."""
    if name.startswith("_has:"):
        _, source_type, _, parameter = (name.split(":", 3) + ["", "", ""])[:4]
        return _names_references(parameter, reference_parameters(source_type))
    head, dot, parameter = name.partition(".")
    first, _, modifier = head.partition(":")
    reference = reference_parameters(resource_type).get(first)
    if not dot or reference is None:
        return False
    try:
        target_type = chain_target(reference, first, modifier, parameter)
    except InvalidRequest:
        return False  # the search refuses the chain itself, and says why
    return _names_references(parameter, reference_parameters(target_type))


def _names_references(name: str, references: Collection[str]) -> bool:
    """A reference parameter, bare or with a type modifier (`subject:Patient`);
    not `:identifier`, whose values are identifiers, nor a chain."""
    parameter, _, modifier = name.partition(":")
    return parameter in references and "." not in name and (not modifier or modifier[0].isupper())
