"""DIMSE facts that do not depend on a network library: status codes
(PS3.4 Annex B.2.3 for C-STORE, C.4.1.1.4 for C-FIND, PS3.7 Annex C) and the
A-ASSOCIATE-RJ reasons of PS3.8 Table 9-21.

A C-STORE answers with the same code a STOW-RS FailureReason carries: PS3.18
Table 10.5.3-3 takes its values from the Storage Service's statuses.
"""

from enum import IntEnum

from dicom.stow import InstanceOutcome

SUCCESS = 0x0000
PENDING = 0xFF00  # C-FIND: a match follows, all its keys supported
CANCEL = 0xFE00
FIND_OUT_OF_RESOURCES = 0xA700
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
UNABLE_TO_PROCESS = 0xC000
# PS3.7 C.5.5: the SCU lacks the authorization the operation needs.
REFUSED_NOT_AUTHORIZED = 0x0124


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
