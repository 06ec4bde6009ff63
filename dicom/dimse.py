"""DIMSE facts that do not depend on a network library: status codes
(PS3.4 Annex B.2.3 for C-STORE, C.4.1.1.4 for C-FIND, PS3.7 Annex C) and the
A-ASSOCIATE-RJ reasons of PS3.8 Table 9-21.

A C-STORE answers with the same code a STOW-RS FailureReason carries: PS3.18
Table 10.5.3-3 takes its values from the Storage Service's statuses.
"""

from enum import IntEnum

from pydicom.dataset import Dataset

from dicom.stow import InstanceOutcome

SUCCESS = 0x0000
PENDING = 0xFF00  # C-FIND: a match follows, all its keys supported
CANCEL = 0xFE00
FIND_OUT_OF_RESOURCES = 0xA700
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
UNABLE_TO_PROCESS = 0xC000
# PS3.7 C.5.5: the SCU lacks the authorization the operation needs.
REFUSED_NOT_AUTHORIZED = 0x0124
# PS3.4 B.2.3: a C-STORE whose data set is not the instance the request names
# (its Affected SOP Class or Instance UID differs from the data set's).
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900

# This server's Implementation Class UID (PS3.7 D.3.3.2, PS3.10 7.1): a UUID-derived
# UID (PS3.5 B.2), made once, sent in every A-ASSOCIATE-AC and in the File Meta of
# the files a C-STORE writes. The version name changes with the way they are written.
IMPLEMENTATION_CLASS_UID = "2.25.6109181586160945383128784171356503653"
IMPLEMENTATION_VERSION_NAME = "MEDAIFLOW_1"


class AssociationRejection(IntEnum):
    """Diagnostics of an A-ASSOCIATE-RJ from the service user (PS3.8 Table 9-21, source 1)."""

    NO_REASON = 0x01
    CALLING_AE_NOT_RECOGNIZED = 0x03
    CALLED_AE_NOT_RECOGNIZED = 0x07


REJECTED_PERMANENT = 0x01
SOURCE_SERVICE_USER = 0x01


def store_status(outcome: InstanceOutcome) -> int:
    """The C-STORE status of one instance's STOW outcome: success (a resend
    of an instance already stored is one too), or the failure's own code."""
    return SUCCESS if outcome.failure is None else int(outcome.failure)


def too_many_matches(most: int) -> Dataset:
    """The C-FIND status refusing a query that matches more than `most`:
    Refused: Out of Resources (PS3.4 C.4.1.1.4), saying why in its Error
    Comment (LO, 64 characters at most)."""
    status = Dataset()
    status.Status = FIND_OUT_OF_RESOURCES
    status.ErrorComment = f"more than {most} matches; narrow the query"[:64]
    return status
