"""UID syntax (PS3.5 §9.1): digits and dots, at most 64 characters.

UIDs from requests become parts of file paths, so they are checked here before
anything else touches them. The check is looser than PS3.5 in one way: real
files still carry components with leading zeros ("1.2.03"), which are safe in
a path and are accepted so that such instances can be stored.
"""

import re

from dicom.errors import InvalidRequest

MAX_UID_LENGTH = 64
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")


def is_safe_uid(value: str) -> bool:
    return 0 < len(value) <= MAX_UID_LENGTH and _UID.fullmatch(value) is not None


def require_uid(value: str, what: str) -> str:
    if not is_safe_uid(value):
        raise InvalidRequest(f"{what} {value[:80]!r} is not a valid DICOM UID (digits and dots, at most 64 characters)")
    return value
