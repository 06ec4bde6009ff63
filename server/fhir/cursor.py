"""Opaque, signed, stateless paging cursors.

A cursor carries the whole search (its parameters), where the next or
previous page starts (the sort-key values and id of the last row seen) and
the total counted on the first page. It is compressed JSON with an HMAC, so
the server keeps no paging state, a client cannot forge a position or a
parameter, and the link stays well under a proxy's 2 KB URL limit.
"""

import base64
import hashlib
import hmac
import zlib
from typing import Any

import orjson

from fhir_mappings.errors import InvalidRequest

_TAG_BYTES = 16




class CursorCodec:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def encode(self, state: dict[str, Any]) -> str:
        payload = zlib.compress(orjson.dumps(state))
        tag = hmac.new(self._key, payload, hashlib.sha256).digest()[:_TAG_BYTES]
        return base64.urlsafe_b64encode(tag + payload).rstrip(b"=").decode()

    def decode(self, token: str) -> dict[str, Any]:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (ValueError, TypeError) as error:
            raise _invalid() from error
        tag, payload = raw[:_TAG_BYTES], raw[_TAG_BYTES:]
        if len(tag) < _TAG_BYTES or not hmac.compare_digest(tag, hmac.new(self._key, payload, hashlib.sha256).digest()[:_TAG_BYTES]):
            raise _invalid()
        try:
            state = orjson.loads(zlib.decompress(payload))
        except (zlib.error, orjson.JSONDecodeError) as error:
            raise _invalid() from error
        if not isinstance(state, dict):
            raise _invalid()
        return state


def _invalid() -> InvalidRequest:
    return InvalidRequest("the paging cursor (_cursor) is not one this server issued, or it was altered")
