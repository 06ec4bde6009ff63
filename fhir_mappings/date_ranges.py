"""FHIR date, dateTime and instant values as half-open ranges of time.

A FHIR date is as precise as it is written: `2024` covers the whole year,
`2024-03-05T10:15` the whole minute (FHIR R4 search.html#date). Ranges are
microseconds since the Unix epoch, UTC, with an exclusive upper end. A value
without a zone is taken as UTC (the spec leaves it to the server).
"""

import re
from datetime import UTC, datetime, timedelta, timezone

_DATE = re.compile(
    r"(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<fraction>\d{1,9}))?)?"
    r"(?P<zone>Z|[+-]\d{2}:\d{2})?)?)?)?"
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def instant_text(micros: int) -> str:
    """An R4 instant in UTC; microseconds kept, so that keyset paging sees what is stored."""
    return from_micros(micros).isoformat(timespec="microseconds").replace("+00:00", "Z")


def date_range(text: str) -> tuple[int, int] | None:
    """The range a FHIR date/dateTime/instant covers; None when it is not one."""
    match = _DATE.fullmatch(text.strip())
    if not match:
        return None
    parts = match.groupdict()
    try:
        year = int(parts["year"])
        if parts["month"] is None:
            start = datetime(year, 1, 1, tzinfo=UTC)
            return to_micros(start), to_micros(start.replace(year=year + 1)) if year < 9999 else _max()
        month = int(parts["month"])
        if parts["day"] is None:
            start = datetime(year, month, 1, tzinfo=UTC)
            end = start.replace(year=year + 1, month=1) if month == 12 else start.replace(month=month + 1)
            return to_micros(start), to_micros(end)
        day = datetime(year, month, int(parts["day"]), tzinfo=UTC)
        if parts["hour"] is None:
            return to_micros(day), to_micros(day + timedelta(days=1))
        zone = _zone(parts["zone"])
        fraction = parts["fraction"]
        start = datetime(
            year, month, int(parts["day"]), int(parts["hour"]), int(parts["minute"]),
            int(parts["second"] or 0), int((fraction or "0").ljust(6, "0")[:6]), tzinfo=zone,
        )
        if parts["second"] is None:
            width = timedelta(minutes=1)
        elif fraction is None:
            width = timedelta(seconds=1)
        else:
            width = timedelta(microseconds=max(1, 10 ** (6 - min(len(fraction), 6))))
        return to_micros(start), to_micros(start + width)
    except ValueError:
        return None


def _zone(text: str | None) -> timezone:
    if text is None or text == "Z":
        return UTC
    sign = 1 if text[0] == "+" else -1
    return timezone(sign * timedelta(hours=int(text[1:3]), minutes=int(text[4:6])))


def _max() -> int:
    return to_micros(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)) + 1
