"""The transactions of this server still open: a version's `lastUpdated` is
taken inside its transaction, so on PostgreSQL one dated before an instant
can commit after a reader has read past that instant. A reader that must
miss no version (a type history polled with `_since`, a bulk export as of
its transactionTime) waits for them, or reads only up to the oldest.
SQLite's writers take turns: versions commit in the order of their times.

Other transactions are this server's sessions: its processes and workers
share a connection name (`application_name`); other applications of the
database do not write its tables."""

import time

from sqlalchemy import Connection, text

from fhir_mappings.date_ranges import to_micros

_OLDEST_OTHER = text(
    "SELECT min(xact_start) FROM pg_stat_activity WHERE datname = current_database()"
    " AND application_name = current_setting('application_name') AND pid <> pg_backend_pid()"
)
# Read again while waiting: within a transaction PostgreSQL answers every
# read of pg_stat_activity from the snapshot it took at the first.
_FRESH = text("SELECT pg_stat_clear_snapshot()")


def settled_before(connection: Connection, instant: int, wait_seconds: float) -> int | None:
    """When the oldest of this server's other open transactions began (µs),
    once those begun at or before `instant` have ended or `wait_seconds`
    have passed; None when none is open (nothing is in flight), and always
    on SQLite."""
    if connection.dialect.name != "postgresql":
        return None
    deadline = time.monotonic() + wait_seconds
    while True:
        connection.execute(_FRESH)
        started = connection.execute(_OLDEST_OTHER).scalar()
        if started is None:
            return None
        if to_micros(started) > instant or time.monotonic() >= deadline:
            return to_micros(started)
        time.sleep(0.005)
