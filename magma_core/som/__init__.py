"""Set-of-Mark: numbered marks on an image and their drawing.

`draw_marks` is loaded on first use so that importing the mark types does not import OpenCV.
"""
from magma_core.som.marks import MARK_KINDS, Mark, MarkSet

__all__ = ["MARK_KINDS", "Mark", "MarkSet", "draw_marks", "plan_marks"]


def __getattr__(name: str):
    if name in ("draw_marks", "plan_marks"):
        from magma_core.som import draw

        return getattr(draw, name)
    raise AttributeError(f"module 'magma_core.som' has no attribute {name!r}")
