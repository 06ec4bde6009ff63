"""Counting the statements code sends to the database."""

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine.interfaces import ExecuteStyle


@contextmanager
def round_trips(target: Engine | Connection) -> Iterator[list[int]]:
    """While open, `[count]` of the statements sent through `target`. On
    PostgreSQL an executemany that psycopg2 runs row by row counts once per
    row: each is a round trip (SQLite runs them in process)."""
    count = [0]

    def counted(connection, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        row_by_row = (
            executemany and context is not None and context.execute_style is ExecuteStyle.EXECUTEMANY
            and connection.dialect.name == "postgresql"
        )
        count[0] += len(parameters) if row_by_row else 1

    event.listen(target, "before_cursor_execute", counted)
    try:
        yield count
    finally:
        event.remove(target, "before_cursor_execute", counted)
