"""Threads: contexts of one model in parallel, the GIL released, busy contexts, cancel().

A Model is shared between threads; a Context serves one thread at a time, and a second thread
gets ``ContextBusyError`` at once. Contexts use ``n_threads=1`` so that two of them fit the two
cores of a small machine.
"""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest

from llama_cython.errors import ContextBusyError, LlamaError, TokenizeError

PROMPTS_A = ["The capital of France is", "Once upon a time", "def fibonacci(n):"]
PROMPTS_B = ["1, 2, 3, 4, 5,", "The best way to learn Python is", "Water boils at"]
COUNTING = "1, 2, 3, 4, 5,"       # greedy SmolLM2 keeps counting: no early end-of-generation


def _ctx(model, **options):
    options = {"n_ctx": 256, "n_threads": 1, **options}
    return model.new_context(**options)


class Worker(threading.Thread):
    """A thread that runs ``fn`` and keeps its result or exception."""

    def __init__(self, fn, *args, **kwargs):
        super().__init__(daemon=True)
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.result = None
        self.error: BaseException | None = None
        self.started_call = threading.Event()

    def run(self):
        self.started_call.set()
        try:
            self.result = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:
            self.error = exc

    def outcome(self, timeout: float = 120.0):
        self.join(timeout)
        assert not self.is_alive(), "worker thread did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def _greedy_all(ctx, prompts, n: int = 12) -> list[str]:
    return [ctx.generate(p, max_tokens=n, temperature=0.0) for p in prompts]


def _generate_when_free(ctx, *args, **kwargs) -> str:
    """ctx.generate, retried while a probe of _wait_until_busy holds the context for a moment."""
    while True:
        try:
            return ctx.generate(*args, **kwargs)
        except ContextBusyError:
            time.sleep(0.001)


def _wait_until_busy(ctx, worker: Worker, timeout: float = 30.0) -> None:
    """Return once ``worker`` holds ``ctx`` (its generation is running)."""
    assert worker.started_call.wait(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not worker.is_alive():
            pytest.fail("the long generation ended before it could be observed busy")
        try:
            # Takes the context, then fails at once (SmolLM2 adds no BOS: "" is no token);
            # refused with ContextBusyError once the worker holds the context.
            ctx.generate("", max_tokens=1, temperature=0.0)
        except ContextBusyError:
            return
        except TokenizeError:
            pass
        time.sleep(0.002)
    pytest.fail("the context never became busy")


# -- parallel contexts ------------------------------------------------------------------------------


def test_two_threads_two_contexts_match_a_serial_run(smol):
    with _ctx(smol) as ctx:
        serial_a = _greedy_all(ctx, PROMPTS_A)
        serial_b = _greedy_all(ctx, PROMPTS_B)
    with _ctx(smol) as ctx_a, _ctx(smol) as ctx_b:
        wa = Worker(_greedy_all, ctx_a, PROMPTS_A)
        wb = Worker(_greedy_all, ctx_b, PROMPTS_B)
        wa.start()
        wb.start()
        assert wa.outcome() == serial_a
        assert wb.outcome() == serial_b


def test_two_models_in_two_threads(smol, gemma):
    with _ctx(smol) as cs, _ctx(gemma) as cg:
        serial = (_greedy_all(cs, PROMPTS_A[:1], 6), _greedy_all(cg, PROMPTS_A[:1], 6))
        ws = Worker(_greedy_all, cs, PROMPTS_A[:1], 6)
        wg = Worker(_greedy_all, cg, PROMPTS_A[:1], 6)
        ws.start()
        wg.start()
        assert (ws.outcome(), wg.outcome()) == serial


def test_generate_releases_the_gil(smol):
    """While one thread generates 64 tokens, a pure-Python thread keeps running."""
    ticks: list[float] = []
    stop = threading.Event()

    def counter() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            if n % 1000 == 0:
                ticks.append(time.perf_counter())

    with _ctx(smol) as ctx:
        ctx.generate(COUNTING, max_tokens=2, temperature=0.0)      # warm up
        thread = threading.Thread(target=counter, daemon=True)
        thread.start()
        time.sleep(0.05)
        t0 = time.perf_counter()
        ctx.generate(COUNTING, max_tokens=64, temperature=0.0)
        t1 = time.perf_counter()
        stop.set()
        thread.join(10)
        assert ctx.last_stats.completion_tokens == 64
    inside = [t for t in ticks if t0 <= t <= t1]
    duration = t1 - t0
    # The counter made progress during the call: many iterations, spread over the whole call
    # (with the GIL held, there would be one gap as long as the call itself).
    assert len(inside) * 1000 >= 50_000, (len(inside), duration)
    points = [t0, *inside, t1]
    largest_gap = max(b - a for a, b in itertools.pairwise(points))
    assert largest_gap < max(0.5 * duration, 0.05), (largest_gap, duration)


def test_long_tokenize_in_two_threads(smol):
    text = "The quick brown fox jumps over the lazy dog. " * 20000      # ~200k tokens
    expected = smol.tokenize(text)
    workers = [Worker(smol.tokenize, text) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        np.testing.assert_array_equal(w.outcome(), expected)


# -- one context, two threads ------------------------------------------------------------------------------


def test_second_thread_gets_context_busy_at_once(smol):
    with _ctx(smol, n_ctx=512) as ctx:
        reference = ctx.generate(PROMPTS_A[0], max_tokens=8, temperature=0.0)
        long_run = Worker(_generate_when_free, ctx, COUNTING, max_tokens=200, temperature=0.0)
        long_run.start()
        _wait_until_busy(ctx, long_run)

        t0 = time.perf_counter()
        with pytest.raises(ContextBusyError, match="busy"):
            ctx.generate(PROMPTS_A[0], max_tokens=8, temperature=0.0)
        elapsed = time.perf_counter() - t0
        assert elapsed < 0.1, f"ContextBusyError took {elapsed:.3f} s: it waited"

        with pytest.raises(ContextBusyError):
            ctx.close()
        assert ctx.closed is False
        with pytest.raises(LlamaError):           # the model refuses to close under it
            smol.close()
        assert long_run.is_alive(), "the long generation should still be running"

        text = long_run.outcome()
        assert isinstance(text, str) and text
        assert ctx.last_stats.finish_reason == "length"
        assert ctx.last_stats.completion_tokens == 200
        # The context works again, and gives the same text as before.
        assert ctx.generate(PROMPTS_A[0], max_tokens=8, temperature=0.0) == reference
    assert ctx.closed is True


def test_busy_context_properties_and_tokenize_do_not_block(smol):
    # Reading options and tokenizing use the model, not the KV cache: allowed while busy.
    with _ctx(smol, n_ctx=512) as ctx:
        long_run = Worker(_generate_when_free, ctx, COUNTING, max_tokens=100, temperature=0.0)
        long_run.start()
        _wait_until_busy(ctx, long_run)
        t0 = time.perf_counter()
        assert ctx.n_ctx == 512
        assert ctx.n_threads == 1
        np.testing.assert_array_equal(ctx.tokenize("Hello"), smol.tokenize("Hello"))
        assert time.perf_counter() - t0 < 0.5
        long_run.outcome()


def test_cancel_from_another_thread(smol):
    with _ctx(smol, n_ctx=1024) as ctx:
        reference = ctx.generate(PROMPTS_A[0], max_tokens=8, temperature=0.0)
        max_tokens = 1000
        long_run = Worker(_generate_when_free, ctx, COUNTING, max_tokens=max_tokens, temperature=0.0)
        long_run.start()
        _wait_until_busy(ctx, long_run)
        time.sleep(0.2)
        t0 = time.perf_counter()
        while long_run.is_alive():                # cancel() before the C loop runs is reset
            ctx.cancel()
            long_run.join(0.05)
            assert time.perf_counter() - t0 < 30, "cancel() did not stop the generation"
        waited = time.perf_counter() - t0
        text = long_run.outcome()
        stats = ctx.last_stats
        assert stats.finish_reason == "cancelled"
        assert stats.completion_tokens < max_tokens
        assert isinstance(text, str)
        assert len(stats.tokens) == stats.completion_tokens
        assert smol.detokenize(stats.tokens) == text
        assert waited < 5.0
        # The context works afterwards, and a later generation is not cancelled.
        assert ctx.generate(PROMPTS_A[0], max_tokens=8, temperature=0.0) == reference
        assert ctx.last_stats.finish_reason == "length"


def test_cancel_when_idle_does_not_affect_the_next_generation(smol):
    with _ctx(smol) as ctx:
        ctx.cancel()
        ctx.generate(PROMPTS_A[0], max_tokens=4, temperature=0.0)
        assert ctx.last_stats.finish_reason == "length"
        assert ctx.last_stats.completion_tokens == 4


# -- one model, many threads ---------------------------------------------------------------------------


TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "Ünïcödé — 日本語 🙂 " * 5,
    "<|im_start|>user\nHi<|im_end|>",
    "def f(x):\n    return x ** 2\n" * 10,
    "",
]


@pytest.mark.parametrize("model_name", ["smol", "gemma"])
def test_many_threads_tokenize_one_model(request, model_name):
    model = request.getfixturevalue(model_name)
    texts = [f"{t} #{i}" for i in range(40) for t in TEXTS]
    serial = [model.tokenize(t).tolist() for t in texts]
    serial_special = [model.tokenize(t, parse_special=True).tolist() for t in texts]
    serial_text = [model.detokenize(ids) for ids in serial]

    def work(seed: int):
        order = np.random.default_rng(seed).permutation(len(texts))
        out = {}
        for _ in range(3):
            for i in order:
                ids = model.tokenize(texts[i]).tolist()
                special = model.tokenize(texts[i], parse_special=True).tolist()
                out.setdefault(i, set()).add((tuple(ids), tuple(special), model.detokenize(ids)))
        return out

    workers = [Worker(work, seed) for seed in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        for i, seen in w.outcome().items():
            assert seen == {(tuple(serial[i]), tuple(serial_special[i]), serial_text[i])}


def test_model_close_while_another_thread_tokenizes(smol_path):
    import llama_cython as llama
    from llama_cython.errors import ClosedError

    model = llama.load_model(smol_path)
    text = "The quick brown fox jumps over the lazy dog. " * 40000
    expected = model.tokenize(text)
    worker = Worker(model.tokenize, text)
    worker.start()
    assert worker.started_call.wait(30)
    time.sleep(0.05)
    try:
        model.close()
    except ContextBusyError:
        # Refused while the tokenizer runs without the GIL: the result is intact.
        np.testing.assert_array_equal(worker.outcome(), expected)
        model.close()
    else:
        # Closed before the call began: that call reports it, nothing crashes.
        with pytest.raises(ClosedError):
            worker.outcome()
    assert model.closed


def test_threads_create_contexts_concurrently(smol):
    with _ctx(smol) as ctx:
        reference = ctx.generate(PROMPTS_A[0], max_tokens=4, temperature=0.0)

    def work() -> list[str]:
        out = []
        for _ in range(2):
            with _ctx(smol) as c:
                out.append(c.generate(PROMPTS_A[0], max_tokens=4, temperature=0.0))
        return out

    workers = [Worker(work) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        assert w.outcome() == [reference, reference]


def test_tokenize_while_another_thread_generates(smol):
    with _ctx(smol, n_ctx=512) as ctx:
        long_run = Worker(_generate_when_free, ctx, COUNTING, max_tokens=64, temperature=0.0)
        expected = smol.tokenize(TEXTS[1]).tolist()
        long_run.start()
        while long_run.is_alive():
            assert smol.tokenize(TEXTS[1]).tolist() == expected
            time.sleep(0.001)
        long_run.outcome()
        assert ctx.last_stats.completion_tokens == 64
