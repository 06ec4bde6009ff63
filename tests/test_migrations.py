"""The Alembic migrations build exactly the schema that server/tables.py declares."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from server.migrate import upgrade
from server.tables import metadata


def test_migrated_schema_matches_the_declared_tables(services):
    with services.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    assert differences == []


def test_upgrade_twice_is_harmless(services):
    upgrade(services.engine)
    upgrade(services.engine)
