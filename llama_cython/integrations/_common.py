"""What the Ray and Dask integrations share: the model spec that travels, the per-process
model and the per-thread context on the worker side.

A worker never receives a loaded model. It receives a *spec*: the plain dict a pickled
:class:`~llama_cython.Model` carries (file, registry name, size and sampled sha256, load
options; see :mod:`llama_cython._pickling`). :func:`load` turns it into the model through the
process-wide cache of unpickled models, so a worker process loads each model once however
many tasks name it; :func:`context` lends contexts from a per-process pool, because a context
serves one thread at a time and creating one per task would cost more than a small batch of
work.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from llama_cython import _pickling
from llama_cython._checks import choice, positive_int

if TYPE_CHECKING:
    from llama_cython import Context, Model

__all__ = ["ModelArg", "ModelSpec", "check_context_options", "check_nulls", "close_contexts", "context",
           "load", "model_spec", "process_info", "resolve_path", "thread_count"]

#: A model as the integrations take it: a GGUF path, a registry name (llama_cython.models),
#: or a loaded Model (which travels as its spec and is loaded again on each worker).
ModelArg: TypeAlias = "str | os.PathLike[str] | Model"

# load_model's parameters that are not load options (Model.load_options leaves them out too)
_NOT_LOAD_OPTIONS = ("path", "progress", "verbose")



@dataclass(frozen=True)
class ModelSpec:
    """A model resolved where a job is set up (a path made absolute, a registry name looked up,
    the file's identity taken there): what the Ray helpers hand to their actors, so that each
    actor loads the driver's file (checked by its identity) instead of resolving the name
    again in its own working directory and cache."""

    spec: Mapping[str, Any]

    def __repr__(self) -> str:
        return f"ModelSpec({self.spec.get('path')!r})"


_lock = threading.Lock()
_idle: dict[tuple[Any, ...], list[Context]] = {}     # (model token, options) -> idle contexts
_all: list[Context] = []


def _parameters(func: Any, skip: tuple[str, ...]) -> frozenset[str]:
    return frozenset(p for p in inspect.signature(func).parameters if p not in skip)


def _check_options(options: Mapping[str, Any], func: Any, skip: tuple[str, ...], what: str) -> None:
    allowed = _parameters(func, skip)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(f"{what}: unknown option(s) {', '.join(map(repr, unknown))} "
                        f"(known: {', '.join(sorted(allowed))})")


def resolve_path(model: str | os.PathLike[str]) -> str:
    """The absolute path of a GGUF file given as a path or as a registry name (fetched into
    the model cache if it is not there yet)."""
    from llama_cython import models
    from llama_cython.errors import ModelNotFoundError

    text = os.fspath(model)
    if os.path.isfile(text):
        return os.path.abspath(text)
    if isinstance(model, str) and model in models.KNOWN_MODELS:
        return os.path.abspath(models.model_path(model))
    known = ", ".join(sorted(models.KNOWN_MODELS))
    raise ModelNotFoundError(f"model file not found: {text!r} is neither a file nor a registry "
                             f"name (known: {known})")


def model_spec(model: ModelArg | ModelSpec,
               load_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The spec that travels to workers for ``model``: a Model's own pickle spec, or the spec
    of a path or registry name with ``load_options`` (keyword arguments of load_model), or
    that of a :class:`ModelSpec` (resolved already)."""
    from llama_cython import Model, load_model

    if isinstance(model, ModelSpec):
        if load_options:
            raise TypeError("load_options apply to a model given as a path or registry name; "
                            "this model is resolved already (its spec holds its load options)")
        return dict(model.spec)
    if isinstance(model, Model):
        if load_options:
            raise TypeError("load_options apply to a model given as a path or registry name; "
                            "this Model is loaded already (pass its path instead)")
        _, (spec,) = model.__reduce__()      # ClosedError for a closed model
        return dict(spec)
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a path, a registry name or a Model, got {type(model).__name__}")
    _check_options(load_options or {}, load_model, _NOT_LOAD_OPTIONS, "load_options")
    # every option, defaults filled in, as Model.load_options has them: the same file given
    # as a path and as a loaded Model is then the same entry of a worker's model cache
    options = {name: p.default for name, p in inspect.signature(load_model).parameters.items()
               if name not in _NOT_LOAD_OPTIONS}
    options.update(load_options or {})
    path = resolve_path(model)
    return _pickling.model_spec(path, _pickling.file_identity(path), options)


def check_nulls(nulls: object) -> str:
    """The null policies of the integrations: each row keeps its place, so no ``"skip"``."""
    return choice(nulls, "nulls", ("raise", "empty"), " (every row keeps its place)")


def check_context_options(options: Mapping[str, Any]) -> None:
    """Refuse an option new_context does not take, before anything travels to a worker."""
    from llama_cython import Model

    _check_options(options, Model.new_context, ("self",), "context_options")


def load(spec: Mapping[str, Any]) -> Model:
    """The model of ``spec`` in this process: loaded on first use, then the same object."""
    model: Model = _pickling.restore_model(dict(spec))
    return model


def thread_count(n_threads: int | None) -> int | None:
    """Threads for a worker's context: ``n_threads`` if given, else ``$OMP_NUM_THREADS`` (which
    Dask's workers set to 1 and Ray sets to an actor's ``num_cpus``), else None (the core's
    default: this machine's cores)."""
    if n_threads is not None:
        return positive_int(n_threads, "n_threads")
    try:
        env = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return None
    return env if env >= 1 else None


@contextlib.contextmanager
def context(spec: Mapping[str, Any], options: Mapping[str, Any],
            n_threads: int | None = None) -> Iterator[Context]:
    """Lend a context on the model of ``spec`` with ``options`` for the ``with`` block.

    Contexts are kept per process in a pool per (model, options): a call takes an idle one
    (or creates one) and gives it back after, so a process holds as many as it ran calls at
    once (one per thread of a Dask worker, one per Ray actor, whichever thread Ray calls the
    actor from). ``n_threads`` (see :func:`thread_count`, resolved here, on the worker) sets
    n_threads and n_threads_batch unless ``options`` names them.
    """
    opts = dict(options)
    threads = thread_count(n_threads)
    if threads is not None:
        opts.setdefault("n_threads", threads)
        opts.setdefault("n_threads_batch", threads)
    key = (_pickling.model_token(dict(spec)), tuple(sorted((k, repr(v)) for k, v in opts.items())))
    ctx = None
    with _lock:
        idle = _idle.setdefault(key, [])
        while idle and ctx is None:
            ctx = idle.pop()
            if ctx.closed:
                ctx = None
    if ctx is None:
        ctx = load(spec).new_context(**opts)
        with _lock:
            _all.append(ctx)
    try:
        yield ctx
    finally:
        with _lock:
            _idle.setdefault(key, []).append(ctx)


def close_contexts() -> int:
    """Close the contexts :func:`context` keeps in this process; return how many. The models
    stay loaded (``llama_cython.clear_model_cache()`` lets them go)."""
    with _lock:
        contexts = [c for c in _all if not c.closed]
        _all.clear()
        _idle.clear()
    for ctx in contexts:
        ctx.close()
    return len(contexts)


def process_info() -> dict[str, Any]:
    """What this process holds: its pid, how many models unpickling/specs loaded here, how many
    contexts the integrations keep (tests read it from the workers)."""
    return {"pid": os.getpid(), "models_loaded": len(_pickling._kept),
            "contexts": sum(1 for c in list(_all) if not c.closed)}
