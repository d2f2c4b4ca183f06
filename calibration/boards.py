"""Calibration boards: the spec string, their 3D corner layout, a printable pattern and detection.

Spec strings (what ``--board`` takes):
- ``chessboard:COLSxROWS:SQUARE`` - COLS x ROWS *inner* corners, SQUARE side in metres,
  e.g. ``chessboard:9x6:0.025`` (a 10 x 7 squares board). Board frame: origin at the first inner
  corner next to the black corner square, x along a row, y along a column, z into the board.
  The orientation is recovered from the colours, which needs COLS != ROWS and COLS + ROWS odd
  (e.g. 9x6); other layouts work for intrinsics but are refused for hand-eye.
- ``charuco:SQUARESxSQUARES:SQUARE:MARKER[:DICT]`` - a ChArUco board counted in squares, square and
  marker sides in metres, OpenCV dictionary name (default DICT_5X5_100), e.g.
  ``charuco:7x5:0.04:0.03``. Board frame as OpenCV's: origin at the outer top-left corner.
  Partial views are fine and the orientation is always known.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from magma_core.errors import InvalidInputError

DEFAULT_DICTIONARY = "DICT_5X5_100"
MIN_CHARUCO_CORNERS = 6  # fewer corners than this give poses too weak to calibrate with
_SUBPIX_CRITERIA = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 100, 1e-4)


@dataclass(frozen=True)
class BoardSpec:
    """A calibration board. ``cols`` x ``rows`` are inner corners (chessboard) or squares (charuco)."""

    kind: str
    cols: int
    rows: int
    square: float
    marker: float | None = None
    dictionary: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("chessboard", "charuco"):
            raise InvalidInputError(f"board kind must be 'chessboard' or 'charuco', got {self.kind!r}")
        if self.cols < 3 or self.rows < 3:  # OpenCV's detectors need three corners or squares each way
            raise InvalidInputError(f"{self.kind} needs at least 3x3, got {self.cols}x{self.rows}")
        if not (np.isfinite(self.square) and self.square > 0):
            raise InvalidInputError(f"board square size must be a positive length in metres, got {self.square}")
        if self.kind == "charuco":
            if self.marker is None or not (0 < self.marker < self.square):
                raise InvalidInputError(f"charuco marker size must be positive and smaller than the square ({self.square}), got {self.marker}")
            name = self.dictionary or DEFAULT_DICTIONARY
            if not name.startswith("DICT_") or not hasattr(cv2.aruco, name):
                raise InvalidInputError(f"unknown ArUco dictionary {name!r}; use an OpenCV name such as {DEFAULT_DICTIONARY}")
            object.__setattr__(self, "dictionary", name)
            if (self.cols - 1) * (self.rows - 1) < MIN_CHARUCO_CORNERS:
                raise InvalidInputError(f"charuco {self.cols}x{self.rows} has fewer than {MIN_CHARUCO_CORNERS} inner corners; use e.g. 7x5")
            if self.cols * self.rows // 2 > _dictionary_size(name):
                raise InvalidInputError(f"{name} has too few markers for a {self.cols}x{self.rows} charuco board")

    @classmethod
    def parse(cls, text: str) -> "BoardSpec":
        """Parse ``chessboard:9x6:0.025`` or ``charuco:7x5:0.04:0.03[:DICT_5X5_100]``."""
        parts = str(text).strip().split(":")
        usage = "expected chessboard:COLSxROWS:SQUARE_M or charuco:COLSxROWS:SQUARE_M:MARKER_M[:DICT]"
        kind = parts[0].lower()
        if not ((kind == "chessboard" and len(parts) == 3) or (kind == "charuco" and len(parts) in (4, 5))):
            raise InvalidInputError(f"bad board spec {text!r}: {usage}")
        try:
            cols, rows = (int(n) for n in parts[1].lower().split("x"))
            square = float(parts[2])
            marker = float(parts[3]) if kind == "charuco" else None
        except ValueError as exc:
            raise InvalidInputError(f"bad board spec {text!r}: {usage}") from exc
        # Values that parse but make no board get BoardSpec's own, more specific message.
        return cls(kind, cols, rows, square, marker, parts[4] if len(parts) == 5 else None)

    def __str__(self) -> str:
        base = f"{self.kind}:{self.cols}x{self.rows}:{self.square:g}"
        return base if self.kind == "chessboard" else f"{base}:{self.marker:g}:{self.dictionary}"

    @property
    def num_corners(self) -> int:
        return self.cols * self.rows if self.kind == "chessboard" else (self.cols - 1) * (self.rows - 1)

    @property
    def orientation_unambiguous(self) -> bool:
        """Whether a detection fixes which way round the board is (hand-eye needs it)."""
        return self.kind == "charuco" or (self.cols != self.rows and (self.cols + self.rows) % 2 == 1)

    def object_points(self) -> np.ndarray:
        """(num_corners, 3) corner positions in the board frame, indexed by corner id."""
        return _object_points(self).copy()

    def squares(self) -> tuple[int, int]:
        """Number of squares along x and y."""
        return (self.cols + 1, self.rows + 1) if self.kind == "chessboard" else (self.cols, self.rows)

    def squares_origin(self) -> np.ndarray:
        """Board-frame position of the outer top-left corner of the squares."""
        return np.array([-self.square, -self.square, 0.0]) if self.kind == "chessboard" else np.zeros(3)

    def pattern_image(self, px_per_square: int = 64, margin_squares: int = 1) -> np.ndarray:
        """Grey uint8 picture of the board (for printing or a simulator texture) with a white margin.

        Each square is exactly ``px_per_square`` pixels, so the picture's pixel (x, y) edge maps to the
        board point ``squares_origin() + ((x / px_per_square - margin) * square, (y / px_per_square - margin) * square)``.
        """
        if px_per_square < 8:
            raise InvalidInputError(f"px_per_square must be at least 8, got {px_per_square}")
        nx, ny = self.squares()
        if self.kind == "chessboard":
            cells = (np.add.outer(np.arange(ny), np.arange(nx)) % 2).astype(np.uint8) * 255  # black at (0, 0)
            img = np.repeat(np.repeat(cells, px_per_square, axis=0), px_per_square, axis=1)
        else:
            img = _charuco_board(self).generateImage((nx * px_per_square, ny * px_per_square), marginSize=0, borderBits=1)
        m = margin_squares * px_per_square
        return cv2.copyMakeBorder(img, m, m, m, m, cv2.BORDER_CONSTANT, value=255)


@dataclass
class BoardDetection:
    """Board corners found in one image: ids index ``BoardSpec.object_points()``."""

    ids: np.ndarray  # (N,) int
    image_points: np.ndarray  # (N, 2) float64 pixels
    object_points: np.ndarray  # (N, 3) float64 board frame, metres
    image_size: tuple[int, int] = (0, 0)  # (width, height)
    complete: bool = field(default=True)

    def __len__(self) -> int:
        return int(self.ids.size)


def detect_board(image: np.ndarray, board: BoardSpec) -> BoardDetection | None:
    """Find the board in an image (grey, BGR or RGB uint8); None when it is not found."""
    gray = _to_gray(image)
    if board.kind == "chessboard":
        return _detect_chessboard(gray, board)
    return _detect_charuco(gray, board)


def _to_gray(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise InvalidInputError(f"board detection needs a uint8 image, got dtype {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return img
    if img.ndim == 3 and img.shape[2] in (3, 4):
        # Channel order does not matter for a black-and-white board, so RGB and BGR are treated alike.
        return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY if img.shape[2] == 3 else cv2.COLOR_BGRA2GRAY)
    raise InvalidInputError(f"board detection needs an HxW or HxWx3 image, got shape {img.shape}")


def _detect_chessboard(gray: np.ndarray, board: BoardSpec) -> BoardDetection | None:
    pattern = (board.cols, board.rows)
    flags = cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_NORMALIZE_IMAGE | cv2.CALIB_CB_FAST_CHECK
    found, corners = cv2.findChessboardCorners(gray, pattern, flags=flags)
    if not found:
        return None
    corners = corners.reshape(-1, 2).astype(np.float32)
    grid = corners.reshape(board.rows, board.cols, 2)
    spacing = min(np.linalg.norm(np.diff(grid, axis=1), axis=2).min(), np.linalg.norm(np.diff(grid, axis=0), axis=2).min())
    # The search window must stay inside the square pair around each corner, so it follows the spacing.
    half = int(np.clip(spacing * 0.4, 2, 11))
    refined = cv2.cornerSubPix(gray, corners.reshape(-1, 1, 2), (half, half), (-1, -1), _SUBPIX_CRITERIA)
    grid = _repair_stray_corners(gray, refined.reshape(board.rows, board.cols, 2).astype(np.float64), spacing, half)
    if grid is None:
        return None
    grid = _canonical_chessboard_order(gray, grid)
    h, w = gray.shape
    return BoardDetection(np.arange(board.num_corners), grid.reshape(-1, 2), board.object_points(), (w, h))


def _repair_stray_corners(gray: np.ndarray, grid: np.ndarray, spacing: float, half: int) -> np.ndarray | None:
    """Re-refine corners that disagree with their neighbours; None if some still do.

    findChessboardCorners occasionally starts a corner several pixels off, beyond the reach of
    cornerSubPix, which then leaves it where it was. Each corner is predicted from a homography of
    the corners within two squares of it (local, so lens distortion does not matter; RANSAC, so
    other stray corners do not matter) and restarted from that prediction when the two disagree.
    """
    tolerance = max(0.75, 0.08 * spacing)
    for attempt in range(2):
        predicted = _local_predictions(grid, tolerance)
        stray = np.linalg.norm(grid - predicted, axis=2) > tolerance
        if not stray.any():
            return grid
        if attempt == 1:
            return None
        for r, c in np.argwhere(stray):
            start = predicted[r, c].astype(np.float32).reshape(1, 1, 2)
            grid[r, c] = cv2.cornerSubPix(gray, start, (half, half), (-1, -1), _SUBPIX_CRITERIA).reshape(2)
    return None


def _local_predictions(grid: np.ndarray, tolerance: float, reach: int = 2) -> np.ndarray:
    """Each corner as predicted by a RANSAC homography of its neighbours (so other strays do not spoil it)."""
    rows, cols, _ = grid.shape
    jj, ii = np.mgrid[0:rows, 0:cols]
    predicted = np.empty_like(grid)
    for r in range(rows):
        for c in range(cols):
            near = (np.abs(jj - r) <= reach) & (np.abs(ii - c) <= reach)
            near[r, c] = False
            if near.sum() < 6:  # too few neighbours (tiny boards) to outvote a stray one: no check
                predicted[r, c] = grid[r, c]
                continue
            src = np.stack([ii[near], jj[near]], axis=1).astype(np.float64)
            H, _ = cv2.findHomography(src, grid[near], cv2.RANSAC, tolerance)
            if H is None:
                predicted[r, c] = grid[r, c]
                continue
            q = H @ np.array([c, r, 1.0])
            predicted[r, c] = q[:2] / q[2]
    return predicted


def _canonical_chessboard_order(gray: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Reorder OpenCV's corner grid so corner 0 touches the black corner square and the frame is right-handed.

    OpenCV may return the grid mirrored or turned half round. Seen from the front, the board's x and
    y axes appear counter-clockwise in image coordinates (v down), so a negative cross product means
    a mirrored grid; the colour of the square diagonally outside corner 0 then decides the half turn.
    """
    x_dir = grid[0, 1] - grid[0, 0]
    y_dir = grid[1, 0] - grid[0, 0]
    if x_dir[0] * y_dir[1] - x_dir[1] * y_dir[0] < 0:
        grid = grid[:, ::-1]
    if _square_brightness(gray, grid, outer=True) > _square_brightness(gray, grid, outer=False):
        grid = grid[::-1, ::-1]
    return np.ascontiguousarray(grid)


def _square_brightness(gray: np.ndarray, grid: np.ndarray, outer: bool) -> float:
    """Mean grey of the corner square outside corner 0 (outer) or of its neighbour along x."""
    c0, dx, dy = grid[0, 0], grid[0, 1] - grid[0, 0], grid[1, 0] - grid[0, 0]
    centre = c0 - 0.5 * dx - 0.5 * dy if outer else c0 + 0.5 * dx - 0.5 * dy
    radius = max(1, int(0.2 * min(np.linalg.norm(dx), np.linalg.norm(dy))))
    h, w = gray.shape
    u, v = int(round(centre[0])), int(round(centre[1]))
    patch = gray[max(v - radius, 0):min(v + radius + 1, h), max(u - radius, 0):min(u + radius + 1, w)]
    return float(patch.mean()) if patch.size else 128.0


def _detect_charuco(gray: np.ndarray, board: BoardSpec) -> BoardDetection | None:
    params = cv2.aruco.CharucoParameters()
    # Recover markers missed at first from the board layout, and accept a corner next to one decoded
    # marker: cornerSubPix refines every corner afterwards, so a rougher start costs no accuracy.
    params.tryRefineMarkers = True
    params.minMarkers = 1
    detector = cv2.aruco.CharucoDetector(_charuco_board(board), params)
    corners, ids, _, _ = detector.detectBoard(gray)
    if ids is None or len(ids) < MIN_CHARUCO_CORNERS:
        return None
    ids = ids.reshape(-1).astype(np.int64)
    pts = corners.reshape(-1, 1, 2).astype(np.float32)
    obj = board.object_points()[ids]
    if _collinear(obj):
        return None
    square_px = _charuco_square_pixels(pts.reshape(-1, 2), obj[:, :2], board.square)
    # Markers sit (square - marker) / 2 from each corner; the window must stay clear of their edges.
    gap = (board.square - board.marker) / 2.0 / board.square
    half = int(np.clip(square_px * gap * 0.8, 2, 11))
    pts = cv2.cornerSubPix(gray, pts, (half, half), (-1, -1), _SUBPIX_CRITERIA).reshape(-1, 2).astype(np.float64)
    order = np.argsort(ids)
    h, w = gray.shape
    return BoardDetection(ids[order], pts[order], obj[order], (w, h), complete=len(ids) == board.num_corners)


def _charuco_square_pixels(image_pts: np.ndarray, board_xy: np.ndarray, square: float) -> float:
    """Smallest image distance per square between corners one square apart (bounds the refinement window)."""
    d_img = np.linalg.norm(image_pts[:, None] - image_pts[None], axis=2)
    d_obj = np.linalg.norm(board_xy[:, None] - board_xy[None], axis=2)
    neighbours = np.isclose(d_obj, square, rtol=1e-3)
    return float(d_img[neighbours].min()) if np.any(neighbours) else 10.0


def _collinear(obj: np.ndarray) -> bool:
    centred = obj[:, :2] - obj[:, :2].mean(axis=0)
    s = np.linalg.svd(centred, compute_uv=False)
    return s.size < 2 or s[1] < 1e-9


_BOARDS: dict[BoardSpec, object] = {}


def _charuco_board(board: BoardSpec):
    if board not in _BOARDS:
        try:
            dictionary = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, board.dictionary))
            _BOARDS[board] = cv2.aruco.CharucoBoard((board.cols, board.rows), board.square, board.marker, dictionary)
        except cv2.error as exc:
            raise InvalidInputError(f"OpenCV refuses the charuco board {board}: {exc}") from exc
    return _BOARDS[board]


def _dictionary_size(name: str) -> int:
    digits = name.rsplit("_", 1)[-1]
    return int(digits) if digits.isdigit() else 1024


_OBJECT_POINTS: dict[BoardSpec, np.ndarray] = {}


def _object_points(board: BoardSpec) -> np.ndarray:
    if board not in _OBJECT_POINTS:
        if board.kind == "chessboard":
            jj, ii = np.mgrid[0:board.rows, 0:board.cols]
            pts = np.stack([ii.ravel() * board.square, jj.ravel() * board.square, np.zeros(ii.size)], axis=1)
        else:
            # OpenCV's ids run row by row over the inner corners, the first one square in from the origin
            # (computed here rather than read from OpenCV, which stores the lengths as float32).
            jj, ii = np.mgrid[1:board.rows, 1:board.cols]
            pts = np.stack([ii.ravel() * board.square, jj.ravel() * board.square, np.zeros(ii.size)], axis=1)
        _OBJECT_POINTS[board] = pts
    return _OBJECT_POINTS[board]
