"""Resumable, bounded file jobs (llama_cython.jobs): every input and output format, ids and nulls,
resuming after SIGKILL at random points and at every kill point, Ctrl-C, refusals (other options,
an existing output), and memory that does not grow with the input.

Embeddings of one chunk depend (at the 1e-4 level) on which texts share its batches, so a job's
rows are compared bit for bit with ``get_embeddings_batch`` on the same chunks; against one call
on all texts they agree within the batch-composition bound of test_embeddings.py.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import llama_cython as llama
from llama_cython import jobs
from llama_cython.jobs import _files, _read, _run

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

BATCH_ATOL = 5e-4          # test_embeddings.py: batch composition moves a unit vector this much
WORDS = ("river stone quiet lamp orange cloud seven paper window garden music winter bright "
         "carpet silver forest engine yellow candle harbour").split()


def make_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 9))) + f" {i}" for i in range(n)]


@pytest.fixture(scope="module")
def minilm():
    return llama.load_model(llama.models.model_path("all-minilm-l6-v2"))


@pytest.fixture(scope="module")
def ectx(minilm):
    # the children of the SIGKILL tests create the same context (CHILD below). One thread: on
    # a machine whose cores are shared, ggml's spinning thread barriers make two threads slower
    with minilm.new_context(embeddings=True, n_threads=1) as ctx:
        yield ctx


@pytest.fixture(scope="module")
def gctx(smol):
    with smol.new_context(n_ctx=2048, n_parallel=8, n_threads=1) as ctx:
        yield ctx


def write_input(path: Path, texts: list, ids: list | None = None, column: str = "text") -> Path:
    fmt = path.suffix
    if fmt == ".parquet":
        cols = {"id": ids} if ids is not None else {}
        cols[column] = texts
        pq.write_table(pa.table(cols), path, row_group_size=37)       # row groups != chunks
    elif fmt == ".csv":
        import csv

        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["id", column] if ids is not None else [column])
            for k, t in enumerate(texts):
                w.writerow([ids[k], t] if ids is not None else [t])
    elif fmt in (".jsonl", ".ndjson"):
        with open(path, "w", encoding="utf-8") as f:
            for k, t in enumerate(texts):
                obj = {"id": ids[k]} if ids is not None else {}
                if t is not None:
                    obj[column] = t
                f.write(json.dumps(obj) + "\n")
                if k == 3:
                    f.write("\n")                  # a blank line is not a row
    else:
        path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    return path


def read_output(path: Path, key: str = "row") -> tuple[list, np.ndarray]:
    """(keys, (N, D) embeddings) of an embed_file output."""
    if path.suffix == ".npy":
        arr = np.load(path)
        return list(range(len(arr))), arr
    if path.suffix == ".parquet":
        t = pq.read_table(path)
        emb = t.column("embedding").combine_chunks()
        d = emb.type.list_size
        return t.column(key).to_pylist(), emb.values.to_numpy().reshape(-1, d)
    recs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [r[key] for r in recs], np.array([r["embedding"] for r in recs], dtype=np.float32)


def chunked(ctx, texts: list[str], chunk_rows: int) -> np.ndarray:
    """What the job computes: get_embeddings_batch on each chunk."""
    return np.concatenate([ctx.get_embeddings_batch(texts[i:i + chunk_rows])
                           for i in range(0, len(texts), chunk_rows)])


@pytest.fixture(scope="module")
def texts120() -> list[str]:
    return make_texts(120)


@pytest.fixture(scope="module")
def ref120(ectx, texts120) -> np.ndarray:
    return chunked(ectx, texts120, 32)


# -- formats ------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl", ".ndjson", ".txt"])
def test_every_input_format(ectx, texts120, ref120, tmp_path, suffix):
    src = write_input(tmp_path / f"in{suffix}", texts120)
    assert jobs.count_rows(src) == 120
    out = tmp_path / "out.parquet"
    result = jobs.embed_file(ectx, src, out, chunk_rows=32)
    assert result == jobs.JobResult(out, 120, 4, 0, result.seconds)
    rows, emb = read_output(out)
    assert rows == list(range(120))
    assert np.array_equal(emb, ref120)
    assert not (tmp_path / "out.parquet.partial").exists()
    # against one call on everything: within the batch-composition bound
    assert np.abs(emb - ectx.get_embeddings_batch(texts120)).max() <= BATCH_ATOL


def test_stdin_lines(ectx, texts120, ref120, tmp_path, monkeypatch):
    data = "".join(t + "\r\n" for t in texts120).encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    out = tmp_path / "out.npy"
    jobs.embed_file(ectx, "-", out, chunk_rows=32)
    assert np.array_equal(np.load(out), ref120)

    # interrupted, a stdin job leaves nothing behind: it cannot be resumed
    def stop(done, total):
        if done >= 64:
            raise KeyboardInterrupt

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    with pytest.raises(KeyboardInterrupt):
        jobs.embed_file(ectx, "-", tmp_path / "b.npy", chunk_rows=32, progress=stop)
    assert not (tmp_path / "b.npy").exists() and not (tmp_path / "b.npy.partial").exists()
    with pytest.raises(ValueError, match="stdin"):
        jobs.count_rows("-")

    # the folder of a stdin job killed outright (here: left behind on purpose) is refused
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    monkeypatch.setattr(_run, "discard", lambda *a, **k: None)
    with pytest.raises(KeyboardInterrupt):
        jobs.embed_file(ectx, "-", tmp_path / "c.npy", chunk_rows=32, progress=stop)
    monkeypatch.undo()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    with pytest.raises(jobs.JobResumeError, match="read stdin, which cannot be resumed"):
        jobs.embed_file(ectx, "-", tmp_path / "c.npy", chunk_rows=32)
    jobs.embed_file(ectx, "-", tmp_path / "c.npy", chunk_rows=32, resume=False)
    assert np.array_equal(np.load(tmp_path / "c.npy"), ref120)


def test_every_output_format(ectx, texts120, ref120, tmp_path):
    src = write_input(tmp_path / "in.parquet", texts120)
    for suffix in (".parquet", ".npy", ".jsonl"):
        out = tmp_path / f"out{suffix}"
        jobs.embed_file(ectx, src, out, chunk_rows=32)
        rows, emb = read_output(out)
        assert rows == list(range(120)) and emb.dtype == np.float32
        assert np.array_equal(emb, ref120), suffix
    schema = pq.read_schema(tmp_path / "out.parquet")
    assert schema.names == ["row", "embedding"]
    assert schema.field("row").type == pa.int64()
    assert schema.field("embedding").type == pa.list_(pa.float32(), 384)
    assert pq.ParquetFile(tmp_path / "out.parquet").metadata.num_row_groups == 4   # one per chunk
    npy = np.load(tmp_path / "out.npy", mmap_mode="r")
    assert npy.shape == (120, 384) and npy.flags.c_contiguous
    with pytest.raises(ValueError, match="output format"):
        jobs.embed_file(ectx, src, tmp_path / "out.csv")


def test_empty_input(ectx, tmp_path):
    src = write_input(tmp_path / "in.txt", [])
    for suffix in (".parquet", ".npy", ".jsonl"):
        r = jobs.embed_file(ectx, src, tmp_path / f"out{suffix}")
        assert r.rows == 0
    assert np.load(tmp_path / "out.npy").shape == (0, 384)
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 0
    assert (tmp_path / "out.jsonl").read_text() == ""


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".csv"])
def test_id_column_kept(ectx, texts120, ref120, tmp_path, suffix):
    ids = [1000 + 3 * k for k in range(120)]
    src = write_input(tmp_path / f"in{suffix}", texts120, ids=ids)
    for out in (tmp_path / "out.parquet", tmp_path / "out.jsonl"):
        jobs.embed_file(ectx, src, out, id_column="id", chunk_rows=32)
        keys, emb = read_output(out, key="id")
        # CSV values are read as written: its ids stay strings
        assert keys == ([str(i) for i in ids] if suffix == ".csv" else ids)
        assert np.array_equal(emb, ref120)
    assert pq.read_schema(tmp_path / "out.parquet").names == ["id", "embedding"]
    if suffix != ".jsonl":                      # a JSONL object without the key reads as null
        with pytest.raises(ValueError, match="no column 'nope'"):
            jobs.embed_file(ectx, src, tmp_path / "x.parquet", id_column="nope")


def test_nulls_policy(ectx, tmp_path):
    texts = make_texts(40)
    texts[5] = None
    texts[33] = None
    for suffix in (".parquet", ".jsonl"):
        src = write_input(tmp_path / f"in{suffix}", texts)
        with pytest.raises(TypeError, match="row 5 "):
            jobs.embed_file(ectx, src, tmp_path / f"r{suffix}.npy", chunk_rows=16)
        assert not (tmp_path / f"r{suffix}.npy").exists()
        jobs.embed_file(ectx, src, tmp_path / f"e{suffix}.npy", chunk_rows=16, nulls="empty", resume=False)
        filled = ["" if t is None else t for t in texts]
        assert np.array_equal(np.load(tmp_path / f"e{suffix}.npy"), chunked(ectx, filled, 16))
        out = tmp_path / f"s{suffix}.parquet"
        jobs.embed_file(ectx, src, out, chunk_rows=16, nulls="skip")
        rows, emb = read_output(out)
        assert rows == [k for k in range(40) if texts[k] is not None]
        kept = [[t for t in texts[i:i + 16] if t is not None] for i in range(0, 40, 16)]
        assert np.array_equal(emb, np.concatenate([ectx.get_embeddings_batch(c) for c in kept]))
    with pytest.raises(ValueError, match="skip"):
        jobs.embed_file(ectx, src, tmp_path / "s.npy", nulls="skip")
    bad = write_input(tmp_path / "bad.jsonl", ["a", 7, "b"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="row 1 is a int"):
        jobs.embed_file(ectx, bad, tmp_path / "bad.npy")
    ints = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), ints)
    with pytest.raises(TypeError, match="not strings"):
        jobs.embed_file(ectx, ints, tmp_path / "ints.npy")


def test_read_table_batches_streams_exact_batches(tmp_path):
    texts = make_texts(100)
    src = write_input(tmp_path / "in.parquet", texts, ids=list(range(100)))
    batches = list(jobs.read_table_batches(src, "text", id_column="id", batch_rows=30))
    assert [(b.start, len(b)) for b in batches] == [(0, 30), (30, 30), (60, 30), (90, 10)]
    assert [t for b in batches for t in b.texts.to_pylist()] == texts
    assert batches[1].ids.to_pylist() == list(range(30, 60))
    # resuming skips whole row groups unread and slices into the first one it needs
    tail = list(_read.batches(src, "parquet", "text", None, 30, 60))
    assert [(b.start, len(b)) for b in tail] == [(60, 30), (90, 10)]
    assert tail[0].texts.to_pylist() == texts[60:90]
    txt = write_input(tmp_path / "in.txt", texts)
    assert [b.texts for b in jobs.read_table_batches(txt, "text", batch_rows=64)] == [texts[:64], texts[64:]]
    with pytest.raises(ValueError, match="no columns"):
        list(jobs.read_table_batches(txt, "text", id_column="id"))
    odd = tmp_path / "odd.txt"
    odd.write_bytes(b"\xef\xbb\xbfa\r\n\nb")                   # BOM, CRLF, an empty row, no last newline
    assert [b.texts for b in jobs.read_table_batches(odd, "text")] == [["a", "", "b"]]
    assert jobs.count_rows(odd) == 3
    odd.write_bytes(b"fine\nbad \xff\n")
    with pytest.raises(ValueError, match="row 1 is not valid UTF-8"):
        list(jobs.read_table_batches(odd, "text"))
    with pytest.raises(ValueError, match="unknown input format"):
        list(jobs.read_table_batches(tmp_path / "in.xlsx", "text"))


def test_progress(ectx, texts120, tmp_path, monkeypatch):
    src = write_input(tmp_path / "in.parquet", texts120)
    seen: list[tuple[int, int | None]] = []
    jobs.embed_file(ectx, src, tmp_path / "out.npy", chunk_rows=32,
                    progress=lambda done, total: seen.append((done, total)))
    assert seen[0] == (0, 120) and seen[-1] == (120, 120)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert len(seen) > 5                        # within chunks too, not only between them
    pytest.importorskip("tqdm")
    jobs.embed_file(ectx, src, tmp_path / "bar.npy", chunk_rows=64, progress=True)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.raises(ImportError, match=r"llama_cython\[progress\]"):
        jobs.embed_file(ectx, src, tmp_path / "bar2.npy", progress=True)


def test_without_pyarrow_the_error_names_the_extra(ectx, tmp_path, monkeypatch):
    src = write_input(tmp_path / "in.txt", ["a", "b"])
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match=r"llama_cython\[arrow\]"):
        jobs.embed_file(ectx, src, tmp_path / "out.parquet")
    jobs.embed_file(ectx, src, tmp_path / "out.npy")          # .npy and .jsonl need no pyarrow
    jobs.count_file(ectx.model, src, tmp_path / "out.jsonl")


# -- refusals -----------------------------------------------------------------------------------


def interrupted(ctx, src: Path, out: Path, after: int, **kw) -> None:
    """Run embed_file and stop it with Ctrl-C once ``after`` rows are done."""
    def stop(done, total):
        if done >= after:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        jobs.embed_file(ctx, src, out, progress=stop, **kw)


def test_ctrl_c_keeps_finished_chunks_and_resumes(ectx, texts120, ref120, tmp_path):
    src = write_input(tmp_path / "in.jsonl", texts120)
    out = tmp_path / "out.parquet"
    interrupted(ectx, src, out, 70, chunk_rows=32)
    assert not out.exists()
    manifest = json.loads((tmp_path / "out.parquet.partial" / "manifest.json").read_text())
    assert [c["input_rows"] for c in manifest["chunks"]] == [32, 32]
    r = jobs.embed_file(ectx, src, out, chunk_rows=32)
    assert (r.chunks_resumed, r.chunks_written, r.rows) == (2, 2, 120)
    rows, emb = read_output(out)
    assert rows == list(range(120)) and np.array_equal(emb, ref120)


def test_changed_settings_are_refused(ectx, minilm, texts120, tmp_path):
    src = write_input(tmp_path / "in.txt", texts120)
    out = tmp_path / "out.npy"
    interrupted(ectx, src, out, 40, chunk_rows=32)
    with pytest.raises(jobs.JobResumeError, match=r"chunk_rows: 32 -> 16.*delete .*out\.npy\.partial"):
        jobs.embed_file(ectx, src, out, chunk_rows=16)
    with pytest.raises(jobs.JobResumeError, match="normalize: True -> False"):
        jobs.embed_file(ectx, src, out, chunk_rows=32, normalize=False)
    with minilm.new_context(embeddings=True, n_threads=1, pooling="cls") as other:
        with pytest.raises(jobs.JobResumeError, match="pooling"):
            jobs.embed_file(other, src, out, chunk_rows=32)
    with open(src, "a", encoding="utf-8") as f:
        f.write("one more row\n")
    with pytest.raises(jobs.JobResumeError, match=r"input\.size"):
        jobs.embed_file(ectx, src, out, chunk_rows=32)
    # resume=False discards the unfinished job and starts over
    r = jobs.embed_file(ectx, src, out, chunk_rows=16, resume=False)
    assert (r.rows, r.chunks_resumed) == (121, 0)
    assert np.array_equal(np.load(out), chunked(ectx, [*texts120, "one more row"], 16))


def test_existing_output_is_refused(ectx, tmp_path):
    src = write_input(tmp_path / "in.txt", ["a", "b", "c"])
    out = tmp_path / "out.jsonl"
    out.write_text("precious\n")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        jobs.embed_file(ectx, src, out)
    assert out.read_text() == "precious\n"
    jobs.embed_file(ectx, src, out, overwrite=True)
    assert len(out.read_text().splitlines()) == 3
    with pytest.raises(FileExistsError):           # a finished job run again
        jobs.embed_file(ectx, src, out)


def test_context_options_and_the_model_are_recorded(ectx, minilm, texts120, tmp_path, monkeypatch):
    """The manifest holds the context's options (not its thread counts) and the model's own
    absolute path, load options and token; resuming with another n_ubatch is refused naming
    it, with another thread count it resumes."""
    src = write_input(tmp_path / "in.txt", texts120)
    out = tmp_path / "out.npy"
    interrupted(ectx, src, out, 40, chunk_rows=32)
    manifest = json.loads((tmp_path / "out.npy.partial" / "manifest.json").read_text())
    assert manifest["context"]["n_ubatch"] is None and manifest["context"]["embeddings"] is True
    assert "n_threads" not in manifest["context"] and "n_threads_batch" not in manifest["context"]
    assert manifest["model"]["path"] == str(llama.models.model_path("all-minilm-l6-v2").resolve())
    assert manifest["model"]["load_options"] == json.loads(json.dumps(minilm.load_options))
    assert manifest["model"]["token"] == json.loads(json.dumps(minilm.__dask_tokenize__()))
    with minilm.new_context(embeddings=True, n_threads=1, n_ubatch=256) as other:
        with pytest.raises(jobs.JobResumeError, match=r"context\.n_ubatch: None -> 256"):
            jobs.embed_file(other, src, out, chunk_rows=32)
    with minilm.new_context(embeddings=True, n_threads=2) as other:
        r = jobs.embed_file(other, src, out, chunk_rows=32)
    assert (r.chunks_resumed, r.rows) == (1, 120)

    # a model loaded by a relative path is recorded by its own absolute path, not by that
    # path resolved against the job's working directory
    path = llama.models.model_path("all-minilm-l6-v2")
    monkeypatch.chdir(path.parent)
    with llama.load_model(path.name) as model, model.new_context(embeddings=True, n_threads=1) as ctx:
        monkeypatch.chdir(tmp_path)
        interrupted(ctx, src, tmp_path / "rel.npy", 40, chunk_rows=32)
    manifest = json.loads((tmp_path / "rel.npy.partial" / "manifest.json").read_text())
    assert manifest["model"]["path"] == os.path.abspath(path)


def test_a_second_run_of_the_same_job_is_refused(ectx, texts120, ref120, tmp_path):
    """A run holds an exclusive flock on <output>.lock: while another holder has it (here this
    process, through another open file), the job is refused before it touches anything."""
    src = write_input(tmp_path / "in.txt", texts120)
    out = tmp_path / "out.npy"
    lock = tmp_path / "out.npy.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(jobs.JobResumeError,
                           match=r"another process is running this job \(lock .*out\.npy\.lock\)"):
            jobs.embed_file(ectx, src, out, chunk_rows=32)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.npy.lock"]
    finally:
        os.close(fd)
    # the lock is held for the whole run (here: checked from inside it), and the file removed
    held = []

    def probe(done, total):
        other = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held.append(False)
        except BlockingIOError:
            held.append(True)
        finally:
            os.close(other)

    jobs.embed_file(ectx, src, out, chunk_rows=32, progress=probe)
    assert held and all(held)
    assert np.array_equal(np.load(out), ref120)
    assert not lock.exists()
    # a lock file left by a killed run (a file, no lock) does not stop the next one
    lock.touch()
    jobs.embed_file(ectx, src, out, chunk_rows=32, overwrite=True)
    assert not lock.exists()


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_a_wrong_column_leaves_nothing_behind(ectx, texts120, ref120, tmp_path, suffix):
    """A missing column is refused before the working folder exists, so the corrected command
    runs (it used to find the first one's manifest and refuse the other column)."""
    src = write_input(tmp_path / f"in{suffix}", texts120, ids=list(range(120)))
    out = tmp_path / "out.npy"
    with pytest.raises(ValueError, match="no column 'body'"):
        jobs.embed_file(ectx, src, out, column="body", chunk_rows=32)
    if suffix != ".jsonl":                      # a JSONL object without the id reads as null
        with pytest.raises(ValueError, match="no column 'key'"):
            jobs.embed_file(ectx, src, out, id_column="key", chunk_rows=32)
    with pytest.raises(ValueError, match="no column 'body'"):
        jobs.count_file(ectx.model, src, tmp_path / "n.jsonl", column="body")
    with pytest.raises(ValueError, match="no column 'body'"):
        jobs.count_file(ectx.model, src, column="body")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"in{suffix}"]
    jobs.embed_file(ectx, src, out, chunk_rows=32)
    assert np.array_equal(np.load(out), ref120)


def test_a_job_that_failed_before_its_first_chunk_starts_over(ectx, tmp_path):
    """An error in the first chunk leaves a manifest without chunks: the next run, with other
    settings, starts over instead of refusing them."""
    texts = make_texts(40)
    texts[3] = None
    src = write_input(tmp_path / "in.jsonl", texts)
    out = tmp_path / "out.npy"
    with pytest.raises(TypeError, match="row 3 is missing"):
        jobs.embed_file(ectx, src, out, chunk_rows=16)
    manifest = json.loads((tmp_path / "out.npy.partial" / "manifest.json").read_text())
    assert manifest["chunks"] == [] and manifest["options"]["nulls"] == "raise"
    r = jobs.embed_file(ectx, src, out, chunk_rows=16, nulls="empty")
    assert (r.rows, r.chunks_resumed, r.chunks_written) == (40, 0, 3)
    filled = ["" if t is None else t for t in texts]
    assert np.array_equal(np.load(out), chunked(ectx, filled, 16))


def test_errors_name_the_file_row_after_skipped_nulls(ectx, tmp_path):
    """With nulls='skip' a chunk's texts are the rows that are not null: an error about
    texts[k] names the k-th of those rows, not row start + k."""
    src = write_input(tmp_path / "in.jsonl", ["a", None, "b", "\ud800 bad", "c"])
    with pytest.raises(ValueError, match=r"in\.jsonl: row 3 is not valid text"):
        jobs.embed_file(ectx, src, tmp_path / "out.parquet", nulls="skip")
    with pytest.raises(ValueError, match=r"in\.jsonl: row 3 is not valid text"):
        jobs.count_file(ectx.model, src, tmp_path / "n.jsonl", nulls="skip")
    with pytest.raises(ValueError, match=r"in\.jsonl: row 3 is not valid text"):
        jobs.count_file(ectx.model, src, nulls="skip")
    # the second chunk (rows 2-4 of the file) starts after a null too
    src = write_input(tmp_path / "in2.jsonl", ["a", "b", None, None, "\ud800"])
    with pytest.raises(ValueError, match=r"row 4 is not valid text"):
        jobs.embed_file(ectx, src, tmp_path / "out2.parquet", nulls="skip", chunk_rows=2)


def test_option_errors_are_option_errors_or_type_errors(ectx, texts120, ref120, tmp_path):
    """As in the core: a bad value is an OptionError (a ValueError), a wrong type a TypeError;
    numpy integers are ints."""
    src = write_input(tmp_path / "in.txt", texts120)
    out = tmp_path / "out.npy"
    for kwargs, error, match in [
            ({"chunk_rows": 0}, llama.OptionError, "chunk_rows must be a positive int"),
            ({"chunk_rows": "16"}, TypeError, "chunk_rows must be an int, got str"),
            ({"chunk_rows": True}, TypeError, "chunk_rows must be an int, got bool"),
            ({"chunk_rows": 16.0}, TypeError, "chunk_rows must be an int, got float"),
            ({"nulls": "drop"}, llama.OptionError, "nulls must be"),
            ({"nulls": None}, TypeError, "nulls must be"),
            ({"id_column": 3}, TypeError, "id_column must be a str"),
            ({"id_column": "embedding"}, llama.OptionError, "would clash"),
            ({"nulls": "skip"}, llama.OptionError, "nulls='skip' with a .npy output")]:
        with pytest.raises(error, match=match):
            jobs.embed_file(ectx, src, out, **kwargs)
    with pytest.raises(llama.OptionError, match="output format"):
        jobs.embed_file(ectx, src, tmp_path / "out.csv")
    with pytest.raises(llama.OptionError, match="unknown input format"):
        jobs.embed_file(ectx, tmp_path / "in.xlsx", out)
    with pytest.raises(TypeError, match="batch_rows must be an int"):
        jobs.read_table_batches(src, "text", batch_rows=2.5)
    assert not list(tmp_path.glob("out.*"))
    r = jobs.embed_file(ectx, src, out, chunk_rows=np.int64(32))
    assert r.chunks_written == 4 and np.array_equal(np.load(out), ref120)
    assert [len(b) for b in jobs.read_table_batches(src, "text", batch_rows=np.int32(50))] == [50, 50, 20]
    # JobResumeError is one of the package's errors
    assert jobs.JobResumeError is llama.JobResumeError is llama.errors.JobResumeError
    assert issubclass(jobs.JobResumeError, llama.LlamaError) and issubclass(jobs.JobResumeError, ValueError)


def test_undecodable_and_malformed_inputs_name_the_file_and_line(ectx, tmp_path):
    bad_csv = tmp_path / "in.csv"
    bad_csv.write_bytes(b"text\nfine\nbad \xff here\nlast\n")
    for call in (lambda: jobs.embed_file(ectx, bad_csv, tmp_path / "o.npy"),
                 lambda: jobs.count_rows(bad_csv)):
        with pytest.raises(ValueError,
                           match=r"in\.csv: line 3 is not valid UTF-8 \(invalid start byte at byte 4\)"):
            call()
    bad_jsonl = tmp_path / "in.jsonl"
    bad_jsonl.write_bytes(b'{"text": "a"}\n{"text": "b\xff"}\n')
    with pytest.raises(ValueError, match=r"in\.jsonl: line 2 is not valid UTF-8"):
        jobs.embed_file(ectx, bad_jsonl, tmp_path / "o.npy")
    # a record the csv module refuses (here: a field over the limit, lowered for the test)
    long_csv = tmp_path / "long.csv"
    long_csv.write_text("text\nshort\n" + "x" * 200 + "\n", encoding="utf-8")
    real = csv.field_size_limit
    old = real(100)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(csv, "field_size_limit", lambda *a: 1 << 30)
            with pytest.raises(ValueError, match=r"long\.csv: line 3 is not valid CSV \(field larger"):
                list(jobs.read_table_batches(long_csv, "text"))
    finally:
        real(old)
    # not a Parquet file: pyarrow's error, naming the file
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    with pytest.raises(pa.ArrowInvalid, match=r"junk\.parquet: .*magic bytes"):
        jobs.embed_file(ectx, junk, tmp_path / "j.npy")
    assert not list(tmp_path.glob("j.npy*"))              # refused before anything was made


# -- SIGKILL and resume --------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import json, sys
    import llama_cython as llama
    from llama_cython import jobs
    from llama_cython.jobs import _files
    kind, src, out, opts = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    if kind == "embed":
        model = llama.load_model(llama.models.model_path("all-minilm-l6-v2"))
        ctx = model.new_context(embeddings=True, n_threads=1)
        r = jobs.embed_file(ctx, src, out, **opts)
    else:
        model = llama.load_model(llama.models.model_path("smollm2-135m-instruct"))
        ctx = model.new_context(n_ctx=2048, n_parallel=8, n_threads=1)
        r = jobs.generate_file(ctx, src, out, **opts)
    print(json.dumps({"kill_points": _files.points_hit, "resumed": r.chunks_resumed}))
""")


def child(kind: str, src: Path, out: Path, opts: dict, kill_at: int | None) -> dict | None:
    """Run a job in a child process; None when it died of SIGKILL at kill point ``kill_at``."""
    import os

    env = dict(os.environ)
    env.pop(_files.KILL_ENV, None)
    if kill_at is not None:
        env[_files.KILL_ENV] = str(kill_at)
    proc = subprocess.run([sys.executable, "-c", CHILD, kind, str(src), str(out), json.dumps(opts)],
                          capture_output=True, text=True, env=env, timeout=300)
    if proc.returncode == -signal.SIGKILL:
        return None
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def finish(ctx, src: Path, out: Path, opts: dict, fn=jobs.embed_file) -> jobs.JobResult:
    """Run the job again, in this process, without the hook (as a user would after a crash)."""
    r = fn(ctx, src, out, **opts)
    assert r.output == out and r.chunks_written + r.chunks_resumed <= 3
    return r


@pytest.fixture(scope="module")
def kill_job(ectx, tmp_path_factory):
    """A small job (3 chunks) and its uninterrupted result."""
    d = tmp_path_factory.mktemp("kill")
    texts = make_texts(70, seed=1)
    src = write_input(d / "in.parquet", texts, ids=[f"doc-{k}" for k in range(70)])
    opts = {"id_column": "id", "chunk_rows": 24}
    done = child("embed", src, d / "full.parquet", opts, None)
    assert done is not None and done["resumed"] == 0
    keys, emb = read_output(d / "full.parquet", key="id")
    assert keys == [f"doc-{k}" for k in range(70)]
    assert np.array_equal(emb, chunked(ectx, texts, 24))      # child == parent, bit for bit
    return src, opts, done["kill_points"], (keys, emb)


@pytest.mark.parametrize("seed", range(5))
def test_sigkill_at_random_points_then_resume(ectx, kill_job, tmp_path, seed):
    """Killed up to three times at random kill points, each run resuming the last; the final
    output equals the uninterrupted one."""
    src, opts, n_points, full = kill_job
    rng = random.Random(seed)
    out = tmp_path / "out.parquet"

    def leftovers() -> list[Path]:       # the working folder, a trash folder, the lock file
        return [p for p in tmp_path.iterdir() if p != out]

    assert child("embed", src, out, opts, rng.randint(1, n_points)) is None
    for _ in range(2):                  # killed again while resuming, maybe
        if out.exists() and not leftovers():
            break
        child("embed", src, out, opts, rng.randint(1, n_points))
    if not out.exists() or leftovers():
        finish(ectx, src, out, opts)
    keys, emb = read_output(out, key="id")
    assert keys == full[0] and np.array_equal(emb, full[1])
    assert list(tmp_path.iterdir()) == [out]


def test_sigkill_at_every_kill_point_then_resume(ectx, tmp_path):
    texts = make_texts(30, seed=2)
    src = write_input(tmp_path / "in.jsonl", texts)
    opts = {"chunk_rows": 16}
    ref = chunked(ectx, texts, 16)
    first = child("embed", src, tmp_path / "ref.npy", opts, None)
    assert first is not None
    n_points = first["kill_points"]
    assert n_points >= 15, n_points
    for k in range(1, n_points + 1):
        out = tmp_path / f"out{k}.npy"
        assert child("embed", src, out, opts, k) is None, k
        finish(ectx, src, out, opts)
        assert np.array_equal(np.load(out), ref), k
        assert not list(tmp_path.glob(out.name + ".*")), k        # no folder, trash or lock left
    assert child("embed", src, tmp_path / "over.npy", opts, n_points + 1) is not None


def test_a_discard_killed_midway_never_yields_a_stale_output(ectx, tmp_path):
    """resume=False discards the unfinished job in one step (renamed to a trash folder, then
    deleted): killed at any point of that, the next run computes the new output. (The old
    removal left a folder without a manifest, read as "finished": the rerun returned the output
    of the job before.)"""
    old_texts, new_texts = make_texts(30, seed=4), make_texts(40, seed=5)
    src = tmp_path / "in.txt"
    opts = {"chunk_rows": 16, "resume": False, "overwrite": True}
    for k in (1, 2):                  # after the rename to trash; while making the new folder
        out = tmp_path / f"out{k}.npy"
        write_input(src, old_texts)
        jobs.embed_file(ectx, src, out, chunk_rows=16)               # a finished, older output
        write_input(src, new_texts)
        interrupted(ectx, src, out, 20, chunk_rows=16, overwrite=True)   # an unfinished new one
        assert child("embed", src, out, opts, k) is None
        assert list(tmp_path.glob(f"out{k}.npy.partial.trash-*")) or k != 1
        r = jobs.embed_file(ectx, src, out, chunk_rows=16, overwrite=True)
        assert r.rows == 40 and r.chunks_resumed == 0, k
        assert np.array_equal(np.load(out), chunked(ectx, new_texts, 16)), k
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(f"out{k}.")) == [f"out{k}.npy"]


def test_a_finished_job_is_trusted_only_by_its_identity(ectx, texts120, tmp_path):
    """Killed after the manifest says "done" (output in place, folder not yet removed): the same
    job run again returns the output; another job with overwrite=True computes its own."""
    src = write_input(tmp_path / "in.txt", texts120[:40])
    opts = {"chunk_rows": 16}
    full = child("embed", src, tmp_path / "ref.npy", opts, None)
    assert full is not None
    out = tmp_path / "out.npy"
    # the last two kill points: after "done" is written, after the folder is renamed to trash
    for k, leftover in ((full["kill_points"] - 1, "out.npy.partial"),
                        (full["kill_points"], "out.npy.partial.trash-")):
        out.unlink(missing_ok=True)
        assert child("embed", src, out, opts, k) is None
        names = [p.name for p in tmp_path.iterdir() if p.name.startswith("out.npy.")]
        assert any(n.startswith(leftover) for n in names), (k, names)
        if leftover == "out.npy.partial":
            assert json.loads((tmp_path / leftover / "manifest.json").read_text())["state"] == "done"
        r = jobs.embed_file(ectx, src, out, **opts)
        assert (r.rows, r.chunks_written, r.chunks_resumed) == (40, 0, 3), k
        assert np.array_equal(np.load(out), np.load(tmp_path / "ref.npy"))
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.npy", "ref.npy"]
    # killed after "done" again, then another job (normalize=False) into the same output
    out.unlink()
    assert child("embed", src, out, opts, full["kill_points"] - 1) is None
    with pytest.raises(FileExistsError):
        jobs.embed_file(ectx, src, out, chunk_rows=16, normalize=False)
    r = jobs.embed_file(ectx, src, out, chunk_rows=16, normalize=False, overwrite=True)
    assert (r.chunks_written, r.chunks_resumed) == (3, 0)
    raw = np.concatenate([ectx.get_embeddings_batch(texts120[i:min(i + 16, 40)], normalize=False)
                          for i in range(0, 40, 16)])
    assert np.array_equal(np.load(out), raw)


def test_a_done_stdin_job_is_not_trusted(ectx, texts120, tmp_path, monkeypatch):
    """A "done" manifest left by a crash is trusted for a file input (same identity) but never
    for stdin, whose content a rerun cannot check."""
    data = "".join(t + "\n" for t in texts120[:40]).encode()
    out = tmp_path / "out.npy"
    with monkeypatch.context() as mp:                    # the folder stays, as after a crash
        mp.setattr(_run, "discard", lambda *a, **k: None)
        mp.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        jobs.embed_file(ectx, "-", out, chunk_rows=16)
    manifest = json.loads((tmp_path / "out.npy.partial" / "manifest.json").read_text())
    assert manifest["state"] == "done"
    other = make_texts(40, seed=9)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("".join(t + "\n" for t in other).encode())))
    with pytest.raises(FileExistsError):
        jobs.embed_file(ectx, "-", out, chunk_rows=16)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("".join(t + "\n" for t in other).encode())))
    r = jobs.embed_file(ectx, "-", out, chunk_rows=16, overwrite=True)
    assert (r.chunks_written, r.chunks_resumed) == (3, 0)
    assert np.array_equal(np.load(out), chunked(ectx, other, 16))
    # the same with a file input: the finished output is returned, not computed again
    src = write_input(tmp_path / "in.txt", texts120[:40])
    with monkeypatch.context() as mp:
        mp.setattr(_run, "discard", lambda *a, **k: None)
        jobs.embed_file(ectx, src, tmp_path / "f.npy", chunk_rows=16)
    r = jobs.embed_file(ectx, src, tmp_path / "f.npy", chunk_rows=16)
    assert (r.rows, r.chunks_written, r.chunks_resumed) == (40, 0, 3)
    assert not (tmp_path / "f.npy.partial").exists()


# -- generation ---------------------------------------------------------------------------------

PROMPTS = [f"Question {i}: name a {w}." for i, w in enumerate(WORDS)]           # chunks: 8, 8, 4
GEN = {"chunk_rows": 8, "max_tokens": 4, "temperature": 0}


@pytest.fixture(scope="module")
def gen_ref(gctx) -> tuple[list[str], list[str], list[int]]:
    texts, reasons, tokens = [], [], []
    for i in range(0, len(PROMPTS), 8):
        texts += gctx.generate_batch(PROMPTS[i:i + 8], max_tokens=4, temperature=0)
        reasons += gctx.last_batch_stats.finish_reasons
        tokens += gctx.last_batch_stats.completion_tokens.tolist()
    return texts, reasons, tokens


def test_generate_file(gctx, gen_ref, tmp_path):
    src = write_input(tmp_path / "in.parquet", PROMPTS, ids=list(range(50, 50 + len(PROMPTS))),
                      column="prompt")
    r = jobs.generate_file(gctx, src, tmp_path / "out.parquet", id_column="id", **GEN)
    assert r.rows == len(PROMPTS) and r.chunks_written == 3
    t = pq.read_table(tmp_path / "out.parquet")
    assert t.schema.names == ["id", "text", "finish_reason", "tokens"]
    assert t.schema.field("tokens").type == pa.int32()
    assert t.column("id").to_pylist() == list(range(50, 50 + len(PROMPTS)))
    assert (t.column("text").to_pylist(), t.column("finish_reason").to_pylist(),
            t.column("tokens").to_pylist()) == gen_ref
    jobs.generate_file(gctx, src, tmp_path / "out.jsonl", **GEN)
    recs = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["row"] for r in recs] == list(range(len(PROMPTS)))
    assert [r["text"] for r in recs] == gen_ref[0]

    def stop(done, total):
        if done > 8:                    # in the second chunk: the first is kept
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        jobs.generate_file(gctx, src, tmp_path / "g.jsonl", progress=stop, **GEN)
    with pytest.raises(jobs.JobResumeError, match="max_tokens: 4 -> 7"):
        jobs.generate_file(gctx, src, tmp_path / "g.jsonl", **{**GEN, "max_tokens": 7})
    with pytest.raises(jobs.JobResumeError, match=r"sampling\.temperature"):
        jobs.generate_file(gctx, src, tmp_path / "g.jsonl", **{**GEN, "temperature": 0.5})
    with pytest.raises(ValueError, match="output format"):
        jobs.generate_file(gctx, src, tmp_path / "out.npy")


def test_generate_file_sigkill_then_resume(gctx, gen_ref, tmp_path):
    src = write_input(tmp_path / "in.txt", PROMPTS)
    out = tmp_path / "out.jsonl"
    rng = random.Random(7)
    # kill points 1-5 are the start and the first chunk: die in the second or third chunk
    assert child("gen", src, out, GEN, rng.randint(6, 13)) is None
    assert finish(gctx, src, out, GEN, fn=jobs.generate_file).chunks_resumed >= 1
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["row"] for r in recs] == list(range(len(PROMPTS)))
    assert ([r["text"] for r in recs], [r["finish_reason"] for r in recs],
            [r["tokens"] for r in recs]) == gen_ref


# -- counting -----------------------------------------------------------------------------------


def test_count_file(minilm, tmp_path, capfd):
    texts = make_texts(300)
    expected = minilm.count_tokens(texts).tolist()
    src = write_input(tmp_path / "in.parquet", texts, ids=[f"k{i}" for i in range(300)])
    r = jobs.count_file(minilm, src, tmp_path / "n.parquet", id_column="id", chunk_rows=128)
    assert (r.rows, r.chunks_written, r.tokens) == (300, 3, sum(expected))
    t = pq.read_table(tmp_path / "n.parquet")
    assert t.schema.names == ["id", "n_tokens"] and t.schema.field("n_tokens").type == pa.int32()
    assert t.column("n_tokens").to_pylist() == expected
    jobs.count_file(minilm, src, tmp_path / "n.jsonl", add_special=False)
    recs = [json.loads(line) for line in (tmp_path / "n.jsonl").read_text().splitlines()]
    assert [r["n_tokens"] for r in recs] == minilm.count_tokens(texts, add_special=False).tolist()
    assert jobs.count_file(minilm, src).tokens == sum(expected)            # no per-row output
    capfd.readouterr()
    jobs.count_file(minilm, src, "-", chunk_rows=100)
    lines = capfd.readouterr().out.splitlines()
    assert [json.loads(line)["n_tokens"] for line in lines] == expected
    with pytest.raises(FileExistsError):
        jobs.count_file(minilm, src, tmp_path / "n.jsonl")


# Peak RSS of the child from /proc (VmHWM), reset before each measured job: getrusage's ru_maxrss
# starts at the parent's RSS at fork (a pytest process holding models), and RUSAGE_CHILDREN mixes
# in every earlier child.
MEMORY_CHILD = textwrap.dedent("""
    import json, re, sys, tracemalloc
    import llama_cython as llama
    from llama_cython import jobs

    def status(key):
        text = open("/proc/self/status").read()
        return int(re.search(key + r":\\s+(\\d+) kB", text).group(1)) / 1024

    def reset_peak():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                    # VmHWM := VmRSS (Linux >= 4.0)
        return status("VmRSS")

    kind, folder = sys.argv[1], sys.argv[2]
    model = llama.load_model(llama.models.model_path("all-minilm-l6-v2"))
    report = {}
    if kind == "count":
        jobs.count_file(model, folder + "/tiny.txt", folder + "/tiny.parquet")   # warm up
        report["baseline"] = reset_peak()
        r = jobs.count_file(model, folder + "/in.txt", folder + "/out.parquet")
        report.update(rows=r.rows, tokens=r.tokens, peak=status("VmHWM"))
    else:
        ctx = model.new_context(embeddings=True, n_threads=1)
        jobs.embed_file(ctx, folder + "/warm.txt", folder + "/warm.npy", chunk_rows=128)
        report["baseline"] = status("VmRSS")
        for name in ("small", "large"):
            reset_peak()
            tracemalloc.start()
            jobs.embed_file(ctx, folder + f"/{name}.txt", folder + f"/{name}.npy", chunk_rows=128)
            report[name + "_traced"] = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
            report[name] = status("VmHWM")
    print(json.dumps(report))
""")


def memory_child(kind: str, folder: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", MEMORY_CHILD, kind, str(folder)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    print(kind, report)
    return report


def test_count_file_million_rows_bounded_rss(tmp_path):
    """1,000,000 short rows (chunks of 65,536): peak RSS stays within 600 MB of the process
    before the job. Measured: about +70 MB, the same with 250,000 rows; the bound is generous
    (the input as Python strings alone is ~70 MB, its token ids ~25 MB)."""
    n = 1_000_000
    with open(tmp_path / "in.txt", "w", encoding="utf-8") as f:
        for start in range(0, n, 100_000):
            f.write("".join(f"{WORDS[i % 20]} {i}\n" for i in range(start, start + 100_000)))
    (tmp_path / "tiny.txt").write_text("a b\nc\n", encoding="utf-8")
    report = memory_child("count", tmp_path)
    assert report["rows"] == n
    assert pq.ParquetFile(tmp_path / "out.parquet").metadata.num_rows == n
    assert report["peak"] - report["baseline"] < 600, report


def test_embed_file_memory_does_not_grow_with_rows(tmp_path):
    """Embedding 400 and then 1,600 rows (chunks of 128, after a warm-up job of two chunks): the
    peak of Python-visible memory is the same for both, and the larger job's peak RSS exceeds the
    smaller one's by less than its output would take."""
    rng = random.Random(3)
    for name, n in (("warm", 256), ("small", 400), ("large", 1600)):
        (tmp_path / f"{name}.txt").write_text(
            "".join(" ".join(rng.choice(WORDS) for _ in range(2)) + "\n" for _ in range(n)),
            encoding="utf-8")
    report = memory_child("embed", tmp_path)
    assert np.load(tmp_path / "large.npy", mmap_mode="r").shape == (1600, 384)
    # what the large job would hold if it kept its output: 1,600 x 384 float32 = 2.3 MB (and
    # its texts as Python strings another 0.1 MB)
    assert report["large_traced"] - report["small_traced"] < 0.5, report
    assert report["large_traced"] < 2.3, report
    assert report["large"] - report["small"] < 2.3, report     # peak RSS of each job
