"""The audit trail's parts, built once per process by `build_audit`."""

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from server.audit.chain import AuditChain, Signer
from server.audit.recorder import AuditRecorder
from server.fhir.store import ResourceStore
from server.keys import load_or_create_key


@dataclass(frozen=True)
class AuditService:
    chain: AuditChain
    recorder: AuditRecorder


def build_audit(engine: Engine, store: ResourceStore, data_dir: Path, checkpoint_every: int,
                checkpoint_seconds: float) -> AuditService:
    signer = Signer(load_or_create_key(data_dir / "audit-signing.key"))
    chain = AuditChain(engine, store, signer, checkpoint_every)
    return AuditService(chain, AuditRecorder(chain, checkpoint_seconds=checkpoint_seconds))
