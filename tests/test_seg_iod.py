"""The AI segmentation is a valid SEG IOD, checked by an independent
validator (dciodvfy from David Clunie's dicom3tools, Debian's package, which
.ci/run installs), for single-frame and multi-frame sources."""

import json
import pickle
import shutil
import subprocess
from pathlib import Path

import highdicom
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom.instance import describe_instance
from dicom.json_model import dataset_to_json
from inference.assembly import volume_from_datasets
from inference.demo.phantom import make_phantom, phantom_datasets
from inference.model_card import ModelCard
from inference.seg import SegIdentity, prepare_seg_writer, segmentation, source_images
from server.ingest import prepare_dataset
from server.jobs.offload import read_series
from server.jobs.service import DEMO_BUNDLE
from server.storage import FileStore
from tests.enhanced_ct import enhanced_ct
from tests.inference_checks import SMALL

pytestmark = pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools is not installed")
CARD = ModelCard.from_metadata(json.loads((DEMO_BUNDLE / "configs" / "metadata.json").read_text()))


@pytest.fixture(autouse=True, scope="module")
def _prepared_as_a_worker_prepares_it() -> None:
    prepare_seg_writer()


def _problems(dataset: Dataset, path: Path) -> list[str]:
    dataset.save_as(path, enforce_file_format=True)
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120, check=False)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def _labels_on(volume, study) -> np.ndarray:  # type: ignore[no-untyped-def]
    # The phantom's label is in storage order; the volume ascends along the normal.
    ascending = volume.affine[2, 0] * study.volume.affine[2, 0] > 0
    return study.label if ascending else study.label[::-1]


def test_the_segmentation_of_a_single_frame_series_is_a_valid_iod(tmp_path):
    study = make_phantom(81, SMALL, lesion_count=2, radius_mm=(7.0, 10.0))
    sources = phantom_datasets(study)
    volume = volume_from_datasets(sources)
    labels = _labels_on(volume, study)
    seg = segmentation(source_images(sources), volume, labels, CARD, SegIdentity.for_job("iod-single"))
    assert _problems(sources[0], tmp_path / "source.dcm") == []
    assert _problems(seg, tmp_path / "seg.dcm") == []
    # Every source is referenced; a frame is there for each slice with a finding, on its slice.
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {source.SOPInstanceUID for source in sources}
    assert {item.ReferencedSOPInstanceUID for item in seg.SourceImageSequence} == referenced
    with_finding = {volume.source_instance_uids[index] for index in range(len(labels)) if labels[index].any()}
    frame_sources = {
        frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for frame in seg.PerFrameFunctionalGroupsSequence
    }
    assert frame_sources == with_finding
    # highdicom places only the slices with a finding; the SEG still says how far apart slices are, and gives
    # the mask of every source slice.
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SpacingBetweenSlices) == pytest.approx(volume.spacing[0])
    read_back = highdicom.seg.Segmentation.from_dataset(seg)
    mask = read_back.get_pixels_by_source_instance(
        source_sop_instance_uids=list(volume.source_instance_uids), segment_numbers=[1], combine_segments=True,
    )
    assert np.array_equal(mask > 0, labels > 0)


def test_an_empty_segmentation_is_a_valid_iod(tmp_path):
    study = make_phantom(82, SMALL, lesion_count=1, radius_mm=(7.0, 10.0))
    sources = phantom_datasets(study)
    volume = volume_from_datasets(sources)
    seg = segmentation(source_images(sources), volume, np.zeros(volume.voxels.shape, np.uint8), CARD, SegIdentity.for_job("iod-empty"))
    assert _problems(seg, tmp_path / "seg.dcm") == []
    # Nothing found: one empty frame, on the first slice, says so; every slice is still a source.
    assert seg.NumberOfFrames == 1
    assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == len(sources)


def test_sources_without_type2_patient_and_study_attributes_give_a_valid_iod(tmp_path):
    study = make_phantom(84, SMALL, lesion_count=1, radius_mm=(7.0, 10.0))
    sources = phantom_datasets(study)[::-1]  # the volume's first slice is not the first source
    left_out = ("PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber", "ReferringPhysicianName")
    for source in sources:
        for keyword in left_out:
            delattr(source, keyword)
    volume = volume_from_datasets(sources)
    seg = segmentation(source_images(sources), volume, _labels_on(volume, study), CARD, SegIdentity.for_job("iod-type2"))
    assert _problems(seg, tmp_path / "seg.dcm") == []
    assert all(seg[keyword].value in ("", None) for keyword in left_out)
    assert seg.PatientID == sources[0].PatientID


def test_the_segmentation_of_a_multi_frame_source_is_a_valid_iod(tmp_path):
    study = make_phantom(83, SMALL, lesion_count=2, radius_mm=(7.0, 10.0))
    source = enhanced_ct(phantom_datasets(study))
    volume = volume_from_datasets([source])
    seg = segmentation(source_images([source]), volume, _labels_on(volume, study), CARD, SegIdentity.for_job("iod-multi"))
    assert _problems(seg, tmp_path / "seg.dcm") == []


# Made anew for every SEG: its creation, series and content dates and times, the
# equipment's contribution time, and the dimension organization.
_VOLATILE = {"00080012", "00080013", "00080021", "00080031", "00080023", "00080033", "0018A002", "00209164"}


def _stable(node):  # type: ignore[no-untyped-def]
    if isinstance(node, dict):
        return {key: _stable(value) for key, value in node.items() if key not in _VOLATILE}
    return [_stable(item) for item in node] if isinstance(node, list) else node


@pytest.mark.parametrize("case", ["single-frame", "multi-frame", "empty slice thickness"])
def test_the_seg_written_from_the_headers_kept_at_reading_is_the_seg_of_the_whole_headers(tmp_path, case):
    study = make_phantom(85, SMALL, lesion_count=2, radius_mm=(7.0, 10.0))
    datasets = [enhanced_ct(phantom_datasets(study))] if case == "multi-frame" else phantom_datasets(study)
    if case == "empty slice thickness":  # Type 2 in CT: pydicom reads an empty value already decoded
        for dataset in datasets:
            dataset.SliceThickness = None
    paths = []
    for index, dataset in zip(np.random.default_rng(5).permutation(len(datasets)), datasets):  # files in no order
        paths.append(tmp_path / f"{index}.dcm")
        dataset.save_as(paths[-1], enforce_file_format=True)
    read = read_series(paths)
    whole = [pydicom.dcmread(path, stop_before_pixels=True) for path in paths]
    labels = _labels_on(read.volume, study)
    sent = pickle.dumps(read.sources)  # as it goes to the process that writes the SEG
    assert b"pydicom" not in sent  # builtins only: pydicom's own objects cost far more to send
    kept = segmentation(pickle.loads(sent).images(), read.volume, labels, CARD, SegIdentity.for_job("kept"))
    reread = segmentation(source_images(whole), read.volume, labels, CARD, SegIdentity.for_job("kept"))
    assert _stable(dataset_to_json(kept)) == _stable(dataset_to_json(reread))
    assert _problems(kept, tmp_path / "seg.dcm") == []


@pytest.mark.parametrize("case", ["lesions", "empty", "multi-frame"])
def test_a_seg_the_server_writes_is_described_as_its_file_would_be(tmp_path, case):
    study = make_phantom(86, SMALL, lesion_count=2, radius_mm=(7.0, 10.0))
    sources = [enhanced_ct(phantom_datasets(study))] if case == "multi-frame" else phantom_datasets(study)
    volume = volume_from_datasets(sources)
    labels = np.zeros(volume.voxels.shape, np.uint8) if case == "empty" else _labels_on(volume, study)
    files = FileStore(tmp_path)
    files.prepare()
    prepared = prepare_dataset(files, segmentation(source_images(sources), volume, labels, CARD, SegIdentity.for_job(case)))
    assert prepared.description == describe_instance(prepared.received.temp_path)


@pytest.mark.parametrize("case", ["no slice thickness", "empty slice thickness", "orientations within tolerance",
                                  "ISO 2022 with an empty first value", "negative spacing between slices",
                                  "stale spacing between slices"])
def test_a_seg_is_written_for_sources_as_scanners_send_them(tmp_path, case):
    study = make_phantom(87, SMALL, lesion_count=1, radius_mm=(7.0, 10.0))
    sources = phantom_datasets(study)
    for index, source in enumerate(sources):
        if case == "no slice thickness":
            del source.SliceThickness
        elif case == "empty slice thickness":
            source.SliceThickness = None
        elif case == "orientations within tolerance" and index % 2:
            source.ImageOrientationPatient = [1, 0, 0, 0, 1, 5e-5]
        elif case == "ISO 2022 with an empty first value":
            source.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
            source.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
        elif case == "negative spacing between slices":
            source.SpacingBetweenSlices = f"{-study.geometry.slice_spacing_mm:g}"
        elif case == "stale spacing between slices":
            source.SpacingBetweenSlices = "5"
    volume = volume_from_datasets(sources)
    seg = segmentation(source_images(sources), volume, _labels_on(volume, study), CARD, SegIdentity.for_job(case))
    assert _problems(seg, tmp_path / "seg.dcm") == []
    assert str(pydicom.dcmread(tmp_path / "seg.dcm").PatientName) == str(sources[0].PatientName)
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    expected_thickness = volume.spacing[0] if "thickness" in case else sources[0].SliceThickness
    assert float(measures.SliceThickness) == pytest.approx(expected_thickness)
    assert float(measures.SpacingBetweenSlices) == pytest.approx(volume.spacing[0])


def test_each_segment_recommends_a_display_colour():
    """Viewers (OHIF warns without it) draw each segment in the colour the SEG recommends."""
    study = make_phantom(84, SMALL, lesion_count=1, radius_mm=(7.0, 10.0))
    sources = phantom_datasets(study)
    volume = volume_from_datasets(sources)
    seg = segmentation(source_images(sources), volume, _labels_on(volume, study), CARD, SegIdentity.for_job("colours"))
    colours = [tuple(item.RecommendedDisplayCIELabValue) for item in seg.SegmentSequence]
    assert len(colours) == len(CARD.segments) and len(set(colours)) == len(colours)


def test_segments_are_coded_as_ai_findings_in_an_abnormal_structure():
    """Readers go by the code value, not the meaning: 123109 is Manual Processing (PS3.16 CID 7162)."""
    study = make_phantom(84, SMALL, lesion_count=1, radius_mm=(7.0, 10.0))
    sources = phantom_datasets(study)
    volume = volume_from_datasets(sources)
    seg = segmentation(source_images(sources), volume, _labels_on(volume, study), CARD, SegIdentity.for_job("codes"))
    for segment in seg.SegmentSequence:
        [family] = segment.SegmentationAlgorithmIdentificationSequence[0].AlgorithmFamilyCodeSequence
        assert (family.CodeValue, family.CodingSchemeDesignator, family.CodeMeaning) == (
            "123110", "DCM", "Artificial Intelligence")
        [category] = segment.SegmentedPropertyCategoryCodeSequence
        assert (category.CodeValue, category.CodeMeaning) == ("49755003", "Morphologically Abnormal Structure")


def _seg_of_private_findings(systems: tuple[str, str]) -> Dataset:
    """A SEG of three findings: one of each of `systems`, sharing a code, and one of SNOMED's."""
    metadata = json.loads((DEMO_BUNDLE / "configs" / "metadata.json").read_text())
    [lesion] = metadata["medaiflow"]["segments"]
    metadata["medaiflow"]["segments"] = [
        {**lesion, "label": 1, "name": "nodule", "finding": {"system": systems[0], "code": "N1", "display": "Nodule"}},
        {**lesion, "label": 2, "name": "cyst", "finding": {"system": systems[1], "code": "N1", "display": "Cyst"}},
        {**lesion, "label": 3, "name": "lesion"},  # SNOMED: its standard designator, no identification needed
    ]
    card = ModelCard.from_metadata(metadata)
    study = make_phantom(87, SMALL, lesion_count=2, radius_mm=(7.0, 10.0))
    sources = phantom_datasets(study)
    volume = volume_from_datasets(sources)
    labels = _labels_on(volume, study).astype(np.uint8)
    labels[labels > 0] = 1
    labels[: len(labels) // 2][labels[: len(labels) // 2] == 1] = 2  # some of the finding as the second segment
    return segmentation(source_images(sources), volume, labels, card, SegIdentity.for_job("private-codes"))


def test_findings_of_private_code_systems_are_each_identified_in_the_seg(tmp_path):
    """A model's own code systems (a hospital's, say) get a private designator
    each, which the Coding Scheme Identification Sequence ties to the system:
    codes of two such systems no longer share one designator, and the system
    is not lost."""
    systems = ("https://hospital.example/fhir/CodeSystem/findings", "urn:oid:1.2.826.0.1.3680043.9.7433.1")
    seg = _seg_of_private_findings(systems)
    assert _problems(seg, tmp_path / "seg.dcm") == []
    designators = [item.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator for item in seg.SegmentSequence]
    assert designators[2] == "SCT" and len(set(designators)) == 3
    identified = {item.CodingSchemeDesignator: item for item in seg.CodingSchemeIdentificationSequence}
    assert set(identified) == set(designators[:2])
    for designator, system in zip(designators, systems):
        assert identified[designator].CodingSchemeResourcesSequence[0].CodingSchemeURL == system


def test_a_private_code_system_that_is_no_url_is_named_and_the_seg_stays_valid(tmp_path):
    """A Coding Scheme URL is of VR UR (RFC 3986, no spaces): a system a model
    card names in words is the scheme's name only, whole, however long."""
    systems = ("https://hospital.example/fhir/CodeSystem/findings/of-the-radiology-department/version/2024",
               "findings of ward 7, as the ward's own list has named them since the old system was retired")
    seg = _seg_of_private_findings(systems)
    assert _problems(seg, tmp_path / "seg.dcm") == []
    identified = {item.CodingSchemeName: item for item in seg.CodingSchemeIdentificationSequence}
    assert set(identified) == set(systems)
    assert identified[systems[0]].CodingSchemeResourcesSequence[0].CodingSchemeURL == systems[0]
    assert "CodingSchemeResourcesSequence" not in identified[systems[1]]


def test_a_segmentation_given_its_studys_corrected_patient_is_still_a_valid_iod(tmp_path):
    from server.jobs.seg_patients import _with_patient
    from server.storage import FileStore

    study = make_phantom(85, SMALL, lesion_count=1, radius_mm=(7.0, 10.0))
    sources = phantom_datasets(study)
    volume = volume_from_datasets(sources)
    seg = segmentation(source_images(sources), volume, _labels_on(volume, study), CARD, SegIdentity.for_job("iod-moved"))
    files = FileStore(tmp_path / "store")
    files.prepare()
    seg.save_as(files.root / "seg.dcm", enforce_file_format=True)
    corrected = {"00100020": {"vr": "LO", "Value": ["CORRECTED-85"]},
                 "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}}
    moved = _with_patient(files, "seg.dcm", corrected)
    assert (moved.PatientID, str(moved.PatientName)) == ("CORRECTED-85", "Doe^Jane")
    assert moved.PatientBirthDate == "" and moved.SOPInstanceUID == seg.SOPInstanceUID
    assert _problems(moved, tmp_path / "moved.dcm") == []
