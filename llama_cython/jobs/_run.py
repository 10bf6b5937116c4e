"""Running a job: the working folder and its manifest, resuming, and the final assembly.

The manifest's ``state`` is ``"running"`` while chunks are written, ``"assembled"`` once the
parts are joined into ``output.tmp`` (of the recorded size), and ``"done"`` once the output is
in place and the folder is being removed. The folder appears whole (built under another name,
then renamed) and goes in one step (renamed to a trash folder, then deleted), so a working
folder always holds a manifest. A run holds ``<output>.lock`` throughout, so that two runs of
one job never share the folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeAlias

import numpy as np
import numpy.typing as npt

from llama_cython._checks import choice, positive_int
from llama_cython._optional import require
from llama_cython.errors import JobResumeError, OptionError
from llama_cython.jobs._files import (
    atomic_write,
    discard,
    exclusive,
    fsync_dir,
    kill_point,
    kill_reset,
    trash_folders,
)
from llama_cython.jobs._read import (
    InputBatch,
    PathArg,
    batches,
    cheap_count,
    check_columns,
    input_format,
    prepare,
)
from llama_cython.jobs._write import Writer

if TYPE_CHECKING:
    from llama_cython._core import Model


Progress: TypeAlias = "Callable[[int, int | None], object] | bool | None"
Compute: TypeAlias = "Callable[[Any, Callable[[int], None] | None], dict[str, Any]]"

_MANIFEST = "manifest.json"
_FORMAT = "llama_cython.jobs"
_VERSION = 2
_NULLS = ("raise", "empty", "skip")
# Context options that do not change what a job writes (ggml splits an operation's output rows
# among the threads, each row computed the same way): a job may resume with other thread counts.
_NOT_RECORDED = ("n_threads", "n_threads_batch")


@dataclass(frozen=True)
class JobResult:
    """What a job did: the output written (None when :func:`count_file` wrote none), its rows,
    the chunks this run wrote and those it found finished by an earlier run, the wall time, and
    for :func:`count_file` the total number of tokens."""

    output: Path | None
    rows: int
    chunks_written: int
    chunks_resumed: int
    seconds: float
    tokens: int | None = None


def _model_identity(model: Model) -> dict[str, Any]:
    """The model as a manifest records it: the file it was loaded from (made absolute when it
    was loaded, not against this job's working directory), its load options, and its token
    (``__dask_tokenize__``: the file's size and sampled sha256, with the load options)."""
    try:
        path = str(model.__reduce__()[1][0]["path"])      # the pickle spec's absolute path
    except (LookupError, TypeError):
        path = os.path.abspath(model.path)
    return {"path": path, "load_options": model.load_options, "token": model.__dask_tokenize__()}


def context_identity(options: dict[str, Any]) -> dict[str, Any]:
    """A context's ``options`` as a manifest records them (not the thread counts)."""
    return {k: v for k, v in options.items() if k not in _NOT_RECORDED}


def _input_identity(path: PathArg, fmt: str) -> dict[str, Any]:
    if fmt == "stdin":
        return {"path": "-"}
    st = os.stat(path)
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _json_default(value: Any) -> Any:
    """A value JSON cannot hold: a numpy scalar as its Python value, anything else as repr()."""
    return value.item() if isinstance(value, np.generic) else repr(value)


def _canonical(value: Any) -> Any:
    """The JSON round trip of ``value``, so that a fresh job compares equal to a stored one."""
    return json.loads(json.dumps(value, sort_keys=True, default=_json_default))


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        if not prefix and any(d.startswith("model.load_options.") for d in out):
            out = [d for d in out if not d.startswith("model.token:")]   # it holds the options
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def _same_job(manifest: dict[str, Any], identity: dict[str, Any]) -> list[str]:
    """How the job recorded in ``manifest`` differs from ``identity`` (empty: the same job)."""
    return _differences({k: manifest.get(k) for k in identity}, identity)


def _write_manifest(work: Path, manifest: dict[str, Any]) -> None:
    data = json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8")

    def write(f: IO[bytes]) -> None:
        f.write(data)

    atomic_write(work / _MANIFEST, write)


def read_manifest(work: Path) -> dict[str, Any] | None:
    """The manifest of the job in a working folder; None when there is no folder. A folder
    always has one (it appears whole and goes in one step): one without is not a job's."""
    if not work.is_dir():
        return None
    path = work / _MANIFEST
    if not path.is_file():
        raise JobResumeError(f"{work} has no {_MANIFEST}, so it is not a llama_cython job folder; "
                             "delete it to run the job")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise JobResumeError(f"{path} is not a job manifest ({exc}); delete {work} or pass "
                             "resume=False to start over") from None
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
        raise JobResumeError(f"{path} is not a llama_cython job manifest; delete {work} or pass "
                             "resume=False to start over")
    return manifest


def _manifest_or_none(work: Path) -> dict[str, Any] | None:
    """The manifest in ``work``, or None where there is none that can be read."""
    try:
        return read_manifest(work)
    except (JobResumeError, OSError):
        return None


def _finished(manifest: dict[str, Any] | None, identity: dict[str, Any], out: Path) -> bool:
    """True when ``manifest`` says that its job finished, that job is this one, and the output
    is the file it put in place (of the recorded size). Never for stdin input: this run's stdin
    cannot be checked against that run's."""
    if manifest is None or manifest.get("state") != "done" or _same_job(manifest, identity):
        return False
    if identity.get("input", {}).get("path") == "-":
        return False
    try:
        return out.is_file() and out.stat().st_size == manifest.get("output_size")
    except OSError:
        return False


def _create_work(work: Path, manifest: dict[str, Any]) -> None:
    """Create the working folder with its first manifest in one step: built under another
    name, then renamed, so that a working folder always has a manifest."""
    new = work.with_name(work.name + ".new")
    if new.exists():
        shutil.rmtree(new)
    new.mkdir()
    _write_manifest(new, manifest)
    os.rename(new, work)
    fsync_dir(work.parent)


def progress_callback(progress: Progress, total: int | None,
                      initial: int) -> tuple[Callable[[int], None] | None, Callable[[], None]]:
    """``report(done_rows)`` for a progress option, and a function that closes a bar."""
    if progress is None or progress is False:
        return None, lambda: None
    if progress is True:
        bar = require("tqdm.auto", "progress=True (or pass a callable)").tqdm(
            total=total, initial=initial, unit="row")

        def update(done: int) -> None:
            bar.update(done - bar.n)

        return update, bar.close
    if not callable(progress):
        raise TypeError(f"progress must be callable or a bool, got {type(progress).__name__}")
    fn = progress

    def call(done: int) -> None:
        fn(done, total)

    return call, lambda: None


@dataclass
class Job:
    """One file job: what to read, what to compute per chunk (``compute(texts, progress)`` ->
    output columns), how to write it, and the options recorded in the manifest."""

    kind: str
    model: Model
    input: PathArg
    output: PathArg
    fmt: str
    column: str
    id_column: str | None
    chunk_rows: int
    nulls: str
    options: dict[str, Any]
    columns: dict[str, str]
    compute: Compute
    as_list: bool
    dim: int = 0
    context: dict[str, Any] | None = None     # the context's options (context_identity)


def check_common(output_names: tuple[str, ...], id_column: str | None, nulls: str,
                 chunk_rows: int) -> int:
    """Check the options every job takes; return ``chunk_rows`` as an int."""
    rows = positive_int(chunk_rows, "chunk_rows")
    choice(nulls, "nulls", _NULLS)
    if id_column is not None:
        if not isinstance(id_column, str):
            raise TypeError(f"id_column must be a str or None, got {type(id_column).__name__}")
        if id_column in output_names:
            raise OptionError(f"id_column {id_column!r} would clash with the output columns "
                              f"{output_names}")
    return rows


def run_job(job: Job, progress: Progress, resume: bool, overwrite: bool) -> JobResult:
    """Run (or resume) a chunked job and assemble its output, holding ``<output>.lock``."""
    t0 = time.perf_counter()
    kill_reset()
    in_fmt = input_format(job.input)
    out = Path(job.output)
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{out}: its folder {out.parent} does not exist")
    # before the working folder exists: a wrong column must not leave a job behind
    check_columns(job.input, in_fmt, job.column, job.id_column, job.nulls)
    writer = Writer(job.fmt, job.id_column or "row", job.columns, job.dim)
    identity = _canonical({
        "format": _FORMAT, "version": _VERSION, "kind": job.kind,
        "options": {"column": job.column, "id_column": job.id_column, "chunk_rows": job.chunk_rows,
                    "nulls": job.nulls, "output_format": job.fmt, **job.options},
        "context": job.context, "model": _model_identity(job.model),
        "input": _input_identity(job.input, in_fmt)})
    with exclusive(out.with_name(out.name + ".lock")):
        return _run_locked(job, progress, resume, overwrite, in_fmt, out, writer, identity, t0)


def _run_locked(job: Job, progress: Progress, resume: bool, overwrite: bool, in_fmt: str, out: Path,
                writer: Writer, identity: dict[str, Any], t0: float) -> JobResult:
    work = out.with_name(out.name + ".partial")
    redo = f"delete {work} or pass resume=False to start over"

    stale = work.with_name(work.name + ".new")
    if stale.exists():                              # a start killed before its first manifest
        shutil.rmtree(stale)
    done = None
    for trash in trash_folders(work):               # a run killed while deleting its folder
        old = _manifest_or_none(trash)
        shutil.rmtree(trash)
        if _finished(old, identity, out):
            done = old
    manifest = read_manifest(work)
    if manifest is None and done is not None and resume:   # finished, killed while cleaning up
        return JobResult(out, int(done["rows"]), 0, len(done["chunks"]), time.perf_counter() - t0)
    if manifest is not None and manifest.get("state") == "done":
        # a finished job, killed while cleaning up: its output is this job's only if the
        # manifest says it is the same job and the output is the size it wrote
        finished = resume and _finished(manifest, identity, out)
        discard(work)
        if finished:
            return JobResult(out, int(manifest["rows"]), 0, len(manifest["chunks"]),
                             time.perf_counter() - t0)
        manifest = None
    if manifest is not None and not manifest.get("chunks"):
        # nothing finished to resume (the job stopped before its first chunk, e.g. on a bad
        # row): start over, whatever its settings were
        discard(work)
        manifest = None
    if manifest is not None and job.kind == "count" and manifest.get("kind") != "count":
        raise JobResumeError(f"{work} holds an unfinished {manifest.get('kind')} job; finish it, "
                             "or delete the folder, before counting into the same output")
    if manifest is not None and not resume:
        discard(work)
        manifest = None
    if manifest is not None:
        if manifest.get("input", {}).get("path") == "-":
            raise JobResumeError(f"{work} holds an unfinished job that read stdin, which cannot be "
                                 f"resumed: {redo}")
        diff = _same_job(manifest, identity)
        if diff:
            raise JobResumeError(f"{work} holds an unfinished job with other settings "
                                 f"({'; '.join(diff)}): {redo}")
        if manifest.get("state") == "assembled":
            if _finish_assembled(work, out, manifest):
                return JobResult(out, int(manifest["rows"]), 0, len(manifest["chunks"]),
                                 time.perf_counter() - t0)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (the output of a finished job?); pass "
                              "overwrite=True to replace it")
    if manifest is None:
        manifest = {**identity, "state": "running", "chunks": []}
        _create_work(work, manifest)
    for p in work.iterdir():                      # leftovers of a run killed mid-write
        if p.name.endswith(".tmp"):
            p.unlink()

    chunks: list[dict[str, Any]] = manifest["chunks"]
    resumed = len(chunks)
    consumed = sum(int(c["input_rows"]) for c in chunks)
    total = cheap_count(job.input, in_fmt)
    report, close = progress_callback(progress, total, consumed)
    written = 0
    source = os.fspath(job.input)
    ext = job.fmt
    try:
        if report is not None:
            report(consumed)
        for batch in batches(job.input, in_fmt, job.column, job.id_column, job.chunk_rows, consumed):
            texts, rows, ids = prepare(batch, job.nulls, job.column, source, job.as_list)
            try:
                values = job.compute(texts, _within(report, batch.start, len(batch)))
            except (TypeError, ValueError) as exc:
                raise in_rows(exc, rows, batch.start, source) from exc
            kill_point()
            name = f"part-{len(chunks):06d}.{ext}"
            _write_part(writer, work / name, rows, ids, values)
            kill_point()
            chunks.append({"file": name, "input_rows": len(batch), "rows": len(rows)})
            _write_manifest(work, manifest)
            written += 1
            consumed += len(batch)
            if report is not None:
                report(consumed)
        if not chunks:                          # an empty input: one empty part gives the schema
            texts, rows, ids = prepare(InputBatch(0, [], [] if job.id_column else None), job.nulls,
                                       job.column, source, True)
            values = job.compute(texts, None)
            _write_part(writer, work / f"part-000000.{ext}", rows, ids, values)
            chunks.append({"file": f"part-000000.{ext}", "input_rows": 0, "rows": 0})
            _write_manifest(work, manifest)
            written += 1
        _assemble(work, out, manifest, writer)
    except BaseException:
        if in_fmt == "stdin" or job.kind == "count":   # nothing of these can be resumed
            with contextlib.suppress(OSError):
                discard(work)
        raise
    finally:
        close()
    return JobResult(out, int(manifest["rows"]), written, resumed, time.perf_counter() - t0)


def _within(report: Callable[[int], None] | None, start: int,
            n: int) -> Callable[[int], None] | None:
    """A per-batch ``progress(k)`` for the core's calls, reporting rows of the whole file."""
    if report is None:
        return None
    done = start
    rep = report

    def step(k: int) -> None:
        nonlocal done
        done = min(done + k, start + n)
        rep(done)

    return step


def _write_part(writer: Writer, path: Path, rows: npt.NDArray[np.int64], ids: Any,
                values: dict[str, Any]) -> None:
    def write(f: IO[bytes]) -> None:
        writer.write_part(f, rows, ids, values)

    atomic_write(path, write)


def write_stdout(writer: Writer, rows: npt.NDArray[np.int64], ids: Any,
                 values: dict[str, Any]) -> None:
    """One chunk's rows as JSON lines on stdout."""
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is not None:
        writer.write_part(buffer, rows, ids, values)
        buffer.flush()
    else:                                   # a replaced sys.stdout (a notebook, a test) takes str
        tmp = io.BytesIO()
        writer.write_part(tmp, rows, ids, values)
        sys.stdout.write(tmp.getvalue().decode("utf-8"))
        sys.stdout.flush()


def in_rows(exc: Exception, rows: npt.NDArray[np.int64], at: int, source: str) -> Exception:
    """``exc`` (about texts[k] of the chunk from file row ``at``) restated for the file's rows:
    texts[k] is file row ``rows[k]`` (the rows kept by the null policy)."""
    def row(m: re.Match[str]) -> str:
        k = int(m.group(1))
        return f"row {int(rows[k])}" if k < len(rows) else m.group(0)

    msg = re.sub(r"\b(?:texts|prompts)\[(\d+)\]", row, str(exc))
    if msg == str(exc):
        msg = f"{msg} (in the chunk from row {at})"
    try:
        return type(exc)(f"{source}: {msg}")
    except Exception:
        return exc


def _assemble(work: Path, out: Path, manifest: dict[str, Any], writer: Writer) -> None:
    """Join the parts into ``work/output.tmp`` (fsynced), record that in the manifest, rename it
    onto the output, remove the working folder."""
    kill_point()
    chunks = manifest["chunks"]
    rows = sum(int(c["rows"]) for c in chunks)
    tmp = work / "output.tmp"
    with open(tmp, "wb") as f:
        writer.assemble(f, [work / c["file"] for c in chunks], rows)
        f.flush()
        os.fsync(f.fileno())
    kill_point()
    manifest.update(state="assembled", rows=rows, output_size=tmp.stat().st_size)
    _write_manifest(work, manifest)
    _finish_assembled(work, out, manifest)


def _finish_assembled(work: Path, out: Path, manifest: dict[str, Any]) -> bool:
    """Move an assembled output into place and remove the working folder; False when the output
    must be assembled again (its temp file is gone and no output of the recorded size exists)."""
    tmp = work / "output.tmp"
    if tmp.is_file() and tmp.stat().st_size == manifest["output_size"]:
        kill_point()
        os.replace(tmp, out)
        fsync_dir(out.parent)
    elif not (out.is_file() and out.stat().st_size == manifest["output_size"]):
        manifest.update(state="running")
        return False
    kill_point()
    # Mark the job done before anything is removed: a rerun after a crash from here on finds
    # the output to be this job's (same identity, recorded size) and does not redo it.
    manifest.update(state="done")
    _write_manifest(work, manifest)
    kill_point()
    for p in work.iterdir():                  # the parts; the manifest goes with the folder
        if p.name != _MANIFEST:
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
    discard(work)
    return True
