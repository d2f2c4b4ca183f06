"""Errors raised on bad input. Each names the problem so a user (or a node's log) can act on it."""


class MagmaError(Exception):
    """Base class of every error this project raises on purpose."""


class InvalidInputError(MagmaError, ValueError):
    """An image, clip, array or file that cannot be used as given (wrong shape, dtype, NaN, ...)."""


class TrackerUnavailableError(MagmaError, RuntimeError):
    """A tracker backend was requested whose package or local weights are missing."""
