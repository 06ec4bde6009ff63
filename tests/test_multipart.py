import os
import random
import time

import pytest

from dicom.errors import InvalidRequest
from dicom.multipart import (
    MAX_HEADER_BYTES,
    Event,
    MultipartReader,
    PartData,
    PartEnd,
    PartStart,
    iter_multipart,
    map_file,
    multipart_related_type,
    new_boundary,
    parse_content_type,
)

BOUNDARY = "XbNd"


def collect(events: list[Event]) -> list[tuple[str, dict[str, str], bytes]]:
    """Fold events into (content type, headers, body) per part, checking their order."""
    parts: list[tuple[str, dict[str, str], bytes]] = []
    open_part: list[bytes] | None = None
    for event in events:
        if isinstance(event, PartStart):
            assert open_part is None
            open_part = []
            parts.append((event.content_type, dict(event.headers), b""))
        elif isinstance(event, PartData):
            assert open_part is not None and event.data
            open_part.append(event.data)
        else:
            assert isinstance(event, PartEnd) and open_part is not None
            content_type, headers, _ = parts[-1]
            parts[-1] = (content_type, headers, b"".join(open_part))
            open_part = None
    assert open_part is None
    return parts


def parse(
    body: bytes, chunk_sizes: list[int] | None = None, boundary: str = BOUNDARY
) -> list[tuple[str, dict[str, str], bytes]]:
    reader = MultipartReader(boundary, "application/dicom")
    events: list[Event] = []
    position = 0
    sizes = iter(chunk_sizes or [len(body)])
    while position < len(body):
        size = next(sizes, len(body))
        events += reader.feed(body[position : position + size])
        position += size
    reader.close()
    return collect(events)


def body_of(*parts: tuple[str | None, bytes]) -> bytes:
    out = b"preamble to ignore\r\n"
    for content_type, data in parts:
        out += f"--{BOUNDARY}\r\n".encode()
        if content_type is not None:
            out += f"Content-Type: {content_type}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\nepilogue".encode()


TRICKY = b"\r\n--XbNdX\r\n--XbN\r\n\r\n--XbNd-\r\n-- XbNd\r\x00\n" + bytes(range(256)) + b"\r\n"


@pytest.mark.parametrize(
    ("header", "boundary"),
    [
        ('multipart/related; type="application/dicom"; boundary="a b:c"', "a b:c"),
        ("Multipart/Related; TYPE=application/dicom; Boundary=abc123", "abc123"),
        ('multipart/related;boundary=x;type="application/dicom+xml";transfer-syntax=1.2.840.10008.1.2.1', "x"),
    ],
)
def test_parse_content_type_quoted_and_unquoted(header: str, boundary: str) -> None:
    content_type = parse_content_type(header)
    assert content_type.media_type == "multipart/related"
    assert content_type.params["boundary"] == boundary
    assert content_type.params["type"].startswith("application/dicom")


def test_parse_content_type_unescapes_quoted_pairs() -> None:
    assert parse_content_type(r'a/b; x="q\"uo;te"').params == {"x": 'q"uo;te'}


@pytest.mark.parametrize("header", ["", "multipart", "a/b; =x", "a/b; noequals", 'a/b; x="open', "*/*", "a b/c"])
def test_parse_content_type_rejects_garbage(header: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_content_type(header)


def test_parts_with_and_without_content_type() -> None:
    parts = parse(body_of(("application/dicom+xml", b"one"), (None, b"two"), ("text/plain", b"")))
    assert [(p[0], p[2]) for p in parts] == [
        ("application/dicom+xml", b"one"),
        ("application/dicom", b"two"),
        ("text/plain", b""),
    ]
    assert parts[0][1] == {"content-type": "application/dicom+xml"}
    assert parts[1][1] == {}


def test_body_starting_directly_with_boundary_and_extra_headers() -> None:
    body = b"--XbNd  \r\nContent-Type: a/b\r\nContent-Location: http://x/y\r\n\tcontinued\r\n\r\nDATA\r\n--XbNd--"
    [(content_type, headers, data)] = parse(body)
    assert (content_type, data) == ("a/b", b"DATA")
    assert headers["content-location"] == "http://x/y continued"


def test_boundary_like_bytes_and_crlf_inside_data() -> None:
    body = body_of((None, TRICKY), (None, b"\r\n"), (None, TRICKY * 3))
    assert [p[2] for p in parse(body)] == [TRICKY, b"\r\n", TRICKY * 3]


def test_one_byte_feeding_matches_whole_body() -> None:
    body = body_of(("a/b", TRICKY), (None, b"x" * 1000), (None, TRICKY))
    assert parse(body, [1] * len(body)) == parse(body)


def test_random_chunking_matches_whole_body() -> None:
    rng = random.Random(1234)
    payloads = [TRICKY + rng.randbytes(rng.randrange(0, 5000)) + TRICKY for _ in range(5)]
    body = body_of(*[(None, payload) for payload in payloads])
    expected = parse(body)
    assert [p[2] for p in expected] == payloads
    for _ in range(50):
        sizes = [rng.randrange(1, 200) for _ in range(len(body))]
        assert parse(body, sizes) == expected


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"no delimiter at all",
        b"--XbNd\r\n\r\nunterminated part",
        b"--XbNd\r\n\r\ndata\r\n--XbNd\r\n",
        b"--XbNd\r\nContent-Type: a/b\r\n",
    ],
)
def test_missing_closing_boundary_is_an_error(body: bytes) -> None:
    reader = MultipartReader(BOUNDARY, "application/dicom")
    reader.feed(body)
    with pytest.raises(InvalidRequest, match="no closing boundary"):
        reader.close()


def test_malformed_and_oversized_headers() -> None:
    with pytest.raises(InvalidRequest):
        MultipartReader(BOUNDARY, "a/b").feed(b"--XbNd\r\nno colon here\r\n\r\n")
    with pytest.raises(InvalidRequest, match="exceed"):
        MultipartReader(BOUNDARY, "a/b").feed(b"--XbNd\r\nX-Big: " + b"a" * MAX_HEADER_BYTES + b"\r\n\r\n")
    reader = MultipartReader(BOUNDARY, "a/b")
    reader.feed(b"--XbNd\r\nX-Big: ")
    with pytest.raises(InvalidRequest, match="exceed"):
        for _ in range(MAX_HEADER_BYTES // 1024 + 2):
            reader.feed(b"a" * 1024)


def test_part_data_is_streamed_not_held() -> None:
    reader = MultipartReader(BOUNDARY, "a/b")
    reader.feed(b"--XbNd\r\n\r\n")
    events = reader.feed(b"z" * 100_000)
    # All but a possible delimiter prefix comes out at once.
    assert sum(len(e.data) for e in events if isinstance(e, PartData)) >= 100_000 - len("\r\n--XbNd")


def test_write_read_round_trip(tmp_path) -> None:
    file_path = tmp_path / "payload.bin"
    file_bytes = os.urandom(300_000) + TRICKY
    file_path.write_bytes(file_bytes)
    boundary = new_boundary()
    header = multipart_related_type(boundary, "application/dicom")
    content_type = parse_content_type(header)
    assert content_type.params == {"type": "application/dicom", "boundary": boundary}
    body = b"".join(
        iter_multipart(
            boundary,
            [
                ("application/dicom", [bytes(map_file(str(file_path)))]),
                ("application/octet-stream", [b"", TRICKY], {"Content-Location": "/frames/1"}),
                ("text/plain", []),
            ],
        )
    )
    parts = parse(body, boundary=content_type.params["boundary"])
    assert [(p[0], p[2]) for p in parts] == [
        ("application/dicom", file_bytes),
        ("application/octet-stream", TRICKY),
        ("text/plain", b""),
    ]
    assert parts[1][1]["content-location"] == "/frames/1"


def test_new_boundary_is_token_safe_and_random() -> None:
    boundaries = {new_boundary() for _ in range(100)}
    assert len(boundaries) == 100
    assert all(b.isalnum() and 0 < len(b) <= 70 for b in boundaries)


def test_writer_refuses_header_injection() -> None:
    with pytest.raises(ValueError):
        list(iter_multipart("b", [("a/b\r\nX-Evil: 1", [b"x"])]))


def test_big_chunks_sanity() -> None:
    """Not a benchmark: shows big chunks pass through in few, large events."""
    chunk = os.urandom(1 << 20)
    reader = MultipartReader(BOUNDARY, "a/b")
    reader.feed(b"--XbNd\r\n\r\n")
    started = time.perf_counter()
    total = 0
    for _ in range(64):
        events = reader.feed(chunk)
        assert len(events) <= 2
        total += sum(len(e.data) for e in events if isinstance(e, PartData))
    events = reader.feed(b"\r\n--XbNd--")
    reader.close()
    total += sum(len(e.data) for e in events if isinstance(e, PartData))
    assert total == 64 << 20
    print(f"64 MiB parsed in {time.perf_counter() - started:.3f} s")


def test_multipart_length_matches_the_framed_body():
    from dicom.multipart import MultipartFraming, iter_multipart

    parts = [("application/dicom; transfer-syntax=1.2.840.10008.1.2.1", b"x" * 1000), ("application/dicom", b"")]
    body = b"".join(iter_multipart("b0undary", [(content_type, [data]) for content_type, data in parts], min_chunk=7))
    assert MultipartFraming("b0undary").length([(content_type, len(data)) for content_type, data in parts]) == len(body)


def test_map_file_of_an_empty_file(tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert map_file(str(empty)) == b""
