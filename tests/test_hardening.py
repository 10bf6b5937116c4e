"""Issue 10: nothing a user does kills the interpreter, and every failure is a clean exception.

Each crash candidate runs in a child process (the exit code is the signal); the child checks
the exception it gets and that the object still works afterwards, then prints ``OK``. Nothing
here depends on timing: threads meet through events, and signals are sent once the call they
interrupt is known to be running.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import llama_cython as llama
from llama_cython import _cpus
from llama_cython.errors import (
    ContextBusyError,
    ContextSizeError,
    ModelLoadError,
    OptionError,
    TokenizeError,
)

ROOT = Path(__file__).resolve().parent.parent


def run_child(code: str, timeout: float = 600) -> str:
    """Run PRELUDE + ``code`` in a fresh interpreter; fail with its output unless it exits 0
    printing OK."""
    proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, cwd=str(ROOT))
    out = proc.stdout + proc.stderr
    if proc.returncode < 0:
        pytest.fail(f"the child was killed by signal {-proc.returncode}:\n{out[-3000:]}")
    assert proc.returncode == 0 and "OK" in proc.stdout, out[-3000:]
    return proc.stdout


PRELUDE = """
import threading
import numpy as np
import llama_cython as llama
from llama_cython.errors import ClosedError, ContextBusyError, LlamaError
smol_path = llama.models.model_path("smollm2-135m-instruct")
"""


# -- 1. closing while a call is in flight -----------------------------------------------------


def test_close_from_the_input_being_read_is_refused():
    run_child("""
    m = llama.load_model(smol_path)
    expected = m.tokenize("world")

    def closing_texts():
        yield "hello"
        m.close()                      # the model is held by tokenize_batch: refused
        yield "world"

    for call in (m.tokenize_batch, m.count_tokens):
        try:
            call(closing_texts())
        except ContextBusyError as exc:
            assert "this thread" in str(exc), exc
        else:
            raise AssertionError(f"{call.__name__}: close() was not refused")
        assert not m.closed and list(m.tokenize("world")) == list(expected)

    class ClosingInt(int):
        def __lt__(self, other):
            m.close()
            return int.__lt__(self, other)
        __gt__ = __le__ = __ge__ = __lt__

    class ClosingList(list):
        def __len__(self):
            m.close()
            return list.__len__(self)

    for name, call in [("token_to_piece", lambda: m.token_to_piece(ClosingInt(1))),
                       ("is_eog", lambda: m.is_eog(ClosingInt(1))),
                       ("detokenize", lambda: m.detokenize(ClosingList([1, 2]))),
                       ("detokenize_batch", lambda: m.detokenize_batch([ClosingList([1, 2])])),
                       ("detokenize_batch", lambda: m.detokenize_batch(ClosingList([[1, 2]])))]:
        try:
            call()
        except (LlamaError, TypeError):   # refused, or numpy turning what __len__ raised into a dtype
            pass
        assert not m.closed, name
        assert list(m.tokenize("world")) == list(expected), name
    m.close()
    assert m.closed
    print("OK")
    """)


def test_close_from_another_thread_during_a_batch_is_refused():
    run_child("""
    m = llama.load_model(smol_path)
    reading = threading.Event()
    tried = threading.Event()
    outcome = []

    def texts():
        yield "first text"
        reading.set()                  # the batch call is now reading its input
        tried.wait()
        yield "second text"

    def closer():
        reading.wait()
        try:
            m.close()
            outcome.append("closed")
        except ContextBusyError as exc:
            outcome.append(str(exc))
        tried.set()

    t = threading.Thread(target=closer)
    t.start()
    counts = m.count_tokens(texts())
    t.join()
    assert "another thread" in outcome[0], outcome
    assert list(counts) == [m.count_tokens("first text"), m.count_tokens("second text")]
    m.close()
    print("OK")
    """)


def test_context_closed_by_its_input_raises_cleanly():
    run_child("""
    m = llama.load_model(llama.models.model_path("all-minilm-l6-v2"))
    for method in ("get_embeddings_batch", "get_token_embeddings"):
        ctx = m.new_context(embeddings=True, pooling="none" if method == "get_token_embeddings" else None)

        def texts():
            yield "a sentence"
            ctx.close()                # input is read before the context is taken: allowed
            yield "another"

        try:
            getattr(ctx, method)(texts())
        except ClosedError:
            pass
        else:
            raise AssertionError(method)
        assert ctx.closed
    with m.new_context(embeddings=True) as ctx:
        assert ctx.get_embeddings_batch(["still works"]).shape == (1, m.n_embd)
    print("OK")
    """)


def test_busy_messages_say_which_holder(smol):
    with smol.new_context(n_ctx=256) as ctx:
        assert not ctx.busy
        stream = ctx.generate_stream("Hello", max_tokens=4, temperature=0)
        assert ctx.busy
        with pytest.raises(ContextBusyError, match="open GenerationStream of this thread"):
            ctx.generate("Hi", max_tokens=1)
        with pytest.raises(ContextBusyError, match="open GenerationStream of this thread"):
            ctx.close()
        stream.close()
        assert not ctx.busy
        assert ctx.generate("Hi", max_tokens=1, temperature=0) is not None


# -- 3. rank pooling reads only what llama.cpp has ---------------------------------------------


def test_rank_pooling_needs_a_classifier_head():
    minilm = llama.load_model(llama.models.model_path("all-minilm-l6-v2"))
    try:
        with pytest.raises(OptionError, match="classification head"):
            minilm.new_context(embeddings=True, pooling="rank")
        with minilm.new_context(embeddings=True, pooling="mean") as ctx:
            assert ctx.get_embeddings_batch(["ok"]).shape == (1, minilm.n_embd)
    finally:
        minilm.close()


# -- 4. size-like options are bounded by what they can mean -----------------------------------


def test_huge_repeat_last_n_means_the_whole_context():
    run_child("""
    import resource
    # A tight address-space limit: the old code asked llama.cpp for 8 GiB per call here.
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
    m = llama.load_model(smol_path)
    with m.new_context(n_ctx=256, n_threads=1) as ctx:
        kw = dict(max_tokens=12, temperature=0, repetition_penalty=1.3)
        huge = ctx.generate("The the the the", repeat_last_n=2**31 - 1, **kw)
        whole = ctx.generate("The the the the", repeat_last_n=-1, **kw)
        exact = ctx.generate("The the the the", repeat_last_n=ctx.n_ctx, **kw)
        plain = ctx.generate("The the the the", repeat_last_n=0, **kw)
    assert huge == whole == exact, (huge, whole, exact)
    print("OK", plain != exact)
    """)


# -- 6. no C++ exception is swallowed ---------------------------------------------------------

def test_generated_core_swallows_no_exception():
    core = ROOT / "llama_cython" / "_core.cpp"
    if not core.exists():
        pytest.skip("the extension was not built from this checkout")
    # Every failure reaches a caller: llama.cpp's callbacks are C++ (_log.h, _progress.h) and
    # the deallocators call nothing that can fail.
    names = set(re.findall(r'__Pyx_WriteUnraisable\("([^"]+)"', core.read_text()))
    assert not names, sorted(names)


# -- 7. Ctrl-C ---------------------------------------------------------------------------------


# Runs ``call`` (the source of one expression) in the main thread and sends it SIGINT from
# another thread once the context is busy, i.e. once the call surely runs; checks that the call
# raised KeyboardInterrupt.
INTERRUPT = """
import os, signal, time
# A process started in the background by a non-interactive shell inherits SIGINT ignored, and
# Python then installs no KeyboardInterrupt handler: install it, as a terminal would have it.
signal.signal(signal.SIGINT, signal.default_int_handler)

def interrupter():
    while not ctx.busy:
        time.sleep(0.001)
    os.kill(os.getpid(), signal.SIGINT)

t = threading.Thread(target=interrupter, daemon=True)
t.start()
try:
    CALL
except KeyboardInterrupt:
    pass
else:
    raise AssertionError("the call ran to its end without seeing Ctrl-C")
t.join()
"""


def test_ctrl_c_interrupts_generate_and_leaves_the_context_usable():
    run_child(textwrap.dedent("""
    m = llama.load_model(smol_path)
    ctx = m.new_context(n_ctx=4096, n_threads=1)
    ctx.generate("Hi", max_tokens=1)     # what is computed once per model is done now
    before = ctx.last_stats
    """) + INTERRUPT.replace(
        "CALL", 'ctx.generate("Once upon a time", max_tokens=100000, ignore_eos=True, temperature=0)')
        + textwrap.dedent("""
    # Seen in the loop (the usual case): the generation ended as cancelled. Seen while the call
    # was still in Python (setting up): no generation ran. Either way the context is free.
    stats = ctx.last_stats
    assert stats is before or (stats.finish_reason == "cancelled" and stats.completion_tokens < 4000), stats
    assert ctx.generate("Hello", max_tokens=3, temperature=0)
    print("OK", ctx.last_stats.completion_tokens)
    """))


def test_ctrl_c_interrupts_generate_batch_and_leaves_the_context_usable():
    run_child(textwrap.dedent("""
    m = llama.load_model(smol_path)
    ctx = m.new_context(n_ctx=4096, n_parallel=4, n_threads=1)
    prompts = [f"Story number {i}:" for i in range(64)]
    """) + INTERRUPT.replace(
        "CALL", "ctx.generate_batch(prompts, max_tokens=1000, ignore_eos=True, temperature=0)")
        + textwrap.dedent("""
    st = ctx.last_batch_stats
    assert st is None or "cancelled" in st.finish_reasons, st
    assert not ctx.busy
    assert ctx.generate_batch(["Hello", "World"], max_tokens=2, temperature=0)
    print("OK")
    """))


def test_ctrl_c_interrupts_generate_with_draft_and_leaves_both_contexts_usable():
    # adaptive=False: the draft model drafts at every step, so Ctrl-C may come during either
    # model's decode; both contexts are handed back. Ctrl-C comes a little after the call starts
    # (sent at once, it is mostly seen before the first token); nothing depends on when.
    interrupt = INTERRUPT.replace("    os.kill(", "    time.sleep(0.3)\n    os.kill(")
    assert interrupt != INTERRUPT
    run_child(textwrap.dedent("""
    m = llama.load_model(smol_path)
    ctx = m.new_context(n_ctx=4096, n_threads=1)
    draft = m.new_context(n_ctx=4096, n_threads=1)
    ctx.generate_with_draft("Hi", draft, max_tokens=2)   # what is computed once per model is done now
    before = ctx.last_stats
    """) + interrupt.replace(
        "CALL", 'ctx.generate_with_draft("Once upon a time", draft, max_tokens=100000, ignore_eos=True, '
                'temperature=0, n_draft=8, adaptive=False)')
        + textwrap.dedent("""
    stats = ctx.last_stats
    assert stats is before or (stats.finish_reason == "cancelled" and stats.completion_tokens < 4000), stats
    assert not ctx.busy and not draft.busy
    assert ctx.generate("Hello", max_tokens=3, temperature=0)
    assert draft.generate("Hello", max_tokens=3, temperature=0)
    assert ctx.generate_with_draft("Hello", draft, max_tokens=3, temperature=0)
    print("OK", stats.completion_tokens, stats.draft_tokens)
    """))


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_interrupts_batch_embeddings(workers):
    run_child(textwrap.dedent(f"""
    m = llama.load_model(llama.models.model_path("all-minilm-l6-v2"))
    ctx = m.new_context(embeddings=True, n_threads={workers}, embed_workers={workers})
    assert ctx.embed_workers == {workers}
    texts = [f"sentence number {{i}} about nothing in particular" for i in range(200000)]
    """) + INTERRUPT.replace("CALL", "ctx.get_embeddings_batch(texts)") + textwrap.dedent("""
    assert ctx.get_embeddings_batch(["usable"]).shape == (1, m.n_embd)
    print("OK")
    """))


# -- quantize_model: hostile input -------------------------------------------------------------

# The files load_model's tests refuse (tests/test_errors.py: not GGUF, GGUF magic then garbage,
# truncated), given to quantize_model in a child process: each is a ModelLoadError before
# anything is written, then a valid conversion still works.
QUANTIZE_HOSTILE = r"""
import os
from llama_cython.errors import ModelLoadError, ModelNotFoundError
tmp = TMP
out = os.path.join(tmp, "out")
os.mkdir(out)
mini_path = llama.models.model_path("all-minilm-l6-v2")
with open(smol_path, "rb") as f:
    data = f.read()


def written(content):
    path = os.path.join(tmp, "bad.gguf")
    with open(path, "wb") as f:
        f.write(content)
    return path


def refused(exc_type, src, what, dst=os.path.join(out, "x.gguf")):
    try:
        llama.quantize_model(src, dst, "q8_0", allow_requantize=True, n_threads=1)
    except exc_type as exc:
        message = str(exc)
    else:
        raise AssertionError(f"{what}: converted")
    assert os.listdir(out) == [], (what, os.listdir(out))     # no dst, no temporary file
    return message


HOSTILE = {
    "text": b"this is a text file, not a model\n" * 20, "bytes": bytes(range(256)) * 40,
    "random": np.random.default_rng(1).bytes(100_000), "3 bytes": b"GGU", "empty": b"",
    "ggml": b"GGML" + b"\0" * 100, "elf": b"\x7fELF" + b"\0" * 100,
    "magic only": b"GGUF", "bad version": b"GGUF" + b"\xff" * 60,
    "huge counts": b"GGUF\x03\0\0\0" + b"\xff" * 16,
    "2**62 counts": b"GGUF\x03\0\0\0" + (2**62).to_bytes(8, "little") * 2,
}
for cut in (4, 24, 100, 10_000, 1_000_000, len(data) // 2, len(data) - 1):
    HOSTILE[f"cut at {cut}"] = data[:cut]
for name, content in HOSTILE.items():
    assert "bad.gguf" in refused(ModelLoadError, written(content), name), name
assert "directory" in refused(ModelLoadError, tmp, "a directory")
refused(ModelNotFoundError, os.path.join(tmp, "no", "such.gguf"), "a missing file")
refused(ModelLoadError, str(smol_path) + "\0", "a NUL in src")
# dst in a missing folder: FileNotFoundError, before anything is converted
message = refused(FileNotFoundError, mini_path, "a missing dst folder",
                  dst=os.path.join(tmp, "no", "such", "x.gguf"))
assert "dst" in message, message

# still works: a conversion, and the models
llama.quantize_model(mini_path, os.path.join(out, "mini.q8_0.gguf"), "q8_0", n_threads=1)
with llama.load_model(os.path.join(out, "mini.q8_0.gguf")) as mini, mini.new_context(embeddings=True) as ctx:
    assert ctx.get_embeddings_batch(["still works"]).shape == (1, mini.n_embd)
with llama.load_model(smol_path) as m, m.new_context(n_ctx=256, n_threads=1) as ctx:
    assert ctx.generate("Hello", max_tokens=2, temperature=0)
print("OK")
"""


def test_quantize_model_refuses_hostile_files_cleanly(tmp_path):
    run_child(QUANTIZE_HOSTILE.replace("TMP", repr(str(tmp_path))))


@pytest.mark.parametrize("dst", ["a directory", "empty"])
def test_quantize_model_refuses_an_unwritable_dst_and_leaves_nothing(tmp_path, monkeypatch, dst):
    work = tmp_path / "work"
    work.mkdir()
    (work / "folder").mkdir()
    monkeypatch.chdir(work)          # "" names this folder: the temporary file goes to tmp_path
    with pytest.raises(llama.OptionError, match="must name a file"):
        llama.quantize_model(llama.models.model_path("all-minilm-l6-v2"),
                             work / "folder" if dst == "a directory" else "", "q8_0", n_threads=1)
    left = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert left == [], left


# -- 10, 11. threads and sequences --------------------------------------------------------------


def test_threads_default_to_what_can_run(smol):
    with smol.new_context(n_ctx=256) as ctx:
        assert ctx.n_threads == _cpus.default_threads()
        assert ctx.n_threads <= _cpus.available_cpus()
    with pytest.raises(OptionError, match="CPU"):
        smol.new_context(n_ctx=256, n_threads=_cpus.available_cpus() + 1)
    with pytest.raises(OptionError, match="CPU"):
        smol.new_context(n_ctx=256, n_threads_batch=512)


def test_parallel_sequences_never_exceed_the_asked_context(smol):
    with pytest.raises(OptionError, match="at least 65536"):
        smol.new_context(n_ctx=512, n_parallel=256)
    with smol.new_context(n_ctx=2048, n_parallel=3) as ctx:
        assert ctx.n_ctx <= 2048
        assert ctx.n_ctx_seq == 512


# -- 14. the package's errors, not raw ones -----------------------------------------------------


def test_lone_surrogates_are_the_packages_errors(smol):
    bad = "abc\ud800def"
    with pytest.raises(TokenizeError, match="surrogate"):
        smol.tokenize(bad)
    with pytest.raises(TokenizeError, match="surrogate"):
        smol.encode(bad)
    with smol.new_context(n_ctx=256) as ctx:
        with pytest.raises(TokenizeError, match="surrogate"):
            ctx.generate(bad, max_tokens=1)
        with pytest.raises(OptionError, match=r"stop\[0\]"):
            ctx.generate("Hello", max_tokens=1, stop=[bad])
        assert ctx.generate("Hello", max_tokens=1, temperature=0) is not None
    with pytest.raises(ModelLoadError):
        llama.load_model("/tmp/no\ud800such.gguf")


def test_path_with_nul_is_a_load_error():
    with pytest.raises(ModelLoadError, match="NUL"):
        llama.load_model("/tmp/a\0b.gguf")
    with pytest.raises(ModelLoadError, match="NUL"):
        llama.load_model(b"/tmp/a\0b.gguf")


# -- 5. interpreter exit while native work runs in a daemon thread ------------------------------


@pytest.mark.parametrize("work", ["tokenize_batch", "embeddings", "generate"])
def test_exit_while_a_daemon_thread_is_in_native_code(work):
    # The main thread returns while the daemon thread loops over long calls; the exit must be
    # clean (code 0), every time. Before: SIGSEGV in 5 runs of 6 (llama.cpp's static tables
    # destroyed under the C++ worker threads).
    for _ in range(3):
        run_child(f"""
        work = {work!r}
        done_one = threading.Event()
        if work == "embeddings":
            m = llama.load_model(llama.models.model_path("all-minilm-l6-v2"))
            ctx = m.new_context(embeddings=True, n_threads=1)
            texts = [f"a sentence with the number {{i}}" for i in range(100)]
        else:
            m = llama.load_model(smol_path)
            ctx = m.new_context(n_ctx=512, n_threads=1)
            texts = [("word " * 50) + str(i) for i in range(5000)]

        def loop():
            while True:
                try:
                    if work == "tokenize_batch":
                        m.tokenize_batch(texts, n_threads=2)
                    elif work == "embeddings":
                        ctx.get_embeddings_batch(texts)
                    else:
                        ctx.generate("Once upon a time", max_tokens=60, ignore_eos=True)
                except ClosedError:
                    return               # refused: the interpreter is exiting
                done_one.set()

        threading.Thread(target=loop, daemon=True).start()
        done_one.wait()
        print("OK")
        """)


# -- 9. a prompt that cannot fit is refused before it is tokenized ----------------------------


def test_hopeless_prompt_is_refused_without_tokenizing(gemma):
    # 400k byte-fallback characters: 21 s of tokenization before the context check, before.
    prompt = "\U00020000" * 400_000
    with gemma.new_context(n_ctx=512, n_threads=1) as ctx:
        with pytest.raises(ContextSizeError, match="at least"):
            ctx.generate(prompt, max_tokens=1)
        assert ctx.generate("Hello", max_tokens=1, temperature=0) is not None
    # the bound is a true lower bound: never above the real count
    longest = max(len(gemma.token_to_piece(i)) for i in range(gemma.n_vocab))
    for text in ["Hello world", "\U00020000" * 50, "a" * 3000, "<start_of_turn>user\nHi",
                 " " * 100, "\n\n\n" * 30]:
        ids = gemma.tokenize(text, parse_special=True)
        assert len(text.encode()) // longest <= len(ids), text[:20]


# -- 13. missing values and two-dimensional input --------------------------------------------


def _with_nulls():
    import pandas as pd

    return ["a cat", None, "a dog", float("nan"), pd.NA, "a car"]


def test_nulls_policy_in_batch_tokenization(smol):
    texts = _with_nulls()
    with pytest.raises(TypeError, match=r"texts\[1\] is missing.*nulls='empty'"):
        smol.tokenize_batch(texts)
    with pytest.raises(TypeError, match=r"texts\[1\] is missing"):
        smol.count_tokens(texts)
    empty = smol.tokenize_batch(texts, nulls="empty")
    assert len(empty) == 6
    for i in (1, 3, 4):
        assert list(empty[i]) == list(smol.tokenize(""))
    skipped = smol.count_tokens(texts, nulls="skip")
    assert list(skipped) == list(smol.count_tokens(["a cat", "a dog", "a car"]))
    with pytest.raises(OptionError, match="nulls"):
        smol.count_tokens(texts, nulls="drop")
    assert smol.count_tokens(["still works"])[0] > 0


def test_nulls_policy_on_arrow_columns(smol):
    pa = pytest.importorskip("pyarrow")
    col = pa.chunked_array([["a cat", None], [None, "a car"]])
    with pytest.raises(TypeError, match=r"texts\[1\] is null"):
        smol.count_tokens(col)
    assert list(smol.count_tokens(col, nulls="skip")) == list(smol.count_tokens(["a cat", "a car"]))
    empty = smol.count_tokens(col, nulls="empty")
    assert list(empty) == list(smol.count_tokens(["a cat", "", "", "a car"]))


def test_nulls_policy_in_embeddings():
    minilm = llama.load_model(llama.models.model_path("all-minilm-l6-v2"))
    try:
        with minilm.new_context(embeddings=True, n_threads=1) as ctx:
            texts = _with_nulls()
            with pytest.raises(TypeError, match=r"texts\[1\] is missing"):
                ctx.get_embeddings_batch(texts)
            skipped = ctx.get_embeddings_batch(texts, nulls="skip")
            plain = ctx.get_embeddings_batch(["a cat", "a dog", "a car"])
            assert skipped.shape == plain.shape
            assert abs(skipped - plain).max() < 1e-5
            empty = ctx.get_embeddings_batch(texts, nulls="empty")
            assert empty.shape == (6, minilm.n_embd)
            assert abs(empty[1] - ctx.get_embeddings("")).max() < 1e-5
            blocks = list(ctx.iter_embeddings(iter(texts), chunk_size=4, nulls="skip"))
            assert sum(b.shape[0] for b in blocks) == 3
    finally:
        minilm.close()


def test_two_dimensional_input_is_refused(smol):
    import pandas as pd

    df = pd.DataFrame({"text": ["a", "b"], "id": [1, 2]})
    for bad in (df, np.array([["a", "b"], ["c", "d"]]), {"a": 1}):
        with pytest.raises(TypeError, match="one-dimensional"):
            smol.count_tokens(bad)
        with pytest.raises(TypeError, match="one-dimensional"):
            smol.tokenize_batch(bad)
    assert list(smol.count_tokens(df["text"])) == list(smol.count_tokens(["a", "b"]))
