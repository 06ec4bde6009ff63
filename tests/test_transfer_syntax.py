import io

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicom.errors import NotAcceptable
from dicom.media_types import parse_accept
from dicom.transfer_syntax import (
    BULK_DATA_MEDIA_TYPES,
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    JPEG_2000,
    JPEG_BASELINE,
    JPEG_LOSSLESS_SV1,
    RLE_LOSSLESS,
    bulk_data_media_type,
    can_decompress,
    choose_instance_syntax,
    transcode_to,
)


def choose(accept: str, stored: str, can_decode: bool = True) -> str:
    return choose_instance_syntax(parse_accept([accept]), stored, can_decode)


def test_media_type_table() -> None:
    assert bulk_data_media_type(JPEG_BASELINE) == "image/jpeg"
    assert bulk_data_media_type(JPEG_2000) == "image/jp2"
    assert bulk_data_media_type(RLE_LOSSLESS) == "image/dicom-rle"
    assert bulk_data_media_type("1.2.840.10008.1.2.4.80") == "image/jls"
    assert bulk_data_media_type("1.2.840.10008.1.2.4.203") == "image/jphc"
    assert bulk_data_media_type(IMPLICIT_VR_LE) == "application/octet-stream"
    assert bulk_data_media_type("1.2.3") is None
    assert len(BULK_DATA_MEDIA_TYPES) == 12


def test_can_decompress() -> None:
    assert can_decompress(EXPLICIT_VR_LE) and can_decompress(DEFLATED_EXPLICIT_VR_LE)
    assert can_decompress(JPEG_2000) and can_decompress(RLE_LOSSLESS)
    assert not can_decompress("1.2.840.10008.1.2.4.100")  # MPEG-2: no decoder


def test_no_transfer_syntax_means_explicit_vr_little_endian() -> None:
    assert choose("application/dicom", IMPLICIT_VR_LE) == EXPLICIT_VR_LE
    assert choose('multipart/related; type="application/dicom"', JPEG_2000) == EXPLICIT_VR_LE
    assert choose("*/*", DEFLATED_EXPLICIT_VR_LE) == EXPLICIT_VR_LE


def test_star_means_as_stored() -> None:
    assert choose('multipart/related; type="application/dicom"; transfer-syntax=*', JPEG_2000, False) == JPEG_2000


def test_named_syntax() -> None:
    assert choose(f"application/dicom; transfer-syntax={JPEG_2000}", JPEG_2000) == JPEG_2000
    assert choose(f"application/dicom; transfer-syntax={IMPLICIT_VR_LE}", JPEG_2000) == IMPLICIT_VR_LE
    with pytest.raises(NotAcceptable, match=JPEG_BASELINE):
        choose(f"application/dicom; transfer-syntax={JPEG_BASELINE}", EXPLICIT_VR_LE)


def test_falls_through_ranges_by_q() -> None:
    accept = f"application/dicom; transfer-syntax={JPEG_BASELINE}, application/dicom; transfer-syntax=*; q=0.5"
    assert choose(accept, JPEG_2000) == JPEG_2000
    # Without a decoder, the default (Explicit VR LE) is not producible; the next range is.
    assert choose("application/dicom, application/dicom; transfer-syntax=*; q=0.1", JPEG_2000, False) == JPEG_2000


def test_other_media_types_are_skipped() -> None:
    assert choose("application/dicom+json, application/dicom;q=0.2", EXPLICIT_VR_LE) == EXPLICIT_VR_LE
    with pytest.raises(NotAcceptable, match="stored as"):
        choose('application/dicom+json, multipart/related; type="application/octet-stream"', EXPLICIT_VR_LE)
    with pytest.raises(NotAcceptable, match="cannot be decompressed"):
        choose("application/dicom", JPEG_2000, can_decode=False)


def pixels(data: bytes) -> np.ndarray:
    return pydicom.dcmread(io.BytesIO(data)).pixel_array


@pytest.mark.parametrize("target", [EXPLICIT_VR_LE, IMPLICIT_VR_LE])
@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("JPEG2000.dcm", None),
        ("SC_rgb_jpeg_gdcm.dcm", None),
        ("MR_small_RLE.dcm", "MR_small.dcm"),
        ("MR_small_bigendian.dcm", "MR_small.dcm"),
        ("image_dfl.dcm", None),
        ("CT_small.dcm", "CT_small.dcm"),
    ],
)
def test_transcode_to_native(name: str, reference: str | None, target: str) -> None:
    path = get_testdata_file(name)
    data = transcode_to(path, target)
    assert data[128:132] == b"DICM"
    result = pydicom.dcmread(io.BytesIO(data))
    assert result.file_meta.TransferSyntaxUID == target
    expected = pydicom.dcmread(get_testdata_file(reference) if reference else path).pixel_array
    np.testing.assert_array_equal(result.pixel_array, expected)
    assert "NumberOfFrames" not in result or result.NumberOfFrames == pydicom.dcmread(path).get("NumberOfFrames")


def test_transcode_keeps_multi_frame() -> None:
    data = transcode_to(get_testdata_file("SC_rgb_rle_2frame.dcm"), EXPLICIT_VR_LE)
    assert pixels(data).shape == (2, 100, 100, 3)


def test_transcode_refuses_compressed_targets() -> None:
    with pytest.raises(NotAcceptable):
        transcode_to(get_testdata_file("CT_small.dcm"), JPEG_LOSSLESS_SV1)
    with pytest.raises(NotAcceptable):
        transcode_to(get_testdata_file("CT_small.dcm"), EXPLICIT_VR_BE)
