"""Enhanced CT Image Storage (PS3.3 A.38) built from a single-frame CT series, for assembly tests."""

from collections.abc import Sequence

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

_COPIED = (
    "PatientName", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "Modality",
    "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
    "PixelRepresentation",
)


def enhanced_ct(slices: Sequence[Dataset], rescale_per_frame: bool = False) -> Dataset:
    """One multi-frame instance whose frame N is `slices[N - 1]`, geometry in functional groups."""
    first = slices[0]
    dataset = Dataset()
    for keyword in _COPIED:
        setattr(dataset, keyword, first.data_element(keyword).value)
    dataset.SOPClassUID = EnhancedCTImageStorage
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    dataset.NumberOfFrames = len(slices)

    shared = Dataset()
    shared.PlaneOrientationSequence = [_item(ImageOrientationPatient=first.ImageOrientationPatient)]
    shared.PixelMeasuresSequence = [_item(PixelSpacing=first.PixelSpacing, SliceThickness=first.SliceThickness)]
    if not rescale_per_frame:
        shared.PixelValueTransformationSequence = [_rescale(first)]
    dataset.SharedFunctionalGroupsSequence = [shared]

    per_frame = DicomSequence()
    for number, source in enumerate(slices, start=1):
        frame = Dataset()
        frame.FrameContentSequence = [_item(InStackPositionNumber=number)]
        frame.PlanePositionSequence = [_item(ImagePositionPatient=source.ImagePositionPatient)]
        if rescale_per_frame:
            frame.PixelValueTransformationSequence = [_rescale(source)]
        per_frame.append(frame)
    dataset.PerFrameFunctionalGroupsSequence = per_frame
    dataset.PixelData = b"".join(source.PixelData for source in slices)
    return dataset


def _item(**elements: object) -> Dataset:
    item = Dataset()
    for keyword, value in elements.items():
        setattr(item, keyword, value)
    return item


def _rescale(source: Dataset) -> Dataset:
    return _item(RescaleSlope=source.RescaleSlope, RescaleIntercept=source.RescaleIntercept, RescaleType="HU")
