"""Models and contexts that travel: pickle as what they were loaded from, reload on the other
side once, refuse a file that is not the one the sender had."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import pickle
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import llama_cython as llama
from llama_cython import _pickling

TEXTS = ["a cat sat on the mat", "stock prices fell sharply", "the sky is blue today", "x"]


@pytest.fixture(scope="module")
def minilm_path():
    return llama.models.model_path("all-minilm-l6-v2")


def _embed_in_worker(payload: bytes) -> np.ndarray:
    """Runs in a spawned worker: unpickle a context, embed TEXTS."""
    ctx = pickle.loads(payload)
    return ctx.get_embeddings_batch(TEXTS)


def _load_twice_in_worker(payload: bytes) -> tuple[bool, str]:
    a = pickle.loads(payload)
    b = pickle.loads(payload)
    return a is b, a.path


def test_round_trip_in_process_is_the_same_model(smol):
    assert pickle.loads(pickle.dumps(smol)) is smol
    assert pickle.loads(pickle.dumps(smol, protocol=2)) is smol


def test_spec_carries_path_options_identity_and_registry_name(smol, smol_path):
    func, (spec,) = smol.__reduce__()
    assert func is _pickling.restore_model
    assert spec["path"] == str(smol_path.resolve()) or spec["path"] == str(smol_path)
    assert spec["registry"] == "smollm2-135m-instruct"
    assert spec["size"] == smol_path.stat().st_size
    assert spec["options"] == smol.load_options
    assert smol.load_options["vocab_only"] is False
    # the pickle is deterministic (what dataset fingerprints hash)
    assert pickle.dumps(smol) == pickle.dumps(smol)


def test_load_options_travel(smol_path):
    m = llama.load_model(smol_path, vocab_only=True, use_mmap=False)
    try:
        assert m.load_options["vocab_only"] is True
        assert m.load_options["use_mmap"] is False
        m2 = pickle.loads(pickle.dumps(m))
        assert m2 is m
    finally:
        m.close()


def test_closed_model_and_context_refuse_to_pickle(smol_path):
    m = llama.load_model(smol_path, vocab_only=True)
    m.close()
    with pytest.raises(llama.ClosedError):
        pickle.dumps(m)


def test_unpickle_in_a_fresh_process_reloads_once(tmp_path, smol):
    payload = tmp_path / "model.pkl"
    payload.write_bytes(pickle.dumps(smol))
    code = textwrap.dedent(f"""
        import pickle, sys
        import llama_cython as llama
        data = open({str(payload)!r}, "rb").read()
        a = pickle.loads(data)
        b = pickle.loads(data)
        assert a is b, "loaded twice"
        print(a.tokenize("Hello world").tolist())
        assert llama.clear_model_cache() == 1
        c = pickle.loads(data)
        assert c is a, "a live model is found again after clear_model_cache"
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(smol.tokenize("Hello world").tolist())


def test_changed_file_is_refused(tmp_path, smol_path, gemma_path):
    path = tmp_path / "m.gguf"
    shutil.copyfile(smol_path, path)
    m = llama.load_model(path, vocab_only=True)
    data = pickle.dumps(m)
    m.close()
    shutil.copyfile(gemma_path, path)                 # another model under the same name
    with pytest.raises(llama.ModelLoadError, match="not the one it was loaded from"):
        pickle.loads(data)
    path.unlink()
    with pytest.raises(llama.ModelNotFoundError, match="model file not found"):
        pickle.loads(data)
    # a file of the same size with one byte changed in its header
    shutil.copyfile(smol_path, path)
    with open(path, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(llama.ModelLoadError, match="not the one"):
        pickle.loads(data)


def test_registry_model_is_found_in_the_workers_cache(tmp_path, smol_path):
    """A model from the cache pickles with its registry name: a worker whose file is elsewhere
    (its own cache) finds it there."""
    m = llama.load_model(smol_path, vocab_only=True)
    func, (spec,) = m.__reduce__()
    m.close()
    spec = dict(spec, path=str(tmp_path / "elsewhere" / smol_path.name))
    m2 = func(spec)
    try:
        assert m2.path == str(smol_path)
        assert m2.vocab_only
    finally:
        _pickling.clear_model_cache()
        m2.close()


def test_context_pickles_as_its_options(smol):
    with smol.new_context(n_ctx=512, n_batch=256, prefix_caching="off") as ctx:
        opts = ctx.options
        assert opts["n_ctx"] == 512 and opts["n_batch"] == 256 and opts["prefix_caching"] == "off"
        ctx.generate("Once upon a time", max_tokens=4, temperature=0)
        ctx2 = pickle.loads(pickle.dumps(ctx))
        try:
            assert ctx2 is not ctx and ctx2.model is smol
            assert (ctx2.n_ctx, ctx2.n_batch, ctx2.prefix_caching) == (ctx.n_ctx, ctx.n_batch, "off")
            assert ctx2.generate("The capital of France is", max_tokens=8, temperature=0) == \
                ctx.generate("The capital of France is", max_tokens=8, temperature=0)
        finally:
            ctx2.close()
    with pytest.raises(llama.ClosedError):
        pickle.dumps(ctx)


def test_process_pool_spawn_equals_in_process(minilm_path):
    model = llama.load_model(minilm_path)
    with model.new_context(embeddings=True) as ctx:
        want = ctx.get_embeddings_batch(TEXTS)
        payload = pickle.dumps(ctx)
    with concurrent.futures.ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        got = pool.submit(_embed_in_worker, payload).result(timeout=300)
        same, path = pool.submit(_load_twice_in_worker, pickle.dumps(model)).result(timeout=300)
    assert same and path == str(minilm_path)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    model.close()


def test_dask_token_is_deterministic(smol, smol_path, tmp_path):
    dask_base = pytest.importorskip("dask.base")
    tok = dask_base.tokenize(smol)
    assert tok == dask_base.tokenize(smol)
    code = (f"import llama_cython as llama, dask.base; "
            f"print(dask.base.tokenize(llama.load_model({str(smol_path)!r}, vocab_only=False)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == tok
    # another file with the same contents hashes the same; other load options do not
    copy = tmp_path / "copy.gguf"
    shutil.copyfile(smol_path, copy)
    with llama.load_model(copy) as m2:
        assert dask_base.tokenize(m2) == tok
    with llama.load_model(smol_path, vocab_only=True) as m3:
        assert dask_base.tokenize(m3) != tok

    def uses_model(text):
        return smol.count_tokens([text])

    assert dask_base.tokenize(uses_model) == dask_base.tokenize(uses_model)


def test_tensor_split_travels_as_a_tuple(smol_path):
    m = llama.load_model(smol_path, vocab_only=True, tensor_split=[1.0])
    try:
        _, (spec,) = m.__reduce__()
        assert spec["options"]["tensor_split"] == (1.0,)
        spec = dict(spec, options=dict(spec["options"], tensor_split=[1.0]))   # as a list
        assert _pickling.restore_model(spec) is m
    finally:
        m.close()


def test_identity_samples_the_whole_file(tmp_path, smol_path):
    """A byte changed far from the header (in the weights) at the same size is noticed when it
    falls in a sampled block: the last MiB is always sampled."""
    path = tmp_path / "m.gguf"
    shutil.copyfile(smol_path, path)
    before = _pickling.file_identity(path)
    with open(path, "r+b") as f:
        f.seek(-10, 2)
        byte = f.read(1)
        f.seek(-10, 2)
        f.write(bytes([byte[0] ^ 1]))
    after = _pickling.file_identity(path)
    assert before[0] == after[0] and before[1] != after[1]


def test_datasets_fingerprint_is_stable_across_processes(smol_path, tmp_path):
    """Hugging Face datasets hashes the function given to .map (through pickling) to find its
    cache: a function that uses a model must hash the same in every process."""
    pytest.importorskip("datasets")
    code = textwrap.dedent(f"""
        import llama_cython as llama
        from datasets.fingerprint import Hasher
        m = llama.load_model({str(smol_path)!r}, vocab_only=True)
        def count(batch):
            return {{"n": m.count_tokens(batch["text"]).tolist()}}
        print(Hasher.hash(count))
    """)
    hashes = set()
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        hashes.add(out.stdout.strip())
    assert len(hashes) == 1, hashes


def test_datasets_map_uses_its_cache(smol_path, tmp_path):
    datasets = pytest.importorskip("datasets")
    m = llama.load_model(smol_path, vocab_only=True)

    def count(batch):
        return {"n": m.count_tokens(batch["text"]).tolist()}

    ds = datasets.Dataset.from_dict({"text": ["a cat", "stock prices fell", "x"]})
    ds.save_to_disk(str(tmp_path / "ds"))
    ds = datasets.load_from_disk(str(tmp_path / "ds"))
    first = ds.map(count, batched=True)
    second = ds.map(count, batched=True)
    assert first["n"] == list(m.count_tokens(["a cat", "stock prices fell", "x"]))
    assert first.cache_files and first.cache_files == second.cache_files   # reused, not recomputed
    m.close()
