"""UPS Watch: who may subscribe, and the event reports a subscriber receives
(PS3.4 CC.2.3 Subscribe/Unsubscribe, CC.2.4 Report a Change in UPS Status;
PS3.18 §11.10-11.13). Nothing here knows about a database or HTTP.

An event report goes out over a WebSocket as one DICOM JSON data set (PS3.18
§8.10.5, §11.13): the N-EVENT-REPORT command's Affected SOP Class UID,
Affected SOP Instance UID and Event Type ID beside the event information of
PS3.4 Table CC.2.4-1.
"""

from collections.abc import Sequence
from typing import Any

from dicom.errors import InvalidRequest
from dicom.workitems import UPS_PUSH_SOP_CLASS

# PS3.4 Annex CC.3.1: the well-known UIDs that stand for the whole worklist in a subscription.
WORKLIST = "1.2.840.10008.5.1.4.34.5"
FILTERED_WORKLIST = "1.2.840.10008.5.1.4.34.5.1"

# Event Type IDs of PS3.4 Table CC.2.4-1. The server reports the first three;
# it never assigns a workitem to a station or a person (5), and it has no
# status of its own to announce (4).
STATE_REPORT, CANCEL_REQUESTED, PROGRESS_REPORT = 1, 2, 3

_AFFECTED_SOP_CLASS, _AFFECTED_SOP_INSTANCE, _EVENT_TYPE_ID = 0x00000002, 0x00001000, 0x00001002
_READINESS, _STATE = 0x00404041, 0x00741000
_PROGRESS_INFORMATION, _PROGRESS, _PROGRESS_DESCRIPTION = 0x00741002, 0x00741004, 0x00741006
_CONTACT_URI, _CONTACT_NAME, _DISCONTINUATION_CODES, _REASON = 0x0074100A, 0x0074100C, 0x0074100E, 0x00741238


def require_ae_title(ae_title: str) -> str:
    """An AE title as PS3.5 Table 6.2-1 defines the AE VR: 1 to 16 characters
    of the default repertoire without backslash or control characters, not
    all spaces; leading and trailing spaces are not significant."""
    stripped = ae_title.strip(" ")
    if not stripped or len(ae_title) > 16 or any(not " " <= char <= "~" or char == "\\" for char in ae_title):
        raise InvalidRequest(
            f"{ae_title[:40]!r} is not an AE title (1 to 16 printable ASCII characters, no backslash, not all spaces)"
        )
    return stripped


def state_report(state: str, reason: str | None = None) -> dict[str, Any]:
    """Event type 1, UPS State Report: the workitem's state, and why it was canceled."""
    information = {_READINESS: _value("CS", "READY"), _STATE: _value("CS", state)}
    if reason:
        information[_REASON] = _value("LT", reason)
    return _report(STATE_REPORT, information)


def cancel_requested(
    reason: str, contact_name: str | None, contact_uri: str | None, discontinuation_codes: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Event type 2, UPS Cancel Requested, as the request gave it."""
    information = {_REASON: _value("LT", reason)}
    if discontinuation_codes:
        information[_DISCONTINUATION_CODES] = {"vr": "SQ", "Value": list(discontinuation_codes)}
    if contact_name:
        information[_CONTACT_NAME] = _value("LO", contact_name)
    if contact_uri:
        information[_CONTACT_URI] = _value("UR", contact_uri)
    return _report(CANCEL_REQUESTED, information)


def progress_report(progress: float | None, description: str | None) -> dict[str, Any]:
    """Event type 3, UPS Progress Report: the Progress Information Sequence as a retrieve shows it."""
    item: dict[str, Any] = {}
    if progress is not None:
        item[f"{_PROGRESS:08X}"] = _value("DS", round(progress, 1))
    if description:
        item[f"{_PROGRESS_DESCRIPTION:08X}"] = _value("ST", description)
    return _report(PROGRESS_REPORT, {_PROGRESS_INFORMATION: {"vr": "SQ", "Value": [item]}})


def addressed(report: dict[str, Any], workitem_uid: str) -> dict[str, Any]:
    """The report as sent: with the N-EVENT-REPORT's Affected SOP Class and
    Instance UIDs, in tag order (PS3.18 F.2). The class is UPS Push, the
    class of every UPS instance (PS3.4 CC.2.4.2 and CC.3.1.1), not UPS Event,
    which names only the service (the example of PS3.18 §11.13, which is
    informative, shows the latter). A report is made in the
    transaction that changes the job, before a UPS-RS create gives the
    workitem its requester's UID, so it is addressed only when sent."""
    elements = {
        f"{_AFFECTED_SOP_CLASS:08X}": _value("UI", UPS_PUSH_SOP_CLASS),
        f"{_AFFECTED_SOP_INSTANCE:08X}": _value("UI", workitem_uid),
        **report,
    }
    return dict(sorted(elements.items()))


def _report(event_type: int, information: dict[int, dict[str, Any]]) -> dict[str, Any]:
    elements = {_EVENT_TYPE_ID: _value("US", event_type), **information}
    return {f"{tag:08X}": elements[tag] for tag in sorted(elements)}


def _value(vr: str, value: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": [value]}
