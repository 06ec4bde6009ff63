"""The FHIR side's parts, built once per app by `build_fhir`."""

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Connection, Engine

from fhir_mappings.errors import MethodNotAllowed, ResourceNotFound
from fhir_mappings.search_parameters import DEFINITIONS
from server.fhir.cursor import CursorCodec
from server.fhir.derived import DERIVED_TYPES
from server.fhir.search import Searcher
from server.fhir.store import ResourceStore
from server.fhir.visibility import Visibility
from server.keys import load_or_create_key

# Types clients may create, update and delete. The others are written by the
# server itself: derived from DICOM, or published by later features.
WRITABLE_TYPES = frozenset(("Task", "Subscription", "Group"))


class WriteHook(Protocol):
    """Lets a feature take part in client writes of one type, inside their
    transaction: it may refuse them (a FhirError) or return the resource to
    store in place of the client's."""

    def creating(self, connection: Connection, resource: dict[str, Any], resource_id: str) -> dict[str, Any]: ...

    def updating(self, connection: Connection, resource: dict[str, Any], resource_id: str) -> dict[str, Any]: ...

    def deleting(self, connection: Connection, resource_id: str) -> None: ...


@dataclass(frozen=True)
class FhirService:
    engine: Engine
    store: ResourceStore
    searcher: Searcher
    cursors: CursorCodec
    supported_types: frozenset[str]
    writable_types: frozenset[str]
    # Rules beside the scopes for what a request may see (a Subscription is its owner's), on every read path.
    visibility: Visibility
    write_hooks: dict[str, WriteHook] = field(default_factory=dict)

    def require_type(self, resource_type: str) -> None:
        if resource_type not in self.supported_types:
            raise ResourceNotFound(
                f"{resource_type} is not a resource type this server supports; see /fhir/metadata"
            )

    def require_writable(self, resource_type: str) -> None:
        self.require_type(resource_type)
        if resource_type not in self.writable_types:
            raise MethodNotAllowed(f"{resource_type} is read-only here: the server writes it itself", "GET, HEAD")

    @staticmethod
    def new_id() -> str:
        return str(uuid.uuid4())


def build_fhir(engine: Engine, data_dir: Path, max_included: int) -> FhirService:
    cursors = CursorCodec(load_or_create_key(data_dir / "fhir-cursor.key"))
    # AuditEvents never change: the audit chain is their history, and a second
    # copy of each would double what every audited request costs to write.
    history_types = frozenset(DEFINITIONS) - DERIVED_TYPES - {"AuditEvent"}
    visibility = Visibility()
    return FhirService(
        engine=engine,
        store=ResourceStore(engine, history_types, visibility),
        searcher=Searcher(engine, cursors, max_included, visibility),
        cursors=cursors,
        supported_types=frozenset(DEFINITIONS),
        writable_types=WRITABLE_TYPES,
        visibility=visibility,
    )
