"""QIDO-RS query parameters parsed into condition objects ("queries as data").

Matching kinds follow PS3.4 §C.2.2.2; the query syntax follows PS3.18 §8.3.4.
`server/` turns the conditions into SQL; nothing here knows about a database.

Decisions beyond the letter of the standard:
- Lists: UI keys take a list of UIDs, and so do the CS keys flagged `value_list`
  (Modality, ModalitiesInStudy), because DICOMweb clients send
  `ModalitiesInStudy=CT,MR`. Items are separated by `,` (PS3.18) or `\\`
  (the PS3.4 multi-value encoding). Any other `\\` is refused. List items
  cannot hold wildcards; a single value of those keys can.
- Dates and times use the DICOM formats only: `YYYY-MM-DD` is refused, as its
  `-` would be ambiguous with range syntax.
- A TM or DT single value matches the whole span of its precision ("10" is
  10:00 to 10:59:59.999999), so it becomes a `Range`.
- DT values (UPS-RS searches) compare in UTC: one with an offset (`+hhmm` or
  `-hhmm`) is moved to UTC, one without is taken as UTC. In a query a `-`
  separates a range or starts an offset west of UTC (`_datetime_match`).
- A PN value matches per component group (`PersonNameMatch`): without `=`,
  the whole name or any one group; with `=`, group by group.
- A value of only `*` is universal matching (PS3.4 §C.2.2.2.4) and, like an
  empty value, only asks for the attribute to be returned.
"""

import functools
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Sequence

from dicom.errors import InvalidRequest
from dicom.qido_attributes import (
    Level,
    QidoAttribute,
    check_level,
    default_result_tags,
    query_attributes,
    resolve_attribute,
)
from dicom.uids import is_safe_uid

LIKE_ESCAPE = "\\"
# The text VRs: PS3.4 §C.2.2.2.4 applies wildcard matching to them.
TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
_MAX_COUNT = 2**31 - 1
_LIST_SEPARATORS = re.compile(r"[,\\]")
# `accept` and `charset` (PS3.18 §8.3.3) choose the response format; the route
# consumes them, so they are neither query keys nor errors here.
TRANSPORT_PARAMETERS = frozenset({"accept", "charset"})


@dataclass(frozen=True)
class SingleValue:
    """Exact, case-sensitive match. DA values are YYYYMMDD; integer VRs are canonical decimal."""

    keyword: str
    tag: int
    value: str

    def matches(self, stored: str) -> bool:
        return stored == self.value


@dataclass(frozen=True)
class UidList:
    """Matches when the attribute equals any of `values` (PS3.4 §C.2.2.2.2); at least two."""

    keyword: str
    tag: int
    values: tuple[str, ...]


@dataclass(frozen=True)
class ValueList:
    """Like `UidList`, for the CS keys flagged `value_list` (Modality, ModalitiesInStudy)."""

    keyword: str
    tag: int
    values: tuple[str, ...]


@dataclass(frozen=True)
class Wildcard:
    """`*` matches any run of characters, `?` one character, case-sensitively.

    See `wildcard_to_like`, and `wildcard_to_glob` for SQLite, whose LIKE
    ignores ASCII case; `matches` for a value at hand.
    """

    keyword: str
    tag: int
    pattern: str

    def matches(self, stored: str) -> bool:
        return _wildcard_regex(self.pattern).fullmatch(stored) is not None


@functools.lru_cache(maxsize=256)
def _wildcard_regex(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern), re.DOTALL)


@dataclass(frozen=True)
class Range:
    """Inclusive range; None is an open end (never both).

    DA bounds are YYYYMMDD. TM bounds are padded to full precision
    HHMMSS.FFFFFF (low with zeros, high with the largest value of the missing
    digits); compare them with stored times normalised by `normalise_time`.
    DT bounds are YYYYMMDDHHMMSS.FFFFFF in UTC, as `datetime_bounds` makes them.
    """

    keyword: str
    tag: int
    low: str | None
    high: str | None
    vr: str


# The parts of a stored PN value that non-fuzzy matching compares: the whole
# value, and each of its component groups (PS3.5 6.2.1.1), in their order.
WHOLE_NAME = "whole"
NAME_GROUPS = ("alphabetic", "ideographic", "phonetic")


@dataclass(frozen=True)
class PersonNameMatch:
    """PN matching.

    PS3.4 C.2.2.2.1 lets PN matching be literal, and C.2.2.2.4 leaves PN
    wild card matching and the meaning of `=` in a key to the implementation
    (`*=*` "may or may not" match everything). The rule here, as the
    conformance statement declares it; each comparison exact and
    case-sensitive, or a `*`/`?` pattern, and every value written as
    `normalise_person_name` writes it:
    - A value without `=` (`groups` None) matches a stored name when it
      matches the whole stored value or any one of its component groups:
      `Yamada^Tarou`, `山田^太郎` and `やまだ^たろう` each find
      `Yamada^Tarou=山田^太郎=やまだ^たろう`, and `山田^太郎` finds `=山田^太郎`.
    - A value with `=` (`groups` set) is matched group by group: each of its
      groups must match the stored group in the same place, and an empty or
      `*`-only group matches any stored group, an absent one too, so
      `=山田^太郎` asks for the ideographic group only, `Yamada^Tarou=` for the
      alphabetic one only, and `*=*` is universal matching.
    fuzzy=True: case- and order-insensitive over all groups alike; every
    token of `fuzzy_name_tokens(value)` must match from the start of a word
    of the stored name, its `*` and `?` as wildcards: the pattern
    `"* " + token + "*"` matches `name_search_key(stored)`. A plain token is
    so a word's prefix, and `*OH*` finds JOHN; whatever the exact value
    matches, this matches too.
    """

    keyword: str
    tag: int
    value: str
    fuzzy: bool
    # Per group (NAME_GROUPS order), the value it must match, None for any.
    groups: tuple[str | None, ...] | None = None

    @property
    def is_wildcard(self) -> bool:
        return "*" in self.value or "?" in self.value

    def compared_parts(self) -> tuple[str, ...]:
        """For a value without `=`: the parts of a stored name (WHOLE_NAME or
        a NAME_GROUPS entry) that `matches` tries, less those whose match
        follows from another's, so that fewer columns are searched. An exact
        value holds no `=`, so the whole equals it only where the whole is
        its alphabetic group. A pattern that ends in `*` matches the whole
        wherever it matches the alphabetic group, which starts the whole; one
        that also starts with `*` matches the whole wherever it matches any
        group, which the whole holds."""
        if not self.is_wildcard:
            return NAME_GROUPS
        if self.value.endswith("*"):
            return (WHOLE_NAME,) if self.value.startswith("*") else (WHOLE_NAME, *NAME_GROUPS[1:])
        return (WHOLE_NAME, *NAME_GROUPS)

    def matches(self, stored: str) -> bool:
        """Whether a stored PN value matches: the rule itself, which the SQL that `server/` makes must follow."""
        stored = normalise_person_name(stored)
        if self.fuzzy:
            key = name_search_key(stored)
            return all(_text_matches(f"* {token}*", key) for token in fuzzy_name_tokens(self.value))
        parts = dict(zip(NAME_GROUPS, person_name_groups(stored)), **{WHOLE_NAME: stored or None})
        if self.groups is not None:
            return all(want is None or _text_matches(want, parts[name]) for name, want in zip(NAME_GROUPS, self.groups))
        return any(_text_matches(self.value, parts[name]) for name in (WHOLE_NAME, *NAME_GROUPS))


def _text_matches(pattern: str, stored: str | None) -> bool:
    if stored is None:
        return False
    if "*" in pattern or "?" in pattern:
        return _wildcard_regex(pattern).fullmatch(stored) is not None
    return stored == pattern


@dataclass(frozen=True)
class SequenceMatch:
    """Matches when one item of the sequence satisfies all `conditions` (PS3.4 §C.2.2.2.6)."""

    keyword: str
    tag: int
    conditions: tuple["Condition", ...]


Condition = SingleValue | UidList | ValueList | Wildcard | Range | PersonNameMatch | SequenceMatch


@dataclass(frozen=True)
class QidoQuery:
    level: Level
    conditions: tuple[Condition, ...]
    # Asked for by `includefield` or by an empty (universal) key; any dictionary tag.
    include_fields: frozenset[int]
    include_all: bool
    fuzzy: bool
    # Never None: without a `limit` parameter it is the server's maximum.
    limit: int
    offset: int

    @property
    def result_tags(self) -> frozenset[int]:
        """Tags each result carries unless `include_all`: defaults, included fields and matching keys."""
        return default_result_tags(self.level) | self.include_fields | {c.tag for c in self.conditions}


def wildcard_to_like(pattern: str) -> tuple[str, str]:
    """A `*`/`?` pattern as an SQL LIKE pattern and its escape character.

    Literal `%`, `_` and the escape character are escaped so that they match
    only themselves.
    """
    out = []
    for ch in pattern:
        if ch in ("%", "_", LIKE_ESCAPE):
            out.append(LIKE_ESCAPE + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out), LIKE_ESCAPE


def wildcard_to_glob(pattern: str) -> str:
    """A `*`/`?` pattern as an SQLite GLOB pattern.

    GLOB uses the same two wildcards; its only other special character is
    `[`, and a bracketed character matches only itself, so that is how a
    literal `[` is written. (A DICOM query value has no way to ask for a
    literal `*` or `?`.)
    """
    return pattern.replace("[", "[[]")


# Component (^) and group (=) separators split name words; wildcards stay in
# their word, as PS3.4 C.2.2.2.4 asks that a value holding one be matched as a
# pattern, fuzzy or not.
_NAME_SPLIT = re.compile(r"[\s^=,]+")


def fuzzy_name_tokens(value: str) -> list[str]:
    """The upper-case words of a PN value, in order, each with its `*`/`?`.

    A word of stars only would match any word, so it is left out.
    """
    return [t for t in _NAME_SPLIT.split(value.upper()) if t.strip("*")]


def normalise_person_name(value: str) -> str:
    """A PN value without its trailing empty components and groups, which
    PS3.5 6.2.1.1 makes insignificant: Roe^Jane^^^ is Roe^Jane."""
    return "=".join(group.rstrip("^") for group in value.split("=")).rstrip("=")


def person_name_groups(value: str) -> tuple[str | None, str | None, str | None]:
    """A PN value's alphabetic, ideographic and phonetic groups, each without
    its trailing empty components, None where empty. Groups past the third,
    which PS3.5 6.2.1.1 does not allow, are left out."""
    groups = [group.rstrip("^") or None for group in value.split("=")[: len(NAME_GROUPS)]]
    first, second, third = groups + [None] * (len(NAME_GROUPS) - len(groups))
    return first, second, third


def person_name_text(value: dict[str, Any]) -> str:
    """A PN value of the DICOM JSON model (PS3.18 F.2.2) as one string, its
    groups joined by `=`, as `normalise_person_name` writes it."""
    return normalise_person_name("=".join(value.get(group.capitalize()) or "" for group in NAME_GROUPS))


def name_search_key(pn: str) -> str:
    """A stored PN value (all groups) as " WORD WORD ", for per-token `LIKE '% TOKEN%'`."""
    tokens = fuzzy_name_tokens(pn)
    return f" {' '.join(tokens)} " if tokens else ""


_TIME = re.compile(r"(\d\d)(\d\d)?(\d\d)?(?:\.(\d{1,6}))?")


def _time_bounds(value: str) -> tuple[str, str] | None:
    """The first and last instants a TM value of any precision stands for, or None if invalid."""
    m = _TIME.fullmatch(value)
    if m is None or (m.group(4) is not None and m.group(3) is None):
        return None
    hh, mm, ss, frac = m.groups()
    if int(hh) > 23 or (mm and int(mm) > 59) or (ss and int(ss) > 60):
        return None
    low = f"{hh}{mm or '00'}{ss or '00'}.{(frac or '').ljust(6, '0')}"
    high = f"{hh}{mm or '59'}{ss or '59'}.{(frac or '').ljust(6, '9')}"
    return low, high


def normalise_time(value: str) -> str | None:
    """A stored TM value as HHMMSS.FFFFFF for comparison with `Range` bounds; None if invalid.

    Accepts the pre-1993 "HH:MM:SS" form and padding, which legacy files carry.
    """
    bounds = _time_bounds(value.strip().replace(":", ""))
    return bounds[0] if bounds else None


_DATETIME = re.compile(r"(\d{4})(\d\d)?(\d\d)?(\d\d)?(\d\d)?(\d\d)?(?:\.(\d{1,6}))?([+-]\d{4})?")
_DATETIME_FORMAT = "%Y%m%d%H%M%S.%f"


def datetime_bounds(value: str) -> tuple[str, str] | None:
    """The first and last instants, in UTC as YYYYMMDDHHMMSS.FFFFFF, that a DT
    value of any precision stands for (PS3.5 Table 6.2-1); None if invalid."""
    m = _DATETIME.fullmatch(value.strip())
    if m is None:
        return None
    *parts, fraction, offset = m.groups()
    given = [int(part) for part in parts if part is not None]
    if any(parts[len(given):]) or (fraction is not None and len(given) < 6):
        return None  # a component after a missing one
    try:
        low = datetime(*(given + [1, 1, 0, 0, 0][len(given) - 1:])[:6], int((fraction or "").ljust(6, "0")))
    except ValueError:
        return None
    try:
        high = _following(low, len(given), fraction) - timedelta(microseconds=1)
    except (ValueError, OverflowError):  # the last span of year 9999
        high = datetime.max
    if offset is not None:
        sign, hours, minutes = (-1 if offset[0] == "-" else 1), int(offset[1:3]), int(offset[3:])
        if hours > 14 or minutes > 59:
            return None
        shift = sign * timedelta(hours=hours, minutes=minutes)
        try:
            low, high = low - shift, high - shift
        except OverflowError:
            return None
    return low.strftime(_DATETIME_FORMAT).rjust(21, "0"), high.strftime(_DATETIME_FORMAT).rjust(21, "0")


def _following(low: datetime, components: int, fraction: str | None) -> datetime:
    """The first instant after the span that a DT value given to this precision stands for."""
    if fraction is not None:
        return low + timedelta(microseconds=10 ** (6 - len(fraction)))
    if components == 1:
        return low.replace(year=low.year + 1)
    if components == 2:
        return low.replace(year=low.year + low.month // 12, month=low.month % 12 + 1)
    return low + (timedelta(days=1), timedelta(hours=1), timedelta(minutes=1), timedelta(seconds=1))[components - 3]


def _datetime_match(attr: QidoAttribute, value: str, param: str) -> Range:
    """A DT value or range (PS3.4 §C.2.2.2.5.1), either end of which may carry
    an offset from UTC, so a `-` separates the ends or starts an offset west
    of UTC: "20240601000000-0500-20240601040000-0500" is a range. The first
    reading whose ends parse and come in order wins, each `-` in turn taken
    as the separator before the value is read whole, so that what reads as a
    range without offsets ("1000-1100", two years) stays that range."""
    # Each reading parses the value again, so one longer than a range of two
    # full DT values (26 characters each) is read only whole, and refused.
    separators = [at for at, char in enumerate(value) if char == "-"] if len(value) <= 53 else []
    for low_text, high_text in [*((value[:at], value[at + 1 :]) for at in separators), (value, value)]:
        low = datetime_bounds(low_text) if low_text else None
        high = datetime_bounds(high_text) if high_text else None
        if (low_text and low is None) or (high_text and high is None) or not (low or high):
            continue
        if low and high and low[0] > high[1]:
            continue
        return Range(attr.keyword, attr.tag, low[0] if low else None, high[1] if high else None, "DT")
    raise InvalidRequest(
        f"query parameter {param!r}: {value[:60]!r} is no DICOM date and time (YYYY[MM[DD[HH[MM[SS[.F{{1,6}}]]]]]]"
        "[+hhmm|-hhmm]) and no range of them (low-, -high or low-high, the low not after the high)"
    )


def _date(value: str, param: str) -> str:
    try:
        if len(value) != 8 or not value.isdigit():
            raise ValueError
        date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        raise InvalidRequest(f"query parameter {param!r}: {value[:40]!r} is not a DICOM date (YYYYMMDD)") from None
    return value


def _time(value: str, param: str, *, high: bool) -> str:
    bounds = _time_bounds(value)
    if bounds is None:
        raise InvalidRequest(f"query parameter {param!r}: {value[:40]!r} is not a DICOM time (HH[MM[SS[.F{{1,6}}]]])")
    return bounds[1] if high else bounds[0]


def _range(attr: QidoAttribute, value: str, param: str) -> Range:
    low_text, sep, high_text = value.partition("-")
    if not sep or "-" in high_text or not (low_text or high_text):
        raise InvalidRequest(f"query parameter {param!r}: {value[:40]!r} is not a range (low-, -high or low-high)")
    if attr.vr == "DA":
        low = _date(low_text, param) if low_text else None
        high = _date(high_text, param) if high_text else None
    else:
        low = _time(low_text, param, high=False) if low_text else None
        high = _time(high_text, param, high=True) if high_text else None
    if low is not None and high is not None and low > high:
        raise InvalidRequest(f"query parameter {param!r}: range {value[:40]!r} ends before it starts")
    return Range(attr.keyword, attr.tag, low, high, attr.vr)


def _list(attr: QidoAttribute, value: str, param: str) -> SingleValue | UidList | ValueList:
    items = tuple(_LIST_SEPARATORS.split(value))
    for item in items:
        if attr.vr == "UI" and not is_safe_uid(item):
            raise InvalidRequest(f"query parameter {param!r}: {item[:80]!r} is not a valid UID")
        if not item or "*" in item or "?" in item:
            raise InvalidRequest(f"query parameter {param!r}: list items must be non-empty values without wildcards")
    if len(items) == 1:
        return SingleValue(attr.keyword, attr.tag, items[0])
    return UidList(attr.keyword, attr.tag, items) if attr.vr == "UI" else ValueList(attr.keyword, attr.tag, items)


def _condition(attr: QidoAttribute, value: str, param: str, fuzzy: bool) -> Condition | None:
    """The condition for one non-empty key, or None where it means universal matching."""
    # `*` matches any run of characters, none included (PS3.4 §C.2.2.2.4), so `**` is universal too.
    if attr.vr in TEXT_VRS and not value.strip("*"):
        return None
    # A flagged CS key without a separator is an ordinary CS value, so
    # wildcards apply to it as PS3.4 §C.2.2.2.4 asks (Modality=M*).
    if attr.vr == "UI" or (attr.value_list and _LIST_SEPARATORS.search(value)):
        return _list(attr, value, param)
    if "\\" in value:
        raise InvalidRequest(f"query parameter {param!r}: multiple values (\\) are not supported for this attribute")
    if attr.vr == "DT":
        return _datetime_match(attr, value, param)
    if attr.vr in ("DA", "TM"):
        if "-" in value:
            return _range(attr, value, param)
        if attr.vr == "DA":
            return SingleValue(attr.keyword, attr.tag, _date(value, param))
        return Range(attr.keyword, attr.tag, _time(value, param, high=False), _time(value, param, high=True), "TM")
    if attr.vr == "PN":
        return _person_name(attr, value, param, fuzzy)
    if attr.vr == "IS":
        if not re.fullmatch(r"[+-]?\d{1,12}", value):
            raise InvalidRequest(f"query parameter {param!r}: {value[:40]!r} is not an integer")
        return SingleValue(attr.keyword, attr.tag, str(int(value)))
    if attr.vr in TEXT_VRS:
        if "*" in value or "?" in value:
            return Wildcard(attr.keyword, attr.tag, value)
        return SingleValue(attr.keyword, attr.tag, value)
    raise InvalidRequest(f"query parameter {param!r}: matching on VR {attr.vr} is not supported")


def _person_name(attr: QidoAttribute, value: str, param: str, fuzzy: bool) -> PersonNameMatch | None:
    """The condition for a PN key (see `PersonNameMatch`), or None where it matches anything."""
    name = normalise_person_name(value)
    # Nothing but separators is the empty name, which, like an empty value, matches anything.
    if not name or (fuzzy and not fuzzy_name_tokens(name)):
        return None
    if fuzzy or "=" not in value:
        return PersonNameMatch(attr.keyword, attr.tag, name, fuzzy)
    # `=` is read before normalising: `Yamada^Tarou=` asks for the alphabetic group alone.
    # Groups are counted after it, as empty ones past the third are trailing (`Yamada^Tarou===`).
    written = value.split("=")[: len(NAME_GROUPS)]
    if name.count("=") >= len(NAME_GROUPS):
        raise InvalidRequest(
            f"query parameter {param!r}: a person name has at most {len(NAME_GROUPS)} component groups "
            "(alphabetic=ideographic=phonetic)"
        )
    groups = tuple(group.rstrip("^") if group.rstrip("^").strip("*") else None for group in written)
    if all(group is None for group in groups):
        return None  # `*=*` and the like: every group matches anything
    return PersonNameMatch(attr.keyword, attr.tag, name, fuzzy, groups)


def _flag(value: str, param: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise InvalidRequest(f"query parameter {param!r}: expected true or false, got {value[:40]!r}")
    return value.lower() == "true"


def _count(value: str, param: str) -> int:
    # The bound keeps the value inside a 32-bit SQL integer.
    if not value.isascii() or not value.isdigit() or len(value) > 10 or int(value) > _MAX_COUNT:
        raise InvalidRequest(f"query parameter {param!r}: expected an integer from 0 to {_MAX_COUNT}, got {value[:40]!r}")
    return int(value)


def _resolve(name: str, param: str) -> tuple[str, int]:
    try:
        return resolve_attribute(name)
    except InvalidRequest as exc:
        raise InvalidRequest(f"query parameter {param!r}: {exc.message}") from None


def _include_tags(value: str) -> tuple[bool, set[int]]:
    """An `includefield` value: "all", or a comma list of keywords, tags or dotted paths.

    A dotted path includes its top-level sequence whole, as results carry
    sequences whole.
    """
    include_all, tags = False, set()
    for item in value.split(","):
        item = item.strip()
        if item == "all":
            include_all = True
            continue
        if not item:
            raise InvalidRequest("query parameter 'includefield': empty attribute name")
        path = [_resolve(part, "includefield") for part in item.split(".")]
        tags.add(path[0][1])
    return include_all, tags


def _query_key(
    name: str, value: str, allowed: dict[str, QidoAttribute], level: Level
) -> tuple[QidoAttribute, QidoAttribute | None] | int:
    """The attribute a key names, and for a dotted path the sequence item attribute.

    An empty value only asks for the attribute, like `includefield`, so then
    any dictionary attribute is accepted and its tag comes back alone.
    """
    parts = name.split(".")
    if len(parts) > 2:
        raise InvalidRequest(f"query parameter {name[:80]!r}: only one level of sequence matching is supported")
    keyword, tag = _resolve(parts[0], name)
    attr = allowed.get(keyword)
    if attr is None and len(parts) == 1 and not value:
        return tag
    if attr is None:
        raise InvalidRequest(f"query parameter {name[:80]!r}: {keyword or parts[0]} is not a query key at {level} level")
    if len(parts) == 1:
        return attr, None
    item_keyword, _ = _resolve(parts[1], name)
    item = next((i for i in attr.items if i.keyword == item_keyword), None)
    if item is None:
        raise InvalidRequest(f"query parameter {name[:80]!r}: {item_keyword or parts[1]} is not a matching key in {keyword}")
    return attr, item


def parse_qido_query(level: str, params: Sequence[tuple[str, str]], max_limit: int) -> QidoQuery:
    """Parse QIDO-RS query parameters (URL-decoded, in order) for a search at `level`.

    Raises InvalidRequest, naming the parameter, for anything it cannot honour.
    """
    if max_limit < 1:
        raise ValueError("max_limit must be positive")
    lv = check_level(level)
    allowed = query_attributes(lv)
    include_all, includes = False, set()
    once: dict[str, str] = {}
    # Conditions wait for the end: `fuzzymatching` may come after the names it affects.
    keys: list[tuple[str, QidoAttribute, QidoAttribute | None, str]] = []
    seen_paths: set[tuple[int, ...]] = set()
    for name, value in params:
        if "\x00" in name or "\x00" in value:
            # No DICOM text holds one (stored ones are refused), and PostgreSQL text cannot.
            raise InvalidRequest("query parameters may not contain NUL characters")
        if name == "includefield":
            all_flag, tags = _include_tags(value)
            include_all |= all_flag
            includes |= tags
        elif name in ("limit", "offset", "fuzzymatching"):
            if name in once:
                raise InvalidRequest(f"query parameter {name!r} given more than once")
            once[name] = value
        elif name in TRANSPORT_PARAMETERS:
            continue
        else:
            value = value.strip(" ")
            key = _query_key(name, value, allowed, lv)
            if isinstance(key, int):
                path: tuple[int, ...] = (key,)
                includes.add(key)
            else:
                attr, item = key
                path = (attr.tag,) if item is None else (attr.tag, item.tag)
                keys.append((name, attr, item, value))
            if path in seen_paths:
                raise InvalidRequest(f"query parameter {name[:80]!r}: attribute given more than once")
            seen_paths.add(path)

    fuzzy = _flag(once["fuzzymatching"], "fuzzymatching") if "fuzzymatching" in once else False
    conditions: list[Condition] = []
    item_conditions: dict[int, list[Condition]] = {}
    for name, attr, item, value in keys:
        target = item or attr
        if not value:
            includes.add(attr.tag)
            continue
        if target.vr == "SQ":
            raise InvalidRequest(
                f"query parameter {name[:80]!r}: match a sequence through its items, as {attr.keyword}.<keyword>=<value>"
            )
        if not target.matching:
            raise InvalidRequest(
                f"query parameter {name[:80]!r}: {target.keyword} cannot be matched; ask for it with includefield"
            )
        condition = _condition(target, value, name, fuzzy)
        if condition is None:
            includes.add(attr.tag)
        elif item is None:
            conditions.append(condition)
        else:
            item_conditions.setdefault(attr.tag, []).append(condition)
    for attr in allowed.values():
        if attr.tag in item_conditions:
            conditions.append(SequenceMatch(attr.keyword, attr.tag, tuple(item_conditions[attr.tag])))

    limit = min(_count(once["limit"], "limit"), max_limit) if "limit" in once else max_limit
    offset = _count(once["offset"], "offset") if "offset" in once else 0
    return QidoQuery(lv, tuple(conditions), frozenset(includes), include_all, fuzzy, limit, offset)
