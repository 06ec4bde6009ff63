"""Stored pixel data decoded one frame at a time, and one answer for pixel
data that cannot be decoded here (frames, rendered images and transcoded
instances all need it)."""

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dicom.errors import NotAcceptable

# What pydicom and its codecs raise for pixel data they cannot decode: a
# codec that lacks a feature (12-bit JPEG, say), a corrupt or truncated
# payload, or an image header that does not describe the pixels.
DECODE_ERRORS = (AttributeError, EOFError, KeyError, NotImplementedError, RuntimeError, TypeError, ValueError)


def frame_source(path: str, stored_syntax: str) -> str | Dataset:
    """What to decode frames from: the path, from which pydicom reads only
    the frame asked for, except for a deflated file, which it cannot inflate
    from a path and so reads whole."""
    return pydicom.dcmread(path) if stored_syntax == DeflatedExplicitVRLittleEndian else path


def decode_frame(source: str | Dataset, index: int, stored_syntax: str, raw: bool = False) -> np.ndarray:
    """Frame `index` (0-based) as pixels; `raw`: as stored, without colour conversion."""
    try:
        return pixel_array(source, index=index, raw=raw)
    except DECODE_ERRORS as error:
        raise undecodable(stored_syntax, error) from error


def undecodable(stored_syntax: str, error: Exception) -> NotAcceptable:
    return only_as_stored(f"the pixel data (stored as {stored_syntax}) cannot be decoded here", error)


def only_as_stored(problem: str, error: Exception) -> NotAcceptable:
    """406: the server cannot produce the form asked for; the stored form it can send."""
    reason = " ".join(str(error).split())[:300]  # decoders report over several lines
    return NotAcceptable(f"{problem}: {reason}. It can be retrieved as stored (transfer-syntax=*)")
