"""Build the policy the policy node runs, from a short name or ``module:Class`` (+ an optional directory).

- ``heuristic``: magma_core.policies.heuristic.HeuristicPolicy (no weights).
- ``embedded``: the trained magma-tiny shipped in the package (magma_core.embedded), unless a path is given.
- ``module:Class``: ``Class.from_pretrained(path)`` when a path is given, else ``Class()``.

Imports happen here, at load time, so the node module itself stays free of torch.
Weights come from local directories only (no hub lookups): a path that is not a directory is refused.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from magma_core.errors import InvalidInputError

BUILTIN = {"heuristic": "magma_core.policies.heuristic:HeuristicPolicy",
           "embedded": "magma_core.training.policy:MagmaPolicy"}


class PolicyLoadError(InvalidInputError):
    """The policy named by the parameters cannot be built."""


def resolve_class(spec: str) -> type:
    """The class named by a builtin name or ``package.module:ClassName``."""
    target = BUILTIN.get(spec, spec)
    module_name, sep, class_name = target.partition(":")
    if not sep or not module_name or not class_name:
        raise PolicyLoadError(f"policy {spec!r}: use one of {sorted(BUILTIN)} or 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PolicyLoadError(f"policy {spec!r}: cannot import {module_name} ({exc})") from exc
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise PolicyLoadError(f"policy {spec!r}: {module_name} has no class {class_name}")
    return cls


def load_policy(spec: str, path: str | os.PathLike = "", **kwargs: Any) -> Any:
    """An object with ``reset()`` and ``infer(obs) -> dict``; `kwargs` go to the constructor / from_pretrained."""
    spec = str(spec).strip()
    cls = resolve_class(spec)
    if spec == "embedded" and not str(path):
        from magma_core.embedded import embedded_checkpoint

        try:
            path = embedded_checkpoint()
        except InvalidInputError as exc:
            raise PolicyLoadError(str(exc)) from exc
    if str(path):
        directory = Path(path).expanduser()
        if not directory.is_dir():
            raise PolicyLoadError(f"policy path {str(path)!r} is not a local directory")
        loader = getattr(cls, "from_pretrained", None)
        if loader is None:
            raise PolicyLoadError(f"{cls.__module__}.{cls.__name__} has no from_pretrained(directory); leave policy_path empty")
        policy = loader(str(directory), **kwargs)
    else:
        policy = cls(**kwargs)
    for method in ("reset", "infer"):
        if not callable(getattr(policy, method, None)):
            raise PolicyLoadError(f"{cls.__module__}.{cls.__name__} lacks {method}(): it is not a magma Policy")
    return policy
