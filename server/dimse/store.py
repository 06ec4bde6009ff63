"""C-STORE (PS3.4 Annex B): a STOW-RS of one instance.

The data set is written to the store's tmp/ as received (not decoded and
encoded again), described, and stored by STOW's own Ingestor
(server/ingest.py), so that indexing, the ImagingStudy sync, the inference
trigger and the audit record in the index transaction (naming the calling
AE, `current_actor`) are those of a STOW. The answer is the STOW outcome's
status (dicom/dimse.py).
"""

import logging

from pynetdicom.events import Event

from dicom.dimse import REFUSED_NOT_AUTHORIZED, store_status
from dicom.stow import FailureReason, InstanceOutcome
from fhir_mappings.audit_event import AuditKind, Outcome
from server.audit.actors import Actor, current_actor
from server.auth.access import Permission
from server.dimse.calls import Call
from server.ingest import prepare
from server.services import Services
from server.storage import disk_out_of_room

log = logging.getLogger(__name__)

# What a DICOMweb STOW of the same instance needs (server/auth/access.py).
STORE = Permission("ImagingStudy", "c")


def store(call: Call, event: Event) -> int:
    """The C-STORE status: the peer's role must allow a STOW."""
    calling, address = call.calling, call.address
    sop_instance_uid = str(event.request.AffectedSOPInstanceUID)
    if not call.may(STORE):
        call.record(AuditKind.STOW, Outcome.MINOR_FAILURE,
                    f"C-STORE of {sop_instance_uid} from {calling} refused: its role may not store")
        return REFUSED_NOT_AUTHORIZED
    actor = Actor(calling, address, f"C-STORE of {sop_instance_uid} from {calling}")
    outcome = _ingest(call.services, event, actor)
    status = store_status(outcome)
    if outcome.failure is not None:
        log.warning("C-STORE of %s from %s refused with status %04X: %s", sop_instance_uid, calling, status,
                    outcome.detail or outcome.failure.name)
    # A stored change was recorded in its transaction; a resend that changed nothing, or a refusal, is not yet.
    if outcome.failure is not None or not actor.recorded:
        call.record(AuditKind.STOW, Outcome.SUCCESS if outcome.failure is None else Outcome.MINOR_FAILURE,
                    f"{actor.description} answered status {status:04X}",
                    study_uids=[outcome.study_instance_uid] if outcome.study_instance_uid else [])
    return status


def _ingest(services: Services, event: Event, actor: Actor) -> InstanceOutcome:
    try:
        writer = services.store.new_temp_file()
        try:
            writer.write(event.encoded_dataset())
            received = writer.finish()
        except OSError:
            writer.abort()
            raise
    except OSError as error:
        failure = FailureReason.OUT_OF_RESOURCES if disk_out_of_room(error) else FailureReason.PROCESSING_FAILURE
        return InstanceOutcome(str(event.request.AffectedSOPClassUID), str(event.request.AffectedSOPInstanceUID),
                               None, None, failure=failure, detail=error.strerror)
    token = current_actor.set(actor)
    try:
        [outcome] = services.ingestor.store_batch([prepare(received)])
    finally:
        current_actor.reset(token)
    return outcome
