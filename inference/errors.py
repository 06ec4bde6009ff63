"""The one exception tree of the inference domain.

Each message is written for the person who reads a failed Task's
statusReason: it says what is wrong with the input, not where the code is.
"""


class InferenceError(Exception):
    """Base of every error the inference domain raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidBundle(InferenceError):
    """A model bundle directory is incomplete or its metadata is not usable."""


class VolumeError(InferenceError):
    """A series cannot make a sound volume (orientation, positions, spacing, pixels)."""


class NoMatchingSeries(InferenceError):
    """No series of the study satisfies the model's series rules."""


class InvalidLabelledSet(InferenceError):
    """A folder given to validate a model on is not a usable labelled set."""
