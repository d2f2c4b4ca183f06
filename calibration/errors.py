"""Calibration errors. Each is an InvalidInputError (so a MagmaError and a ValueError) naming the problem."""
from __future__ import annotations

from magma_core.errors import InvalidInputError


class CalibrationError(InvalidInputError):
    """Calibration input that cannot give a trustworthy result."""


class BoardNotFoundError(CalibrationError):
    """No calibration board was detected in the named images."""


class TooFewViewsError(CalibrationError):
    """Fewer usable views or samples than the solver needs."""


class DegenerateMotionError(CalibrationError):
    """Robot motions that leave the hand-eye transform unobservable (pure translation, one rotation axis)."""


class CalibrationFileError(CalibrationError):
    """A calibration or samples file that is missing, unparsable or holds invalid values."""
