"""Saving and loading a context's state: same continuation as never saving; refusals are clean.

Crash candidates (truncated and corrupted files given to llama.cpp's state reader) run in a
child process, so that an abort would fail the test instead of the run.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import llama_cython as llama

PROMPT = "Here is a short story about a fox and a crow. Once upon a time"


def test_state_round_trip_gives_the_same_continuation(smol, tmp_path):
    # prefix_caching="exact" reuses whole n_ubatch blocks: small ones, so that the loaded
    # cache is reused and the text is still bit for bit a fresh context's
    opts = {"n_ctx": 512, "n_batch": 16, "n_ubatch": 16}
    a = smol.new_context(**opts)
    b = smol.new_context(**opts)
    fresh = smol.new_context(**opts)
    try:
        first = a.generate(PROMPT, max_tokens=16, temperature=0)
        path = tmp_path / "story.state"
        assert a.save_state(path) is None
        follow = PROMPT + first + " Then"
        b.load_state(path)
        got_b = b.generate(follow, max_tokens=16, temperature=0)
        assert b.cached_tokens > 0                     # the loaded cache was reused
        got_a = a.generate(follow, max_tokens=16, temperature=0)
        assert got_b == got_a == fresh.generate(follow, max_tokens=16, temperature=0)
        # bytes too, and a state loads twice
        data = a.save_state()
        assert isinstance(data, bytes)
        b.load_state(data)
        b.load_state(memoryview(data))
        assert b.generate(follow, max_tokens=16, temperature=0) == got_a
    finally:
        for c in (a, b, fresh):
            c.close()


def test_state_refused_for_other_model_or_options(smol, gemma):
    a = smol.new_context(n_ctx=512)
    try:
        a.generate(PROMPT, max_tokens=2, temperature=0)
        data = a.save_state()
        others = ((smol.new_context(n_ctx=1024), "n_ctx"),
                  (smol.new_context(n_ctx=512, kv_cache_type="q8_0", flash_attn="on"),
                   "kv_cache_type|flash_attn"),
                  (gemma.new_context(n_ctx=512), "another model"))
        for other, match in others:
            try:
                with pytest.raises(llama.StateError, match=match):
                    other.load_state(data)
                # still usable
                assert other.generate("Hello", max_tokens=2, temperature=0) is not None
            finally:
                other.close()
        emb = smol.new_context(embeddings=True)
        try:
            with pytest.raises(llama.ContextError):
                emb.load_state(data)
            with pytest.raises(llama.ContextError):
                emb.save_state()
        finally:
            emb.close()
        with pytest.raises(TypeError):
            a.load_state(12)
        with pytest.raises(FileNotFoundError):
            a.load_state("/no/such/state")
    finally:
        a.close()


def test_truncated_and_corrupt_states_raise_cleanly(smol_path, tmp_path):
    """Every 1 KiB prefix of a state file, and flipped bytes, in a child process."""
    script = textwrap.dedent(f"""
        import llama_cython as llama
        m = llama.load_model({str(smol_path)!r})
        ctx = m.new_context(n_ctx=256)
        ctx.generate("Once upon a time", max_tokens=8, temperature=0)
        data = ctx.save_state()
        n = 0
        for cut in list(range(0, len(data), 1024)) + [len(data) - 1]:
            try:
                ctx.load_state(data[:cut])
            except llama.StateError:
                n += 1
        for at in (0, 9, 20, len(data) // 2, len(data) - 1):
            bad = bytearray(data)
            bad[at] ^= 0xFF
            try:
                ctx.load_state(bytes(bad))
            except llama.StateError:
                n += 1
        ctx.load_state(data)
        print("OK", n, ctx.generate("Once upon a time", max_tokens=4, temperature=0) != "")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().startswith("OK")
    assert out.stdout.strip().endswith("True")
