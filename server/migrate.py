"""`medaiflow db upgrade`: bring the index schema to the newest Alembic revision."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

_ALEMBIC_INI = Path(__file__).with_name("alembic.ini")


def upgrade(engine: Engine, revision: str = "head") -> None:
    config = Config(str(_ALEMBIC_INI))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
