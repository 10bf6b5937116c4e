"""Greedy generation equals llama.cpp's own examples/simple (llama-simple), token for token.

llama-simple (built by scripts/build_native.py against the same static libraries as the
extension) prints the pieces of the prompt tokens, then the piece of every generated token
(``llama_token_to_piece(..., special=true)``), then ``"\\n"``; it stops before printing an
end-of-generation token, as ``ctx.generate`` does. So its stdout must be exactly

    pieces(tokenize(prompt, add_special=True, parse_special=True)) + pieces(generated) + b"\\n"

with ``generated = ctx.last_stats.tokens``. Its stderr ends with ``decoded N tokens``, which
must equal ``len(ctx.last_stats.tokens)``.

Threads: llama-simple leaves ``n_threads`` at llama.cpp's default, ``GGML_DEFAULT_N_THREADS``
(4). ggml's CPU threads meet at spin-wait barriers, so with more threads than free cores a
program crawls: on 2 cores the unmodified llama-simple takes ~3.5 s per token on SmolLM2-135M
(~250x slower than 1 or 2 threads), and even 2 threads on 2 cores slow down 5-30x as soon as
another process competes for the CPUs. So with 4 or more usable cores the unmodified
llama-simple runs; with fewer, the test builds a copy of simple.cpp whose only change is one
inserted line setting ``n_threads``/``n_threads_batch`` from ``LLAMA_SIMPLE_THREADS`` (see
``_patched_simple_source``) and runs both sides with 1 thread. ggml's CPU kernels split work by
rows, so the thread count does not change the results; ``test_thread_count_does_not_change_tokens``
checks that on our side.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from build_native import build_program

import llama_cython as llama

N_PREDICT = 64
DEFAULT_THREADS = 4  # GGML_DEFAULT_N_THREADS, what llama_context_default_params() uses
MODELS = ("smol", "gemma")
PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
)
CASES = [(which, prompt) for which in MODELS for prompt in PROMPTS] + [
    # SmolLM2 ends this one with its EOS token after 22 tokens: the "stop" path
    ("smol", "Q: What is 17 * 23?\nA:"),
    # chat markup: control tokens through parse_special, as llama-simple tokenizes
    ("smol", "<|im_start|>user\nName three colors.<|im_end|>\n<|im_start|>assistant\n"),
    ("gemma", "<start_of_turn>user\nName three colors.<end_of_turn>\n<start_of_turn>model\n"),
]


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# Threads for both llama-simple and our contexts (see the module docstring).
REF_THREADS = DEFAULT_THREADS if _usable_cores() >= DEFAULT_THREADS else 1

# The one line added to simple.cpp on machines with fewer than DEFAULT_THREADS cores.
_ANCHOR = "    ctx_params.no_perf = false;\n"
_THREADS_LINE = (
    '    if (const char * e = std::getenv("LLAMA_SIMPLE_THREADS")) '
    "{ ctx_params.n_threads = ctx_params.n_threads_batch = std::atoi(e); }\n"
)


def _patched_simple_source(original: Path, dest: Path) -> Path:
    src = original.read_text(encoding="utf-8")
    assert src.count(_ANCHOR) == 1, f"{original}: cannot find the line to patch ({_ANCHOR.strip()!r})"
    src = "#include <cstdlib>\n" + src.replace(_ANCHOR, _ANCHOR + _THREADS_LINE)
    dest.write_text(src, encoding="utf-8")
    return dest


@pytest.fixture(scope="module")
def simple_cmd(llama_build, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(llama-simple executable, environment to run it with)."""
    env = dict(os.environ)
    if REF_THREADS == DEFAULT_THREADS:
        return build_program("llama-simple"), env
    original = llama_build.source_dir / "examples" / "simple" / "simple.cpp"
    src = _patched_simple_source(original, tmp_path_factory.mktemp("simple") / "simple_threads.cpp")
    env["LLAMA_SIMPLE_THREADS"] = str(REF_THREADS)
    return build_program("llama-simple-threads", source=src), env


_REFERENCE: dict[tuple[str, str], tuple[bytes, int | None]] = {}


def reference(simple_cmd: tuple[Path, dict[str, str]], path: Path, prompt: str) -> tuple[bytes, int | None]:
    """llama-simple's stdout and its ``decoded N tokens`` count, cached per (model, prompt)."""
    key = (str(path), prompt)
    if key not in _REFERENCE:
        exe, env = simple_cmd
        proc = subprocess.run(
            [str(exe), "-m", str(path), "-n", str(N_PREDICT), prompt],
            capture_output=True,
            env=env,
            timeout=300,
            check=False,
        )
        assert proc.returncode == 0, (
            f"llama-simple failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-2000:]}"
        )
        m = re.search(rb"decoded (\d+) tokens in", proc.stderr)
        _REFERENCE[key] = (proc.stdout, int(m.group(1)) if m else None)
    return _REFERENCE[key]


def _pieces(model: llama.Model, tokens, special: bool = True) -> bytes:
    return b"".join(model.token_to_piece(int(t), special=special) for t in tokens)


def _first_difference(a: bytes, b: bytes) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@pytest.mark.parametrize(("which", "prompt"), CASES)
def test_greedy_matches_llama_simple(request, simple_cmd, which: str, prompt: str) -> None:
    model: llama.Model = request.getfixturevalue(which)
    path: Path = request.getfixturevalue(f"{which}_path")

    stdout, n_decoded = reference(simple_cmd, path, prompt)

    with model.new_context(n_ctx=512, n_threads=REF_THREADS, n_threads_batch=REF_THREADS) as ctx:
        text = ctx.generate(prompt, max_tokens=N_PREDICT, temperature=0)
        stats = ctx.last_stats
    tokens = stats.tokens
    assert isinstance(tokens, np.ndarray) and tokens.dtype == np.int32 and tokens.ndim == 1
    assert stats.finish_reason in ("stop", "length")
    if stats.finish_reason == "length":
        assert len(tokens) == N_PREDICT
    else:
        assert len(tokens) < N_PREDICT

    prompt_part = _pieces(model, model.tokenize(prompt, add_special=True, parse_special=True))
    assert stdout.startswith(prompt_part), f"llama-simple's prompt echo differs: {stdout[:200]!r}"
    assert stdout.endswith(b"\n")
    theirs = stdout[len(prompt_part) : -1]
    ours = _pieces(model, tokens)
    if ours != theirs:
        i = _first_difference(ours, theirs)
        pytest.fail(
            f"{which} / {prompt!r}: generated text differs from llama-simple at byte {i}\n"
            f"  common    {ours[:i][-80:]!r}\n"
            f"  ours      {ours[i : i + 80]!r}\n"
            f"  llama.cpp {theirs[i : i + 80]!r}\n"
            f"  our tokens {tokens.tolist()}"
        )
    if n_decoded is not None:
        assert n_decoded == len(tokens), (
            f"llama-simple decoded {n_decoded} tokens, we generated {len(tokens)}"
        )

    # The returned text is the generated pieces (special tokens not rendered), decoded as UTF-8.
    assert isinstance(text, str)
    assert text == _pieces(model, tokens, special=False).decode("utf-8", errors="replace")
    assert text == model.detokenize(tokens)


def test_thread_count_does_not_change_tokens(smol) -> None:
    """The reasoning behind running llama-simple with fewer threads: results are thread-invariant."""
    model: llama.Model = smol
    prompt = PROMPTS[0]
    results = []
    for n_threads in sorted({1, 2, REF_THREADS}):
        with model.new_context(n_ctx=512, n_threads=n_threads, n_threads_batch=n_threads) as ctx:
            ctx.generate(prompt, max_tokens=16, temperature=0)
            results.append(ctx.last_stats.tokens.tolist())
    assert len(results[0]) > 0
    assert all(r == results[0] for r in results)
