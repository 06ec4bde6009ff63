"""DICOMDIR: the index of a file-set on a CD or other medium (PS3.10 §8, PS3.3
Annex F), recognised by the Media Storage SOP Class in its File Meta
Information, whatever the file is called. It describes instances; it is not one."""

from pathlib import Path

from pydicom.filereader import read_file_meta_info

# PS3.4 Annex B: Media Storage Directory Storage, the SOP Class of a DICOMDIR.
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"


def is_media_directory(path: Path) -> bool:
    """Whether `path` is a DICOMDIR; False for anything else, readable or not."""
    try:
        meta = read_file_meta_info(path)
    except Exception:  # noqa: BLE001
        # pydicom signals malformed or foreign files with many exception types;
        # each means "not a DICOMDIR", and storing the file will say what it is.
        return False
    return str(meta.get("MediaStorageSOPClassUID", "")) == MEDIA_STORAGE_DIRECTORY
