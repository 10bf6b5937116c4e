"""Dask: embeddings, token counts and batch generation over a Dask DataFrame's partitions.

Each helper is one ``map_partitions`` with the right ``meta``; each partition is one call into
the core (``get_embeddings_batch``, ``count_tokens``, ``generate_batch``)::

    import dask.dataframe as dd
    from dask.distributed import Client, LocalCluster
    from llama_cython.integrations.dask import embed_partitions

    client = Client(LocalCluster(n_workers=4, threads_per_worker=1))
    ddf = dd.read_parquet("texts.parquet")
    embed_partitions(ddf, "all-minilm-l6-v2").to_parquet("embedded/")

The task graph holds the model's *spec* (its file, identity and load options), not a loaded
model: each worker process loads the model once, on its first task, and keeps a context for
each of its threads that runs these tasks (Dask's workers set ``OMP_NUM_THREADS=1``, which is
the default thread count of each context here: one core per worker thread). The spec hashes
deterministically, so the graph's keys are the same for the same input, model and options in
every session.

``model`` is a GGUF path, a registry name (``llama_cython.models``) or a loaded
:class:`~llama_cython.Model`. Dask is an extra: without it the helpers say to install
``llama_cython[dask]``.

Embeddings depend on which texts share a partition (by float rounding, up to about 5e-4; see
the embeddings guide): results equal an in-process ``get_embeddings_batch`` of each partition,
not bit for bit one call over everything. Token counts and greedy generation do not depend on
partitioning.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt

from llama_cython._checks import positive_int
from llama_cython._optional import require
from llama_cython.errors import OptionError
from llama_cython.integrations import _common

if TYPE_CHECKING:
    from llama_cython import Model

__all__ = ["count_tokens_partitions", "embed_array", "embed_partitions", "generate_partitions"]

#: ``dask.dataframe.DataFrame`` / ``Series`` and ``dask.array.Array`` (Dask is imported only
#: when a helper runs).
DaskDataFrame: TypeAlias = Any
DaskSeries: TypeAlias = Any
DaskArray: TypeAlias = Any
ModelArg: TypeAlias = "str | os.PathLike[str] | Model"
_Nulls: TypeAlias = Literal["raise", "empty"]


# -- on the workers ---------------------------------------------------------------------------
# Module-level functions: the graph refers to them by name, and their arguments are plain
# values (the spec, option dicts), so tokenizing and pickling the graph is cheap and stable.


def _embed_block(texts: Any, spec: dict[str, Any], options: dict[str, Any], n_threads: int | None,
                 call: dict[str, Any]) -> npt.NDArray[np.float32]:
    with _common.context(spec, options, n_threads) as ctx:
        out: npt.NDArray[np.float32] = ctx.get_embeddings_batch(texts, **call)
    return out


def _embed_partition(part: Any, spec: dict[str, Any], options: dict[str, Any], n_threads: int | None,
                     call: dict[str, Any], column: str, output: str) -> Any:
    import pandas as pd

    with _common.context(spec, options, n_threads) as ctx:
        values = ctx.get_embeddings_batch(part[column], format="arrow", **call)
    return part.assign(**{output: pd.Series(pd.arrays.ArrowExtensionArray(values), index=part.index)})


def _count_partition(part: Any, spec: dict[str, Any], n_threads: int | None, call: dict[str, Any],
                     column: str, output: str) -> Any:
    counts = _common.load(spec).count_tokens(part[column], n_threads=_common.thread_count(n_threads),
                                             **call)
    return part.assign(**{output: counts})


def _generate_partition(part: Any, spec: dict[str, Any], options: dict[str, Any],
                        n_threads: int | None, call: dict[str, Any], column: str, output: str) -> Any:
    import pandas as pd

    with _common.context(spec, options, n_threads) as ctx:
        texts = ctx.generate_batch(part[column], **call)
    return part.assign(**{output: pd.Series(texts, index=part.index, dtype=_str_dtype())})


def _str_dtype() -> Any:
    """The dtype pandas gives a column of str (``str`` in pandas 3, ``object`` before)."""
    import pandas as pd

    return pd.Series([""]).dtype


# -- on the client ----------------------------------------------------------------------------


def _frame(df: Any, column: str, what: str) -> Any:
    dd = require("dask.dataframe", f"llama_cython.integrations.dask.{what}()")
    if not isinstance(df, dd.DataFrame):
        raise TypeError(f"{what}() takes a dask DataFrame, got {type(df).__name__}")
    if column not in df.columns:
        raise KeyError(f"column {column!r} is not in the DataFrame (columns: {list(df.columns)})")
    return dd


def _embedding_setup(model: ModelArg, context_options: Mapping[str, Any] | None,
                     load_options: Mapping[str, Any] | None, dim: int | None,
                     nulls: str) -> tuple[dict[str, Any], dict[str, Any], int]:
    """The spec, the context options and the embedding width (from the Model, or by loading
    the file here once, memory-mapped, when ``dim`` is not given)."""
    from llama_cython import Model, load_model

    _common.check_nulls(nulls)
    options = {"embeddings": True, **(context_options or {})}
    _common.check_context_options(options)
    if options.get("pooling") in ("none", "rank"):
        raise OptionError(f"pooling={options['pooling']!r}: these helpers make one vector per text "
                         "(use Context.get_token_embeddings for token vectors)")
    spec = _common.model_spec(model, load_options)
    if dim is None:
        if isinstance(model, Model):
            dim = model.n_embd_out
        else:
            with load_model(spec["path"], **spec["options"]) as m:
                dim = m.n_embd_out
    return spec, options, positive_int(dim, "dim")


def embed_partitions(df: DaskDataFrame, model: ModelArg, *, column: str = "text",
                     output: str = "embedding", normalize: bool = True, truncate: bool = True,
                     batch_tokens: int | None = None, nulls: _Nulls = "raise",
                     context_options: Mapping[str, Any] | None = None, n_threads: int | None = None,
                     load_options: Mapping[str, Any] | None = None,
                     dim: int | None = None) -> DaskDataFrame:
    """``df`` with one more column, ``output``: the embedding of each text of ``column``.

    The column's dtype is ``pandas.ArrowDtype(pyarrow.list_(pyarrow.float32(), dim))`` (each
    partition's vectors on the memory the core filled; ``to_parquet`` writes it as a
    fixed-size list; ``numpy.stack(part[output])`` gives a partition's ``(N, D)`` array, and
    :func:`embed_array` a dask array). Each partition is one ``get_embeddings_batch`` call on
    the worker thread's context, ``new_context(embeddings=True, **context_options)`` with
    ``n_threads`` threads (default ``$OMP_NUM_THREADS``: 1 on Dask's workers).
    ``normalize``, ``truncate``, ``batch_tokens`` and ``nulls`` (``"raise"`` or ``"empty"``)
    are ``get_embeddings_batch``'s. ``dim`` (the embedding width) is read from the model; for
    a path or registry name the file is loaded here once to read it, unless given.
    """
    _frame(df, column, "embed_partitions")
    pa = require("pyarrow", "llama_cython.integrations.dask.embed_partitions()")
    import pandas as pd

    spec, options, dim = _embedding_setup(model, context_options, load_options, dim, nulls)
    call = {"normalize": normalize, "truncate": truncate, "batch_tokens": batch_tokens, "nulls": nulls}
    empty = df._meta
    dtype = pd.ArrowDtype(pa.list_(pa.float32(), dim))
    meta = empty.assign(**{output: pd.Series(pd.array([], dtype=dtype), index=empty.index)})
    return df.map_partitions(_embed_partition, spec, options, n_threads, call, column, output,
                             meta=meta)


def embed_array(data: DaskDataFrame | DaskSeries, model: ModelArg, *, column: str = "text",
                lengths: bool | Sequence[int] = False, normalize: bool = True,
                truncate: bool = True, batch_tokens: int | None = None, nulls: _Nulls = "raise",
                context_options: Mapping[str, Any] | None = None, n_threads: int | None = None,
                load_options: Mapping[str, Any] | None = None, dim: int | None = None) -> DaskArray:
    """The embeddings of a dask Series of texts (or of ``data[column]``) as a float32 dask array
    ``(N, dim)``, one block per partition.

    Its row chunks are unknown (``nan``) unless ``lengths`` gives the partitions' lengths, or
    is True to count them first (one pass over the input, without embedding). Other arguments
    as for :func:`embed_partitions`.
    """
    dd = require("dask.dataframe", "llama_cython.integrations.dask.embed_array()")
    da = require("dask.array", "llama_cython.integrations.dask.embed_array()")
    if isinstance(data, dd.DataFrame):
        _frame(data, column, "embed_array")
        data = data[column]
    elif not isinstance(data, dd.Series):
        raise TypeError(f"embed_array() takes a dask Series or DataFrame, got {type(data).__name__}")
    spec, options, dim = _embedding_setup(model, context_options, load_options, dim, nulls)
    call = {"normalize": normalize, "truncate": truncate, "batch_tokens": batch_tokens, "nulls": nulls}
    meta = np.empty((0, dim), dtype=np.float32)
    arr = data.map_partitions(_embed_block, spec, options, n_threads, call, meta=meta)
    if lengths is True:
        lengths = [int(n) for n in data.map_partitions(len).compute()]
    if lengths is not False:
        rows = tuple(int(n) for n in lengths)
        if len(rows) != data.npartitions:
            raise OptionError(f"lengths has {len(rows)} entries for {data.npartitions} partitions")
        arr = da.Array(arr.__dask_graph__(), arr.name, chunks=(rows, (dim,)), dtype=np.float32,
                       meta=meta)
    return arr


def count_tokens_partitions(df: DaskDataFrame, model: ModelArg, *, column: str = "text",
                            output: str = "n_tokens", add_special: bool = True,
                            parse_special: bool = False, nulls: _Nulls = "raise",
                            n_threads: int | None = None,
                            load_options: Mapping[str, Any] | None = None) -> DaskDataFrame:
    """``df`` with one more int32 column, ``output``: the token count of each text of
    ``column`` (``Model.count_tokens``; ``add_special``, ``parse_special``, ``nulls`` and
    ``n_threads`` are its). A model given as a path or registry name is loaded ``vocab_only``
    on the workers (counting needs only the tokenizer) unless ``load_options`` say otherwise.
    """
    from llama_cython import Model

    _frame(df, column, "count_tokens_partitions")
    import pandas as pd

    _common.check_nulls(nulls)
    if load_options is None and not isinstance(model, Model):
        load_options = {"vocab_only": True}
    spec = _common.model_spec(model, load_options)
    call = {"add_special": add_special, "parse_special": parse_special, "nulls": nulls}
    empty = df._meta
    meta = empty.assign(**{output: pd.Series(np.array([], dtype=np.int32), index=empty.index)})
    return df.map_partitions(_count_partition, spec, n_threads, call, column, output, meta=meta)


def generate_partitions(df: DaskDataFrame, model: ModelArg, *, column: str = "prompt",
                        output: str = "text", n_parallel: int = 8, max_tokens: int = 128,
                        stop: str | Sequence[str] | None = None,
                        context_options: Mapping[str, Any] | None = None,
                        n_threads: int | None = None, load_options: Mapping[str, Any] | None = None,
                        **sampling: Any) -> DaskDataFrame:
    """``df`` with one more str column, ``output``: the text generated for each prompt of
    ``column``. Each partition is one ``generate_batch(prompts, max_tokens=..., stop=...,
    **sampling)`` on the worker thread's context with ``n_parallel`` slots
    (``new_context(n_parallel=n_parallel, **context_options)``; give ``n_ctx`` room for
    ``n_parallel`` prompts and their answers). With ``temperature=0`` a prompt's text does not
    depend on its partition; with ``seed`` it does (prompt i of a partition draws from a seed
    derived from ``seed`` and i).
    """
    _frame(df, column, "generate_partitions")
    import pandas as pd

    options = {"n_parallel": n_parallel, **(context_options or {})}
    _common.check_context_options(options)
    spec = _common.model_spec(model, load_options)
    call = {"max_tokens": max_tokens, "stop": stop, **sampling}
    empty = df._meta
    meta = empty.assign(**{output: pd.Series([], index=empty.index, dtype=_str_dtype())})
    return df.map_partitions(_generate_partition, spec, options, n_threads, call, column, output,
                             meta=meta)
