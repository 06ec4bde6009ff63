"""The DIMSE gateway (PS3.7, PS3.8) over pynetdicom: the SCP of Verification,
Storage (server/dimse/store.py) and Query/Retrieve FIND and GET
(server/dimse/query.py), from `start` until `stop`.

Every association is vetted before negotiation: the called AE title must be
ours and the calling one a registered peer calling from its host
(server/dimse/peers.py); any other is rejected (A-ASSOCIATE-RJ, permanent,
with the PS3.8 reason) and recorded as a Security Alert. Each operation then
needs the rights of the peer's role, as the same operation over DICOMweb
would, looked up again for each (a peer removed meanwhile has none).
"""

import errno
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

from pynetdicom import AE, Association, evt
from pynetdicom.events import Event
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from dicom.dimse import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    REFUSED_NOT_AUTHORIZED,
    REJECTED_PERMANENT,
    SOURCE_SERVICE_USER,
    SUCCESS,
    AssociationRejection,
)
from dicom.transfer_syntax import BULK_DATA_MEDIA_TYPES, NATIVE_SYNTAXES, VIDEO_MEDIA_TYPES
from fhir_mappings.audit_event import AuditKind, Outcome
from server.dimse.calls import Call
from server.dimse.peers import Peers, checked_ae_title
from server.dimse.query import FIND_MODELS, GET_MODELS, find, get
from server.dimse.store import discard_unfinished, receive_to_files, store
from server.services import Services

log = logging.getLogger(__name__)

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
        # Every association until its files are known gone (`_sweep`).
        self._associations: list[Association] = []
        self._associations_lock = threading.Lock()

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None, "the gateway is not listening"
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        receive_to_files()
        ae = AE(ae_title=self.ae_title)
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
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
        handlers = [(evt.EVT_CONN_OPEN, self._opened), (evt.EVT_REQUESTED, self._vet), (evt.EVT_C_ECHO, self._echo),
                    (evt.EVT_CONN_CLOSE, lambda event: discard_unfinished(event.assoc)),
                    (evt.EVT_C_STORE, self._store), (evt.EVT_C_FIND, self._with_call(find)),
                    (evt.EVT_C_GET, self._with_call(get))]
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
        self._sweep()

    # --- association ------------------------------------------------------------

    def _opened(self, event: Event) -> None:
        _no_delay(event)
        self._sweep()
        with self._associations_lock:
            self._associations.append(event.assoc)

    def _sweep(self) -> None:
        """The received files that the associations which have ended left
        behind. Most are removed as their connection closes; but when
        pynetdicom's thread fails writing one (the system temp folder is
        full), the connection closes without telling, and only this finds
        them: as the next association opens, or the gateway stops."""
        with self._associations_lock:
            # Not yet started is not ended: EVT_CONN_OPEN comes before pynetdicom starts the association's thread,
            # and another association opening meanwhile would drop this one before it could leave any file.
            ended = [association for association in self._associations if association.ident is not None
                     and not association.is_alive() and not association.dul.is_alive()]
            self._associations = [association for association in self._associations if association not in ended]
        for association in ended:
            discard_unfinished(association)

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
        Call(self.services, calling, address, None).record(
            AuditKind.NODE_AUTHENTICATION, Outcome.MINOR_FAILURE, f"DIMSE association to {called!r} rejected: {why}")
        event.assoc.acse.send_reject(REJECTED_PERMANENT, SOURCE_SERVICE_USER, int(reason))
        event.assoc.kill()

    def _call(self, event: Event) -> Call:
        """The operation's caller, with its peer as registered now (None once removed)."""
        calling = str(event.assoc.requestor.ae_title).strip()
        return Call(self.services, calling, event.assoc.requestor.address, self.peers.find(calling))

    def _with_call(self, handler: Callable[[Call, Event], Any]) -> Callable[[Event], Any]:
        return lambda event: handler(self._call(event), event)

    def _store(self, event: Event) -> int:
        """`store`, the received file removed whatever happens: pynetdicom
        removes it only when the handler returns, so one that raised (the
        database unreachable as the peer is looked up) left the data set in
        the system temp folder for good, one file per C-STORE."""
        try:
            return store(self._call(event), event)
        finally:
            event.dataset_path.unlink(missing_ok=True)

    def _echo(self, event: Event) -> int:
        return SUCCESS if self._call(event).peer is not None else REFUSED_NOT_AUTHORIZED


def _no_delay(event: Event) -> None:
    """Send each PDU at once (TCP_NODELAY). pynetdicom writes a DIMSE message
    as several small sends (command, then data set); with Nagle's algorithm
    on, the next waits until the peer ACKs the last, and peers (dcmtk, Orthanc)
    delay that ACK by up to 40 ms: every response would wait it out."""
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


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

