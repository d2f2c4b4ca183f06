"""Success-rate statistics for evaluation: the Wilson score interval."""
from __future__ import annotations

import math

from magma_core.errors import InvalidInputError

Z_95 = 1.959963984540054  # two-sided 95 % normal quantile


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """(low, high) Wilson score interval of a success rate; (0, 1) when there is no trial.

    Unlike the normal approximation it stays inside [0, 1] and is not empty at 0 or n successes,
    which matters at the few dozen episodes an evaluation runs.
    """
    if int(n) != n or int(successes) != successes or n < 0 or not 0 <= successes <= n:
        raise InvalidInputError(f"need integers 0 <= successes <= n, got successes={successes!r} n={n!r}")
    if not (math.isfinite(z) and z > 0):
        raise InvalidInputError(f"z must be a positive number, got {z!r}")
    if n == 0:
        return 0.0, 1.0
    rate = successes / n
    z2 = z * z
    centre = (rate + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # At 0 or n successes one end is exactly 0 or 1; rounding would leave it a hair off.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high
