"""Running a job: the working folder and its manifest, resuming, and the final assembly."""

from __future__ import annotations

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

from llama_cython._optional import require
from llama_cython.errors import LlamaError
from llama_cython.jobs._files import atomic_write, fsync_dir, kill_point, kill_reset
from llama_cython.jobs._read import (
    InputBatch,
    PathArg,
    batches,
    cheap_count,
    check_int,
    input_format,
    prepare,
)
from llama_cython.jobs._write import Writer, output_rows

if TYPE_CHECKING:
    from llama_cython._core import Model


Progress: TypeAlias = "Callable[[int, int | None], object] | bool | None"
Compute: TypeAlias = "Callable[[Any, Callable[[int], None] | None], dict[str, Any]]"

_MANIFEST = "manifest.json"
_FORMAT = "llama_cython.jobs"
_VERSION = 1
_NULLS = ("raise", "empty", "skip")


class JobResumeError(LlamaError, ValueError):
    """An unfinished job's working folder does not belong to this job (other options, another
    input or model, stdin): delete the folder or pass ``resume=False`` to start over."""


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
    path = Path(model.path)
    size = path.stat().st_size if path.is_file() else None
    return {"path": str(path.resolve()), "size": size, "description": model.description,
            "n_params": model.n_params}


def _input_identity(path: PathArg, fmt: str) -> dict[str, Any]:
    if fmt == "stdin":
        return {"path": "-"}
    st = os.stat(path)
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _canonical(value: Any) -> Any:
    """The JSON round trip of ``value``, so that a fresh job compares equal to a stored one."""
    return json.loads(json.dumps(value, sort_keys=True, default=repr))


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def _write_manifest(work: Path, manifest: dict[str, Any]) -> None:
    data = json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8")

    def write(f: IO[bytes]) -> None:
        f.write(data)

    atomic_write(work / _MANIFEST, write)


def read_manifest(work: Path) -> dict[str, Any] | None:
    """The manifest of an unfinished job; None when there is no working folder, and
    ``{"state": "removed"}`` for a folder without its manifest: only the last steps of
    :func:`_remove_work` leave one (a new folder appears whole, see :func:`_create_work`), so
    that job had finished."""
    if not work.is_dir():
        return None
    path = work / _MANIFEST
    if not path.is_file():
        return {"state": "removed"}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise JobResumeError(f"{path} is not a job manifest ({exc}); delete {work} or pass "
                             "resume=False to start over") from None
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
        raise JobResumeError(f"{path} is not a llama_cython job manifest; delete {work} or pass "
                             "resume=False to start over")
    return manifest


def _create_work(work: Path, manifest: dict[str, Any]) -> None:
    """Create the working folder with its first manifest in one step: built under another
    name, then renamed, so that a folder without a manifest means only one thing."""
    new = work.with_name(work.name + ".new")
    if new.exists():
        shutil.rmtree(new)
    new.mkdir()
    _write_manifest(new, manifest)
    os.rename(new, work)
    fsync_dir(work.parent)


def _remove_work(work: Path) -> None:
    """Remove a working folder so that a kill on the way leaves a state a rerun understands:
    the parts first, the manifest last."""
    if not work.exists():
        return
    for p in sorted(work.iterdir()):
        if p.name != _MANIFEST:
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
    kill_point()
    (work / _MANIFEST).unlink(missing_ok=True)
    kill_point()
    work.rmdir()


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


def check_common(output_names: tuple[str, ...], id_column: str | None, nulls: str,
                 chunk_rows: int) -> None:
    check_int(chunk_rows, "chunk_rows")
    if nulls not in _NULLS:
        raise ValueError(f"nulls must be 'raise', 'empty' or 'skip', got {nulls!r}")
    if id_column is not None and (not isinstance(id_column, str) or id_column in output_names):
        raise ValueError(f"id_column {id_column!r} would clash with the output columns {output_names}")


def run_job(job: Job, progress: Progress, resume: bool, overwrite: bool) -> JobResult:
    """Run (or resume) a chunked job and assemble its output."""
    t0 = time.perf_counter()
    kill_reset()
    in_fmt = input_format(job.input)
    out = Path(job.output)
    work = out.with_name(out.name + ".partial")
    writer = Writer(job.fmt, job.id_column or "row", job.columns, job.dim)
    identity = _canonical({
        "format": _FORMAT, "version": _VERSION, "kind": job.kind,
        "options": {"column": job.column, "id_column": job.id_column, "chunk_rows": job.chunk_rows,
                    "nulls": job.nulls, "output_format": job.fmt, **job.options},
        "model": _model_identity(job.model), "input": _input_identity(job.input, in_fmt)})
    redo = f"delete {work} or pass resume=False to start over"
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{out}: its folder {out.parent} does not exist")

    stale = work.with_name(work.name + ".new")
    if stale.exists():                              # a start killed before its first manifest
        shutil.rmtree(stale)
    manifest = read_manifest(work)
    if manifest is not None and manifest.get("state") == "removed":
        shutil.rmtree(work)
        manifest = None
        if resume and out.is_file():               # finished, killed while cleaning up
            return JobResult(out, output_rows(out, job.fmt), 0, 0, time.perf_counter() - t0)
    if manifest is not None and not resume:
        _remove_work(work)
        manifest = None
    if manifest is not None:
        if manifest.get("input", {}).get("path") == "-":
            raise JobResumeError(f"{work} holds an unfinished job that read stdin, which cannot be "
                                 f"resumed: {redo}")
        stored = {k: manifest.get(k) for k in identity}
        diff = _differences(stored, identity)
        if diff:
            raise JobResumeError(f"{work} holds an unfinished job with other settings "
                                 f"({'; '.join(diff)}): {redo}")
        if manifest.get("state") == "assembled":
            done = _finish_assembled(work, out, manifest)
            if done:
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
                raise in_rows(exc, batch.start, source) from exc
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
            shutil.rmtree(work, ignore_errors=True)
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


def in_rows(exc: Exception, at: int, source: str) -> Exception:
    """``exc`` (about texts[k] of one chunk) restated for the file's rows."""
    msg = re.sub(r"\b(?:texts|prompts)\[(\d+)\]", lambda m: f"row {at + int(m.group(1))}", str(exc))
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
    _remove_work(work)
    return True
