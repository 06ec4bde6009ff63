from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import encaps
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import pack_bits
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from dicom.errors import InvalidRequest, NotAcceptable, NotFound
from dicom.frames import NATIVE_FRAME_TYPE, parse_frame_list, read_pixel_frames
from dicom.media_types import parse_accept

OHIF = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
NATIVE = 'multipart/related; type="application/octet-stream"'


def read_frames(path: str, numbers: list[int], accept) -> list[tuple[str, bytes]]:
    """Each frame with its part's Content-Type."""
    content_type, _, frames = read_pixel_frames(path, numbers, accept)
    return [(content_type, frame) for frame in frames]


def frames(name: str, numbers: list[int], accept: str) -> list[tuple[str, bytes]]:
    return read_frames(get_testdata_file(name), numbers, parse_accept([accept]))


def test_parse_frame_list() -> None:
    assert parse_frame_list("1,3,5") == [1, 3, 5]
    assert parse_frame_list(" 2 , 2") == [2, 2]
    for bad in ["", "0", "1,,2", "-1", "1.5", "a", "1;2", "²"]:
        with pytest.raises(InvalidRequest):
            parse_frame_list(bad)


def test_native_single_frame() -> None:
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert frames("CT_small.dcm", [1], NATIVE) == [(NATIVE_FRAME_TYPE, dataset.PixelData)]
    assert frames("CT_small.dcm", [1], OHIF) == [(NATIVE_FRAME_TYPE, dataset.PixelData)]
    with pytest.raises(NotFound):
        frames("CT_small.dcm", [2], NATIVE)


def test_native_multi_frame_reads_each_frame_range() -> None:
    array = pydicom.dcmread(get_testdata_file("rtdose.dcm")).pixel_array
    result = frames("rtdose.dcm", [15, 1, 7], "*/*")
    assert [content_type for content_type, _ in result] == [NATIVE_FRAME_TYPE] * 3
    assert [data for _, data in result] == [array[i].astype("<u4").tobytes() for i in (14, 0, 6)]
    with pytest.raises(NotFound):
        frames("rtdose.dcm", [16], "*/*")


def test_native_data_cannot_become_jpeg() -> None:
    with pytest.raises(NotAcceptable, match="stored as"):
        frames("CT_small.dcm", [1], 'multipart/related; type="image/jpeg"')


def test_ybr_full_422_native_frame_size() -> None:
    dataset = pydicom.dcmread(get_testdata_file("SC_ybr_full_422_uncompressed.dcm"))
    [(_, data)] = frames("SC_ybr_full_422_uncompressed.dcm", [1], NATIVE)
    assert len(data) == dataset.Rows * dataset.Columns * 2
    assert data == dataset.PixelData[: len(data)]


def test_one_bit_frames_are_not_byte_aligned(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 2, size=(5, 3, 3), dtype=np.uint8)  # 9 bits per frame
    path = tmp_path / "bits.dcm"
    dataset = pydicom.Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID = generate_uid()
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    dataset.Rows = dataset.Columns = 3
    dataset.NumberOfFrames = 5
    dataset.SamplesPerPixel = dataset.BitsAllocated = dataset.BitsStored = 1
    dataset.HighBit = dataset.PixelRepresentation = 0
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.add_new(0x7FE00010, "OB", pack_bits(bits))
    dataset.save_as(path, enforce_file_format=True)
    result = read_frames(str(path), [1, 2, 5], parse_accept([NATIVE]))
    assert [data for _, data in result] == [
        np.packbits(bits[i].ravel(), bitorder="little").tobytes() for i in (0, 1, 4)
    ]


def test_compressed_frame_as_stored_for_ohif() -> None:
    [(content_type, data)] = frames("JPEG2000.dcm", [1], OHIF)
    assert content_type == "image/jp2; transfer-syntax=1.2.840.10008.1.2.4.91"
    assert data.startswith(b"\xff\x4f\xff\x51")  # J2K codestream: SOC, SIZ


def test_compressed_multi_frame_as_stored() -> None:
    path = get_testdata_file("SC_rgb_rle_2frame.dcm")
    dataset = pydicom.dcmread(path)
    stored = list(generate_frames(dataset.PixelData, number_of_frames=2))
    result = read_frames(path, [2, 1], parse_accept(["image/dicom-rle"]))
    assert result == [
        ("image/dicom-rle; transfer-syntax=1.2.840.10008.1.2.5", stored[1]),
        ("image/dicom-rle; transfer-syntax=1.2.840.10008.1.2.5", stored[0]),
    ]
    with pytest.raises(NotFound):
        read_frames(path, [3], parse_accept(["image/dicom-rle"]))


@pytest.mark.parametrize("per_frame", [1, 2])
def test_encapsulated_frames_without_offsets_are_found_in_one_walk_per_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, per_frame: int
) -> None:
    """No Basic Offset Table: each frame's place is found by walking the
    fragments, once a read (a walk per frame made the Pixel Data resource of
    a long instance quadratic). Several fragments a frame, told apart by
    their JPEG end markers, still come out whole."""
    count = 300
    stored = [bytes([number % 256]) * 40 + b"\xff\xd9" for number in range(count)]
    fragments = [fragment for frame in stored for fragment in ([frame] if per_frame == 1 else [frame[:20], frame[20:]])]
    dataset = pydicom.dcmread(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    dataset.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    dataset.NumberOfFrames = count
    dataset.PixelData = encapsulate(fragments, has_bot=False)
    path = str(tmp_path / "long.dcm")
    dataset.save_as(path, enforce_file_format=True)
    walks = []
    walk = encaps.parse_fragments
    monkeypatch.setattr(encaps, "parse_fragments", lambda *args, **kwargs: walks.append(1) or walk(*args, **kwargs))

    reads = [list(range(first, min(first + 16, count + 1))) for first in range(1, count + 1, 16)]
    sent = [frame for numbers in reads for _, frame in read_frames(path, numbers, parse_accept([OHIF]))]

    assert sent == stored
    if per_frame == 1:
        assert len(walks) == len(reads)
    assert [frame for _, frame in read_frames(path, [300, 2, 2], parse_accept([OHIF]))] == [stored[299], stored[1],
                                                                                          stored[1]]


def test_compressed_frame_decoded_when_only_native_is_accepted() -> None:
    path = get_testdata_file("SC_rgb_rle_2frame.dcm")
    array = pydicom.dcmread(path).pixel_array
    result = read_frames(path, [2], parse_accept(["application/octet-stream"]))
    assert result == [(NATIVE_FRAME_TYPE, array[1].tobytes())]


@pytest.mark.parametrize(
    "name", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm"]
)
def test_decoded_frames_match_the_uncompressed_original(name: str) -> None:
    expected = pydicom.dcmread(get_testdata_file("MR_small.dcm")).PixelData
    assert frames(name, [1], f"{NATIVE}; transfer-syntax=1.2.840.10008.1.2.1") == [(NATIVE_FRAME_TYPE, expected)]


def test_deflated_frames() -> None:
    dataset = pydicom.dcmread(get_testdata_file("image_dfl.dcm"))
    assert frames("image_dfl.dcm", [1], "*/*") == [(NATIVE_FRAME_TYPE, dataset.PixelData)]


def test_q_values_decide_between_stored_and_decoded() -> None:
    decoded = frames("MR_small_jp2klossless.dcm", [1], "application/octet-stream, image/jp2; q=0.5")
    stored = frames("MR_small_jp2klossless.dcm", [1], "application/octet-stream; q=0.5, image/jp2")
    assert decoded[0][0] == NATIVE_FRAME_TYPE
    assert stored[0][0] == "image/jp2; transfer-syntax=1.2.840.10008.1.2.4.90"


def test_nothing_acceptable() -> None:
    with pytest.raises(NotAcceptable, match="1.2.840.10008.1.2.4.91"):
        frames("JPEG2000.dcm", [1], "image/jpeg, application/dicom")
    with pytest.raises(NotAcceptable):
        frames("JPEG2000.dcm", [1], "image/jp2; transfer-syntax=1.2.840.10008.1.2.4.90")
