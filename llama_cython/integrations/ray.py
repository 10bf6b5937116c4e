"""Ray Data: embeddings, token counts and batch generation as ``Dataset.map_batches`` steps.

The classes here are *callable classes* for an actor pool: Ray constructs each actor once,
the constructor loads the model (once per process) and makes its context, and every batch is
then one call into the core: ``get_embeddings_batch``, ``count_tokens`` or
``generate_batch``. A batch comes in as Ray hands it over (``batch_format="pyarrow"``,
``"pandas"`` or ``"numpy"``) and goes out in the same format with one more column::

    import ray
    from llama_cython.integrations.ray import embed_dataset

    ds = ray.data.read_parquet("texts.parquet")
    ds = embed_dataset(ds, "all-minilm-l6-v2", concurrency=4)   # 4 actors, 1 CPU each
    ds.write_parquet("embedded/")

or by hand::

    from llama_cython.integrations.ray import Embedder

    ds = ds.map_batches(Embedder, fn_constructor_args=("all-minilm-l6-v2",),
                        fn_constructor_kwargs={"n_threads": 1}, batch_format="pyarrow",
                        batch_size=256, num_cpus=1, compute=ray.data.ActorPoolStrategy(size=4))

``model`` is a GGUF path, a registry name (``llama_cython.models``) or a loaded
:class:`~llama_cython.Model`; a Model travels to the actors as its spec (file, identity and
load options) and each actor's process loads it once. The ``*_dataset`` helpers resolve a path
or registry name on the driver (a relative path against the driver's working directory) and
pass its spec, so every actor loads the driver's file or refuses to start; a class given to
``map_batches`` by hand with a path resolves it in each actor's process. The classes do not
import Ray themselves (any engine that calls a function on batches of columns can use them);
the ``*_dataset`` helpers do, and without Ray they say to install ``llama_cython[ray]``.

Embeddings depend on which texts share a batch (by float rounding, up to about 5e-4; see
the embeddings guide), so results equal an in-process ``get_embeddings_batch`` over the same
batch, not bit for bit over a differently cut one. Token counts and greedy generation do not
depend on batching.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt

from llama_cython._checks import choice, positive_int
from llama_cython._optional import require
from llama_cython.integrations import _common

if TYPE_CHECKING:
    from llama_cython import Context, Model

__all__ = ["Embedder", "Generator", "TokenCounter", "count_tokens_dataset", "embed_dataset",
           "generate_dataset"]

#: ``ray.data.Dataset`` (Ray is imported only when a helper runs).
Dataset: TypeAlias = Any
#: A batch as Ray passes it: a ``pyarrow.Table``, a ``pandas.DataFrame`` or a dict of numpy
#: arrays.
Batch: TypeAlias = Any
BatchFormat: TypeAlias = Literal["pyarrow", "pandas", "numpy"]
#: A model as the callables take it; the ``*_dataset`` helpers pass a
#: :class:`~llama_cython.integrations._common.ModelSpec` (resolved on the driver).
ModelArg: TypeAlias = "str | os.PathLike[str] | Model | _common.ModelSpec"
_Nulls: TypeAlias = Literal["raise", "empty"]


def _kind(batch: Batch) -> str:
    """"pyarrow", "pandas" or "numpy" (a mapping of columns); TypeError for anything else."""
    module = type(batch).__module__.split(".")[0]
    if module == "pyarrow" and hasattr(batch, "column_names"):
        return "pyarrow"
    if module == "pandas" and hasattr(batch, "columns"):
        return "pandas"
    if isinstance(batch, Mapping):
        return "numpy"
    raise TypeError("a batch must be a pyarrow.Table, a pandas.DataFrame or a dict of numpy arrays "
                    f"(map_batches' batch_format 'pyarrow', 'pandas' or 'numpy'), got "
                    f"{type(batch).__name__}")


def _texts(batch: Batch, kind: str, column: str) -> Any:
    names = list(batch.column_names if kind == "pyarrow" else batch.keys())
    if column not in names:
        raise KeyError(f"column {column!r} is not in the batch (columns: {names})")
    return batch.column(column) if kind == "pyarrow" else batch[column]


def _with_column(batch: Batch, kind: str, name: str, values: Any) -> Batch:
    """``batch`` with column ``name`` set to ``values`` (already in the batch's format)."""
    if kind == "pyarrow":
        if name in batch.column_names:
            return batch.set_column(batch.column_names.index(name), name, values)
        return batch.append_column(name, values)
    if kind == "pandas":
        return batch.assign(**{name: values})
    out = dict(batch)
    out[name] = values
    return out


def _check_column_names(column: str, output_column: str) -> None:
    for what, value in (("column", column), ("output_column", output_column)):
        if not isinstance(value, str) or not value:
            raise TypeError(f"{what} must be a non-empty str, got {value!r}")


class _BatchFunction:
    """What the three callables share: the model spec, the columns, pickling as arguments."""

    def __init__(self, model: ModelArg, column: str, output_column: str,
                 load_options: Mapping[str, Any] | None, init: dict[str, Any]) -> None:
        _check_column_names(column, output_column)
        self.column = column
        self.output_column = output_column
        self._spec = _common.model_spec(model, load_options)
        self._init = init          # the constructor's arguments, for pickling
        self.model: Model = _common.load(self._spec)

    @classmethod
    def default_load_options(cls, model: ModelArg,
                             load_options: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        """The load options for ``model`` when the caller gave ``load_options``."""
        return load_options

    def __reduce__(self) -> tuple[Any, ...]:
        # An instance travels as its constructor's arguments (the model as its spec), and is
        # constructed again (model loaded once per process) on the other side.
        return (_rebuild, (type(self), self._init))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({os.path.basename(self._spec['path'])!r}, "
                f"column={self.column!r}, output_column={self.output_column!r})")


class _ContextFunction(_BatchFunction):
    """A callable that runs on contexts of the model (embedding, generation)."""

    def _use_contexts(self, options: dict[str, Any], n_threads: int | None) -> None:
        self._options = options
        self._n_threads = _common.thread_count(n_threads)
        with self.context():    # make one now: fail at actor start rather than at the first batch
            pass

    def context(self) -> AbstractContextManager[Context]:
        """Lend a context of this process's pool for a ``with`` block (see
        ``llama_cython.integrations._common.context``)."""
        return _common.context(self._spec, self._options, self._n_threads)


def _rebuild(cls: type[_BatchFunction], init: dict[str, Any]) -> _BatchFunction:
    init = dict(init)
    return cls(init.pop("model"), **init)


class Embedder(_ContextFunction):
    """``map_batches`` callable: adds an embeddings column for the texts in ``column``.

    The new column is a ``FixedSizeList<float32>`` (pyarrow batches), an ``(N, D)`` float32
    array (numpy batches; Ray stores it as a tensor column) or a column of ``(D,)`` float32
    arrays (pandas batches). ``normalize``, ``truncate``, ``batch_tokens`` and ``nulls``
    (``"raise"`` or ``"empty"``: every row keeps its place) are those of
    ``Context.get_embeddings_batch``. The context is ``new_context(embeddings=True,
    **context_options)`` with ``n_threads`` threads (default ``$OMP_NUM_THREADS``, which Ray
    sets to the actor's ``num_cpus``).
    """

    def __init__(self, model: ModelArg, *, column: str = "text", output_column: str = "embedding",
                 normalize: bool = True, truncate: bool = True, batch_tokens: int | None = None,
                 nulls: _Nulls = "raise", context_options: Mapping[str, Any] | None = None,
                 n_threads: int | None = None, load_options: Mapping[str, Any] | None = None) -> None:
        _common.check_nulls(nulls)
        options = {"embeddings": True, **(context_options or {})}
        _common.check_context_options(options)
        super().__init__(model, column, output_column, load_options, {
            "model": model, "column": column, "output_column": output_column, "normalize": normalize,
            "truncate": truncate, "batch_tokens": batch_tokens, "nulls": nulls,
            "context_options": context_options, "n_threads": n_threads, "load_options": load_options})
        self._use_contexts(options, n_threads)
        self._call: dict[str, Any] = {"normalize": normalize, "truncate": truncate,
                                      "batch_tokens": batch_tokens, "nulls": nulls}

    def __call__(self, batch: Batch) -> Batch:
        kind = _kind(batch)
        texts = _texts(batch, kind, self.column)
        with self.context() as ctx:
            if kind == "pyarrow":
                values = ctx.get_embeddings_batch(texts, format="arrow", **self._call)
            else:
                values = ctx.get_embeddings_batch(texts, **self._call)
                if kind == "pandas":
                    values = list(values)          # one (D,) row view per row
        return _with_column(batch, kind, self.output_column, values)


class TokenCounter(_BatchFunction):
    """``map_batches`` callable: adds an int32 column with the token count of each text.

    A model given as a path or registry name is loaded ``vocab_only`` (counting needs only
    the tokenizer) unless ``load_options`` say otherwise. ``add_special``, ``parse_special``,
    ``nulls`` (``"raise"`` or ``"empty"``) and ``n_threads`` are those of
    ``Model.count_tokens``.
    """

    def __init__(self, model: ModelArg, *, column: str = "text", output_column: str = "n_tokens",
                 add_special: bool = True, parse_special: bool = False, nulls: _Nulls = "raise",
                 n_threads: int | None = None, load_options: Mapping[str, Any] | None = None) -> None:
        _common.check_nulls(nulls)
        init = {"model": model, "column": column, "output_column": output_column,
                "add_special": add_special, "parse_special": parse_special, "nulls": nulls,
                "n_threads": n_threads, "load_options": load_options}
        super().__init__(model, column, output_column, self.default_load_options(model, load_options),
                         init)
        self._call: dict[str, Any] = {"add_special": add_special, "parse_special": parse_special,
                                      "nulls": nulls, "n_threads": _common.thread_count(n_threads)}

    @classmethod
    def default_load_options(cls, model: ModelArg,
                             load_options: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        """``vocab_only`` for a path or registry name: counting needs only the tokenizer."""
        from llama_cython import Model

        if load_options is None and not isinstance(model, (Model, _common.ModelSpec)):
            return {"vocab_only": True}
        return load_options

    def __call__(self, batch: Batch) -> Batch:
        kind = _kind(batch)
        counts: npt.NDArray[np.int32] = self.model.count_tokens(_texts(batch, kind, self.column),
                                                                **self._call)
        values: Any = counts
        if kind == "pyarrow":
            values = require("pyarrow", "TokenCounter on pyarrow batches").array(counts)
        return _with_column(batch, kind, self.output_column, values)


class Generator(_ContextFunction):
    """``map_batches`` callable: adds a column with the generated text for each prompt.

    Each batch is one ``Context.generate_batch(prompts, max_tokens=..., stop=..., **sampling)``
    on a context with ``n_parallel`` slots (continuous batching; make batches a few times
    ``n_parallel`` long). ``context_options`` go to ``new_context`` (give ``n_ctx`` room for
    ``n_parallel`` prompts plus their answers). With ``temperature=0`` a prompt's text does not
    depend on its batch; with ``seed``, prompt i of a batch draws from a seed derived from
    ``seed`` and i, so sampled texts depend on how the dataset is cut into batches.
    """

    def __init__(self, model: ModelArg, *, column: str = "prompt", output_column: str = "text",
                 n_parallel: int = 8, max_tokens: int = 128, stop: str | Sequence[str] | None = None,
                 context_options: Mapping[str, Any] | None = None, n_threads: int | None = None,
                 load_options: Mapping[str, Any] | None = None, **sampling: Any) -> None:
        options = {"n_parallel": n_parallel, **(context_options or {})}
        _common.check_context_options(options)
        super().__init__(model, column, output_column, load_options, {
            "model": model, "column": column, "output_column": output_column,
            "n_parallel": n_parallel, "max_tokens": max_tokens, "stop": stop,
            "context_options": context_options, "n_threads": n_threads,
            "load_options": load_options, **sampling})
        self._use_contexts(options, n_threads)
        self._call: dict[str, Any] = {"max_tokens": max_tokens, "stop": stop, **sampling}

    def __call__(self, batch: Batch) -> Batch:
        kind = _kind(batch)
        with self.context() as ctx:
            texts: list[str] = ctx.generate_batch(_texts(batch, kind, self.column), **self._call)
        values: Any = texts
        if kind == "pyarrow":
            pa = require("pyarrow", "Generator on pyarrow batches")
            values = pa.array(texts, type=pa.string())
        elif kind == "numpy":
            values = np.array(texts, dtype=object)
        return _with_column(batch, kind, self.output_column, values)


# -- Dataset helpers --------------------------------------------------------------------------


def _map(ds: Dataset, fn: type[_BatchFunction], model: ModelArg, kwargs: dict[str, Any], *,
         what: str, concurrency: int | tuple[int, int] | None, num_cpus: int,
         batch_size: int | None, batch_format: BatchFormat,
         ray_options: Mapping[str, Any] | None) -> Dataset:
    ray = require("ray", f"llama_cython.integrations.ray.{what}()")
    num_cpus = positive_int(num_cpus, "num_cpus")
    choice(batch_format, "batch_format", ("pyarrow", "pandas", "numpy"))
    # The model is resolved here, on the driver: a relative path against the driver's working
    # directory, a registry name in the driver's cache; the actors get the spec, and each
    # checks that the file it loads is the driver's (size and sampled sha256).
    load_options = fn.default_load_options(model, kwargs.get("load_options"))
    spec = _common.ModelSpec(_common.model_spec(model, load_options))
    kwargs = {**kwargs, "load_options": None}
    options: dict[str, Any] = dict(ray_options or {})
    if concurrency is not None:
        if isinstance(concurrency, tuple):
            low, high = concurrency
            options.setdefault("compute", ray.data.ActorPoolStrategy(min_size=low, max_size=high))
        else:
            options.setdefault("compute", ray.data.ActorPoolStrategy(size=concurrency))
    if "n_threads" in kwargs and kwargs["n_threads"] is None:
        kwargs["n_threads"] = num_cpus
    return ds.map_batches(fn, fn_constructor_args=(spec,), fn_constructor_kwargs=kwargs,
                          batch_size=batch_size, batch_format=batch_format, num_cpus=num_cpus,
                          **options)


def embed_dataset(ds: Dataset, model: ModelArg, *, column: str = "text",
                  output_column: str = "embedding", concurrency: int | tuple[int, int] | None = None,
                  num_cpus: int = 1, batch_size: int | None = 256,
                  batch_format: BatchFormat = "pyarrow", normalize: bool = True,
                  truncate: bool = True, batch_tokens: int | None = None, nulls: _Nulls = "raise",
                  context_options: Mapping[str, Any] | None = None, n_threads: int | None = None,
                  load_options: Mapping[str, Any] | None = None,
                  ray_options: Mapping[str, Any] | None = None) -> Dataset:
    """``ds`` with an embeddings column: ``ds.map_batches(Embedder, ...)`` on an actor pool.

    ``concurrency``: the number of actors (an int: a fixed pool; ``(min, max)``: an
    autoscaling one; None: Ray's default for callable classes, 1 to as many as the cluster's
    CPUs allow). Each actor reserves ``num_cpus`` CPUs and runs its context on as many
    threads (``n_threads`` overrides). ``batch_size`` rows go into each
    ``get_embeddings_batch`` call. ``ray_options`` are further keyword arguments of
    ``map_batches`` (e.g. ``memory``, ``max_restarts``). The other arguments are
    :class:`Embedder`'s.
    """
    kwargs = {"column": column, "output_column": output_column, "normalize": normalize,
              "truncate": truncate, "batch_tokens": batch_tokens, "nulls": nulls,
              "context_options": context_options, "n_threads": n_threads, "load_options": load_options}
    return _map(ds, Embedder, model, kwargs, what="embed_dataset", concurrency=concurrency,
                num_cpus=num_cpus, batch_size=batch_size, batch_format=batch_format,
                ray_options=ray_options)


def count_tokens_dataset(ds: Dataset, model: ModelArg, *, column: str = "text",
                         output_column: str = "n_tokens",
                         concurrency: int | tuple[int, int] | None = None, num_cpus: int = 1,
                         batch_size: int | None = 4096, batch_format: BatchFormat = "pyarrow",
                         add_special: bool = True, parse_special: bool = False,
                         nulls: _Nulls = "raise", n_threads: int | None = None,
                         load_options: Mapping[str, Any] | None = None,
                         ray_options: Mapping[str, Any] | None = None) -> Dataset:
    """``ds`` with a token count column: ``ds.map_batches(TokenCounter, ...)`` on an actor pool
    (the model loaded ``vocab_only`` unless ``load_options`` say otherwise). Arguments as for
    :func:`embed_dataset` and :class:`TokenCounter`."""
    kwargs = {"column": column, "output_column": output_column, "add_special": add_special,
              "parse_special": parse_special, "nulls": nulls, "n_threads": n_threads,
              "load_options": load_options}
    return _map(ds, TokenCounter, model, kwargs, what="count_tokens_dataset",
                concurrency=concurrency, num_cpus=num_cpus, batch_size=batch_size,
                batch_format=batch_format, ray_options=ray_options)


def generate_dataset(ds: Dataset, model: ModelArg, *, column: str = "prompt",
                     output_column: str = "text", concurrency: int | tuple[int, int] | None = None,
                     num_cpus: int = 1, batch_size: int | None = 64,
                     batch_format: BatchFormat = "pyarrow", n_parallel: int = 8,
                     max_tokens: int = 128, stop: str | Sequence[str] | None = None,
                     context_options: Mapping[str, Any] | None = None, n_threads: int | None = None,
                     load_options: Mapping[str, Any] | None = None,
                     ray_options: Mapping[str, Any] | None = None, **sampling: Any) -> Dataset:
    """``ds`` with a generated text column: ``ds.map_batches(Generator, ...)`` on an actor pool;
    each batch of ``batch_size`` prompts is one ``generate_batch`` over ``n_parallel`` slots.
    ``**sampling`` (``temperature``, ``top_p``, ``seed``, ...) go to ``generate_batch``.
    Arguments as for :func:`embed_dataset` and :class:`Generator`."""
    kwargs = {"column": column, "output_column": output_column, "n_parallel": n_parallel,
              "max_tokens": max_tokens, "stop": stop, "context_options": context_options,
              "n_threads": n_threads, "load_options": load_options, **sampling}
    return _map(ds, Generator, model, kwargs, what="generate_dataset", concurrency=concurrency,
                num_cpus=num_cpus, batch_size=batch_size, batch_format=batch_format,
                ray_options=ray_options)
