"""The `dicomweb-client` package as a real client against a live server.

dicomweb-client is what many research pipelines use, and it has habits a
server must meet:
- searches and metadata send `Accept: application/dicom+json, application/json`;
- `retrieve_study`/`retrieve_series` send `multipart/related;
  type="application/dicom"` with no transfer syntax, which asks for Explicit
  VR Little Endian, while `retrieve_instance` defaults to `transfer-syntax=*`
  (as stored);
- frames and bulk data default to `multipart/related; type="*/*"`;
- rendered resources without media types send requests' `Accept: */*`;
- the STOW answer is parsed only when its Content-Type is exactly
  `application/dicom+json`;
- `retrieve_instance_metadata` returns the single data set, not a list;
- multipart parts come back as `bytearray`, which pydicom does not take as
  a binary value;
- non-streamed GETs and POSTs carry `Host: <hostname>` without the port, so
  absolute URLs the server builds from Host (RetrieveURL, BulkDataURI) lose a
  non-default port. The fixture sets the client's `host` to host:port; one
  test pins the quirk itself.
"""

import io
from collections.abc import Iterator
from urllib.parse import urlsplit

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient
from dicomweb_client.session_utils import create_session_from_user_pass
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from server.auth.scopes import Role
from server.services import Services
from tests.dicom_files import bundled_file, make_ct

PIXEL_DATA = "7FE00010"


PACS_PASSWORD = "a long PACS password"


@pytest.fixture
def pacs_session(services: Services) -> requests.Session:
    """HTTP Basic with a user's name and password, as PACS send their credentials."""
    services.auth.identities.add_user("pacs", Role.ADMIN, PACS_PASSWORD)
    return create_session_from_user_pass("pacs", PACS_PASSWORD)


@pytest.fixture
def dicomweb(live_server: str, pacs_session: requests.Session) -> Iterator[DICOMwebClient]:
    client = DICOMwebClient(url=live_server + "/dicom-web", session=pacs_session)
    # The client writes `self.host` into the Host header; with the port in it
    # the server's absolute URLs point back at this server.
    client.host = urlsplit(live_server).netloc
    yield client
    client._session.close()


def read(path: str) -> Dataset:
    return pydicom.dcmread(path)


def generated_study(count: int = 3) -> tuple[str, str, list[Dataset]]:
    study_uid, series_uid = generate_uid(), generate_uid()
    datasets = [
        pydicom.dcmread(
            io.BytesIO(
                make_ct(
                    study_uid=study_uid,
                    series_uid=series_uid,
                    size=32,  # 2 KiB of pixels: above the server's 1 KiB inline limit
                    InstanceNumber=number,
                    PatientID="CLIENT-1",
                    PatientName="Müller^Anna",
                    SpecificCharacterSet="ISO_IR 100",
                )
            )
        )
        for number in range(1, count + 1)
    ]
    return study_uid, series_uid, datasets


def uids(dataset: Dataset) -> tuple[str, str, str]:
    return dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID


def value(attributes: dict, tag: str) -> object:
    return attributes[tag]["Value"][0]


def test_store_instances_reports_every_instance(dicomweb: DICOMwebClient) -> None:
    _, _, datasets = generated_study()
    datasets.append(read(bundled_file("CT_small.dcm")))

    answer = dicomweb.store_instances(datasets)

    # A Dataset with the sequence proves the client parsed the JSON answer,
    # which it does only for an exact `application/dicom+json` Content-Type.
    stored = {item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence}
    assert stored == {dataset.SOPInstanceUID for dataset in datasets}
    # The server sends an empty FailedSOPSequence when nothing failed.
    assert not answer.get("FailedSOPSequence")
    for item in answer.ReferencedSOPSequence:
        assert item.RetrieveURL.startswith(dicomweb.base_url + "/studies/")


def test_client_host_header_drops_the_port(live_server: str, pacs_session: requests.Session) -> None:
    """Unpatched, the client sends `Host: 127.0.0.1`; URLs built from it have no port.

    No server can recover the port from such a request without breaking
    reverse proxies (where Host without a port rightly means 80/443), so
    this is the client's limitation; deployments on a default port are unaffected.
    """
    client = DICOMwebClient(url=live_server + "/dicom-web", session=pacs_session)
    _, _, datasets = generated_study(1)
    [item] = client.store_instances(datasets).ReferencedSOPSequence
    client._session.close()
    assert item.RetrieveURL.startswith("http://127.0.0.1/dicom-web/studies/")


def test_store_instances_resend_is_accepted(dicomweb: DICOMwebClient) -> None:
    _, _, datasets = generated_study(2)
    dicomweb.store_instances(datasets)
    again = dicomweb.store_instances(datasets)
    assert len(again.ReferencedSOPSequence) == 2


def test_search_for_studies_with_filters_fuzzy_matching_and_paging(dicomweb: DICOMwebClient) -> None:
    dicomweb.store_instances([read(bundled_file(name)) for name in ("CT_small.dcm", "MR_small.dcm", "rtdose.dcm")])
    study_uid, _, datasets = generated_study()
    dicomweb.store_instances(datasets)

    by_id = dicomweb.search_for_studies(search_filters={"PatientID": "CLIENT-1"})
    assert [value(study, "0020000D") for study in by_id] == [study_uid]
    # Stored in Latin-1 (ISO_IR 100), searched and answered in UTF-8.
    [study] = by_id
    assert study["00100010"]["Value"] == [{"Alphabetic": "Müller^Anna"}]
    assert value(study, "00201208") == 3  # NumberOfStudyRelatedInstances

    # Fuzzy matching ignores case and component order (REFERENCES: QIDO).
    fuzzy = dicomweb.search_for_studies(fuzzymatching=True, search_filters={"PatientName": "anna müller"})
    assert [value(study, "0020000D") for study in fuzzy] == [study_uid]
    wildcard = dicomweb.search_for_studies(search_filters={"PatientName": "CompressedSamples*"})
    assert {value(study, "00100020") for study in wildcard} == {"1CT1", "4MR1"}

    everything = dicomweb.search_for_studies()
    assert len(everything) == 4
    pages = [dicomweb.search_for_studies(limit=3, offset=offset) for offset in (0, 3, 6)]
    assert [len(page) for page in pages] == [3, 1, 0]
    paged = [value(study, "0020000D") for page in pages for study in page]
    assert paged == [value(study, "0020000D") for study in everything]
    assert dicomweb.search_for_studies(get_remaining=True, limit=2) == everything

    assert dicomweb.search_for_studies(search_filters={"PatientID": "nobody"}) == []


def test_search_for_series_and_instances(dicomweb: DICOMwebClient) -> None:
    study_uid, series_uid, datasets = generated_study()
    mr = read(bundled_file("MR_small.dcm"))
    dicomweb.store_instances([*datasets, mr])

    [series] = dicomweb.search_for_series(study_uid, search_filters={"Modality": "CT"})
    assert value(series, "0020000E") == series_uid
    assert value(series, "00201209") == 3  # NumberOfSeriesRelatedInstances
    assert dicomweb.search_for_series(study_uid, search_filters={"Modality": "MR"}) == []
    all_series = dicomweb.search_for_series(fields=["SeriesDescription"])
    assert len(all_series) == 2
    # Series results carry the study they belong to (PS3.18 §10.6.3.3.2).
    assert {value(item, "0020000D") for item in all_series} == {study_uid, mr.StudyInstanceUID}

    found = dicomweb.search_for_instances(study_uid, series_uid, search_filters={"InstanceNumber": 2})
    assert [value(item, "00080018") for item in found] == [datasets[1].SOPInstanceUID]
    in_study = dicomweb.search_for_instances(study_uid)
    assert sorted(value(item, "00080018") for item in in_study) == sorted(d.SOPInstanceUID for d in datasets)
    assert len(dicomweb.search_for_instances(limit=2)) == 2


def test_retrieve_study_series_and_instance_match_what_was_stored(dicomweb: DICOMwebClient) -> None:
    study_uid, series_uid, datasets = generated_study()
    dicomweb.store_instances(datasets)
    by_sop = {dataset.SOPInstanceUID: dataset for dataset in datasets}

    for retrieved in (dicomweb.retrieve_study(study_uid), dicomweb.retrieve_series(study_uid, series_uid)):
        assert sorted(item.SOPInstanceUID for item in retrieved) == sorted(by_sop)
        for item in retrieved:
            original = by_sop[item.SOPInstanceUID]
            assert item.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            assert item.PatientName == original.PatientName
            assert item.PixelData == original.PixelData

    one = dicomweb.retrieve_instance(*uids(datasets[0]))
    assert one.SOPInstanceUID == datasets[0].SOPInstanceUID
    assert np.array_equal(one.pixel_array, datasets[0].pixel_array)


@pytest.mark.parametrize("name", ["rtdose.dcm", "JPEG2000.dcm"])
def test_retrieve_without_transfer_syntax_is_explicit_little_endian(dicomweb: DICOMwebClient, name: str) -> None:
    """rtdose is stored Implicit VR, JPEG2000 compressed; asked without a
    transfer syntax (the client's default for series), both come back as
    Explicit VR Little Endian with the same pixels."""
    original = read(bundled_file(name))
    dicomweb.store_instances([original])
    study_uid, series_uid, sop_uid = uids(original)

    [from_series] = dicomweb.retrieve_series(study_uid, series_uid)
    named = dicomweb.retrieve_instance(
        study_uid, series_uid, sop_uid, media_types=(("application/dicom", ExplicitVRLittleEndian),)
    )

    for retrieved in (from_series, named):
        assert retrieved.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert np.array_equal(retrieved.pixel_array, original.pixel_array)


def test_retrieve_instance_default_is_as_stored(dicomweb: DICOMwebClient) -> None:
    original = read(bundled_file("JPEG2000.dcm"))
    dicomweb.store_instances([original])

    retrieved = dicomweb.retrieve_instance(*uids(original))

    assert retrieved.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert retrieved.PixelData == original.PixelData


def test_retrieve_metadata(dicomweb: DICOMwebClient) -> None:
    study_uid, series_uid, datasets = generated_study()
    dicomweb.store_instances(datasets)

    study = dicomweb.retrieve_study_metadata(study_uid)
    series = dicomweb.retrieve_series_metadata(study_uid, series_uid)
    instance = dicomweb.retrieve_instance_metadata(*uids(datasets[0]))

    assert len(study) == len(series) == 3
    assert instance["00080018"]["Value"] == [datasets[0].SOPInstanceUID]
    assert "BulkDataURI" in instance[PIXEL_DATA]
    loaded = Dataset.from_json({tag: element for tag, element in instance.items() if tag != PIXEL_DATA})
    assert loaded.PatientName == "Müller^Anna"
    assert loaded.Rows == datasets[0].Rows


def test_retrieve_instance_frames_match_pydicom(dicomweb: DICOMwebClient) -> None:
    original = read(bundled_file("rtdose.dcm"))
    dicomweb.store_instances([original])
    frame_length = original.Rows * original.Columns * original.SamplesPerPixel * original.BitsAllocated // 8
    expected = [original.PixelData[i * frame_length : (i + 1) * frame_length] for i in range(original.NumberOfFrames)]

    # Default Accept of the client: multipart/related; type="*/*".
    frames = dicomweb.retrieve_instance_frames(*uids(original), frame_numbers=[1, 3, 15])
    assert frames == [expected[0], expected[2], expected[14]]

    octets = dicomweb.retrieve_instance_frames(
        *uids(original), frame_numbers=[2], media_types=("application/octet-stream",)
    )
    assert octets == [expected[1]]
    frame = np.frombuffer(octets[0], dtype="<u4").reshape(original.Rows, original.Columns)
    assert np.array_equal(frame, original.pixel_array[1])


def test_retrieve_compressed_frame_as_stored(dicomweb: DICOMwebClient) -> None:
    original = read(bundled_file("JPEG2000.dcm"))
    dicomweb.store_instances([original])

    [frame] = dicomweb.retrieve_instance_frames(
        *uids(original), frame_numbers=[1], media_types=(("image/jp2", original.file_meta.TransferSyntaxUID),)
    )

    codestream = next(pydicom.encaps.generate_frames(original.PixelData, number_of_frames=1))
    assert frame == codestream


@pytest.mark.parametrize("media_type", ["image/dicom-rle", "image/x-dicom-rle"])
def test_retrieve_rle_frames_by_either_name_the_client_knows(dicomweb: DICOMwebClient, media_type: str) -> None:
    """The client offers the RLE media type by its name in PS3.18 and by its
    older one (the JavaScript client knows only that): both get the frames as stored."""
    original = read(bundled_file("SC_rgb_rle_2frame.dcm"))
    dicomweb.store_instances([original])

    frames = dicomweb.retrieve_instance_frames(
        *uids(original), frame_numbers=[2, 1], media_types=((media_type, original.file_meta.TransferSyntaxUID),)
    )

    stored = list(pydicom.encaps.generate_frames(original.PixelData, number_of_frames=2))
    assert frames == [stored[1], stored[0]]


def assert_varied_image(data: bytes, image_format: str) -> None:
    image = Image.open(io.BytesIO(data))
    assert image.format == image_format
    assert float(np.asarray(image).astype(float).var()) > 0


@pytest.mark.parametrize(("media_type", "image_format"), [("image/jpeg", "JPEG"), ("image/png", "PNG")])
def test_retrieve_rendered(dicomweb: DICOMwebClient, media_type: str, image_format: str) -> None:
    ct = read(bundled_file("CT_small.dcm"))
    dose = read(bundled_file("rtdose.dcm"))
    dicomweb.store_instances([ct, dose])

    rendered = dicomweb.retrieve_instance_rendered(*uids(ct), media_types=(media_type,))
    assert_varied_image(rendered, image_format)
    frame = dicomweb.retrieve_instance_frames_rendered(*uids(dose), frame_numbers=[5], media_types=(media_type,))
    assert_varied_image(frame, image_format)


def test_retrieve_rendered_without_media_types(dicomweb: DICOMwebClient) -> None:
    """The client then sends no Accept header of its own (requests' `*/*`)."""
    ct = read(bundled_file("CT_small.dcm"))
    dicomweb.store_instances([ct])
    assert_varied_image(dicomweb.retrieve_instance_rendered(*uids(ct)), "JPEG")


def test_retrieve_bulkdata_from_metadata_uri(dicomweb: DICOMwebClient) -> None:
    original = read(bundled_file("rtdose.dcm"))
    dicomweb.store_instances([original])
    metadata = dicomweb.retrieve_instance_metadata(*uids(original))
    uri = metadata[PIXEL_DATA]["BulkDataURI"]
    assert uri.startswith(dicomweb.base_url + "/studies/")

    assert dicomweb.retrieve_bulkdata(uri) == [original.PixelData]
    assert dicomweb.retrieve_bulkdata(uri, media_types=("application/octet-stream",)) == [original.PixelData]


def test_loading_metadata_with_bulkdata_handler(dicomweb: DICOMwebClient) -> None:
    """pydicom resolves BulkDataURIs through a handler; the client can serve as one."""
    original = read(bundled_file("CT_small.dcm"))
    dicomweb.store_instances([original])
    metadata = dicomweb.retrieve_instance_metadata(*uids(original))

    def fetch(tag: str, vr: str, uri: str) -> bytes:
        [data] = dicomweb.retrieve_bulkdata(uri)
        # The client yields bytearrays; pydicom takes only bytes as a binary value.
        return bytes(data)

    loaded = Dataset.from_json(metadata, bulk_data_uri_handler=fetch)
    assert loaded.PixelData == original.PixelData
