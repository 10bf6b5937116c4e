"""Models and contexts that travel between processes.

A :class:`~llama_cython.Model` pickles as what it was loaded from: the file (its absolute path
and, when it lives in the model cache, its registry name), every load option, and the file's
identity (its size and a sha256 over a sample of its bytes: the first MiB, where a GGUF keeps
its metadata and tensor table, the last MiB and eight blocks in between). Unpickling loads the
model again, after checking that the file it finds is the one the sender had. A
:class:`~llama_cython.Context` pickles as its model plus the options it was created with;
unpickling creates a fresh context (its KV cache and conversation do not travel).

Unpickling the same model twice in one process loads it once: a process-wide table maps each
(file, identity, options) to the model already loaded (the one pickled last, where several
are), so ``pickle.loads(pickle.dumps(model))`` returns ``model`` itself in the process that
holds it, and a worker that receives the same model with every task loads it on the first.
Models loaded by unpickling stay loaded for the life of the process (a worker's tasks come and
go); :func:`clear_model_cache` lets them go.

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

#: Bytes hashed at each end of the file for its identity (a GGUF's header, metadata and tensor
#: table at the start; weights at the end), and the blocks sampled in between.
HEAD_BYTES = 1 << 20
SAMPLE_BLOCKS = 8
SAMPLE_BYTES = 1 << 16

_lock = threading.Lock()
_live: weakref.WeakValueDictionary[tuple[Any, ...], Any] = weakref.WeakValueDictionary()
_kept: dict[tuple[Any, ...], Any] = {}


def file_identity(path: str | os.PathLike[str] | bytes) -> tuple[int, str]:
    """``(size, sha256 of a sample)`` of a file: its first and last MiB and eight 64 KiB blocks
    spread between them (under 3 MiB read, whatever the size). Two model files that differ in
    their metadata, tensor table, or weights near the sampled places differ here; a file edited
    elsewhere in place, at the same size, can pass (this is a check against the wrong file, not
    against tampering)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        h.update(f.read(HEAD_BYTES))
        if size > 2 * HEAD_BYTES:
            span = size - 2 * HEAD_BYTES
            for i in range(SAMPLE_BLOCKS):
                f.seek(HEAD_BYTES + span * i // SAMPLE_BLOCKS)
                h.update(f.read(SAMPLE_BYTES))
        if size > HEAD_BYTES:
            f.seek(max(HEAD_BYTES, size - HEAD_BYTES))
            h.update(f.read(HEAD_BYTES))
    return size, h.hexdigest()


def normalize_options(options: dict[str, Any]) -> dict[str, Any]:
    """Load options in the form a spec carries (hashable, plain values, sorted)."""
    out = dict(options)
    if out.get("tensor_split") is not None:
        out["tensor_split"] = tuple(float(v) for v in out["tensor_split"])
    return dict(sorted(out.items()))


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
            "sample_sha256": identity[1], "options": normalize_options(options)}


def remember(model: Any, path: str, identity: tuple[int, str], options: dict[str, Any]) -> None:
    """Note a live model so that unpickling its spec in this process returns it."""
    with _lock:
        _live[_key(path, identity, options)] = model     # the one pickled last is found first


def _locate(spec: dict[str, Any]) -> tuple[str, tuple[int, str]]:
    """The file on this machine that matches the spec: its own path, else the registry's copy."""
    from llama_cython.errors import ModelLoadError, ModelNotFoundError

    want = (spec["size"], spec["sample_sha256"])
    tried: list[str] = []
    path = spec["path"]
    try:
        if os.path.isfile(path):
            got = file_identity(path)
            if got == want:
                return path, got
            tried.append(f"{path} is {got[0]} bytes with sampled sha256 {got[1][:16]}...")
        if spec.get("registry"):
            from llama_cython import models

            try:
                reg = str(models.model_path(spec["registry"]))
            except KeyError as exc:
                raise ModelLoadError(f"cannot unpickle the model: {exc.args[0]} (this process has "
                                     "another version of llama_cython's registry)") from None
            got = file_identity(reg)
            if got == want:
                return reg, got
            tried.append(f"registry model {spec['registry']!r} at {reg} is {got[0]} bytes with "
                         f"sampled sha256 {got[1][:16]}...")
    except OSError as exc:
        raise ModelLoadError(f"cannot unpickle the model: cannot read {exc.filename or path}: "
                             f"{exc.strerror or exc}") from None
    if not tried:
        raise ModelNotFoundError(
            f"cannot unpickle the model: model file not found: {path} (the pickled model was "
            "loaded from that file; it must exist at the same path on this machine)")
    raise ModelLoadError(
        f"cannot unpickle the model: the file here is not the one it was loaded from "
        f"(that was {want[0]} bytes with sampled sha256 {want[1][:16]}...; "
        + "; ".join(tried) + ")")


def restore_model(spec: dict[str, Any]) -> Any:
    """Unpickle a model: the one already loaded in this process, or load it (once)."""
    from llama_cython import load_model

    options = normalize_options(spec["options"])
    want = (spec["size"], spec["sample_sha256"])
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
    return ("llama_cython.Model", spec["size"], spec["sample_sha256"],
            tuple(normalize_options(spec["options"]).items()))
