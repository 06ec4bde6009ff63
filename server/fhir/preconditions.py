"""If-Match on update and delete (R4 http.html#concurrency, RFC 9110
§13.1.1), as a header or as a Bundle entry's `request.ifMatch`.

A version's entity tag is `W/"n"`; a tag is compared by its number, weak or
strong as the client wrote it (FHIR's tags are weak, and clients often send
`"n"`).
"""

import re
from dataclasses import dataclass

from fhir_mappings.errors import InvalidRequest, VersionConflict

_ETAG = re.compile(r'(?:W/)?"([0-9]{1,40})"')


@dataclass(frozen=True)
class IfMatch:
    """What If-Match asks for: one of `versions` current, or, for `*` (None),
    any current version: the resource must exist and not be deleted."""

    versions: frozenset[int] | None

    def require(self, what: str, current_version: int | None) -> None:
        """412 unless `what` (`Type/id`) is current at a version asked for;
        `current_version` None: it does not exist, or is deleted (no current
        representation, which fails even `*`, RFC 9110 §13.1.1)."""
        if current_version is None:
            raise VersionConflict(f"{what} does not exist or is deleted; If-Match cannot hold")
        if self.versions is not None and current_version not in self.versions:
            asked = ", ".join(str(version) for version in sorted(self.versions))
            raise VersionConflict(f"{what} is at version {current_version}, not {asked} (If-Match)")


def parse_if_match(header: object) -> IfMatch | None:
    """An If-Match header or `request.ifMatch`: `*`, or a list of ETags."""
    if header is None:
        return None
    members = [member.strip() for member in header.split(",")] if isinstance(header, str) else []
    if members == ["*"]:
        return IfMatch(None)
    found = [_ETAG.fullmatch(member) for member in members]
    if not members or not all(found):
        raise InvalidRequest(f'If-Match must be * or ETags such as W/"3", not {str(header)[:40]!r}')
    return IfMatch(frozenset(int(match.group(1)) for match in found if match))

