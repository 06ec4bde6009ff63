"""The DIMSE gateway (PS3.7, PS3.8): Verification and Storage SCP, over pynetdicom.

Every association is vetted before negotiation: the called AE title must be
ours and the calling one a registered peer calling from its host
(server/dimse/peers.py); any other is rejected (A-ASSOCIATE-RJ, permanent,
with the PS3.8 reason) and recorded as a Security Alert. Each operation then
needs the rights of the peer's role, as the same operation over DICOMweb
would (C-STORE: ImagingStudy create).

A C-FIND (Study or Patient Root, STUDY, SERIES or IMAGE level) is the
QIDO-RS search of the same keys (dicom/dimse_query.py, server/dicomweb/qido.py),
its matches sent as pending responses, recorded as a Query before the first.

A C-STORE goes through STOW-RS's ingest (server/ingest.py): the data set is
written to the store's tmp/ as received, described, and stored by the same
Ingestor, so indexing, the ImagingStudy sync, the inference trigger and the
audit record in the index transaction are the ones a STOW gets. Its answer
is the STOW outcome's status (dicom/dimse.py).
"""

import errno
import logging
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from dicom.dimse import (
    CANCEL,
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
    PENDING,
    REFUSED_NOT_AUTHORIZED,
    REJECTED_PERMANENT,
    SOURCE_SERVICE_USER,
    SUCCESS,
    UNABLE_TO_PROCESS,
    AssociationRejection,
    store_status,
)
from dicom.dimse_query import find_level, qido_parameters, response_identifier
from dicom.errors import InvalidRequest, NotFound
from dicom.matching import QidoQuery, parse_qido_query
from dicom.stow import FailureReason, InstanceOutcome
from dicom.transfer_syntax import (
    BULK_DATA_MEDIA_TYPES,
    NATIVE_SYNTAXES,
    VIDEO_MEDIA_TYPES,
)
from fhir_mappings.audit_event import AuditKind, AuditRecord, Outcome, audit_event
from server.audit.actors import Actor, current_actor
from server.audit.recorder import AuditUnavailable
from server.auth.access import Permission
from server.dicomweb.lookup import find_instance
from server.dicomweb.qido import Scope, search
from server.dimse.peers import Peer, Peers, checked_ae_title
from server.ingest import prepare
from server.services import Services
from server.storage import disk_out_of_room

log = logging.getLogger(__name__)

# What a DICOMweb STOW of the same instance needs (server/auth/access.py).
STORE = Permission("ImagingStudy", "c")
FIND = Permission("ImagingStudy", "s")
# Patient Root too: its STUDY, SERIES and IMAGE levels take the same keys (PS3.4 C.6.1); PATIENT is not answered.
FIND_MODELS = (StudyRootQueryRetrieveInformationModelFind, PatientRootQueryRetrieveInformationModelFind)
RETRIEVE = Permission("ImagingStudy", "r")
GET_MODELS = (StudyRootQueryRetrieveInformationModelGet, PatientRootQueryRetrieveInformationModelGet)
# The server keeps instances as received, in any syntax it knows (dicom/transfer_syntax.py).
STORABLE_SYNTAXES = sorted(NATIVE_SYNTAXES | BULK_DATA_MEDIA_TYPES.keys() | VIDEO_MEDIA_TYPES.keys())


class DimseGateway:
    """Listens on `port` (0: any free one, see `address`) from `start` until `stop`."""

    def __init__(self, services: Services, peers: Peers, ae_title: str, host: str, port: int) -> None:
        self.services = services
        self.peers = peers
        self.ae_title = ae_title
        self._listen = (host, port)
        self._server: ThreadedAssociationServer | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None, "the gateway is not listening"
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        ae = AE(ae_title=self.ae_title)
        # Verification and queries carry no pixel data: pynetdicom's default, the uncompressed syntaxes.
        ae.add_supported_context(Verification)
        # The peer may be the Storage SCP too: a C-GET's instances go back over its own association.
        for context in StoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, STORABLE_SYNTAXES, scu_role=True, scp_role=True)
        for model in FIND_MODELS + GET_MODELS:
            ae.add_supported_context(model)
        # Vetted by `_vet` instead, which also checks the peer's address and records refusals.
        ae.require_called_aet = False
        ae.require_calling_aet = []
        handlers = [(evt.EVT_REQUESTED, self._vet), (evt.EVT_C_ECHO, self._echo), (evt.EVT_C_STORE, self._store),
                    (evt.EVT_C_FIND, self._find), (evt.EVT_C_GET, self._get)]
        self._server = ae.start_server(self._listen, block=False, evt_handlers=handlers)
        log.info("DIMSE gateway %s listening on %s:%d", self.ae_title, *self.address)

    def stop(self) -> None:
        """Stop listening, and end the associations still open (each runs in a thread of its own)."""
        if self._server is None:
            return
        server, self._server = self._server, None
        open_associations = server.active_associations
        for association in open_associations:
            association.abort()
        server.shutdown()
        for association in open_associations:
            association.join(timeout=10)

    # --- association ------------------------------------------------------------

    def _vet(self, event: Event) -> None:
        request = event.assoc.requestor.primitive
        calling, called = str(request.calling_ae_title).strip(), str(request.called_ae_title).strip()
        address = event.assoc.requestor.address
        reason: AssociationRejection | None = None
        if called != self.ae_title:
            reason, why = AssociationRejection.CALLED_AE_NOT_RECOGNIZED, f"called AE title {called!r} is not ours"
        else:
            peer = self.peers.find(calling)
            if peer is None:
                reason, why = AssociationRejection.CALLING_AE_NOT_RECOGNIZED, f"{calling!r} is no registered peer"
            elif not peer.calls_from(address):
                reason = AssociationRejection.CALLING_AE_NOT_RECOGNIZED
                why = f"{calling!r} is registered for host {peer.host}, not {address}"
        if reason is None:
            return
        log.warning("DIMSE association from %s at %s rejected: %s", calling, address, why)
        # Recorded before the peer learns of it, as a refused request is before its answer.
        self._record(AuditKind.NODE_AUTHENTICATION, Outcome.MINOR_FAILURE, calling or "\ufffd", address,
                     f"DIMSE association to {called!r} rejected: {why}")
        event.assoc.acse.send_reject(REJECTED_PERMANENT, SOURCE_SERVICE_USER, int(reason))
        event.assoc.kill()

    def _peer(self, event: Event) -> Peer | None:
        """The peer of the association, if it is still registered (it may have been removed since it associated)."""
        return self.peers.find(str(event.assoc.requestor.ae_title))

    # --- services ---------------------------------------------------------------

    def _echo(self, event: Event) -> int:
        return SUCCESS if self._peer(event) is not None else REFUSED_NOT_AUTHORIZED

    def _store(self, event: Event) -> int:
        address = event.assoc.requestor.address
        calling = str(event.assoc.requestor.ae_title).strip()
        sop_instance_uid = str(event.request.AffectedSOPInstanceUID)
        peer = self._peer(event)
        if peer is None or not peer.principal().may(STORE):
            self._record(AuditKind.STOW, Outcome.MINOR_FAILURE, calling, address,
                         f"C-STORE of {sop_instance_uid} from {calling} refused: its role may not store")
            return REFUSED_NOT_AUTHORIZED
        actor = Actor(calling, address, f"C-STORE of {sop_instance_uid} from {calling}")
        outcome = self._ingest(event, actor)
        status = store_status(outcome)
        if outcome.failure is not None:
            log.warning("C-STORE of %s from %s refused with status %04X: %s", sop_instance_uid, calling, status,
                        outcome.detail or outcome.failure.name)
        # A stored change was recorded in its transaction; a resend that changed nothing, or a refusal, is not yet.
        if outcome.failure is not None or not actor.recorded:
            self._record(AuditKind.STOW, Outcome.SUCCESS if outcome.failure is None else Outcome.MINOR_FAILURE,
                         calling, address, f"{actor.description} answered status {status:04X}",
                         study_uids=[outcome.study_instance_uid] if outcome.study_instance_uid else [])
        return status

    def _ingest(self, event: Event, actor: Actor) -> InstanceOutcome:
        try:
            writer = self.services.store.new_temp_file()
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
            [outcome] = self.services.ingestor.store_batch([prepare(received)])
        finally:
            current_actor.reset(token)
        return outcome

    def _find(self, event: Event) -> Iterator[tuple[int, Dataset | None]]:
        """Pending responses, one per match; pynetdicom sends the final Success when they end."""
        address = event.assoc.requestor.address
        calling = str(event.assoc.requestor.ae_title).strip()
        peer = self._peer(event)
        if peer is None or not peer.principal().may(FIND):
            self._record(AuditKind.QIDO, Outcome.MINOR_FAILURE, calling, address,
                         f"C-FIND from {calling} refused: its role may not search studies")
            yield REFUSED_NOT_AUTHORIZED, None
            return
        identifier = event.identifier
        parameters: list[tuple[str, str]] = []
        try:
            level = find_level(identifier)
            parameters = qido_parameters(identifier)
            query = parse_qido_query(level, parameters, self.services.settings.qido_max_limit)
        except InvalidRequest as error:
            self._record(AuditKind.QIDO, Outcome.MINOR_FAILURE, calling, address,
                         f"C-FIND from {calling} refused: {error.message}", query=urlencode(parameters).encode())
            yield IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, None
            return
        # Recorded before the first match goes out, as a QIDO-RS answer is: nothing is disclosed unrecorded.
        if not self._record(AuditKind.QIDO, Outcome.SUCCESS, calling, address, f"C-FIND from {calling}",
                            query=urlencode(parameters).encode()):
            yield UNABLE_TO_PROCESS, None
            return
        for result in self._matches(query):
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield PENDING, response_identifier(identifier, level, Dataset.from_json(result))

    def _matches(self, query: QidoQuery) -> Iterator[dict[str, Any]]:
        """Every match of `query`, a page at a time (DIMSE has no paging of its own)."""
        root = f"{self.services.settings.public_root}/dicom-web"
        offset = 0
        while True:
            page = search(self.services.engine, replace(query, offset=offset), Scope(), root)
            yield from page.results
            if not page.more:
                return
            offset += len(page.results)

    def _get(self, event: Event) -> Iterator[int | tuple[int, Dataset | None]]:
        """The number of instances, then each as a C-STORE sub-operation over
        the peer's association (pynetdicom sends it for a pending status and
        counts what the peer answers)."""
        address = event.assoc.requestor.address
        calling = str(event.assoc.requestor.ae_title).strip()
        peer = self._peer(event)
        if peer is None or not peer.principal().may(RETRIEVE):
            self._record(AuditKind.WADO, Outcome.MINOR_FAILURE, calling, address,
                         f"C-GET from {calling} refused: its role may not read studies")
            yield 1
            yield REFUSED_NOT_AUTHORIZED, None
            return
        parameters: list[tuple[str, str]] = []
        try:
            find_level(event.identifier)
            parameters = qido_parameters(event.identifier)
            # Whatever level it names, a C-GET retrieves the instances below its matches.
            query = parse_qido_query("instance", parameters, self.services.settings.qido_max_limit)
        except InvalidRequest as error:
            self._record(AuditKind.WADO, Outcome.MINOR_FAILURE, calling, address,
                         f"C-GET from {calling} refused: {error.message}", query=urlencode(parameters).encode())
            yield 1
            yield IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, None
            return
        found = [(_uid(match, "0020000D"), _uid(match, "0020000E"), _uid(match, "00080018"))
                 for match in self._matches(query)]
        studies = sorted({study for study, _, _ in found})
        # Recorded before the first instance goes out, as a WADO-RS answer is.
        if not self._record(AuditKind.WADO, Outcome.SUCCESS, calling, address,
                            f"C-GET from {calling}: {len(found)} instances", study_uids=studies,
                            query=urlencode(parameters).encode()):
            yield 1
            yield UNABLE_TO_PROCESS, None
            return
        yield len(found)
        for study, series, sop in found:
            if event.is_cancelled:
                yield CANCEL, None
                return
            try:
                stored = find_instance(self.services.engine, self.services.store, study, series, sop)
                dataset = dcmread(stored.absolute_path)
            except (NotFound, OSError):
                # Deleted since it matched: the rest are counted failed (pynetdicom can skip no sub-operation).
                log.warning("C-GET from %s ended: instance %s went while it was being retrieved", calling, sop)
                yield UNABLE_TO_PROCESS, None
                return
            yield PENDING, dataset

    # --- audit ------------------------------------------------------------------

    def _record(self, kind: AuditKind, outcome: Outcome, client: str, address: str, description: str,
                study_uids: list[str] | None = None, query: bytes | None = None) -> bool:
        """Whether the event was recorded."""
        event = audit_event(AuditRecord(
            kind=kind, outcome=outcome, recorded=datetime.now(UTC), client=client,
            server=self.services.audit.server_name, client_address=address, description=description,
            study_uids=study_uids or [], query=query,
        ))
        try:
            self.services.audit.recorder.record(event)
            return True
        except AuditUnavailable:
            log.exception("a DIMSE audit event could not be recorded")
            return False



def start_dimse(services: Services) -> DimseGateway | None:
    """The gateway, listening, when MEDAIFLOW_DIMSE_PORT is set; None otherwise."""
    settings = services.settings
    if settings.dimse_port is None:
        return None
    gateway = DimseGateway(services, services.peers, checked_ae_title(settings.dimse_ae_title), settings.host,
                           settings.dimse_port)
    try:
        gateway.start()
    except OSError as error:
        if settings.workers == 1 or error.errno != errno.EADDRINUSE:
            raise
        # `serve --workers N`: each process builds its app; the first to bind the port serves DIMSE for all.
        log.warning("DIMSE port %d is taken (another worker of this server, presumably): this process serves HTTP "
                    "alone", settings.dimse_port)
        return None
    return gateway


def _uid(match: dict[str, Any], tag: str) -> str:
    return str(match[tag]["Value"][0])
