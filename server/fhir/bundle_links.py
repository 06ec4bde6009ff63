"""Links between the entries of a transaction Bundle: which entry a link
names (R4 bundle.html#references), and its replacement by what that entry
became once the transaction ran (http.html#trules).

An entry is named by its fullUrl, whatever its form (a placeholder, a URL).
A relative link is read against the base of the fullUrl of the entry it
appears in, where that is a RESTful URL, else against this server's: in an
entry whose fullUrl is on another server, `Task/1` is that server's Task/1,
never the entry whose fullUrl is this server's Task/1. A link that names no
entry is kept as sent.
"""

import re
from typing import Any

from fhir_mappings.errors import InvalidRequest
from fhir_mappings.links import placeholder_links, with_links_replaced
from fhir_mappings.r4_uuid import R4_UUID_PATTERN

# A fullUrl that is a resource's RESTful URL (R4 references.html#regex, with
# no version, as a fullUrl has none): the base, then `Type/id`.
_RESTFUL = re.compile(r"(https?://.+)/[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")  # RFC 3986 3.1: a URI without one is relative


def absolute_full_url(entry: dict[str, Any], base: str) -> str | None:
    """The entry's fullUrl, a relative one (`Task/1`, which R4 does not
    foresee) read as a URL on this server; None for an entry without one."""
    full_url = entry.get("fullUrl")
    return _absolute(full_url, base) if isinstance(full_url, str) else None


def replace_links(entry: dict[str, Any], targets: dict[str, str], base: str, position: int) -> dict[str, Any]:
    """`entry` with each link of its resource to one of `targets` (absolute
    fullUrls, conditional references) replaced by the `Type/id` it stands
    for, wherever R4 asks: references, uri elements, the narrative."""
    if "resource" not in entry:
        return entry
    restful = _RESTFUL.fullmatch(absolute_full_url(entry, base) or "")
    link_base = restful.group(1) if restful else base

    def replaced(kind: str, link: str) -> str:
        target = targets.get(link) or targets.get(_absolute(link, link_base))
        if target is None:
            return link
        return _as_uuid(kind, link, target, position) if kind in ("uuid", "oid") else target

    return {**entry, "resource": with_links_replaced(entry["resource"], replaced)}


def refuse_placeholders(resource: Any, position: int) -> None:
    """A placeholder left after replacement where only a link can be names no
    entry: it would be stored meaning nothing."""
    left = placeholder_links(resource)
    if left:
        raise InvalidRequest(f"entry {position}: {left[0][:100]} is the fullUrl of no entry of this transaction")


def _absolute(link: str, base: str) -> str:
    return link if _SCHEME.match(link) else f"{base}/{link}"


def _as_uuid(kind: str, link: str, target: str, position: int) -> str:
    """`target` (`Type/id`) written where only a uuid or an oid fits: as the
    URN of its id where that is a UUID, as every id the server assigns is;
    no oid names a resource."""
    uuid_urn = f"urn:uuid:{target.rpartition('/')[2]}"
    if kind == "uuid" and R4_UUID_PATTERN.fullmatch(uuid_urn):
        return uuid_urn
    raise InvalidRequest(
        f"entry {position}: {link[:100]} stands for {target[:100]} here, which an element of type {kind} cannot hold"
    )
