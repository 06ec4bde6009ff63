"""Request bodies as the client meant them: decoded from their Content-Encoding
(RFC 9110 §8.4) and held to the server's size limit.

HAPI FHIR clients can gzip what they send. A coding this server cannot
decode is refused with 415 (RFC 9110 §15.5.16) rather than read as if it
were the body, which gave a misleading parse error, or none at all. The
limit applies to the decoded bytes, since those are what is held and
stored: a small compressed body cannot grow without bound in memory.
"""

import asyncio
import zlib
from collections.abc import AsyncIterator, Iterator

from starlette.requests import Request

from dicom.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType

# zlib's window bits for each coding: gzip's header and trailer, or zlib's (RFC 9110 §8.4.1).
_WINDOW_BITS = {"gzip": 31, "x-gzip": 31, "deflate": 15}
ACCEPTED_CODINGS = "gzip, deflate"
# Decoded a piece at a time, so that a highly compressed chunk is never expanded whole.
_PIECE = 1 << 20


class UnsupportedContentCoding(UnsupportedMediaType):
    """Answered with the codings that are taken (Accept-Encoding, RFC 9110 §12.5.3)."""


def _codings(request: Request) -> list[str]:
    header = ",".join(request.headers.getlist("content-encoding"))
    return [coding for coding in (part.strip().lower() for part in header.split(",")) if coding not in ("", "identity")]


async def decoded_body(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The request body in chunks, decoded; PayloadTooLarge past `limit` decoded bytes."""
    codings = _codings(request)
    if len(codings) > 1 or (codings and codings[0] not in _WINDOW_BITS):
        raise UnsupportedContentCoding(
            f"Content-Encoding {', '.join(codings)!r} is not supported: send the body as it is, or gzip or deflate it"
        )
    decoder = _Decoder(codings[0]) if codings else None
    size = 0
    async for chunk in request.stream():
        for piece in decoder.decoded(chunk) if decoder is not None else (chunk,):
            size += len(piece)
            if size > limit:
                raise PayloadTooLarge(f"the request body is larger than the limit of {limit} bytes")
            yield piece
            if decoder is not None:
                # A chunk of a few KiB may decode to many MiB: other requests get their turn between pieces.
                await asyncio.sleep(0)
    if decoder is not None:
        rest = decoder.finish()
        if size + len(rest) > limit:
            raise PayloadTooLarge(f"the request body is larger than the limit of {limit} bytes")
        yield rest


class _Decoder:
    def __init__(self, coding: str) -> None:
        self.coding = coding
        self._zlib = zlib.decompressobj(wbits=_WINDOW_BITS[coding])

    def decoded(self, chunk: bytes) -> Iterator[bytes]:
        pending = chunk
        try:
            while pending:
                yield self._zlib.decompress(pending, _PIECE)
                pending = self._zlib.unconsumed_tail
                if self._zlib.eof and self._zlib.unused_data:
                    if _WINDOW_BITS[self.coding] != 31:
                        raise InvalidRequest("the body goes on after the end of its compressed stream")
                    # A gzip body may be several members, one after the other (RFC 1952 §2.2).
                    pending = self._zlib.unused_data
                    self._zlib = zlib.decompressobj(wbits=31)
        except zlib.error as error:
            raise InvalidRequest(f"the body is not the compressed stream its Content-Encoding says: {error}") from error

    def finish(self) -> bytes:
        if not self._zlib.eof:
            raise InvalidRequest(f"the {self.coding} body ends before its compressed stream does")
        return self._zlib.flush()
