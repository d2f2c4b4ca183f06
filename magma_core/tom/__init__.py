"""Trace-of-Mark: traces of marks over future frames (types, extraction from video, trackers, drawing).

The main entry points are re-exported lazily, so importing `magma_core.tom.types` (as the codecs
and ROS nodes do) does not pull in the extraction code.
"""
from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "Trace": "magma_core.tom.types",
    "TraceSet": "magma_core.tom.types",
    "Clip": "magma_core.tom.clip",
    "load_clip": "magma_core.tom.clip",
    "validate_clip": "magma_core.tom.clip",
    "ToMConfig": "magma_core.tom.extract",
    "extract_traces": "magma_core.tom.extract",
    "PointTracker": "magma_core.tom.trackers",
    "TrackResult": "magma_core.tom.trackers",
    "LucasKanadeTracker": "magma_core.tom.trackers",
    "CoTrackerTracker": "magma_core.tom.trackers",
    "make_tracker": "magma_core.tom.trackers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'magma_core.tom' has no attribute {name!r}")
