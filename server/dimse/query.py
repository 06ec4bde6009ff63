"""C-FIND and C-GET (PS3.4 Annex C, Study and Patient Root) over the QIDO-RS search.

An identifier becomes QIDO-RS parameters (dicom/dimse_query.py), parsed and
run as a QIDO-RS search would be (server/dicomweb/qido.py), page after page.
A C-FIND sends each match as a pending response; a C-GET sends the
instances below its matches, as stored, by C-STORE sub-operations over the
peer's own association. Each is recorded before anything goes out, as a
QIDO-RS or WADO-RS answer is: nothing is disclosed unrecorded.
"""

import logging
from collections.abc import Iterator
from dataclasses import replace
from itertools import islice
from typing import Any
from urllib.parse import urlencode

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from dicom.dimse import (
    CANCEL,
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
    PENDING,
    REFUSED_NOT_AUTHORIZED,
    UNABLE_TO_PROCESS,
    too_many_matches,
)
from dicom.dimse_query import find_level, qido_parameters, response_identifier, retrieve_level
from dicom.errors import InvalidRequest, NotFound
from dicom.matching import QidoQuery, parse_qido_query
from fhir_mappings.audit_event import AuditKind, Outcome
from server.auth.access import Permission
from server.dicomweb.lookup import find_instance
from server.dicomweb.qido import Scope, search
from server.dimse.calls import Call
from server.services import Services

log = logging.getLogger(__name__)

# What a QIDO-RS search and a WADO-RS retrieve need (server/auth/access.py).
FIND = Permission("ImagingStudy", "s")
RETRIEVE = Permission("ImagingStudy", "r")
# Patient Root too: its STUDY, SERIES and IMAGE levels take the same keys (PS3.4 C.6.1); PATIENT is not answered.
FIND_MODELS = (StudyRootQueryRetrieveInformationModelFind, PatientRootQueryRetrieveInformationModelFind)
GET_MODELS = (StudyRootQueryRetrieveInformationModelGet, PatientRootQueryRetrieveInformationModelGet)


def find(call: Call, event: Event) -> Iterator[tuple[int, Dataset | None]]:
    """Pending responses, one per match; pynetdicom sends the final Success when they end."""
    calling, services = call.calling, call.services
    if not call.may(FIND):
        call.record(AuditKind.QIDO, Outcome.MINOR_FAILURE,
                    f"C-FIND from {calling} refused: its role may not search studies")
        yield REFUSED_NOT_AUTHORIZED, None
        return
    identifier = event.identifier
    parameters: list[tuple[str, str]] = []
    try:
        level = find_level(identifier)
        parameters = qido_parameters(identifier)
        query = parse_qido_query(level, parameters, services.settings.qido_max_limit)
    except InvalidRequest as error:
        call.record(AuditKind.QIDO, Outcome.MINOR_FAILURE, f"C-FIND from {calling} refused: {error.message}",
                    query=urlencode(parameters).encode())
        yield IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, None
        return
    # Recorded before the first match goes out, as a QIDO-RS answer is, naming the studies (and so the patients)
    # it discloses: all matches are found first.
    most = services.settings.dimse_find_max_matches
    results = list(islice(_matches(services, query), most + 1))
    if len(results) > most:
        # As dcm4chee refuses a C-FIND past its QueryMaxNumberOfResults: DIMSE has no paging to
        # offer the rest, and the answer would be held whole to be recorded before it goes out.
        call.record(AuditKind.QIDO, Outcome.MINOR_FAILURE,
                    f"C-FIND from {calling} refused: more than {most} matches", query=urlencode(parameters).encode())
        yield too_many_matches(most), None
        return
    studies = sorted({_uid(result, "0020000D") for result in results})
    if not call.record(AuditKind.QIDO, Outcome.SUCCESS, f"C-FIND from {calling}", study_uids=studies,
                       query=urlencode(parameters).encode()):
        yield UNABLE_TO_PROCESS, None
        return
    for result in results:
        if event.is_cancelled:
            yield CANCEL, None
            return
        yield PENDING, response_identifier(identifier, level, Dataset.from_json(result))


def _matches(services: Services, query: QidoQuery) -> Iterator[dict[str, Any]]:
    """Every match of `query`, a page at a time (DIMSE has no paging of its own)."""
    root = f"{services.settings.public_root}/dicom-web"
    offset = 0
    while True:
        page = search(services.engine, replace(query, offset=offset), Scope(), root)
        yield from page.results
        if not page.more:
            return
        offset += len(page.results)


def get(call: Call, event: Event) -> Iterator[int | tuple[int, Dataset | None]]:
    """The number of instances, then each as a C-STORE sub-operation over
    the peer's association (pynetdicom sends it for a pending status and
    counts what the peer answers)."""
    calling, services = call.calling, call.services
    if not call.may(RETRIEVE):
        call.record(AuditKind.WADO, Outcome.MINOR_FAILURE,
                    f"C-GET from {calling} refused: its role may not read studies")
        yield 1
        yield REFUSED_NOT_AUTHORIZED, None
        return
    parameters: list[tuple[str, str]] = []
    try:
        retrieve_level(event.identifier)
        parameters = qido_parameters(event.identifier)
        # Whatever level it names, a C-GET retrieves the instances below its matches.
        query = parse_qido_query("instance", parameters, services.settings.qido_max_limit)
    except InvalidRequest as error:
        call.record(AuditKind.WADO, Outcome.MINOR_FAILURE, f"C-GET from {calling} refused: {error.message}",
                    query=urlencode(parameters).encode())
        yield 1
        yield IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, None
        return
    found = [(_uid(match, "0020000D"), _uid(match, "0020000E"), _uid(match, "00080018"))
             for match in _matches(services, query)]
    studies = sorted({study for study, _, _ in found})
    # Recorded before the first instance goes out, as a WADO-RS answer is.
    if not call.record(AuditKind.WADO, Outcome.SUCCESS, f"C-GET from {calling}: {len(found)} instances",
                       study_uids=studies, query=urlencode(parameters).encode()):
        yield 1
        yield UNABLE_TO_PROCESS, None
        return
    yield len(found)
    for study, series, sop in found:
        if event.is_cancelled:
            yield CANCEL, None
            return
        try:
            stored = find_instance(services.engine, services.store, study, series, sop)
            dataset = dcmread(stored.absolute_path)
        except (NotFound, OSError):
            # Deleted since it matched: the rest are counted failed (pynetdicom can skip no sub-operation).
            log.warning("C-GET from %s ended: instance %s went while it was being retrieved", calling, sop)
            yield UNABLE_TO_PROCESS, None
            return
        yield PENDING, dataset


def _uid(match: dict[str, Any], tag: str) -> str:
    return str(match[tag]["Value"][0])
