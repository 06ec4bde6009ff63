"""What a test can see of a store: files on disk and journal entries."""

from sqlalchemy import select

from server.services import Services
from server.tables import storage_journal


def files_on_disk(services: Services) -> set[str]:
    """Stored files, relative to the store root; payloads in flight under tmp/ excluded."""
    root = services.store.root
    return {
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and services.store.temp_root not in path.parents
    }


def journal(services: Services) -> list[str]:
    with services.engine.connect() as connection:
        return list(connection.execute(select(storage_journal.c.file_path)).scalars())
