"""The preconditions of an update or delete (RFC 9110 §13.1): If-Match
(R4 http.html#concurrency) and If-None-Match, as headers or as a Bundle
entry's `request.ifMatch` and `ifNoneMatch`, and the If-Unmodified-Since
header.

A version's entity tag is `W/"n"`; a tag is compared by its number, weak or
strong as the client wrote it (FHIR's tags are weak, and clients often send
`"n"`). A well-formed tag that is no version of ours (`"abc"`, another
server's) names no version: it fails an If-Match and passes an
If-None-Match, as RFC 9110 has any tag that does not match.
"""

import re
from dataclasses import dataclass
from typing import Literal

from fhir_mappings.date_ranges import instant_text
from fhir_mappings.errors import InvalidRequest, VersionConflict

# RFC 9110 §8.8.3 entity-tag; `version` when the tag is one of ours.
_ETAG = r'(?:W/)?"(?:(?P<version>[0-9]{1,40})|[\x21\x23-\x7e\x80-\xff]*)"'
# A member of a list of them (§5.6.1): its tag, or nothing (an empty member, which is ignored), then a comma or the
# end. Split at the commas between tags only: a tag may hold a comma itself (etagc is any visible character but ").
_LIST_MEMBER = re.compile(rf"[ \t]*(?:(?P<tag>{_ETAG})[ \t]*)?(?:,|\Z)")
# What an If-Match or If-None-Match names: some versions, or `*`, any current one.
Tags = frozenset[int] | Literal["*"]


@dataclass(frozen=True)
class Preconditions:
    """`match`: If-Match, which holds when one of its versions (any, for `*`)
    is current. `none_match`: If-None-Match, which holds when none is (`*`:
    when nothing is current, for a write that must only create). A resource
    that does not exist or is deleted has no current version (§13.1.1).
    `unmodified_since` (microseconds): If-Unmodified-Since, which holds when
    the current version is no later, to the second (§13.1.4); If-Match, when
    sent, decides instead."""

    match: Tags | None = None
    none_match: Tags | None = None
    unmodified_since: int | None = None

    def require(self, what: str, current_version: int | None, last_updated: int | None = None) -> None:
        """412 unless they hold for `what` (`Type/id`) at `current_version`,
        written at `last_updated` (None for nothing current)."""
        if self.match is None and self.unmodified_since is not None and last_updated is not None:
            if last_updated // 1_000_000 > self.unmodified_since // 1_000_000:
                raise VersionConflict(
                    f"{what} changed at {instant_text(last_updated)}, after If-Unmodified-Since"
                    f" {instant_text(self.unmodified_since)}"
                )
        if self.match is not None:
            if current_version is None:
                raise VersionConflict(f"{what} does not exist or is deleted; If-Match cannot hold")
            if not names_version(self.match, current_version):
                raise VersionConflict(f"{what} is at version {current_version}, not {_named(self.match)} (If-Match)")
        if self.none_match is not None and current_version is not None:
            if names_version(self.none_match, current_version):
                raise VersionConflict(
                    f"{what} is at version {current_version} (If-None-Match: {_named(self.none_match)})"
                )


def parse_preconditions(
    if_match: object, if_none_match: object, unmodified_since: int | None = None
) -> Preconditions | None:
    """Of the headers (or Bundle entry fields) If-Match and If-None-Match, and
    If-Unmodified-Since as microseconds (None for one that is not an HTTP
    date, which §13.1.4 has ignored); None when none is sent."""
    if if_match is None and if_none_match is None and unmodified_since is None:
        return None
    return Preconditions(parse_tags("If-Match", if_match), parse_tags("If-None-Match", if_none_match), unmodified_since)


def names_version(tags: Tags, version: int) -> bool:
    return tags == "*" or version in tags


def parse_tags(name: str, header: object) -> Tags | None:
    """`*`, or a list of ETags."""
    if header is None:
        return None
    if isinstance(header, str) and header.strip() == "*":
        return "*"
    tags = _tag_list(header) if isinstance(header, str) else None
    if not tags:
        raise InvalidRequest(f'{name} must be * or ETags such as W/"3", not {str(header)[:40]!r}')
    return frozenset(int(tag["version"]) for tag in tags if tag["version"])


def _tag_list(header: str) -> list[re.Match[str]] | None:
    """The entity tags of a list (`W/"1", "a,b"`, empty members ignored), or None where it is no such list."""
    tags, position = [], 0
    while position < len(header):
        member = _LIST_MEMBER.match(header, position)
        if member is None or member.end() == position:
            return None
        if member["tag"]:
            tags.append(member)
        position = member.end()
    return tags


def _named(tags: Tags) -> str:
    if tags == "*":
        return tags
    return ", ".join(str(version) for version in sorted(tags)) or "ETags that name no version of it"
