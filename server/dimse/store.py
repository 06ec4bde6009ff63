"""C-STORE (PS3.4 Annex B): a STOW-RS of one instance.

The data set is written to the store's tmp/ as received (not decoded and
encoded again), described (its header only: bulk data stays on disk), and
stored by STOW's own Ingestor
(server/ingest.py), so that indexing, the ImagingStudy sync, the inference
trigger and the audit record in the index transaction (naming the calling
AE, `current_actor`) are those of a STOW. The answer is the STOW outcome's
status (dicom/dimse.py).

pynetdicom receives the data set into a file of the system temp folder
rather than memory (`receive_to_files`, set by the gateway as it starts), so
an instance of gigabytes (a whole-slide image, a tomosynthesis) costs disk,
not RAM. That file is copied into the store's tmp/ behind a File Meta of
ours, and removed whatever the outcome; a transfer cut off midway leaves its
file to `discard_unfinished`, which the gateway calls.
"""

import errno
import logging
import os
import shutil
import struct
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32
from pynetdicom import Association, _config
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from dicom.dimse import (
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    REFUSED_NOT_AUTHORIZED,
    store_status,
)
from dicom.stow import FailureReason, InstanceOutcome
from dicom.transfer_syntax import DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_BE, IMPLICIT_VR_LE
from fhir_mappings.audit_event import AuditKind, Outcome
from server.audit.actors import Actor, current_actor
from server.auth.access import Permission
from server.dimse.calls import Call
from server.ingest import PreparedFile, prepare
from server.services import Services
from server.storage import ReceivedFile, disk_out_of_room

log = logging.getLogger(__name__)

# What a DICOMweb STOW of the same instance needs (server/auth/access.py).
STORE = Permission("ImagingStudy", "c")

_COPY_CHUNK = 1 << 20
# How pynetdicom's File Meta starts after the preamble and "DICM": its File Meta Information Group Length
# (0002,0000), UL, in Explicit VR Little Endian (PS3.10 7.1), whose value is the length of the rest of the meta.
_GROUP_LENGTH = struct.Struct("<HH2sHI")
# The explicit VRs whose length is 4 bytes, after 2 reserved ones (PS3.5 7.1.2, Table 7.1-1).
_LONG_VRS = frozenset(vr.encode() for vr in EXPLICIT_VR_LENGTH_32)


def receive_to_files() -> None:
    """Have pynetdicom write each C-STORE data set it receives to a file
    (`event.dataset_path`) instead of a BytesIO. The setting is the
    process's, not one AE's: it suits because the gateway is the only
    Storage SCP in the server (the C-STOREs of a C-GET it answers, it sends)."""
    _config.STORE_RECV_CHUNKED_DATASET = True


def store(call: Call, event: Event) -> int:
    """The C-STORE status: the peer's role must allow a STOW."""
    calling, address = call.calling, call.address
    sop_instance_uid = str(event.request.AffectedSOPInstanceUID)
    if not call.may(STORE):
        call.record(AuditKind.STOW, Outcome.MINOR_FAILURE,
                    f"C-STORE of {sop_instance_uid} from {calling} refused: its role may not store")
        return REFUSED_NOT_AUTHORIZED
    actor = Actor(calling, address, f"C-STORE of {sop_instance_uid} from {calling}")
    try:
        prepared = prepare(_write(call.services, event, calling))
    except OSError as error:
        failure = FailureReason.OUT_OF_RESOURCES if disk_out_of_room(error) else FailureReason.PROCESSING_FAILURE
        outcome = InstanceOutcome(str(event.request.AffectedSOPClassUID), sop_instance_uid, None, None,
                                  failure=failure, detail=error.strerror)
    else:
        other = _another_instance(prepared, event)
        if other is not None:
            prepared.received.temp_path.unlink(missing_ok=True)
            log.warning("C-STORE of %s from %s refused: %s", sop_instance_uid, calling, other)
            call.record(AuditKind.STOW, Outcome.MINOR_FAILURE, f"{actor.description} answered status "
                        f"{DATA_SET_DOES_NOT_MATCH_SOP_CLASS:04X}: {other}")
            return DATA_SET_DOES_NOT_MATCH_SOP_CLASS
        outcome = _ingest(call.services, prepared, actor)
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


def _write(services: Services, event: Event, calling: str) -> ReceivedFile:
    """The data set as received, after a File Meta (PS3.10 7.1) of this
    server's: the request's UIDs, the negotiated transfer syntax, this
    server as the implementation that wrote it and the peer as its source.
    pynetdicom's file is removed, copied or not."""
    received: Path = event.dataset_path
    try:
        with received.open("rb") as source:
            return _copy(services, source, _meta_header(event, calling), str(event.context.transfer_syntax))
    finally:
        received.unlink(missing_ok=True)


def _meta_header(event: Event, calling: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = event.request.AffectedSOPClassUID
    meta.MediaStorageSOPInstanceUID = event.request.AffectedSOPInstanceUID
    meta.TransferSyntaxUID = event.context.transfer_syntax
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    meta.SourceApplicationEntityTitle = calling
    header = BytesIO(b"\0" * 128 + b"DICM")
    header.seek(0, 2)
    write_file_meta_info(header, meta, enforce_standard=True)
    return header.getvalue()


def _copy(services: Services, source: BinaryIO, header: bytes, syntax: str) -> ReceivedFile:
    """`header`, then the data set of pynetdicom's file `source` (what
    follows its File Meta), in the store's tmp/: refused at once (ENOSPC)
    where the store's disk has no room for it, as a write would be midway."""
    source.seek(128 + 4)
    meta_length = _GROUP_LENGTH.unpack(source.read(_GROUP_LENGTH.size))[-1]
    source.seek(meta_length, os.SEEK_CUR)
    _past_stray_meta(source, syntax)
    size = len(header) + os.fstat(source.fileno()).st_size - source.tell()
    if shutil.disk_usage(services.store.temp_dir).free < size:
        raise OSError(errno.ENOSPC, f"the store's disk has no room for the {size} bytes of the instance")
    writer = services.store.new_temp_file()
    try:
        writer.write(header)
        while chunk := source.read(_COPY_CHUNK):
            writer.write(chunk)
        return writer.finish()
    except OSError:
        writer.abort()
        raise


def _past_stray_meta(source: BinaryIO, syntax: str) -> None:
    """Past the File Meta elements (group 0002) that the data set begins
    with, if any: some SCUs send their file's along, though the File Meta is
    no part of a data set (PS3.10 7.1). Behind our File Meta, readers would
    take them for its own (pydicom and dcmtk read it while the group is
    0002), the peer's overriding ours: its Transfer Syntax UID, which need
    not be the one negotiated, and its Source AE Title. Kept in a deflated
    data set, where they cannot be skipped unread and are read as the data
    set's."""
    if syntax == DEFLATED_EXPLICIT_VR_LE:
        return
    order = ">" if syntax == EXPLICIT_VR_BE else "<"
    while True:
        start = source.tell()
        head = source.read(8)
        if len(head) < 8 or struct.unpack(f"{order}H", head[:2])[0] != 0x0002:
            break
        if syntax == IMPLICIT_VR_LE:
            length = struct.unpack("<I", head[4:])[0]
        elif head[4:6] in _LONG_VRS:
            if len(longer := source.read(4)) < 4:
                break
            length = struct.unpack(f"{order}I", longer)[0]
        else:
            length = struct.unpack(f"{order}H", head[6:])[0]
        if length == 0xFFFFFFFF:  # undefined: no element of the File Meta has it, so this is no File Meta
            break
        source.seek(length, os.SEEK_CUR)
    source.seek(start)


def discard_unfinished(association: Association) -> None:
    """Once its connection is closed (EVT_CONN_CLOSE, in pynetdicom's thread
    that writes the data sets, so never during a write) or its threads have
    ended: remove the file of a C-STORE data set cut off midway, and those
    of C-STOREs received whole but not yet handled, which now never will be
    (their peer is gone, and resends)."""
    dimse = association.dimse
    paths = [getattr(dimse.message, "_data_set_path", None)]
    paths += [request._dataset_path for _, request in list(dimse.msg_queue.queue) if isinstance(request, C_STORE)]
    unfinished = getattr(dimse.message, "_data_set_file", None)
    if unfinished is not None:
        unfinished.close()
    for path in paths:
        if isinstance(path, Path):
            path.unlink(missing_ok=True)


def _another_instance(prepared: PreparedFile, event: Event) -> str | None:
    """Why the data set is not the instance the C-STORE-RQ names (PS3.4
    B.2.3: 0xA900), or None when it is (or cannot be read: the ingest says so)."""
    if prepared.description is None:
        return None
    instance = prepared.description.instance
    named = (str(event.request.AffectedSOPClassUID), str(event.request.AffectedSOPInstanceUID))
    if (instance.sop_class_uid, instance.sop_instance_uid) == named:
        return None
    return (f"the request names SOP Class {named[0]}, Instance {named[1]}; the data set is "
            f"{instance.sop_class_uid}, {instance.sop_instance_uid}")


def _ingest(services: Services, prepared: PreparedFile, actor: Actor) -> InstanceOutcome:
    token = current_actor.set(actor)
    try:
        [outcome] = services.ingestor.store_batch([prepared])
    finally:
        current_actor.reset(token)
    return outcome
