"""multipart/related bodies (RFC 2387, RFC 2046 §5.1; PS3.18 §8.6), read and written as streams.

STOW-RS bodies and WADO-RS responses can be many gigabytes, so the reader is a
push parser that hands out part data as soon as it cannot be the start of a
delimiter, and the writer yields frames around caller-supplied chunk iterators.
"""

import itertools
import mmap
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import Enum, auto

from dicom.errors import InvalidRequest
from dicom.media_types import parse_media_type

MAX_HEADER_BYTES = 16 * 1024
# RFC 2046 §5.1.1 limits boundaries to 70 characters; longer ones do occur and
# cost nothing to accept, so only absurd lengths are refused.
_MAX_BOUNDARY_LENGTH = 256
# Transport padding (RFC 2046 §5.1.1) allowed between a boundary and its CRLF.
_MAX_PADDING = 1024
_CRLF = b"\r\n"


@dataclass(frozen=True)
class ContentType:
    media_type: str
    params: Mapping[str, str]


def parse_content_type(value: str) -> ContentType:
    """Lowercased media type and parameter names, quoted values unquoted."""
    media_type, params = parse_media_type(value)
    if "*" in media_type:
        raise InvalidRequest(f"Content-Type {value[:200]!r} is a media range, not a media type")
    return ContentType(media_type, params)


@dataclass(frozen=True)
class PartStart:
    headers: Mapping[str, str]
    content_type: str


@dataclass(frozen=True)
class PartData:
    data: bytes


@dataclass(frozen=True)
class PartEnd:
    pass


Event = PartStart | PartData | PartEnd


class _State(Enum):
    PREAMBLE = auto()
    HEADERS = auto()
    BODY = auto()
    EPILOGUE = auto()


class _Verdict(Enum):
    NEED_MORE = auto()
    NOT_DELIMITER = auto()
    NEXT_PART = auto()
    CLOSE = auto()


def _check_boundary(boundary: str) -> bytes:
    if not 0 < len(boundary) <= _MAX_BOUNDARY_LENGTH or not boundary.isascii() or any(c in boundary for c in "\r\n"):
        raise InvalidRequest(f"invalid multipart boundary {boundary[:80]!r}")
    return boundary.encode("ascii")


class MultipartReader:
    """Push parser: `feed` chunks of any size, collect events, then `close`.

    The unread input is `self._buffer[self._position:]`. Consuming input moves
    the position instead of copying, and a chunk that is all part data is
    handed out as the very bytes object that was fed.
    """

    def __init__(self, boundary: str, default_content_type: str) -> None:
        self._delimiter = _CRLF + b"--" + _check_boundary(boundary)
        self._default_content_type = default_content_type
        # The delimiter includes the CRLF that ends the previous line; a body
        # that opens with "--boundary" has no such line, so one is supplied.
        self._buffer = _CRLF
        self._position = 0
        self._state = _State.PREAMBLE

    def feed(self, data: bytes) -> list[Event]:
        if self._state is _State.EPILOGUE:
            return []
        left = len(self._buffer) - self._position
        self._buffer = self._buffer[self._position :] + data if left else bytes(data)
        self._position = 0
        events: list[Event] = []
        while self._step(events):
            pass
        return events

    def close(self) -> None:
        if self._state is not _State.EPILOGUE:
            where = "an unterminated part" if self._state is not _State.PREAMBLE else "no delimiter"
            raise InvalidRequest(f"multipart body ends with {where}: no closing boundary was seen")

    def _step(self, events: list[Event]) -> bool:
        """Consume what the buffer allows in the current state; False when more input is needed."""
        if self._state is _State.HEADERS:
            return self._read_headers(events)
        if self._state is _State.EPILOGUE:
            self._buffer, self._position = b"", 0
            return False
        return self._scan(events)

    def _scan(self, events: list[Event]) -> bool:
        """Look for the next delimiter, in the preamble or in a part's body."""
        buffer = self._buffer
        start = self._position
        while True:
            found = buffer.find(self._delimiter, start)
            if found < 0:
                self._emit(events, self._possible_delimiter_start())
                return False
            verdict, after = self._judge(found + len(self._delimiter))
            if verdict is _Verdict.NOT_DELIMITER:
                # Boundary-like bytes inside the data (e.g. "--boundaryXYZ").
                start = found + 1
                continue
            self._emit(events, found)
            if verdict is _Verdict.NEED_MORE:
                return False
            self._position = after
            if self._state is _State.BODY:
                events.append(PartEnd())
            self._state = _State.HEADERS if verdict is _Verdict.NEXT_PART else _State.EPILOGUE
            return True

    def _possible_delimiter_start(self) -> int:
        """Where the buffer's end could begin a delimiter that the next chunk
        completes; the buffer's length when it cannot."""
        buffer, delimiter = self._buffer, self._delimiter
        carriage_return = buffer.find(b"\r", max(len(buffer) - len(delimiter) + 1, self._position))
        while carriage_return >= 0 and not delimiter.startswith(buffer[carriage_return:]):
            carriage_return = buffer.find(b"\r", carriage_return + 1)
        return carriage_return if carriage_return >= 0 else len(buffer)

    def _judge(self, position: int) -> tuple[_Verdict, int]:
        """After delimiter bytes ending at `position`: "--" closes the body,
        padding then CRLF starts a part, anything else is data."""
        buffer = self._buffer
        if len(buffer) < position + 2:
            return _Verdict.NEED_MORE, position
        if buffer[position : position + 2] == b"--":
            return _Verdict.CLOSE, position + 2
        end = position
        while end < len(buffer) and buffer[end] in b" \t" and end - position <= _MAX_PADDING:
            end += 1
        if len(buffer) < end + 2:
            return (_Verdict.NEED_MORE if end - position <= _MAX_PADDING else _Verdict.NOT_DELIMITER), position
        if buffer[end : end + 2] == _CRLF:
            return _Verdict.NEXT_PART, end + 2
        return _Verdict.NOT_DELIMITER, position

    def _emit(self, events: list[Event], end: int) -> None:
        """Hand out (as part data) or drop (as preamble) the input up to `end`."""
        if end > self._position and self._state is _State.BODY:
            # A full slice of bytes is the object itself: no copy for whole chunks.
            events.append(PartData(self._buffer[self._position : end]))
        self._position = max(end, self._position)

    def _read_headers(self, events: list[Event]) -> bool:
        buffer, position = self._buffer, self._position
        if buffer[position : position + 2] == _CRLF:
            end = position  # a part with no headers at all
        else:
            end = buffer.find(b"\r\n\r\n", position, position + MAX_HEADER_BYTES + 4)
            if end < 0:
                if len(buffer) - position > MAX_HEADER_BYTES:
                    raise InvalidRequest(f"multipart part headers exceed {MAX_HEADER_BYTES} bytes")
                return False
        headers = _parse_headers(buffer[position:end])
        self._position = end + 2 if end == position else end + 4
        events.append(PartStart(headers, headers.get("content-type", self._default_content_type)))
        self._state = _State.BODY
        return True


def _parse_headers(block: bytes) -> dict[str, str]:
    """RFC 5322-style header lines; folded continuation lines (obsolete but
    still sent by some toolkits) are joined to the previous header."""
    headers: dict[str, str] = {}
    name = ""
    for line in block.decode("latin-1").split("\r\n") if block else []:
        if line[:1] in (" ", "\t") and name:
            headers[name] += " " + line.strip()
            continue
        raw_name, colon, value = line.partition(":")
        name = raw_name.strip().lower()
        if not colon or not name or " " in name:
            raise InvalidRequest(f"malformed multipart part header {line[:200]!r}")
        headers[name] = value.strip()
    return headers


def new_boundary() -> str:
    """32 hex digits: a token (RFC 9110 §5.6.2) that needs no quoting."""
    return secrets.token_hex(16)


def multipart_related_type(boundary: str, type_: str) -> str:
    return f'multipart/related; type="{type_}"; boundary={boundary}'


OutgoingPart = tuple[str, Iterable[bytes]] | tuple[str, Iterable[bytes], Mapping[str, str]]


def _header_line(name: str, value: str) -> bytes:
    if any(c in name + value for c in "\r\n"):
        raise ValueError(f"line break in part header {name!r}")
    return f"{name}: {value}\r\n".encode("latin-1")


class MultipartFraming:
    """The bytes that surround the parts of one multipart/related body (RFC 2046 §5.1.1).

    Callers that produce part bodies their own way (memory-mapped files, say)
    frame them with this; `iter_multipart` is the plain iterator form.
    """

    def __init__(self, boundary: str) -> None:
        self._dash_boundary = b"--" + _check_boundary(boundary)

    def head(self, content_type: str, extra: Mapping[str, str] | None = None, first: bool = False) -> bytes:
        """What comes before a part's body: the end of the previous part (unless
        `first`), the delimiter and the part's headers."""
        head = b"" if first else _CRLF
        head += self._dash_boundary + _CRLF + _header_line("Content-Type", content_type)
        head += b"".join(_header_line(name, value) for name, value in (extra or {}).items())
        return head + _CRLF

    def closing(self, after_parts: bool) -> bytes:
        return (_CRLF if after_parts else b"") + self._dash_boundary + b"--" + _CRLF

    def length(self, parts: Iterable[tuple[str, int]]) -> int:
        """The exact body length for parts of these (Content-Type, size).

        Knowing it lets a response carry Content-Length instead of chunked
        transfer coding, which clients decode far faster.
        """
        total, first = 0, True
        for content_type, size in parts:
            total += len(self.head(content_type, first=first)) + size
            first = False
        return total + len(self.closing(after_parts=not first))


def iter_multipart(boundary: str, parts: Iterable[OutgoingPart], min_chunk: int = 1 << 20) -> Iterator[bytes]:
    """The framed body, produced lazily. Each part is (Content-Type, chunks) or
    (Content-Type, chunks, extra headers such as Content-Location).

    Pieces are gathered into chunks of at least `min_chunk` bytes (but the
    last): a server sends each chunk with some fixed cost, and a study of small
    instances would otherwise go out as three tiny writes per instance.
    """
    framing = MultipartFraming(boundary)
    pending: list[bytes] = []
    pending_size = 0
    first = True
    for part in parts:
        extra: Mapping[str, str] = part[2] if len(part) == 3 else {}
        for piece in itertools.chain((framing.head(part[0], extra, first),), part[1]):
            if not piece:
                continue
            pending.append(piece)
            pending_size += len(piece)
            if pending_size >= min_chunk:
                yield pending[0] if len(pending) == 1 else b"".join(pending)
                pending, pending_size = [], 0
        first = False
    pending.append(framing.closing(after_parts=not first))
    yield b"".join(pending)


def map_file(path: str) -> memoryview | bytes:
    """A whole file as a read-only memory map: sending it copies from the page
    cache straight into the socket, with no Python-side copy."""
    with open(path, "rb") as file:
        if os.fstat(file.fileno()).st_size == 0:
            return b""
        # MAP_POPULATE maps every page up front, in one call, instead of
        # taking a page fault per few pages while the socket copies them.
        mapping = mmap.mmap(file.fileno(), 0, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE, prot=mmap.PROT_READ)
    return memoryview(mapping)
