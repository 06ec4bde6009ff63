"""UID syntax (PS3.5 §9.1): digits and dots, at most 64 characters.

UIDs from requests become parts of file paths, so they are checked here before
anything else touches them.
"""

import re

from dicom.errors import InvalidRequest

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
MAX_UID_LENGTH = 64


def is_valid_uid(value: str) -> bool:
    return len(value) <= MAX_UID_LENGTH and _UID.match(value) is not None


def is_safe_uid(value: str) -> bool:
    """Looser than `is_valid_uid`: real-world UIDs with leading zeros in a
    component still occur and are safe in a path; anything but digits and dots is not."""
    return 0 < len(value) <= MAX_UID_LENGTH and re.fullmatch(r"[0-9]+(\.[0-9]+)*", value) is not None


def require_uid(value: str, what: str) -> str:
    if not is_safe_uid(value):
        raise InvalidRequest(f"{what} {value[:80]!r} is not a valid DICOM UID (digits and dots, at most 64 characters)")
    return value
