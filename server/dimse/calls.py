"""One DIMSE operation of an association: who asked, from where, with which
rights, and its audit record, which names the calling AE title and address
as the client agent (a refused association has no peer, only those)."""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from fhir_mappings.audit_event import AuditKind, AuditRecord, Outcome, audit_events
from server.audit.recorder import AuditUnavailable
from server.auth.access import Permission
from server.db import reading
from server.dimse.peers import Peer
from server.fhir.derived import study_patients
from server.services import Services

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Call:
    services: Services
    calling: str  # the calling AE title
    address: str  # the peer's IP address, as the connection shows it
    peer: Peer | None  # None: not (or no longer) registered

    def may(self, permission: Permission) -> bool:
        return self.peer is not None and self.peer.principal().may(permission)

    def record(self, kind: AuditKind, outcome: Outcome, description: str, study_uids: Sequence[str] = (),
               query: bytes | None = None) -> bool:
        """Append the event (events, past MAX_PATIENTS_NAMED patients, each naming the studies of
        its patients), naming the patients of `study_uids` as a DICOMweb request's record does,
        and wait until it is durable; False when it could not be."""
        patient_of: dict[str, str] = {}
        if study_uids:
            with reading(self.services.engine) as connection:
                patient_of = study_patients(connection, study_uids)
        patients = sorted(set(patient_of.values()))
        events = audit_events(AuditRecord(
            kind=kind, outcome=outcome, recorded=datetime.now(UTC), client=self.calling or "\ufffd",
            server=self.services.audit.server_name, client_address=self.address, description=description,
            study_uids=study_uids, patients=patients, query=query,
        ), patient_of)
        try:
            self.services.audit.recorder.record(*events)
            return True
        except AuditUnavailable:
            log.exception("a DIMSE audit event could not be recorded")
            return False
