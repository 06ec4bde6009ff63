"""`medaiflow db upgrade`: bring the index schema to the newest Alembic revision."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

_ALEMBIC_INI = Path(__file__).with_name("alembic.ini")


@contextmanager
def migrating(engine: Engine) -> Iterator[Config]:
    """Alembic's configuration, on a transaction that holds SQLite's write
    lock from its start: begun deferred, a migration that read the schema
    before another process (or a server thread) wrote failed at once with
    "database is locked" instead of waiting its turn."""
    config = Config(str(_ALEMBIC_INI))
    with engine.connect().execution_options(sqlite_immediate=True) as connection, connection.begin():
        config.attributes["connection"] = connection
        yield config


def upgrade(engine: Engine, revision: str = "head") -> None:
    with migrating(engine) as config:
        command.upgrade(config, revision)
