"""Resumable, bounded file jobs (llama_cython.jobs): every input and output format, ids and nulls,
resuming after SIGKILL at random points and at every kill point, Ctrl-C, refusals (other options,
an existing output), and memory that does not grow with the input.

Embeddings of one chunk depend (at the 1e-4 level) on which texts share its batches, so a job's
rows are compared bit for bit with ``get_embeddings_batch`` on the same chunks; against one call
on all texts they agree within the batch-composition bound of test_embeddings.py.
"""

from __future__ import annotations

import io
import json
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
    monkeypatch.setattr(_run.shutil, "rmtree", lambda *a, **k: None)
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
    assert child("embed", src, out, opts, rng.randint(1, n_points)) is None
    for _ in range(2):                  # killed again while resuming, maybe
        if out.exists() and not out.with_name(out.name + ".partial").exists():
            break
        child("embed", src, out, opts, rng.randint(1, n_points))
    if not out.exists() or out.with_name(out.name + ".partial").exists():
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
        assert not out.with_name(out.name + ".partial").exists()
    assert child("embed", src, tmp_path / "over.npy", opts, n_points + 1) is not None


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
        if done >= 8:
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
