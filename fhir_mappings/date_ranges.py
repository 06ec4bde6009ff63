"""FHIR date, dateTime and instant values as half-open ranges of time.

A FHIR date is as precise as it is written: `2024` covers the whole year,
`2024-03-05T10:15` the whole minute (FHIR R4 search.html#date). Ranges are
microseconds since the Unix epoch, UTC, with an exclusive upper end. A value
without a zone is taken as UTC (the spec leaves it to the server).
"""

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

from fhir_mappings.errors import InvalidRequest

_DATE = re.compile(
    r"(?P<year>[0-9]{4})(?:-(?P<month>[0-9]{2})(?:-(?P<day>[0-9]{2})"
    r"(?:T(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2})(?::(?P<second>[0-9]{2})(?:\.(?P<fraction>[0-9]+))?)?"
    r"(?P<zone>Z|[+-][0-9]{2}:[0-9]{2})?)?)?)?"
)

# R4 datatypes.html#instant: to the second at least, with a zone; fraction digits without a limit.
_INSTANT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:Z|[+-][0-9]{2}:[0-9]{2})")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def instant_text(micros: int) -> str:
    """An R4 instant in UTC; microseconds kept, so that keyset paging sees what is stored."""
    return from_micros(micros).isoformat(timespec="microseconds").replace("+00:00", "Z")


def require_instant(name: str, text: str) -> int:
    """The moment a parameter that R4 types as an instant names (history's
    and Bulk export's `_since`, a Bundle entry's `ifModifiedSince`), in
    microseconds. A date or a time without a zone (`_since=2000`) is refused:
    taken as a range's start, it would answer for a moment the client did
    not name."""
    span = date_range(text) if _INSTANT.fullmatch(text) else None
    if span is None:
        raise InvalidRequest(
            f"{name} must be an instant, to the second with a zone, such as 2024-05-01T00:00:00Z; not {text[:40]!r}"
        )
    return span[0]


def date_from_dicom(value: str | None) -> str | None:
    """A DICOM DA (YYYYMMDD, PS3.5 6.2) as a FHIR date; None when it is not a real date.

    Real-world files carry dates such as 20241340 or 00000000: such a value is
    left out of the resource rather than refusing the instance.
    """
    text = (value or "").strip()
    if not re.fullmatch(r"[0-9]{8}", text):
        return None
    try:
        day = datetime(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None
    # Not strftime: the C library does not pad years below 1000 (00010101, a common "unknown").
    return f"{day.year:04d}-{day.month:02d}-{day.day:02d}"


def date_range(text: str) -> tuple[int, int] | None:
    """The range a FHIR date/dateTime/instant covers; None when it is not one."""
    match = _DATE.fullmatch(text.strip())
    if not match:
        return None
    parts = match.groupdict()
    year = int(parts["year"])
    try:
        if parts["month"] is None:
            start = datetime(year, 1, 1, tzinfo=UTC)
            return to_micros(start), _end(lambda: start.replace(year=year + 1))
        month = int(parts["month"])
        if parts["day"] is None:
            start = datetime(year, month, 1, tzinfo=UTC)
            return to_micros(start), _end(
                lambda: start.replace(year=year + 1, month=1) if month == 12 else start.replace(month=month + 1)
            )
        day = datetime(year, month, int(parts["day"]), tzinfo=UTC)
        if parts["hour"] is None:
            return to_micros(day), _end(lambda: day + timedelta(days=1))
        fraction = parts["fraction"]
        second = int(parts["second"] or 0)
        if second > 60:
            return None
        moment = datetime(
            year, month, int(parts["day"]), int(parts["hour"]), int(parts["minute"]),
            min(second, 59), int((fraction or "0").ljust(6, "0")[:6]), tzinfo=_zone(parts["zone"]),
        )
    except ValueError:
        return None
    if second == 60:
        # A leap second (R4's dateTime allows :60), which POSIX time has no
        # room for: the last microsecond of the second before it, so that it
        # stays within its minute, day and year.
        moment = moment.replace(microsecond=999_999)
        return to_micros(moment), to_micros(moment) + 1
    if parts["second"] is None:
        width = timedelta(minutes=1)
    elif fraction is None:
        width = timedelta(seconds=1)
    else:
        width = timedelta(microseconds=max(1, 10 ** (6 - min(len(fraction), 6))))
    high = _end(lambda: moment + width)
    # Late on 9999-12-31 west of UTC lies past the end of time: clamp it there.
    return min(to_micros(moment), high - 1), high


def _end(compute: Callable[[], datetime]) -> int:
    """The exclusive end of a range; the end of year 9999 where it would fall after it."""
    try:
        return to_micros(compute())
    except (ValueError, OverflowError):
        return _max()


def _zone(text: str | None) -> timezone:
    if text is None or text == "Z":
        return UTC
    sign = 1 if text[0] == "+" else -1
    return timezone(sign * timedelta(hours=int(text[1:3]), minutes=int(text[4:6])))


def _max() -> int:
    return to_micros(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)) + 1
