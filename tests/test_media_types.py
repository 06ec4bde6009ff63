import pytest

from dicom.errors import InvalidRequest
from dicom.media_types import (
    MediaRange,
    accept_from_request,
    admits_part,
    inner_type,
    matches,
    parse_accept,
    transfer_syntax_param,
)


def test_parse_accept_sorts_by_q_stably_and_drops_q0() -> None:
    ranges = parse_accept(["application/dicom+json;q=0.5, application/json", "text/html;q=0, */*;q=0.5"])
    assert [(r.media_type, r.q) for r in ranges] == [
        ("application/json", 1.0),
        ("application/dicom+json", 0.5),
        ("*/*", 0.5),
    ]
    assert all("q" not in r.params for r in ranges)


def test_commas_and_semicolons_inside_quotes_do_not_split() -> None:
    [range_] = parse_accept(['multipart/related; type="application/dicom"; x="a,b;c", '])
    assert range_.params == {"type": "application/dicom", "x": "a,b;c"}


def test_ohif_style_multipart_ranges() -> None:
    ranges = parse_accept(
        [
            'multipart/related; type="application/octet-stream"; transfer-syntax=*',
            "multipart/related; type=application/dicom; q=0.9",
        ]
    )
    assert [inner_type(r) for r in ranges] == ["application/octet-stream", "application/dicom"]
    assert transfer_syntax_param(ranges[0]) == "*"
    assert transfer_syntax_param(ranges[1]) is None
    assert inner_type(MediaRange("application/dicom", {"type": "x/y"}, 1.0)) is None


def test_legacy_rle_and_jpeg_ls_names_read_as_the_current_ones() -> None:
    ranges = parse_accept(
        ['multipart/related; type="image/x-dicom-rle"; transfer-syntax=1.2.840.10008.1.2.5, image/X-JLS; q=0.5']
    )
    assert [(r.media_type, inner_type(r)) for r in ranges] == [
        ("multipart/related", "image/dicom-rle"),
        ("image/jls", None),
    ]


@pytest.mark.parametrize("bad", ["a/b;q=2", "a/b;q=x", "a/b;q=0.1234", "a/b;q=-1", "nonsense", 'a/b;x="open'])
def test_invalid_accept_is_invalid_request(bad: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_accept([bad])


def test_bare_star_means_any() -> None:
    assert [r.media_type for r in parse_accept(["text/html, *; q=.2"])] == ["text/html", "*/*"]


def test_query_parameter_wins_over_header() -> None:
    ranges = accept_from_request(["application/dicom+json,application/json;q=0.1"], ["application/dicom"])
    assert [r.media_type for r in ranges] == ["application/dicom+json", "application/json"]
    assert [r.media_type for r in accept_from_request([], ["application/dicom"])] == ["application/dicom"]
    assert [r.media_type for r in accept_from_request([" "], ["application/dicom"])] == ["application/dicom"]


def test_query_plus_decoded_as_space_is_repaired() -> None:
    [range_] = accept_from_request(['application/dicom json; x="a b"'], [])
    assert range_.media_type == "application/dicom+json"
    assert range_.params == {"x": "a b"}


def test_nothing_given_accepts_anything() -> None:
    assert accept_from_request([], []) == [MediaRange("*/*", {}, 1.0)]
    assert accept_from_request([""], [""]) == [MediaRange("*/*", {}, 1.0)]


def test_matches_wildcards() -> None:
    any_ = MediaRange("*/*", {}, 1.0)
    images = MediaRange("image/*", {}, 1.0)
    jpeg = MediaRange("image/jpeg", {}, 1.0)
    assert matches(any_, "application/dicom")
    assert matches(images, "image/jp2") and not matches(images, "application/dicom")
    assert matches(jpeg, "Image/JPEG; transfer-syntax=1.2.840.10008.1.2.4.50") and not matches(jpeg, "image/jp2")


def test_admits_part_alone_or_inside_multipart() -> None:
    [dicom, octet, bare_multipart, image_star] = parse_accept(
        [
            "application/dicom",
            'multipart/related; type="application/octet-stream"',
            "multipart/related",
            'multipart/related; type="image/*"',
        ]
    )
    assert admits_part(dicom, "application/dicom", "application/dicom")
    assert not admits_part(dicom, "application/octet-stream", "application/octet-stream")
    assert admits_part(octet, "application/octet-stream", "application/dicom")
    assert not admits_part(octet, "application/dicom", "application/dicom")
    assert admits_part(bare_multipart, "application/dicom", "application/dicom")
    assert not admits_part(bare_multipart, "application/dicom", "application/octet-stream")
    assert admits_part(image_star, "image/jp2", "application/octet-stream")
    assert admits_part(MediaRange("*/*", {}, 1.0), "image/jp2", "application/octet-stream")
