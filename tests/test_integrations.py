"""Scale-out on existing engines: Ray Data's map_batches (a local Ray cluster started here) and
Dask's map_partitions (a LocalCluster with 2 worker processes) give what the same calls give
in this process, and each worker process loads the model once.

Which bound for embeddings: llama.cpp's kernels round differently for different batch shapes,
so a text's vector depends on which texts share its ``get_embeddings_batch`` call by up to
~5e-4 (``BATCH_ATOL``, measured in tests/test_embeddings.py). The exact claim is therefore made
at equal batch composition: each Ray batch and each Dask partition equals an in-process call
over the same texts in the same order to within 1e-5 (``EXACT_ATOL``; measured 0: a batch's
result depends neither on the thread count nor on the process). Against an in-process call
whose batches are cut differently (the first 500 rows in one call) the bound is
``BATCH_ATOL``. Token counts and
greedy (temperature 0) generation do not depend on batching and are compared for equality.
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys

import numpy as np
import pytest

import llama_cython as llama
from llama_cython import _optional, _pickling
from llama_cython.integrations import _common

pa = pytest.importorskip("pyarrow")
pd = pytest.importorskip("pandas")

EXACT_ATOL = 1e-5
BATCH_ATOL = 5e-4
N_ROWS = 2000
PART = 250          # rows per Ray batch / Dask partition

WORDS = ("the a cat dog river market sharply blue quick brown fox jumps over lazy stock price fell "
         "rose city night morning data model token vector café naïve über 東京 42 3.14 ok no "
         "report quarterly earnings weather rain sunny library opens closes early late").split()
PROMPTS = ["The capital of France is", "1, 2, 3, 4,", "The opposite of hot is", "Water boils at",
           "Once upon a time", "The largest planet is"]


def make_texts(n: int, seed: int = 12) -> list[str]:
    """``n`` varied short texts (1-12 words, some punctuation), the same every run."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, 12))]
        out.append(" ".join(words) + rng.choice(["", ".", "!", "?", " :)"]))
    return out


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return make_texts(N_ROWS)


@pytest.fixture(scope="module")
def minilm_path():
    return llama.models.model_path("all-minilm-l6-v2")


@pytest.fixture(scope="module")
def smol_path():
    return llama.models.model_path("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return llama.load_model(minilm_path)


@pytest.fixture(scope="module")
def embed_here(minilm):
    """In-process embeddings of a list of texts in one call (cached by the texts)."""
    cache: dict[tuple[str, ...], np.ndarray] = {}
    ctx = minilm.new_context(embeddings=True, n_threads=1, n_threads_batch=1)

    def embed(batch: list[str]) -> np.ndarray:
        key = tuple(batch)
        if key not in cache:
            cache[key] = ctx.get_embeddings_batch(batch)
        return cache[key]

    yield embed
    ctx.close()


WHOLE = 500        # rows of the one-call comparison (a differently cut batch)


@pytest.fixture(scope="module")
def whole(texts, embed_here) -> np.ndarray:
    """One in-process call over the first WHOLE rows: its decode batches are cut differently
    from those of any engine's batch of PART rows."""
    return embed_here(texts[:WHOLE])


@pytest.fixture(scope="module")
def greedy_here(smol_path):
    """In-process greedy texts of PROMPTS (generate_batch as the workers run it)."""
    model = llama.load_model(smol_path)
    with model.new_context(n_parallel=4, n_ctx=1024) as ctx:
        return ctx.generate_batch(PROMPTS, max_tokens=12, temperature=0)


def fixed_size_list_to_numpy(column) -> np.ndarray:
    """An Arrow FixedSizeList<float32> column (Array or ChunkedArray) as an (N, D) array."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.flatten().to_numpy().reshape(len(column), column.type.list_size)


def check_per_batch(ids: np.ndarray, batches: np.ndarray, got: np.ndarray, texts, embed_here) -> int:
    """Every batch (rows in table order, grouped by their batch tag) equals the in-process
    embeddings of the same texts in the same order; return how many batches there were."""
    tags = list(dict.fromkeys(batches.tolist()))
    for tag in tags:
        rows = np.flatnonzero(batches == tag)
        want = embed_here([texts[i] for i in ids[rows]])
        assert np.abs(got[rows] - want).max() <= EXACT_ATOL, tag
    return len(tags)


# -- without an engine -----------------------------------------------------------------------------


def test_importing_the_integrations_imports_no_engine():
    code = ("import sys, llama_cython.integrations as i, llama_cython.integrations.ray, "
            "llama_cython.integrations.dask; "
            "print(sorted(m for m in ('ray', 'dask') if m in sys.modules), i.ray.Embedder.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[]", "Embedder"]


@pytest.mark.parametrize("engine", ["ray", "dask"])
def test_a_missing_engine_names_its_extra(engine, monkeypatch, minilm_path):
    from llama_cython.integrations import dask as ldask
    from llama_cython.integrations import ray as lray

    assert _optional.EXTRAS[engine] == engine
    for name in [m for m in sys.modules if m == engine or m.startswith(engine + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, engine, None)           # `import ray` now fails
    for sub in ("dataframe", "array", "data"):
        monkeypatch.setitem(sys.modules, f"{engine}.{sub}", None)
    calls = {
        "ray": [lambda: lray.embed_dataset(object(), minilm_path),
                lambda: lray.count_tokens_dataset(object(), minilm_path),
                lambda: lray.generate_dataset(object(), minilm_path)],
        "dask": [lambda: ldask.embed_partitions(object(), minilm_path),
                 lambda: ldask.embed_array(object(), minilm_path),
                 lambda: ldask.count_tokens_partitions(object(), minilm_path),
                 lambda: ldask.generate_partitions(object(), minilm_path)],
    }[engine]
    for call in calls:
        with pytest.raises(ImportError, match=rf"needs {engine}.*pip install 'llama_cython\[{engine}\]'"):
            call()


def test_batch_formats_in_process(minilm, texts, embed_here):
    """The callables take each batch format map_batches passes and answer in the same one."""
    from llama_cython.integrations.ray import Embedder, TokenCounter

    rows = texts[:40]
    want = embed_here(rows)
    emb = Embedder(minilm, n_threads=1)
    table = pa.table({"id": np.arange(40), "text": rows})
    out = emb(table)
    assert out.column_names == ["id", "text", "embedding"]
    assert out.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    np.testing.assert_array_equal(fixed_size_list_to_numpy(out.column("embedding")), want)
    frame = emb(table.to_pandas())
    assert list(frame.columns) == ["id", "text", "embedding"]
    np.testing.assert_array_equal(np.stack(frame["embedding"]), want)
    arrays = emb({"id": np.arange(40), "text": np.array(rows, dtype=object)})
    assert arrays["embedding"].shape == (40, 384) and arrays["embedding"].dtype == np.float32
    np.testing.assert_array_equal(arrays["embedding"], want)
    # string_view and large_string columns, an output column that exists already
    view = pa.table({"text": pa.array(rows, pa.large_string()), "embedding": np.zeros(40)})
    np.testing.assert_array_equal(fixed_size_list_to_numpy(emb(view).column("embedding")), want)
    assert emb(view).num_columns == 2

    counter = TokenCounter(minilm)
    counts = counter(table).column("n_tokens").to_numpy()
    np.testing.assert_array_equal(counts, minilm.count_tokens(rows))
    assert counter(table.to_pandas())["n_tokens"].dtype == np.int32

    with pytest.raises(KeyError, match="column 'body' is not in the batch"):
        Embedder(minilm, column="body")(table)
    with pytest.raises(TypeError, match="a batch must be"):
        emb(rows)
    with pytest.raises(TypeError, match="unknown option"):
        Embedder(minilm, context_options={"n_tokens": 3})
    with pytest.raises(ValueError, match="nulls"):
        Embedder(minilm, nulls="skip")


def test_model_arguments(minilm, minilm_path, tmp_path):
    """A path, a registry name and a loaded Model name the same model (one spec, one cache
    entry on a worker); anything else is refused before it travels."""
    spec = _common.model_spec(minilm)
    assert _common.model_spec(minilm_path) == spec
    assert _common.model_spec(str(minilm_path)) == spec
    assert _common.model_spec("all-minilm-l6-v2") == spec
    assert _common.load(spec) is minilm
    with pytest.raises(llama.ModelNotFoundError, match="neither a file nor a registry name"):
        _common.model_spec("no-such-model")
    with pytest.raises(llama.ModelNotFoundError):
        _common.model_spec(tmp_path / "missing.gguf")
    with pytest.raises(TypeError, match="unknown option"):
        _common.model_spec(minilm_path, {"n_ctx": 8})
    with pytest.raises(TypeError, match="loaded already"):
        _common.model_spec(minilm, {"vocab_only": True})
    with pytest.raises(TypeError, match="model must be"):
        _common.model_spec(3)          # type: ignore[arg-type]


def test_callables_pickle_as_their_arguments(minilm):
    import pickle

    from llama_cython.integrations.ray import Embedder, Generator

    emb = Embedder(minilm, output_column="vec", n_threads=1)
    again = pickle.loads(pickle.dumps(emb))
    assert type(again) is Embedder and again.model is minilm and again.output_column == "vec"
    with again.context() as a:                       # contexts are pooled per process
        pass
    with emb.context() as b:
        assert b is a
        with emb.context() as c:                     # a second concurrent user gets another
            assert c is not a
    gen = Generator("smollm2-135m-instruct", n_parallel=2, max_tokens=3, temperature=0)
    assert pickle.loads(pickle.dumps(gen))._call == {"max_tokens": 3, "stop": None, "temperature": 0}


def test_option_errors_are_option_errors_or_type_errors(minilm):
    """As in the core: a bad value is an OptionError (a ValueError), a wrong type a TypeError;
    numpy integers are ints."""
    from llama_cython.integrations import dask as ldask
    from llama_cython.integrations.ray import Embedder, TokenCounter

    with pytest.raises(llama.OptionError, match="nulls must be 'raise' or 'empty'"):
        Embedder(minilm, nulls="skip")
    with pytest.raises(TypeError, match="nulls must be"):
        TokenCounter(minilm, nulls=None)            # type: ignore[arg-type]
    with pytest.raises(llama.OptionError, match="n_threads must be a positive int"):
        Embedder(minilm, n_threads=0)
    with pytest.raises(TypeError, match="n_threads must be an int, got bool"):
        _common.thread_count(True)
    assert _common.thread_count(np.int64(2)) == 2
    with pytest.raises(llama.OptionError, match="dim must be a positive int"):
        ldask._embedding_setup(minilm, None, None, 0, "raise")
    with pytest.raises(TypeError, match="dim must be an int"):
        ldask._embedding_setup(minilm, None, None, 384.0, "raise")   # type: ignore[arg-type]
    assert ldask._embedding_setup(minilm, None, None, np.int64(384), "raise")[2] == 384
    with pytest.raises(llama.OptionError, match="pooling='none'"):
        ldask._embedding_setup(minilm, {"pooling": "none"}, None, None, "raise")
    with pytest.raises(llama.OptionError, match="nulls must be"):
        ldask._embedding_setup(minilm, None, None, None, "skip")


def test_ray_helpers_resolve_the_model_on_the_driver(minilm_path, minilm, tmp_path, monkeypatch):
    """The *_dataset helpers resolve a path or registry name where they run (a relative path
    against the driver's working directory) and hand the actors its spec; an actor then loads
    that file, after checking its identity, or refuses to start."""
    pytest.importorskip("ray")
    from llama_cython.integrations import ray as lray

    class Dataset:
        """What map_batches was given (no Ray cluster needed)."""

        def map_batches(self, fn, **kwargs):
            self.fn, self.kwargs = fn, kwargs
            return self

    spec = _common.model_spec(minilm)               # == that of its path (test_model_arguments)
    monkeypatch.chdir(minilm_path.parent)
    ds = lray.embed_dataset(Dataset(), minilm_path.name, batch_size=8, n_threads=1)
    (model,) = ds.kwargs["fn_constructor_args"]
    assert isinstance(model, _common.ModelSpec) and dict(model.spec) == spec
    assert os.path.isabs(model.spec["path"]) and ds.kwargs["fn_constructor_kwargs"]["load_options"] is None
    monkeypatch.chdir(tmp_path)                     # an actor elsewhere loads the driver's file
    emb = ds.fn(model, **ds.kwargs["fn_constructor_kwargs"])
    assert emb.model is minilm

    # a registry name, for counting: vocab_only, decided on the driver too
    ds = lray.count_tokens_dataset(Dataset(), "all-minilm-l6-v2")
    (model,) = ds.kwargs["fn_constructor_args"]
    assert model.spec["options"]["vocab_only"] is True
    assert ds.fn(model).model.load_options["vocab_only"] is True
    with pytest.raises(llama.ModelNotFoundError):
        lray.embed_dataset(Dataset(), "no-such-model.gguf")        # refused on the driver

    # the actor's file is not the driver's: refused when the actor starts
    other = _common.ModelSpec({**spec, "size": spec["size"] + 1})
    with pytest.raises(llama.ModelLoadError, match="not the one it was loaded from"):
        lray.Embedder(other, n_threads=1)
    with pytest.raises(TypeError, match="resolved already"):
        _common.model_spec(other, {"vocab_only": True})


# -- Ray ------------------------------------------------------------------------------------------


@pytest.fixture(scope="class")
def ray_cluster():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    logging.getLogger("ray").setLevel(logging.WARNING)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
             configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    try:
        yield ray
    finally:
        ray.shutdown()


def ray_table(ray, ds):
    return pa.concat_tables(ray.get(ds.to_arrow_refs()))


class TestRay:
    def test_embeddings_equal_in_process_and_each_actor_loads_once(
            self, ray_cluster, minilm, texts, embed_here, whole):
        ray = ray_cluster
        from llama_cython.integrations.ray import Embedder

        class Probe(Embedder):
            """Embedder that also says which batch and process each row went through."""

            def __call__(self, batch):
                out = super().__call__(batch)
                n = out.num_rows
                info = _common.process_info()
                first = batch.column("id")[0].as_py() if n else -1
                for name, value in (("batch", first), ("pid", info["pid"]),
                                    ("model_id", id(self.model)), ("loads", info["models_loaded"]),
                                    ("contexts", info["contexts"])):
                    out = out.append_column(name, pa.array([value] * n, pa.int64()))
                return out

        table = pa.table({"id": np.arange(N_ROWS), "text": texts})
        ds = ray.data.from_arrow([table.slice(i, PART) for i in range(0, N_ROWS, PART)])
        out = ds.map_batches(Probe, fn_constructor_args=(minilm,),       # a Model travels as its spec
                             fn_constructor_kwargs={"n_threads": 1}, batch_format="pyarrow",
                             batch_size=PART, num_cpus=1,
                             compute=ray.data.ActorPoolStrategy(size=2))
        got_table = ray_table(ray, out)
        assert got_table.num_rows == N_ROWS
        ids = got_table.column("id").to_numpy()
        assert sorted(ids.tolist()) == list(range(N_ROWS))             # every row exactly once
        got = fixed_size_list_to_numpy(got_table.column("embedding"))
        assert got_table.column("text").to_pylist() == [texts[i] for i in ids]
        n_batches = check_per_batch(ids, got_table.column("batch").to_numpy(), got, texts, embed_here)
        assert n_batches >= N_ROWS // PART
        assert np.abs(got[np.argsort(ids)][:WHOLE] - whole).max() <= BATCH_ATOL
        # each actor process: one model object, loaded once (by unpickling), one context
        frame = got_table.select(["pid", "model_id", "loads", "contexts"]).to_pandas()
        per_pid = frame.groupby("pid").nunique()
        assert 1 <= len(per_pid) <= 2 and (per_pid["model_id"] == 1).all()
        assert (frame["loads"] == 1).all() and (frame["contexts"] == 1).all()
        assert os.getpid() not in set(frame["pid"])

    def test_embed_dataset_with_a_registry_name_numpy_batches(self, ray_cluster, texts, whole):
        ray = ray_cluster
        from llama_cython.integrations.ray import embed_dataset

        rows = 64
        ds = ray.data.from_pandas([pd.DataFrame({"id": np.arange(i, i + 16), "text": texts[i:i + 16]})
                                   for i in range(0, rows, 16)])
        out = embed_dataset(ds, "all-minilm-l6-v2", concurrency=2, batch_size=16,
                            batch_format="numpy", output_column="vec")
        frame = ray_table(ray, out).to_pandas().sort_values("id")
        assert frame["id"].tolist() == list(range(rows))
        got = np.stack(frame["vec"].to_numpy()).astype(np.float32)
        assert got.shape == (rows, 384)
        assert np.abs(got - whole[:rows]).max() <= BATCH_ATOL

    def test_count_tokens_dataset_with_a_path_pandas_batches(self, ray_cluster, smol_path, texts):
        ray = ray_cluster
        from llama_cython.integrations.ray import count_tokens_dataset

        frame = pd.DataFrame({"id": np.arange(N_ROWS), "text": texts})
        ds = ray.data.from_pandas([frame[i:i + 500] for i in range(0, N_ROWS, 500)])
        out = count_tokens_dataset(ds, smol_path, concurrency=2, batch_size=500, batch_format="pandas")
        frame = ray_table(ray, out).to_pandas().sort_values("id")
        with llama.load_model(smol_path, vocab_only=True) as model:
            np.testing.assert_array_equal(frame["n_tokens"].to_numpy(), model.count_tokens(texts))

    def test_generate_dataset_greedy_equals_in_process(self, ray_cluster, smol_path, greedy_here):
        ray = ray_cluster
        from llama_cython.integrations.ray import generate_dataset

        model = llama.load_model(smol_path)
        ds = ray.data.from_items([{"id": i, "prompt": p} for i, p in enumerate(PROMPTS)])
        out = generate_dataset(ds, model, concurrency=1, batch_size=len(PROMPTS), n_parallel=4,
                               context_options={"n_ctx": 1024}, max_tokens=12, temperature=0)
        table = ray_table(ray, out).sort_by("id")
        assert table.column("text").to_pylist() == greedy_here
        model.close()


# -- Dask -----------------------------------------------------------------------------------------


@pytest.fixture(scope="class")
def dask_client():
    pytest.importorskip("dask.dataframe")
    distributed = pytest.importorskip("dask.distributed")
    logging.getLogger("distributed").setLevel(logging.WARNING)
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def _models_per_file() -> dict[str, list[int]]:
    """On a worker: for each model file, the ids of the loaded models (unpickled/restored)."""
    out: dict[str, list[int]] = {}
    for key, model in list(_pickling._kept.items()):
        out.setdefault(key[1][1], []).append(id(model))     # key: (path, identity, options)
    return out


class TestDask:
    def test_embeddings_equal_in_process_deterministic_graph(
            self, dask_client, minilm, minilm_path, texts, embed_here, whole):
        import dask
        import dask.dataframe as dd

        from llama_cython.integrations.dask import embed_partitions

        frame = pd.DataFrame({"id": np.arange(N_ROWS), "text": texts})
        ddf = dd.from_pandas(frame, chunksize=PART, sort=False)
        assert ddf.npartitions == N_ROWS // PART
        with dask.config.set({"tokenize.ensure-deterministic": True}):
            out = embed_partitions(ddf, minilm)                  # a Model: the graph holds its spec
            assert out._name == embed_partitions(ddf, minilm)._name
            assert out._name == embed_partitions(ddf, minilm_path)._name      # same model, same keys
            assert out._name != embed_partitions(ddf, minilm, normalize=False)._name
            assert dask.base.tokenize(out) == dask.base.tokenize(embed_partitions(ddf, minilm))
        assert out.dtypes["embedding"] == pd.ArrowDtype(pa.list_(pa.float32(), 384))
        result = out.compute()
        assert result["id"].tolist() == list(range(N_ROWS))
        assert result.dtypes["embedding"] == out.dtypes["embedding"]
        got = np.stack(result["embedding"].to_numpy()).astype(np.float32)
        batches = np.arange(N_ROWS) // PART                       # the partitions, in order
        check_per_batch(np.arange(N_ROWS), batches, got, texts, embed_here)
        assert np.abs(got[:WHOLE] - whole).max() <= BATCH_ATOL

    def test_embed_array_with_a_registry_name(self, dask_client, texts, embed_here):
        import dask.dataframe as dd

        from llama_cython.integrations.dask import embed_array

        rows = 2 * PART
        ddf = dd.from_pandas(pd.DataFrame({"text": texts[:rows]}), chunksize=PART, sort=False)
        arr = embed_array(ddf, "all-minilm-l6-v2", lengths=True)
        assert arr.shape == (rows, 384) and arr.chunks == ((PART, PART), (384,))
        assert arr.dtype == np.float32
        got = arr.compute()
        check_per_batch(np.arange(rows), np.arange(rows) // PART, got, texts, embed_here)
        unknown = embed_array(ddf["text"], "all-minilm-l6-v2")
        assert np.isnan(unknown.shape[0]) and unknown.shape[1] == 384

    def test_count_tokens_with_a_path(self, dask_client, smol_path, texts):
        import dask.dataframe as dd

        from llama_cython.integrations.dask import count_tokens_partitions

        ddf = dd.from_pandas(pd.DataFrame({"text": texts}), npartitions=4, sort=False)
        out = count_tokens_partitions(ddf, smol_path, output="n")
        assert out.dtypes["n"] == np.int32
        got = out.compute()
        with llama.load_model(smol_path, vocab_only=True) as model:
            np.testing.assert_array_equal(got["n"].to_numpy(), model.count_tokens(texts))
        assert got["n"].dtype == np.int32

    def test_generate_greedy_equals_in_process(self, dask_client, smol_path, greedy_here):
        import dask.dataframe as dd

        from llama_cython.integrations.dask import generate_partitions

        ddf = dd.from_pandas(pd.DataFrame({"prompt": PROMPTS}), npartitions=2, sort=False)
        out = generate_partitions(ddf, "smollm2-135m-instruct", n_parallel=4,
                                  context_options={"n_ctx": 1024}, max_tokens=12, temperature=0)
        assert out.compute()["text"].tolist() == greedy_here

    def test_each_worker_loaded_each_model_once(self, dask_client, minilm_path):
        """After the tests above (a Model, a path and a registry name for MiniLM; a path, a
        vocab_only spec and a name for SmolLM2) every worker holds one model per file and
        options, and one context per model and options (one thread per worker)."""
        report = dask_client.run(_models_per_file)
        infos = dask_client.run(_common.process_info)
        assert len(report) == 2 and len({i["pid"] for i in infos.values()}) == 2
        minilm_sha = _pickling.file_identity(minilm_path)[1]
        assert any(minilm_sha in files for files in report.values())
        for worker, files in report.items():
            assert len(files.get(minilm_sha, [])) <= 1, (worker, files)
            for ids in files.values():
                assert 1 <= len(ids) <= 2                          # SmolLM2: full and vocab_only
            assert infos[worker]["contexts"] <= 2                  # MiniLM embeddings, SmolLM2 batch
