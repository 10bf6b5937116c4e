"""Resumable, bounded jobs over files: embed, generate or count tokens for every row of a file.

A job reads one text column of a Parquet, CSV, JSONL or text file (or stdin lines) in chunks of
``chunk_rows`` rows and writes one output row per input row, in input order::

    from llama_cython import jobs
    jobs.embed_file(ctx, "corpus.parquet", "vectors.parquet", column="text", id_column="id")

Memory is bounded by the chunk size, not by the input. :func:`embed_file` and
:func:`generate_file` write each finished chunk to ``<output>.partial/part-NNNNNN.<ext>`` (temp
file, fsync, rename) and record it in ``<output>.partial/manifest.json`` (the same way), with
the job's options, the context's options (all but the thread counts), the model (its file's
absolute path, size and sampled sha256, and its load options) and the input (path, size,
modification time). Interrupted (Ctrl-C, SIGKILL, power loss) and run again with the same
arguments, a job checks the manifest, skips the finished chunks and continues; a difference in
any of these is refused, naming it. At the end the parts are joined into a temporary file that
is fsynced and renamed onto the output. The output is therefore absent or complete, never
half-written, and holds every input row exactly once, in order. A run holds an exclusive lock
on ``<output>.lock`` (``flock``; the file is removed at the end), so a second run of the same
job at the same time is refused.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from llama_cython.errors import JobResumeError, LlamaError, OptionError
from llama_cython.jobs._read import (
    InputBatch,
    Nulls,
    PathArg,
    batches,
    cheap_count,
    check_columns,
    count_rows,
    input_format,
    prepare,
    read_table_batches,
)
from llama_cython.jobs._run import (
    Job,
    JobResult,
    Progress,
    check_common,
    context_identity,
    in_rows,
    progress_callback,
    run_job,
    write_stdout,
)
from llama_cython.jobs._write import Writer, output_format

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from typing import Unpack
    else:
        from typing_extensions import Unpack

    from llama_cython._core import Context, Model, SamplingOptions

__all__ = [
    "InputBatch",
    "JobResult",
    "JobResumeError",
    "count_file",
    "count_rows",
    "embed_file",
    "generate_file",
    "read_table_batches",
]


def embed_file(ctx: Context, input: PathArg, output: PathArg, *, column: str = "text",
               id_column: str | None = None, chunk_rows: int = 4096, normalize: bool = True,
               nulls: Nulls = "raise", progress: Progress = None, resume: bool = True,
               overwrite: bool = False) -> JobResult:
    """Embed one text column of a file into ``output``, resumably, with bounded memory.

    ``output`` is ``.parquet`` (the id column, or ``row`` holding the input row number, then
    ``embedding`` as ``FixedSizeList<float32, D>``), ``.npy`` (an ``(N, D)`` float32 array) or
    ``.jsonl`` (one object per row). Rows stay in input order. ``nulls`` is the policy of
    :meth:`Context.get_embeddings_batch` for missing values (``"skip"`` needs an output that
    keeps the row numbers: not ``.npy``).

    The job writes ``chunk_rows`` rows at a time into ``<output>.partial/``; run again with the
    same arguments after an interruption, it continues after the last finished chunk
    (``resume=False`` discards it and starts over). A job whose settings (its own, or the
    context's but for thread counts), input file or model differ from the unfinished one's
    raises :class:`JobResumeError`, as does a run while another process runs the same job.
    An existing ``output`` is a FileExistsError unless ``overwrite=True``. ``progress`` is True
    (a tqdm bar) or ``progress(done_rows, total_rows)`` (``total_rows`` None where unknown).
    """
    fmt = output_format(output, ("parquet", "npy", "jsonl"), "embed_file")
    chunk_rows = check_common(("embedding",), id_column, nulls, chunk_rows)
    if nulls == "skip" and fmt == "npy":
        raise OptionError("nulls='skip' with a .npy output would lose which rows were left out; "
                         "write .parquet or .jsonl (they keep the row numbers) or use nulls='empty'")
    dim = int(ctx.get_embeddings_batch([]).shape[1])       # also checks that ctx embeds
    buf = [np.empty((0, dim), dtype=np.float32)]           # one chunk's vectors, reused

    def compute(texts: Any, report: Callable[[int], None] | None) -> dict[str, Any]:
        if buf[0].shape[0] < len(texts):                   # the first chunk is the largest
            buf[0] = np.empty((len(texts), dim), dtype=np.float32)
        out = buf[0][:len(texts)]
        ctx.get_embeddings_batch(texts, normalize=normalize, out=out, progress=report)
        return {"embedding": out}

    options = {"normalize": bool(normalize), "pooling": ctx.pooling, "n_ctx": ctx.n_ctx, "dim": dim}
    job = Job("embed", ctx.model, input, output, fmt, column, id_column, chunk_rows, nulls,
              options, {"embedding": "embedding"}, compute, True, dim, context_identity(ctx.options))
    return run_job(job, progress, resume, overwrite)


def generate_file(ctx: Context, input: PathArg, output: PathArg, *, column: str = "prompt",
                  id_column: str | None = None, chunk_rows: int = 256, max_tokens: int = 128,
                  stop: str | list[str] | tuple[str, ...] | None = None, progress: Progress = None,
                  resume: bool = True, overwrite: bool = False, nulls: Nulls = "raise",
                  **sampling: Unpack[SamplingOptions]) -> JobResult:
    """Continue every prompt of one column of a file with :meth:`Context.generate_batch`,
    resumably, ``chunk_rows`` prompts at a time.

    ``output`` is ``.parquet`` or ``.jsonl``: the id column (or ``row``), ``text``,
    ``finish_reason`` and ``tokens`` (generated tokens). With ``seed``, prompt i of a chunk
    samples from a seed derived from ``seed`` and i, so a resumed job writes what an
    uninterrupted one would. Resuming, ``overwrite`` and ``progress`` as in :func:`embed_file`.
    """
    fmt = output_format(output, ("parquet", "jsonl"), "generate_file")
    chunk_rows = check_common(("text", "finish_reason", "tokens"), id_column, nulls, chunk_rows)
    stops = [stop] if isinstance(stop, str) else list(stop or ())

    def compute(texts: Any, report: Callable[[int], None] | None) -> dict[str, Any]:
        if not texts:
            return {"text": [], "finish_reason": [], "tokens": np.zeros(0, np.int32)}
        out = ctx.generate_batch(texts, max_tokens=max_tokens, stop=stops or None,
                                 progress=report, **sampling)
        stats = ctx.last_batch_stats
        if stats is None or "cancelled" in stats.finish_reasons:
            raise LlamaError("generate_file: the batch was cancelled; the finished chunks are kept, "
                             "run the job again to resume")
        return {"text": out, "finish_reason": list(stats.finish_reasons),
                "tokens": stats.completion_tokens}

    options = {"max_tokens": max_tokens, "stop": stops, "sampling": dict(sampling),
               "n_ctx": ctx.n_ctx, "n_parallel": ctx.n_parallel}
    job = Job("generate", ctx.model, input, output, fmt, column, id_column, chunk_rows, nulls,
              options, {"text": "string", "finish_reason": "string", "tokens": "int32"},
              compute, True, 0, context_identity(ctx.options))
    return run_job(job, progress, resume, overwrite)


def count_file(model: Model, input: PathArg, output: PathArg | None = None, *, column: str = "text",
               id_column: str | None = None, add_special: bool = True, chunk_rows: int = 65536,
               nulls: Nulls = "raise", progress: Progress = None, overwrite: bool = False) -> JobResult:
    """Count the tokens of every text of one column of a file, streaming.

    ``output`` is ``.parquet`` or ``.jsonl`` (the id column or ``row``, then ``n_tokens``),
    ``"-"`` for JSON lines on stdout, or None for no per-row output (``JobResult.tokens`` has the
    total). The job is fast and not resumable: it starts over each time (a file output still
    appears only complete).
    """
    chunk_rows = check_common(("n_tokens",), id_column, nulls, chunk_rows)

    def compute(texts: Any, report: Callable[[int], None] | None) -> dict[str, Any]:
        counts = (model.count_tokens(texts, add_special=add_special) if len(texts)
                  else np.zeros(0, np.int32))
        totals[0] += int(counts.sum(dtype=np.int64))
        return {"n_tokens": counts}

    totals = [0]
    if output is not None and os.fspath(output) != "-":
        fmt = output_format(output, ("parquet", "jsonl"), "count_file")
        job = Job("count", model, input, output, fmt, column, id_column, chunk_rows, nulls,
                  {"add_special": bool(add_special)}, {"n_tokens": "int32"}, compute, False)
        r = run_job(job, progress, False, overwrite)
        return JobResult(r.output, r.rows, r.chunks_written, 0, r.seconds, totals[0])

    t0 = time.perf_counter()
    in_fmt = input_format(input)
    check_columns(input, in_fmt, column, id_column, nulls)
    report, close = progress_callback(progress, cheap_count(input, in_fmt), 0)
    writer = Writer("jsonl", id_column or "row", {"n_tokens": "int32"})
    rows_out = chunks = 0
    source = os.fspath(input)
    try:
        for batch in batches(input, in_fmt, column, id_column, chunk_rows, 0):
            texts, rows, ids = prepare(batch, nulls, column, source, False)
            try:
                values = compute(texts, None)
            except (TypeError, ValueError) as exc:
                raise in_rows(exc, rows, batch.start, source) from exc
            if output is not None:
                write_stdout(writer, rows, ids, values)
            rows_out += len(rows)
            chunks += 1
            if report is not None:
                report(batch.start + len(batch))
    finally:
        close()
    return JobResult(None, rows_out, chunks, 0, time.perf_counter() - t0, totals[0])
