"""Links between the entries of a transaction Bundle, and their replacement
by what each entry became once the transaction ran (R4 http.html#trules).
"""

from typing import Any

from fhir_mappings.errors import InvalidRequest
from fhir_mappings.links import placeholder_links, with_links_replaced
from fhir_mappings.r4_uuid import R4_UUID_PATTERN


def replace_links(entry: dict[str, Any], targets: dict[str, str], position: int) -> dict[str, Any]:
    """`entry` with each link of its resource to one of `targets` (fullUrls,
    conditional references) replaced by the `Type/id` it stands for, wherever
    R4 asks: references, uri elements, the narrative."""
    if "resource" not in entry:
        return entry

    def replaced(kind: str, link: str) -> str:
        target = targets.get(link)
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
