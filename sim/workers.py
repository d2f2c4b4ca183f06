"""Run simulation jobs in worker processes, results in input order, without hanging on a dead worker.

``multiprocessing.Pool`` silently replaces a worker that dies (e.g. in its initializer) and then
waits forever; ``ProcessPoolExecutor`` reports it as an error instead, so a broken setup fails
loudly. Workers start with ``spawn``: a fresh interpreter holds no inherited pybullet client.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable, Iterator

from magma_core.errors import MagmaError


class WorkerCrashedError(MagmaError, RuntimeError):
    """A worker process died (killed, out of memory, or failed to start)."""


def _start_worker(initializer: Callable | None, initargs: tuple) -> None:
    # One process per core: keep OpenCV and BLAS (and torch, if a policy uses it) single-threaded.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    try:
        import cv2  # noqa: PLC0415

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover - OpenCV is a core dependency
        pass
    if initializer is not None:
        initializer(*initargs)


def ordered_process_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int,
                        initializer: Callable | None = None, initargs: tuple = (),
                        window: int | None = None) -> Iterator[Any]:
    """Yield ``fn(item)`` for every item, in input order, computed by `workers` spawned processes.

    At most `window` items (default 2 per worker) are in flight, so results the caller has not
    consumed yet do not pile up in memory. `fn` and `initializer` must be importable top-level
    functions. An exception raised by `fn` is re-raised here.
    """
    items = list(items)
    window = max(1, window or 2 * workers)
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, min(workers, len(items))), mp_context=ctx,
                             initializer=_start_worker, initargs=(initializer, initargs)) as pool:
        pending: deque = deque()
        upcoming = iter(items)
        try:
            for item in upcoming:
                pending.append(pool.submit(fn, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool as exc:
            raise WorkerCrashedError(f"a worker process died ({exc}); if you started this from your own script, "
                                     "guard its entry with `if __name__ == '__main__':` (workers are spawned)") from exc
        finally:
            for future in pending:
                future.cancel()
