"""Speculative decoding (Context.generate_with_draft): a draft model or prompt lookup proposes,
the target verifies. Greedy output must be the target's own; sampled output must keep the
target's distribution; a draft that does not share the vocabulary is refused."""

from __future__ import annotations

import collections
import threading

import numpy as np
import pytest
from _stress import STRESS

import llama_cython as llama

# 20 prompts: chat turns, plain text, code, and ones whose answer copies the prompt (where
# prompt lookup proposes a lot).
_DOC = ("The museum opens at nine on weekdays and at ten on Saturdays. Guided tours leave from "
        "the north hall every hour. Tickets cost twelve euros for adults and six for children.")
PROMPTS = [
    "<|im_start|>user\nWrite a short story about a robot.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nList five fruits.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nExplain photosynthesis in one paragraph.<|im_end|>\n<|im_start|>assistant\n",
    f"<|im_start|>user\nRepeat this text exactly: {_DOC}<|im_end|>\n<|im_start|>assistant\n",
    f"<|im_start|>user\n{_DOC}\nWhen do tours leave?<|im_end|>\n<|im_start|>assistant\n",
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea,",
    "1, 2, 3, 4, 5, 6, 7, 8,",
    "The quick brown fox jumps over the lazy dog. The quick brown fox",
    "import numpy as np\n\ndef normalize(x):\n",
    "Monday, Tuesday, Wednesday,",
    "<|im_start|>user\nTranslate to French: Good morning, how are you?<|im_end|>\n<|im_start|>assistant\n",
    "Q: How many legs does a spider have?\nA:",
    "Dear customer, thank you for your order. Dear customer,",
    "<|im_start|>user\nWrite a haiku about rain.<|im_end|>\n<|im_start|>assistant\n",
    "The following is a list of planets: Mercury, Venus,",
    "for i in range(10):\n    print(i)\nfor i in range(10):\n",
    "<|im_start|>user\nGive me three tips for sleeping well.<|im_end|>\n<|im_start|>assistant\n",
]
N_TOKENS = 32


def _half(adaptive: bool) -> slice:
    """The prompts one variant runs: with ``LLAMA_CYTHON_STRESS=1`` all of them; otherwise the even
    ones for adaptive drafts and the odd ones for fixed, so that every prompt is still checked by
    draft model and by prompt lookup, at half the suite's time."""
    return slice(None) if STRESS else slice(0 if adaptive else 1, None, 2)


@pytest.fixture(scope="module")
def f32():
    """SmolLM2 at F32: the target of the registry's speculative pair."""
    return llama.load_model(llama.models.model_path("smollm2-135m-instruct-f32"))


@pytest.fixture(scope="module")
def target(f32):
    with f32.new_context(n_ctx=1024) as ctx:
        yield ctx


@pytest.fixture(scope="module")
def draft(smol):
    with smol.new_context(n_ctx=1024) as ctx:
        yield ctx


@pytest.fixture(scope="module")
def greedy(target):
    """The target's own greedy outputs (and finish reasons)."""
    out = []
    for p in PROMPTS:
        text = target.generate(p, max_tokens=N_TOKENS, temperature=0)
        out.append((text, target.last_stats.finish_reason))
    return out


def test_the_pair_shares_a_vocabulary_and_the_draft_is_cheaper(f32, smol):
    assert f32.n_vocab == smol.n_vocab
    assert f32.size > 4 * smol.size


@pytest.mark.parametrize("adaptive", [True, False])
def test_greedy_with_a_draft_model_is_the_targets_greedy_output(target, draft, greedy, adaptive):
    drafted = accepted = 0
    for p, (want, reason) in zip(PROMPTS[_half(adaptive)], greedy[_half(adaptive)]):
        got = target.generate_with_draft(p, draft, max_tokens=N_TOKENS, temperature=0,
                                         adaptive=adaptive, n_draft=4 if not adaptive else 16)
        st = target.last_stats
        assert got == want, p
        assert st.finish_reason == reason
        drafted += st.draft_tokens
        accepted += st.accepted_tokens
        assert st.accepted_tokens <= st.draft_tokens
        if not adaptive:     # n_draft caps every step's draft
            assert st.draft_tokens <= 4 * st.decodes
    assert drafted > 0 and accepted > 0
    # the pair agrees most of the time: greedy F32 and Q4_1 of one model
    assert accepted / drafted > 0.5


@pytest.mark.parametrize("adaptive", [True, False])
def test_greedy_with_prompt_lookup_is_the_targets_greedy_output(target, greedy, adaptive):
    accepted = 0
    for p, (want, reason) in zip(PROMPTS[_half(adaptive)], greedy[_half(adaptive)]):
        got = target.generate_with_draft(p, "prompt", max_tokens=N_TOKENS, temperature=0,
                                         adaptive=adaptive)
        assert got == want, p
        assert target.last_stats.finish_reason == reason
        accepted += target.last_stats.accepted_tokens
    assert accepted > 0


def test_prompt_lookup_saves_decodes_where_the_answer_copies_the_prompt(target):
    p = PROMPTS[4]
    target.generate_with_draft(p, "prompt", max_tokens=48, temperature=0, adaptive=False)
    st = target.last_stats
    assert st.accepted_tokens >= 10
    assert st.decodes < st.completion_tokens
    assert st.tokens_per_decode > 1.2
    assert 0 < st.acceptance_rate <= 1


def test_stop_strings_and_max_tokens_cut_as_in_plain_generation(target, draft):
    p = PROMPTS[10]
    want = target.generate(p, max_tokens=40, temperature=0, stop=[" dog"])
    reason = target.last_stats.finish_reason
    for d in (draft, "prompt"):
        assert target.generate_with_draft(p, d, max_tokens=40, temperature=0, stop=[" dog"]) == want
        assert target.last_stats.finish_reason == reason
    for n in (1, 2, 5):
        want = target.generate(PROMPTS[9], max_tokens=n, temperature=0)
        for d in (draft, "prompt"):
            got = target.generate_with_draft(PROMPTS[9], d, max_tokens=n, temperature=0, n_draft=8,
                                             adaptive=False)
            assert got == want
            assert target.last_stats.completion_tokens == n
            assert target.last_stats.finish_reason == "length"


def test_streaming_gives_the_same_text_in_pieces(target, draft, greedy):
    for d in (draft, "prompt"):
        with target.generate_with_draft_stream(PROMPTS[4], d, max_tokens=N_TOKENS, temperature=0) as s:
            pieces = list(s)
        assert "".join(pieces) == greedy[4][0]
        assert s.stats.completion_tokens == target.last_stats.completion_tokens
        seen: list[str] = []
        target.generate_with_draft_stream(PROMPTS[0], d, max_tokens=8, temperature=0,
                                          callback=seen.append)
        assert "".join(seen) == greedy[0][0][: len("".join(seen))]


def test_seeded_sampling_is_reproducible(target, draft):
    """Prompt lookup draws one random number per token whatever the draft lengths; a draft
    model's rejection rule draws more where it drafts, so its seeded text repeats only with
    fixed draft lengths (adaptive=False: the adaptive lengths follow measured timings)."""
    for d, adaptive in (("prompt", True), ("prompt", False), (draft, False)):
        a = target.generate_with_draft(PROMPTS[0], d, max_tokens=24, temperature=0.8, seed=7,
                                       adaptive=adaptive, n_draft=4)
        b = target.generate_with_draft(PROMPTS[0], d, max_tokens=24, temperature=0.8, seed=7,
                                       adaptive=adaptive, n_draft=4)
        assert a == b


def test_the_rejection_rule_accepts_a_draft_that_matches_the_target(smol):
    """A draft with the target's own distribution is (nearly) always accepted at temperature 1:
    the rule accepts x with min(1, p(x)/q(x)). Drawing the target's token and comparing would
    accept only sum(p^2) of the time."""
    with smol.new_context(n_ctx=512) as t, smol.new_context(n_ctx=512) as d:
        t.generate_with_draft(PROMPTS[16], d, max_tokens=48, temperature=1.0, seed=3,
                              adaptive=False, n_draft=4, ignore_eos=True)
        st = t.last_stats
        assert st.draft_tokens >= 20
        assert st.acceptance_rate > 0.9


def test_sampling_with_a_draft_keeps_the_targets_distribution(smol, f32):
    """The first three tokens of 200 seeded samples, with and without a draft: a chi-square
    test of the two samples (top_k=3 keeps the outcomes few). The draft (F32) differs from the
    target (Q4_1) a little, so the rejection rule works at every drafted position."""
    scipy_stats = pytest.importorskip("scipy.stats")
    p = "<|im_start|>user\nTell me a joke.<|im_end|>\n<|im_start|>assistant\n"
    plain, spec = [], []
    with smol.new_context(n_ctx=256) as t, f32.new_context(n_ctx=256) as d:
        for s in range(200):
            t.generate(p, max_tokens=3, temperature=1.0, top_k=3, seed=s)
            plain.append(tuple(t.last_stats.tokens))
            t.generate_with_draft(p, d, max_tokens=3, temperature=1.0, top_k=3, seed=5000 + s,
                                  adaptive=False, n_draft=2)
            spec.append(tuple(t.last_stats.tokens))
    for n in (2, 3):
        a = collections.Counter(x[:n] for x in plain)
        b = collections.Counter(x[:n] for x in spec)
        keys = [k for k in set(a) | set(b) if a[k] + b[k] >= 8]
        table = np.array([[a[k] for k in keys], [b[k] for k in keys]])
        assert scipy_stats.chi2_contingency(table).pvalue > 1e-3, (n, a, b)


def test_a_draft_with_another_vocabulary_is_refused(target, gemma, smol):
    with gemma.new_context(n_ctx=256) as g:
        with pytest.raises(llama.OptionError, match="vocabulary"):
            target.generate_with_draft("Hi", g, max_tokens=4)
        # both contexts stay usable
        assert target.generate("Hi", max_tokens=2, temperature=0)
        assert g.generate("Hi", max_tokens=2, temperature=0)
        assert not g.busy


def test_bad_drafts_and_options_are_refused(target, smol):
    with pytest.raises(llama.OptionError, match="target context itself"):
        target.generate_with_draft("Hi", target)
    with pytest.raises(llama.OptionError, match="prompt"):
        target.generate_with_draft("Hi", "lookup")
    with pytest.raises(TypeError, match="Context"):
        target.generate_with_draft("Hi", 3)
    for bad in (0, 65, -1):
        with pytest.raises(llama.OptionError):
            target.generate_with_draft("Hi", "prompt", n_draft=bad)
    with pytest.raises(TypeError):
        target.generate_with_draft("Hi", "prompt", n_draft=2.5)
    with pytest.raises(TypeError):
        target.generate_with_draft("Hi", "prompt", adaptive=1)
    with pytest.raises(TypeError):
        target.generate_with_draft("Hi", "prompt", temperatur=0.1)
    closed = smol.new_context(n_ctx=256)
    closed.close()
    with pytest.raises(llama.ClosedError):
        target.generate_with_draft("Hi", closed)
    with smol.new_context(n_ctx=256) as short:
        with pytest.raises(llama.ContextSizeError, match="draft context"):
            target.generate_with_draft(" ".join([_DOC] * 8), short)
        assert not short.busy
    assert not target.busy
    assert target.generate("Hi", max_tokens=2, temperature=0)


def test_an_embedding_context_cannot_draft(target, smol):
    with smol.new_context(n_ctx=256, embeddings=True) as e:
        with pytest.raises(llama.ContextError, match="embeddings"):
            target.generate_with_draft("Hi", e)
        assert not e.busy


def test_the_draft_is_busy_while_the_stream_runs_and_usable_after(target, draft):
    s = target.generate_with_draft_stream(PROMPTS[0], draft, max_tokens=16, temperature=0)
    next(s)
    assert draft.busy
    with pytest.raises(llama.ContextBusyError):
        draft.generate("Hi", max_tokens=2)
    s.close()
    assert not draft.busy and not target.busy
    fresh_draft = draft.generate(PROMPTS[1], max_tokens=8, temperature=0)
    with draft.model.new_context(n_ctx=1024) as other:
        assert fresh_draft == other.generate(PROMPTS[1], max_tokens=8, temperature=0)


def test_the_target_is_left_as_a_fresh_context_would_be(target, f32, draft):
    target.generate_with_draft(PROMPTS[4], "prompt", max_tokens=40, temperature=0)
    target.generate_with_draft(PROMPTS[5], draft, max_tokens=40, temperature=0)
    after = target.generate(PROMPTS[6], max_tokens=16, temperature=0)
    with f32.new_context(n_ctx=1024) as fresh:
        assert after == fresh.generate(PROMPTS[6], max_tokens=16, temperature=0)


def test_cancel_from_another_thread_stops_within_a_step(target, draft):
    s = target.generate_with_draft_stream(PROMPTS[0], draft, max_tokens=200, temperature=0,
                                          ignore_eos=True)
    next(s)
    t = threading.Thread(target=target.cancel)
    t.start()
    t.join()
    rest = list(s)
    assert s.finish_reason == "cancelled"
    assert len(rest) < 200
    assert not target.busy and not draft.busy
    assert target.generate("Hi", max_tokens=2, temperature=0)


def test_gemma_sliding_window_target_with_prompt_lookup(gemma):
    """Gemma 3 uses sliding-window attention: rejected draft tokens are dropped from a cache
    that also drops old positions. Long enough to pass its window (512) with a small n_ctx."""
    text = " ".join(f"Item {i} is on shelf {i % 7}." for i in range(120))
    p = f"{text}\nRepeat the list: Item 0 is on shelf 0. Item 1"
    with gemma.new_context(n_ctx=2048) as a, gemma.new_context(n_ctx=2048) as b:
        want = a.generate(p, max_tokens=64, temperature=0)
        got = b.generate_with_draft(p, "prompt", max_tokens=64, temperature=0, adaptive=False)
        assert b.last_stats.accepted_tokens > 0
        assert got == want
