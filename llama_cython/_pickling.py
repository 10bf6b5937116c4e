"""Models and contexts that travel between processes.

A :class:`~llama_cython.Model` pickles as what it was loaded from: the file (its absolute path
and, when it lives in the model cache, its registry name), every load option, and the file's
identity (size and the sha256 of its first MiB, where a GGUF keeps its metadata and tensor
table). Unpickling loads the model again, after checking that the file it finds is the one the
sender had. A :class:`~llama_cython.Context` pickles as its model plus the options it was
created with; unpickling creates a fresh context (its KV cache and conversation do not travel).

Unpickling the same model twice in one process loads it once: a process-wide table maps each
(file, identity, options) to the model already loaded, so ``pickle.loads(pickle.dumps(model))``
returns ``model`` itself in the process that holds it, and a worker that receives the same
model with every task loads it on the first. Models loaded by unpickling stay loaded for the
life of the process (a worker's tasks come and go); :func:`clear_model_cache` lets them go.

This module imports the compiled core lazily: the core imports it at load time.
"""

from __future__ import annotations

import hashlib
import os
import threading
import weakref
from pathlib import Path
from typing import Any

__all__ = ["clear_model_cache", "file_identity", "model_token", "restore_context", "restore_model"]

#: Bytes of the file hashed for its identity: a GGUF's header, metadata and tensor table.
HEAD_BYTES = 1 << 20

_lock = threading.Lock()
_live: weakref.WeakValueDictionary[tuple[Any, ...], Any] = weakref.WeakValueDictionary()
_kept: dict[tuple[Any, ...], Any] = {}


def file_identity(path: str | os.PathLike[str] | bytes) -> tuple[int, str]:
    """``(size, sha256 of the first MiB)`` of a file: cheap, and different for any other model."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(HEAD_BYTES)
    return size, hashlib.sha256(head).hexdigest()


def _registry_name(path: str) -> str | None:
    """The registry name of a file in the model cache, or None."""
    from llama_cython import models

    p = Path(path)
    try:
        if p.parent.resolve() != models.cache_dir().resolve():
            return None
    except OSError:
        return None
    for name, source in models.KNOWN_MODELS.items():
        if source.filename == p.name:
            return name
    return None


def _key(path: str, identity: tuple[int, str], options: dict[str, Any]) -> tuple[Any, ...]:
    return (path, tuple(identity), tuple(sorted(options.items())))


def model_spec(path: str, identity: tuple[int, str], options: dict[str, Any]) -> dict[str, Any]:
    """What a pickled model carries (plain values only, in a fixed order)."""
    return {"path": path, "registry": _registry_name(path), "size": identity[0],
            "head_sha256": identity[1], "options": dict(sorted(options.items()))}


def remember(model: Any, path: str, identity: tuple[int, str], options: dict[str, Any]) -> None:
    """Note a live model so that unpickling its spec in this process returns it."""
    with _lock:
        _live.setdefault(_key(path, identity, options), model)


def _locate(spec: dict[str, Any]) -> tuple[str, tuple[int, str]]:
    """The file on this machine that matches the spec: its own path, else the registry's copy."""
    from llama_cython.errors import ModelLoadError, ModelNotFoundError

    want = (spec["size"], spec["head_sha256"])
    tried: list[str] = []
    path = spec["path"]
    if os.path.isfile(path):
        got = file_identity(path)
        if got == want:
            return path, got
        tried.append(f"{path} is {got[0]} bytes with header sha256 {got[1][:16]}...")
    if spec.get("registry"):
        from llama_cython import models

        reg = str(models.model_path(spec["registry"]))
        got = file_identity(reg)
        if got == want:
            return reg, got
        tried.append(f"registry model {spec['registry']!r} at {reg} is {got[0]} bytes with header "
                     f"sha256 {got[1][:16]}...")
    if not tried:
        raise ModelNotFoundError(
            f"cannot unpickle the model: model file not found: {path} (the pickled model was "
            "loaded from that file; it must exist at the same path on this machine)")
    raise ModelLoadError(
        f"cannot unpickle the model: the file here is not the one it was loaded from "
        f"(that was {want[0]} bytes with header sha256 {want[1][:16]}...; "
        + "; ".join(tried) + ")")


def restore_model(spec: dict[str, Any]) -> Any:
    """Unpickle a model: the one already loaded in this process, or load it (once)."""
    from llama_cython import load_model

    options = dict(spec["options"])
    want = (spec["size"], spec["head_sha256"])
    key = _key(spec["path"], want, options)
    with _lock:
        model = _live.get(key)
        if model is not None and not model.closed:
            return model
        path, identity = _locate(spec)
        if path != spec["path"]:
            key2 = _key(path, identity, options)
            model = _live.get(key2)
            if model is not None and not model.closed:
                return model
        if options.get("tensor_split") is not None:
            options["tensor_split"] = list(options["tensor_split"])
        model = load_model(path, **options)
        _live[key] = model
        _kept[key] = model
        if path != spec["path"]:
            _live[_key(path, identity, options)] = model
    return model


def restore_context(model: Any, options: dict[str, Any]) -> Any:
    """Unpickle a context: a fresh one on ``model`` with the same creation options."""
    return model.new_context(**options)


def clear_model_cache() -> int:
    """Let go of the models that unpickling loaded in this process; return how many.

    A model still referenced elsewhere stays loaded (and is still found by later unpickling)
    until its last reference goes.

    >>> import llama_cython as llama
    >>> llama.clear_model_cache() >= 0
    True
    """
    with _lock:
        n = len(_kept)
        _kept.clear()
    return n


def model_token(spec: dict[str, Any]) -> tuple[Any, ...]:
    """A deterministic token for Dask and ``datasets`` fingerprints: the file's identity and
    the load options (not the path, so the same file in another folder hashes the same)."""
    return ("llama_cython.Model", spec["size"], spec["head_sha256"],
            tuple(sorted(spec["options"].items())))
