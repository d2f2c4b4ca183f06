"""Set-of-Mark: numbered marks (points or boxes) on an image, as drawn for and listed to the model."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from magma_core.errors import InvalidInputError
from magma_core.grid import pixels_to_grid

MARK_KINDS = ("object", "gripper", "trace", "ui", "region")
_MARK_KEYS = {"id", "point", "box", "label", "kind"}


def _coords(value: Any, count: int, what: str) -> tuple[float, ...]:
    """Validate a sequence of `count` finite real numbers and return it as floats."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != count:
        raise InvalidInputError(f"{what}: expected {count} numbers, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise InvalidInputError(f"{what}: expected numbers, got {value!r}")
        v = float(v)
        if not math.isfinite(v):
            raise InvalidInputError(f"{what}: coordinates must be finite, got {value!r}")
        out.append(v)
    return tuple(out)


@dataclass(frozen=True)
class Mark:
    """One numbered mark. `id` is 1-based, the number the model sees; exactly one of point/box is set.

    point: (x, y) in pixels. box: (x0, y0, x1, y1) in pixels with x1 > x0 and y1 > y0.
    """

    id: int
    point: tuple[float, float] | None = None
    box: tuple[float, float, float, float] | None = None
    label: str = ""
    kind: str = "object"

    def __post_init__(self) -> None:
        if isinstance(self.id, bool) or not isinstance(self.id, numbers.Integral) or self.id < 1:
            raise InvalidInputError(f"mark id must be an integer >= 1 (ids are 1-based), got {self.id!r}")
        object.__setattr__(self, "id", int(self.id))
        where = f"mark {self.id}"
        if (self.point is None) == (self.box is None):
            raise InvalidInputError(f"{where}: give exactly one of point or box")
        if self.point is not None:
            object.__setattr__(self, "point", _coords(self.point, 2, f"{where} point"))
        else:
            box = _coords(self.box, 4, f"{where} box")
            if not (box[2] > box[0] and box[3] > box[1]):
                raise InvalidInputError(f"{where} box {box}: needs x1 > x0 and y1 > y0")
            object.__setattr__(self, "box", box)
        if not isinstance(self.label, str):
            raise InvalidInputError(f"{where}: label must be a string, got {type(self.label).__name__}")
        if self.kind not in MARK_KINDS:
            raise InvalidInputError(f"{where}: kind {self.kind!r} is not one of {MARK_KINDS}")

    @property
    def center(self) -> tuple[float, float]:
        """The point itself, or the middle of the box."""
        if self.point is not None:
            return self.point
        x0, y0, x1, y1 = self.box  # type: ignore[misc]
        return ((x0 + x1) / 2.0, (y0 + y1) / 2.0)

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "point": list(self.point) if self.point is not None else None,
            "box": list(self.box) if self.box is not None else None,
            "label": self.label,
            "kind": self.kind,
        }

    @classmethod
    def from_dict(cls, data: Any) -> "Mark":
        if not isinstance(data, dict):
            raise InvalidInputError(f"mark: expected a dict, got {type(data).__name__}")
        unknown = set(data) - _MARK_KEYS
        if unknown:
            raise InvalidInputError(f"mark: unknown keys {sorted(unknown)}; allowed {sorted(_MARK_KEYS)}")
        if "id" not in data:
            raise InvalidInputError("mark: missing 'id'")
        return cls(
            id=data["id"],
            point=data.get("point"),
            box=data.get("box"),
            label=data.get("label", ""),
            kind=data.get("kind", "object"),
        )


class MarkSet:
    """An ordered collection of marks with unique ids; indexing is by id, iteration in insertion order."""

    def __init__(self, marks: Iterable[Mark] = ()) -> None:
        self._marks: dict[int, Mark] = {}
        for mark in marks:
            self._insert(mark)

    def _insert(self, mark: Mark) -> Mark:
        if not isinstance(mark, Mark):
            raise InvalidInputError(f"MarkSet holds Mark objects, got {type(mark).__name__}")
        if mark.id in self._marks:
            raise InvalidInputError(f"duplicate mark id {mark.id}")
        self._marks[mark.id] = mark
        return mark

    @staticmethod
    def _labels(labels: Sequence[str] | None, count: int) -> list[str]:
        if labels is None:
            return [""] * count
        labels = list(labels)
        if len(labels) != count:
            raise InvalidInputError(f"{len(labels)} labels for {count} marks")
        return labels

    @staticmethod
    def _rows(values: Any, width: int, what: str) -> list:
        array = np.asarray(values, dtype=object) if not isinstance(values, np.ndarray) else values
        if array.size == 0:
            return []
        if array.ndim != 2 or array.shape[1] != width:
            raise InvalidInputError(f"{what}: expected shape (N, {width}), got {array.shape}")
        return [list(row) for row in array]

    @classmethod
    def from_boxes(cls, boxes: Any, labels: Sequence[str] | None = None, kind: str = "object", start_id: int = 1) -> "MarkSet":
        """Number boxes (N, 4) as x0, y0, x1, y1 pixels from `start_id`."""
        rows = cls._rows(boxes, 4, "boxes")
        names = cls._labels(labels, len(rows))
        return cls(Mark(id=start_id + i, box=row, label=names[i], kind=kind) for i, row in enumerate(rows))

    @classmethod
    def from_points(cls, points: Any, labels: Sequence[str] | None = None, kind: str = "object", start_id: int = 1) -> "MarkSet":
        """Number points (N, 2) as x, y pixels from `start_id`."""
        rows = cls._rows(points, 2, "points")
        names = cls._labels(labels, len(rows))
        return cls(Mark(id=start_id + i, point=row, label=names[i], kind=kind) for i, row in enumerate(rows))

    def add(
        self,
        mark: Mark | None = None,
        *,
        point: Any = None,
        box: Any = None,
        label: str = "",
        kind: str = "object",
        id: int | None = None,
    ) -> Mark:
        """Append a Mark, or build one from point/box; without an id it takes the next free number."""
        if mark is None:
            next_id = max(self._marks, default=0) + 1 if id is None else id
            mark = Mark(id=next_id, point=point, box=box, label=label, kind=kind)
        elif point is not None or box is not None or id is not None:
            raise InvalidInputError("add: give either a Mark or point/box fields, not both")
        return self._insert(mark)

    def __iter__(self) -> Iterator[Mark]:
        return iter(self._marks.values())

    def __len__(self) -> int:
        return len(self._marks)

    def __getitem__(self, mark_id: int) -> Mark:
        try:
            return self._marks[mark_id]
        except KeyError:
            raise KeyError(f"no mark with id {mark_id}; ids are {list(self._marks)}") from None

    def __contains__(self, mark_id: object) -> bool:
        return mark_id in self._marks

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MarkSet) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"MarkSet({list(self)!r})"

    @property
    def ids(self) -> list[int]:
        return list(self._marks)

    def by_kind(self, kind: str) -> "MarkSet":
        if kind not in MARK_KINDS:
            raise InvalidInputError(f"kind {kind!r} is not one of {MARK_KINDS}")
        return MarkSet(m for m in self if m.kind == kind)

    def centers(self) -> np.ndarray:
        """(N, 2) float pixel centres in order."""
        return np.array([m.center for m in self], dtype=np.float64).reshape(-1, 2)

    def grid_centers(self, width: int, height: int) -> np.ndarray:
        """(N, 2) int centres on the 256x256 grid for an image of width x height pixels."""
        _check_size(width, height)
        return pixels_to_grid(self.centers(), width, height)

    def to_prompt_text(self, width: int, height: int) -> str:
        """One line per mark, "Mark k at [x,y]", with x, y on the 256x256 grid."""
        cells = self.grid_centers(width, height)
        return "\n".join(f"Mark {m.id} at [{int(c[0])},{int(c[1])}]" for m, c in zip(self, cells))

    def to_dict(self) -> dict:
        return {"marks": [m.to_dict() for m in self]}

    @classmethod
    def from_dict(cls, data: Any) -> "MarkSet":
        if not isinstance(data, dict) or not isinstance(data.get("marks"), list):
            raise InvalidInputError("mark set: expected a dict with a 'marks' list")
        return cls(Mark.from_dict(entry) for entry in data["marks"])


def _check_size(width: int, height: int) -> None:
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
            raise InvalidInputError(f"image {name} must be a positive integer, got {value!r}")
