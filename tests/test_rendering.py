import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from dicom.errors import InvalidRequest, NotAcceptable, NotFound
from dicom.media_types import MediaRange, accept_from_request
from dicom.rendering import (
    RenderParams,
    apply_window,
    parse_render_params,
    render_frame,
    thumbnail,
)
from tests.test_wado import stow, uids_of

CT = get_testdata_file("CT_small.dcm")
MULTI_FRAME = get_testdata_file("rtdose.dcm")  # 15 frames of 10x10
COLOR_MULTI_FRAME = get_testdata_file("examples_ybr_color.dcm")  # 30 JPEG frames, YBR_FULL_422


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


@pytest.mark.parametrize(("media_type", "magic"), [("image/jpeg", b"\xff\xd8"), ("image/png", b"\x89PNG")])
def test_ct_renders(media_type: str, magic: bytes) -> None:
    data = render_frame(CT, 1, RenderParams(media_type))
    assert data.startswith(magic)
    pixels = _decode(data)
    assert pixels.shape == (128, 128)
    assert pixels.var() > 0


def test_window_changes_output() -> None:
    default = _decode(render_frame(CT, 1, RenderParams("image/png")))
    narrow = _decode(render_frame(CT, 1, RenderParams("image/png", window=(40.0, 80.0, "linear"))))
    wide = _decode(render_frame(CT, 1, RenderParams("image/png", window=(300.0, 3000.0, "sigmoid"))))
    assert not np.array_equal(default, narrow)
    assert not np.array_equal(narrow, wide)


def test_linear_window_matches_the_standard_formula() -> None:
    # PS3.3 C.11.2.1.2.1 with c=50, w=11: below c-0.5-(w-1)/2 = 44.5 is 0, above 54.5 is 255.
    values = np.array([0.0, 44.5, 49.5, 54.5, 55.0, 1000.0])
    assert apply_window(values, 50, 11, "linear").tolist() == [0, 0, 128, 255, 255, 255]
    assert apply_window(values, 50, 10, "linear-exact").tolist() == [0, 0, 115, 242, 255, 255]
    assert apply_window(np.array([50.0]), 50, 10, "sigmoid").tolist() == [128]


def test_viewport_keeps_aspect_ratio() -> None:
    pixels = _decode(render_frame(CT, 1, RenderParams("image/png", viewport=(64, 32))))
    assert pixels.shape == (32, 32)
    wide = _decode(render_frame(get_testdata_file("JPEG2000.dcm"), 1, RenderParams("image/png", viewport=(100, 100))))
    assert wide.shape == (100, 25)  # 256 columns by 1024 rows


def test_multi_frame_selects_frames() -> None:
    first = _decode(render_frame(MULTI_FRAME, 1, RenderParams("image/png")))
    last = _decode(render_frame(MULTI_FRAME, 15, RenderParams("image/png")))
    assert first.shape == (10, 10)
    assert not np.array_equal(first, last)
    for frame in (0, 16):
        with pytest.raises(NotFound):
            render_frame(MULTI_FRAME, frame, RenderParams())


def test_color_frames_render_as_rgb() -> None:
    pixels = _decode(render_frame(COLOR_MULTI_FRAME, 30, RenderParams("image/png")))
    assert pixels.shape == (240, 320, 3)
    assert pixels.var() > 0


def test_thumbnail_fits_default_viewport() -> None:
    pixels = _decode(thumbnail(COLOR_MULTI_FRAME, RenderParams()))
    assert pixels.shape == (96, 128, 3)
    assert _decode(thumbnail(CT, RenderParams(viewport=(50, 50)))).shape == (50, 50)


def test_instance_without_pixels_cannot_be_rendered() -> None:
    # It exists: an image of it is what cannot be made (406, not 404).
    with pytest.raises(NotAcceptable):
        render_frame(get_testdata_file("rtplan.dcm"), 1, RenderParams())


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    import pydicom

    ds = pydicom.dcmread(CT)
    normal = _decode(render_frame(CT, 1, RenderParams("image/png")))
    ds.PhotometricInterpretation = "MONOCHROME1"
    path = str(tmp_path / "mono1.dcm")
    ds.save_as(path)
    inverted = _decode(render_frame(path, 1, RenderParams("image/png")))
    assert np.array_equal(inverted, 255 - normal)


def _palette_image(path: Path, syntax: str) -> str:
    """PALETTE COLOR, 8-bit indices into 16-bit LUTs whose words differ in their two bytes."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Rows, ds.Columns = 4, 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "PALETTE COLOR"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    entries = np.arange(256, dtype=np.uint32)
    order = "<u2" if syntax == ExplicitVRLittleEndian else ">u2"  # pydicom writes OW values as given
    for colour, lut in (("Red", entries * 257), ("Green", 65535 - entries * 250), ("Blue", entries * 97 % 65536)):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", lut.astype(order).tobytes())
    ds.PixelData = entries.astype(np.uint8).reshape(4, 64).tobytes()
    target = str(path / f"palette-{syntax}.dcm")
    ds.save_as(target, enforce_file_format=True)
    return target


def test_a_palette_color_image_renders_alike_in_either_byte_order(tmp_path: Path) -> None:
    little, big = (
        _decode(render_frame(_palette_image(tmp_path, syntax), 1, RenderParams("image/png")))
        for syntax in (ExplicitVRLittleEndian, ExplicitVRBigEndian)
    )
    assert little[3, 63].tolist() == [255, 6, 96]  # entry 255 of each LUT, scaled to 8 bits
    assert np.array_equal(little, big)


def test_parse_render_params() -> None:
    params = parse_render_params(
        {"window": ["40,400,linear-exact"], "viewport": "512,256", "quality": ["80"]}, _ranges("image/png")
    )
    assert params == RenderParams("image/png", (40.0, 400.0, "linear-exact"), (512, 256), 80)
    assert parse_render_params([]) == RenderParams("image/jpeg")
    assert parse_render_params([("window", "1,2")], _ranges("text/html", "image/*")).window == (1.0, 2.0, "linear")
    assert parse_render_params({}, _ranges("image/png;q=0", "*/*")).media_type == "image/jpeg"


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ({"window": "40"}, "window"),
        ({"window": "a,400,linear"}, "window"),
        ({"window": "40,400,cubic"}, "window"),
        ({"window": "40,0.5,linear"}, "window"),
        ({"viewport": "512"}, "viewport"),
        ({"viewport": "0,10"}, "viewport"),
        ({"viewport": "512,512,0,0,10,10"}, "viewport"),
        ({"quality": "0"}, "quality"),
        ({"quality": "high"}, "quality"),
        ({"quality": ["80", "90"]}, "quality"),
    ],
)
def test_parse_errors_name_the_parameter(query: dict[str, str], name: str) -> None:
    with pytest.raises(InvalidRequest, match=f"^{name}:"):
        parse_render_params(query, _ranges("image/jpeg"))


def test_no_acceptable_image_type() -> None:
    with pytest.raises(NotAcceptable):
        parse_render_params({}, _ranges("application/dicom", "image/jp2"))


@pytest.mark.parametrize(("accept", "status"), [
    (None, 200), ("image/png;q=0, image/*", 200), ("image/jpeg;q=0", 406), ("*/*;q=0", 406),
])
def test_a_rendered_image_nothing_accepts_is_406_not_a_jpeg(client, accept: str | None, status: int) -> None:
    # q=0 means "not acceptable" (RFC 9110 §12.4.2): with every range at q=0 nothing may be sent.
    stow(client, [Path(CT).read_bytes()])
    study, series, sop = uids_of(CT)
    headers = {"Accept": accept} if accept else {}
    response = client.get(f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/rendered", headers=headers)
    assert response.status_code == status, response.text
    if status == 200:
        assert response.headers["content-type"] == "image/jpeg"


@pytest.mark.parametrize(("accept", "chosen"), [
    ("*/*", "image/jpeg"),
    ("image/jpeg;q=0, */*", "image/png"),
    ("image/jpeg; q=0, image/png;q=0, image/*", "image/gif"),
    ("image/gif, image/png", "image/gif"),
])
def test_a_media_type_refused_with_q_0_is_not_chosen_by_a_wildcard(client, accept, chosen) -> None:
    stow(client, [Path(CT).read_bytes()])
    study, series, sop = uids_of(CT)
    response = client.get(f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/rendered",
                          headers={"Accept": accept})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == chosen


def _ranges(*texts: str) -> list[MediaRange]:
    """As a request's Accept header gives them to the renderer, refused ones included."""
    return accept_from_request([], [", ".join(texts)], keep_refused=True)
