"""The audit trail's parts, built once per process by `build_audit`."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine

from fhir_mappings.audit_event import AuditKind, AuditRecord, Outcome, audit_events
from server.audit.chain import AuditChain, Signer
from server.audit.recorder import AuditRecorder
from server.db import before_commit
from server.fhir.store import ResourceStore
from server.keys import load_or_create_key


@dataclass(frozen=True)
class AuditService:
    chain: AuditChain
    recorder: AuditRecorder
    server_name: str

    def record_in(
        self, connection: Connection, kind: AuditKind, client: str, description: str,
        resources: Sequence[str] = (), patients: Sequence[str] = (), outcome: Outcome = Outcome.SUCCESS,
        destination: str | None = None, study_uids: Sequence[str] = (), client_address: str | None = None,
    ) -> None:
        """An event of the server's own (a job's step, a model or user change,
        a notification sent to `destination`), or of a DIMSE peer's store
        (`client_address`: where it called from), appended in the transaction of
        the change: both commit, or neither. Appended as the transaction
        ends, after its other writes, as a request's own record is: every
        writer takes the chain's head last. An export of many patients is
        several events (`audit_events`), appended together."""
        events = audit_events(AuditRecord(
            kind=kind, outcome=outcome, recorded=datetime.now(UTC), client=client, server=self.server_name,
            description=description, resources=resources, patients=patients, destination=destination,
            study_uids=study_uids, client_address=client_address,
        ))
        pending = before_commit(connection, "audit.own-events", lambda: _PendingEvents(self.chain), last=True)
        pending.events.extend(events)


class _PendingEvents:
    def __init__(self, chain: AuditChain) -> None:
        self.chain = chain
        self.events: list[dict[str, Any]] = []

    def __call__(self, connection: Connection) -> None:
        self.chain.append(connection, self.events)


def build_audit(engine: Engine, store: ResourceStore, data_dir: Path, checkpoint_every: int,
                checkpoint_seconds: float, server_name: str) -> AuditService:
    signer = Signer(load_or_create_key(data_dir / "audit-signing.key"))
    chain = AuditChain(engine, store, signer, checkpoint_every, anchor=data_dir / "audit-anchor.json")
    return AuditService(chain, AuditRecorder(chain, checkpoint_seconds=checkpoint_seconds), server_name)
