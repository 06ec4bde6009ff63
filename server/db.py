"""Database engines: SQLite (WAL) by default, PostgreSQL by URL.

SQLite takes its write lock late by default, so two writers that both read
first can fail with "database is locked" instead of waiting. Write units ask
for `BEGIN IMMEDIATE` through `write_connection()`, which makes them queue on
the busy timeout instead.
"""

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url

SQLITE_BUSY_TIMEOUT_MS = 60_000
SQLITE_POOL_SIZE = 40


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    # A database host that stops answering must fail /readyz quickly, not after minutes.
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, connect_args={"connect_timeout": 5})


def _sqlite_engine(url: str) -> Engine:
    # A pool as large as the request thread pool: connections beyond the pool
    # are closed after each use, and each new one pays for its PRAGMAs.
    engine = create_engine(
        url,
        pool_size=SQLITE_POOL_SIZE,
        max_overflow=SQLITE_POOL_SIZE,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        # Let SQLAlchemy, not the driver, decide where transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        options = connection.get_execution_options()
        if options.get("sqlite_autocommit"):
            return
        mode = "IMMEDIATE" if options.get("sqlite_immediate") else "DEFERRED"
        connection.exec_driver_sql(f"BEGIN {mode}")

    return engine


@contextmanager
def write_connection(engine: Engine) -> Iterator[Connection]:
    """A connection whose transaction holds the write lock from its start (SQLite);
    on PostgreSQL an ordinary READ COMMITTED transaction."""
    with engine.connect().execution_options(sqlite_immediate=True) as connection:
        with connection.begin():
            yield connection


@contextmanager
def reading(engine: Engine, connection: Connection | None = None) -> Iterator[Connection]:
    """The caller's connection when it has one (to see its own uncommitted
    writes, as in a FHIR transaction), else a fresh one without a transaction.

    Each statement of a read then commits on its own: no BEGIN and ROLLBACK
    round trips around a single SELECT, which is most of a FHIR read's cost
    on PostgreSQL. Reads see committed data, statement by statement.
    """
    if connection is not None:
        yield connection
        return
    options = {"sqlite_autocommit": True} if engine.dialect.name == "sqlite" else {"isolation_level": "AUTOCOMMIT"}
    with engine.connect().execution_options(**options) as own:
        yield own


def ping(engine: Engine) -> None:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
