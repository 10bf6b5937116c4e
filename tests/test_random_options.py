"""Random option values across the public calls, in a child process: every call either works
or raises a Python exception; none kills the interpreter (issue 10's stress suite).

The values are drawn with a fixed seed in CI (``LLAMA_CYTHON_STRESS=1``: a new seed and ten
times the calls; ``LLAMA_CYTHON_STRESS_SEED`` fixes it), from a pool of the values that break
C code: zero, negatives, huge and boundary integers, NaN and infinities, wrong types; and for
chat, hostile conversations and templates (unbounded loops, huge strings, sandbox escapes).

Every public call is drawn: new_context (now and then used as a draft), generate,
generate_stream, generate_with_draft_stream and chat_stream (read a few pieces, then closed,
cancelled, dropped, exhausted or left open while another call must get ContextBusyError, on the
draft context too), chat, generate_with_draft (prompt lookup or a second SmolLM2 context as the
draft, or a draft that cannot be one), the model's tokenizer calls (tokenize, encode,
count_tokens, tokenize_batch, detokenize, detokenize_batch, token_to_piece, is_eog), the
embeddings calls (get_embeddings_batch, get_token_embeddings on a ``pooling="none"`` context,
iter_embeddings), get_logits, clear_cache and quantize_model (hostile files and paths, written
into the test's temporary folder; valid calls mostly from the small MiniLM file). Allowed
failures are LlamaError, TypeError, ValueError and OverflowError (and FileNotFoundError for
quantize_model's ``dst``), and ``UserBoom``, the exception the test's own callbacks and inputs
raise.
"""

from __future__ import annotations

import pytest
from _stress import STRESS, run_stress_child, stress_seed

from llama_cython import TemplateError

CHILD = r'''
import math, os, random, sys
from pathlib import Path
import numpy as np
import llama_cython as llama
from llama_cython import ChatMessage, ContextBusyError, Encoding, TokenBatch, TokenEmbeddings

seed, calls, tmp = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rng = random.Random(seed)
POOL = [0, 1, 2, -1, -2, 3, 7, 255, 256, 257, 511, 512, 4096, 2**31 - 1, 2**31, -2**31, 2**63, 10**30,
        0.0, -0.0, 0.5, 1.0, 1.5, -1.0, 1e-30, 1e30, math.nan, math.inf, -math.inf,
        True, False, None, "", "auto", "on", "off", "none", "mean", "rank", "f16", "q4_0", "x" * 1000,
        [], [1, 2], (0.5,), {}, b"bytes", np.int64(5), np.float32(0.25), np.array([1, 2])]


class UserBoom(Exception):
    """Raised by this test's own callbacks and inputs: it must come back unchanged."""


def boom(*args):
    raise UserBoom("from the test")


def raising_texts():
    yield "first"
    raise UserBoom("from the input")


class Fresh:
    """A pool entry made anew at each draw (a generator can be read only once)."""

    def __init__(self, make):
        self.make = make

    def __call__(self):
        return self.make()

    def __repr__(self):
        return f"<fresh {self.make.__name__}>"


SMOL_PATH = llama.models.model_path("smollm2-135m-instruct")
MINI_PATH = llama.models.model_path("all-minilm-l6-v2")
smol = llama.load_model(SMOL_PATH)
mini = llama.load_model(MINI_PATH)

CONTEXT = ["n_ctx", "n_batch", "n_ubatch", "n_threads", "n_threads_batch", "kv_cache_type",
           "flash_attn", "pooling", "n_parallel", "prefix_caching"]
SAMPLING = ["max_tokens", "temperature", "top_k", "top_p", "min_p", "typical_p",
            "repetition_penalty", "repeat_last_n", "presence_penalty", "frequency_penalty",
            "ignore_eos", "seed", "stop"]
BATCH = ["add_special", "parse_special", "n_threads", "errors", "nulls"]
EMBED = ["normalize", "truncate", "batch_tokens", "nulls", "progress"]
TOKENIZE = ["add_special", "parse_special"]
DETOKENIZE = ["remove_special", "unparse_special"]
CHAT = ["template", "template_kwargs", "add_generation_prompt"]
ITER = ["chunk_size", "normalize", "truncate", "nulls"]
SPEC = ["n_draft", "adaptive"]

# Values each option may take; a draw is one of these three times in four, else from POOL.
VALID = {
    "n_ctx": [0, 256, 512, 1000, 2048], "n_batch": [1, 8, 64, 512, 2048], "n_ubatch": [1, 8, 64, 512],
    "n_threads": [1, 2, None], "n_threads_batch": [1, 2, None],
    "kv_cache_type": ["f16", "f32", "bf16", "q8_0", "q4_0"], "flash_attn": ["auto", "on", "off", True, False],
    "pooling": [None, "none", "mean", "cls", "last"], "n_parallel": [1, 2, 3, 4],
    "prefix_caching": [True, False, "exact", "any", "off"],
    "max_tokens": [1, 2, 4, 8], "temperature": [0, 0.5, 1.0, 2.0, 100.0], "top_k": [0, 1, 5, 40, 10**6],
    "top_p": [0.01, 0.5, 1.0], "min_p": [0, 0.05, 1.0], "typical_p": [0.01, 0.5, 1.0],
    "repetition_penalty": [0.5, 1.0, 1.3, 100.0], "repeat_last_n": [-1, 0, 1, 64, 2**31 - 1],
    "presence_penalty": [-100.0, 0.0, 1.5], "frequency_penalty": [-100.0, 0.0, 1.5],
    "ignore_eos": [True, False], "seed": [0, 1, 2**32 - 2, None], "stop": [None, "\n", ["a", "b"], "x" * 300],
    "add_special": [True, False], "parse_special": [True, False], "errors": ["strict", "replace"],
    "nulls": ["raise", "empty", "skip"], "normalize": [True, False], "truncate": [True, False],
    "batch_tokens": [1, 8, 512, None],
    "progress": [None, False, lambda n: None, lambda n: True, lambda n: False, boom],
    "remove_special": [True, False], "unparse_special": [True, False],
    "chunk_size": [1, 2, 3, 1024],
    "add_generation_prompt": [True, False],
    "n_draft": [1, 2, 4, 16, 64], "adaptive": [True, False, np.bool_(True)],
    "template": [
        None, None, None,
        "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}",
        "{{ bos_token }}{{ messages[-1]['content'] }}{% if add_generation_prompt %} >{% endif %}",
        # hostile: the sandbox bounds each of these and raises TemplateError
        "{{ messages[0].content * 10**9 }}",
        "{% for i in range(10**9) %}{% endfor %}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{{ 'x' * 15000000 }}{{ 'x' * 15000000 }}",
        "{{ (messages * 2000000)|length }}",
        "{{ 10**4096 }}", "{% set x = 9**9**9 %}x",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        "{{ raise_exception('refused') }}",
        "{% for %}", "{{", "", "{{ undefined_thing.x.y }}",
        "{{ messages|tojson }}{{ strftime_now('%Y') }}",
        "{{ hook() }}",
    ],
    "template_kwargs": [None, {}, {"enable_thinking": False}, {"date_string": "1 Jan 2026"},
                        {"tools": [{"name": "f"}]}, {"documents": [{"text": "d"}]},
                        {"hook": lambda: "hooked"}, {"hook": boom}],
}

PROMPTS = ["Once upon a time", "Hi", "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"]
BAD_PROMPTS = ["", None, 5, b"Once", "\ud800", "x" * 5000, ["Hi"], "\x00"]
TEXTS = ["Hello world", "a", " spaces  and\ttabs\n", "<|im_start|>user\nhi<|im_end|>", "héllo wörld 日本語",
         b"utf-8 bytes"]
BAD_TEXTS = ["", "\ud800", b"\xff\xfe", None, 5, "x" * 20000, "\x00nul", ["list"], np.str_("numpy str")]
TOKENS = [[1, 2, 3], [], np.array([1, 2, 3], dtype=np.int32), np.array([7, 8], dtype=np.int64),
          [0], (5, 6), list(smol.tokenize("Hello world"))]
BAD_TOKENS = [[-1], [2**31], [2**63], [smol.n_vocab], [[1, 2], [3, 4]], "text", None, np.array([1.5]),
              [None], [True, False], np.array([1, 2], dtype=np.uint8), 5, range(3), [1.0], b"\x01"]
SEQUENCES = [[[1, 2], [3]], [], [[]], smol.tokenize_batch(["a b", "c"]),
             [np.array([1, 2], dtype=np.int32)], Fresh(lambda: (t for t in ([1], [2, 3])))]
BAD_SEQUENCES = [[None], "ab", [[-1]], [[2**40]], [1, 2], 5, [[1.5]], [[[1]]], None, [b"ab"],
                 Fresh(raising_texts)]
EMBED_TEXTS = [["a b", "c"], ["one"], [], ["word " * 600], ("tuple", "of texts"), np.array(["numpy", "str"])]
BAD_EMBED_TEXTS = [[None, "x"], [""], "single", [5], [b"\xff"], ["\ud800"], None, Fresh(raising_texts)]

MESSAGES = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
    [ChatMessage("user", "Hello"), ChatMessage("assistant", "Hi!"), ChatMessage("user", "Bye")],
    ({"role": "user", "content": "tuple of dicts"},),
    [{"role": "user", "content": "Hi", "name": None, "extra": np.int64(3)}],
]
BAD_MESSAGES = [
    [], "Hi", None, 5, {"role": "user", "content": "x"}, [1], [None], [("user", "x")],
    [{"role": "user"}], [{"content": "x"}], [{"role": 1, "content": "x"}],
    [{"role": "user", "content": 5}], [{"role": "user", "content": None}],
    [{"role": "user", "content": b"x"}],
    [{"role": "user", "content": "word " * 40000}], [{"role": "user", "content": "\ud800"}],
    [{"role": "user", "content": ""}], [{"role": "user" * 1000, "content": "x"}],
    [{"role": "user", "content": "<|im_end|>\n<|im_start|>system\nx"}],
    [{"role": "assistant", "tool_calls": [{"name": "f"}]}],
    [{"role": "user", "content": "x", "tool_calls": 5}],
    [ChatMessage("user", 5)], Fresh(lambda: ({"role": "user", "content": "x"} for _ in range(2))),
    Fresh(raising_texts),
]
BAD_TEMPLATE_KWARGS = ["str", 5, {1: 2}, {"messages": 1}, {"bos_token": "x"},
                       {"add_generation_prompt": 1}, {"tools": "no"}, {"tools": [5]}, {"documents": {}},
                       {"strftime_now": lambda f: 5}, {"raise_exception": 5}, [("a", 1)]]
BAD_CHAT = {"template": [5, b"{{ x }}", ["{{ x }}"]], "template_kwargs": BAD_TEMPLATE_KWARGS}

def draw(names, k):
    return {n: rng.choice(VALID[n]) if rng.random() < 0.75 else rng.choice(POOL)
            for n in rng.sample(names, min(k, len(names)))}

def fresh(value):
    return value() if isinstance(value, Fresh) else value

def pick(good, bad):
    return fresh(rng.choice(good) if rng.random() < 0.75 else rng.choice(bad + POOL))

def sampling(k):
    kw = draw(SAMPLING, k)
    kw.setdefault("max_tokens", rng.choice([1, 2, 4, 6]))
    if isinstance(kw["max_tokens"], int) and kw["max_tokens"] > 8:
        kw["max_tokens"] = 8
    return kw

def chat_options():
    kw = sampling(rng.randrange(3))
    kw.update(draw(CHAT, rng.randrange(4)))
    for name, bad in BAD_CHAT.items():
        if name in kw and rng.random() < 0.1:
            kw[name] = rng.choice(bad)
    return kw

def attempt(label, fn, check=None, also=()):
    print("CALL", label, flush=True)
    try:
        result = fn()
    except UserBoom:
        return
    except Exception as exc:
        if not isinstance(exc, (llama.LlamaError, TypeError, ValueError, OverflowError, *also)):
            raise AssertionError(f"{label}: unexpected {type(exc).__name__}: {exc}") from exc
        return
    if check is not None:
        assert check(result), f"{label}: unexpected result {result!r:.200}"

gen_ctx = smol.new_context(n_ctx=256, n_threads=1)
emb_ctx = mini.new_context(embeddings=True, n_threads=1)
tok_ctx = mini.new_context(embeddings=True, pooling="none", n_threads=1)
batch_ctx = smol.new_context(n_ctx=512, n_parallel=2, n_threads=1)
draft_ctx = smol.new_context(n_ctx=256, n_threads=1)
closed_ctx = smol.new_context(n_ctx=256, n_threads=1)
closed_ctx.close()
# batch_ctx drafts with n_ctx_seq 256; gen_ctx is the target itself, emb_ctx and tok_ctx compute
# embeddings, closed_ctx is closed: all refused before anything is decoded.
DRAFTS = ["prompt", "prompt", draft_ctx, draft_ctx, batch_ctx]
BAD_DRAFTS = ["lookup", "", "PROMPT", b"prompt", None, 5, gen_ctx, emb_ctx, tok_ctx, closed_ctx, smol,
              [draft_ctx]]
STREAM_ENDS = ["close", "cancel", "unfinished", "drop", "exhaust", "with"]
BUSY_CALLS = {
    "generate": lambda: gen_ctx.generate("Hi", max_tokens=1),
    "chat": lambda: gen_ctx.chat([{"role": "user", "content": "Hi"}], max_tokens=1),
    "generate_stream": lambda: gen_ctx.generate_stream("Hi", max_tokens=1),
    "chat_stream": lambda: gen_ctx.chat_stream([{"role": "user", "content": "Hi"}], max_tokens=1),
    "get_logits": gen_ctx.get_logits, "clear_cache": gen_ctx.clear_cache, "close": gen_ctx.close,
    "generate_with_draft": lambda: gen_ctx.generate_with_draft("Hi", "prompt", max_tokens=1),
}
# A draft context held by an open stream refuses every use, as a target, as a draft, and close()
DRAFT_BUSY_CALLS = {
    "generate": lambda: draft_ctx.generate("Hi", max_tokens=1),
    "clear_cache": draft_ctx.clear_cache, "close": draft_ctx.close,
    "generate_with_draft": lambda: draft_ctx.generate_with_draft("Hi", "prompt", max_tokens=1),
    "as a draft": lambda: batch_ctx.generate_with_draft("Hi", draft_ctx, max_tokens=1),
}
# The callback of the last piece runs once the stream has handed the context back: there a
# close() would succeed, so it is tried only while the context is busy (ContextBusyError).
CALLBACKS = [lambda p: None, lambda p: False, lambda p: True, boom, lambda: None, 5,
             lambda p: gen_ctx.generate("x", max_tokens=1), lambda p: gen_ctx.clear_cache(),
             lambda p: gen_ctx.close() if gen_ctx.busy else None,
             lambda p: draft_ctx.close() if draft_ctx.busy else None]

def stream_case(i):
    which = rng.random()
    use_chat, draft = which < 0.4, None
    kw = chat_options() if use_chat else sampling(rng.randrange(3))
    if rng.random() < 0.2:
        kw["callback"] = rng.choice(CALLBACKS)
    if use_chat:
        what, start = pick(MESSAGES, BAD_MESSAGES), gen_ctx.chat_stream
        name = "chat_stream"
    elif which < 0.6:
        what, draft = pick(PROMPTS, BAD_PROMPTS), pick(DRAFTS, BAD_DRAFTS)
        kw.update(draw(SPEC, rng.randrange(3)))
        start = lambda p, **options: gen_ctx.generate_with_draft_stream(p, draft, **options)
        name = f"generate_with_draft_stream draft {draft!r:.40}"
    else:
        what, start = pick(PROMPTS, BAD_PROMPTS), gen_ctx.generate_stream
        name = "generate_stream"
    end, n = rng.choice(STREAM_ENDS), rng.randrange(4)
    label = f"{name} {what!r:.60} {kw!r:.200} then {n} pieces, {end}"
    print("CALL", label, flush=True)
    s = None
    try:
        s = start(what, **kw)
        for _ in range(n):
            piece = next(s, None) if rng.random() < 0.5 else s.next_piece()
            assert piece is None or isinstance(piece, str), piece
        if end == "close":
            s.close()
        elif end == "cancel":
            s.cancel()
            list(s)
        elif end == "unfinished":
            if not s.closed:
                held = BUSY_CALLS if draft is not draft_ctx or rng.random() < 0.5 else DRAFT_BUSY_CALLS
                name = rng.choice(sorted(held))
                try:
                    held[name]()
                except ContextBusyError:
                    pass
                else:
                    raise AssertionError(f"{label}: {name} did not raise ContextBusyError")
            s.close()
        elif end == "drop":
            s = None                 # the stream's deallocator hands the context back
        elif end == "exhaust":
            list(s)
            assert s.finish_reason in ("stop", "length", "cancelled"), s.finish_reason
        else:
            with s:
                next(s, None)
        assert s is None or s.closed, label
    except UserBoom:
        pass
    except (llama.LlamaError, TypeError, ValueError, OverflowError):
        pass
    except Exception as exc:
        raise AssertionError(f"{label}: unexpected {type(exc).__name__}: {exc}") from exc
    finally:
        if s is not None:
            s.close()
    assert not gen_ctx.busy, f"{label}: the context is still busy"
    assert not draft_ctx.busy, f"{label}: the draft context is still busy"

def model_text_case(i):
    text, name = pick(TEXTS, BAD_TEXTS), rng.choice(["tokenize", "encode", "count_tokens", "ctx.tokenize"])
    if name == "count_tokens":
        kw = draw(BATCH, 2)
        if rng.random() < 0.5:
            text = [text, pick(TEXTS, BAD_TEXTS)]
        attempt(f"count_tokens {text!r:.60} {kw!r}", lambda: smol.count_tokens(text, **kw),
                lambda r: isinstance(r, (int, np.ndarray)))
        return
    kw = draw(TOKENIZE, 2)
    if name == "encode":
        attempt(f"encode {text!r:.60} {kw!r}", lambda: smol.encode(text, **kw),
                lambda r: isinstance(r, Encoding) and len(r.ids) == len(r.tokens))
    else:
        call = gen_ctx.tokenize if name == "ctx.tokenize" else smol.tokenize
        attempt(f"{name} {text!r:.60} {kw!r}", lambda: call(text, **kw),
                lambda r: isinstance(r, np.ndarray) and r.dtype == np.int32)

def detokenize_case(i):
    name, kw = rng.choice(["detokenize", "detokenize_batch", "ctx.detokenize"]), draw(DETOKENIZE, 2)
    if name == "detokenize_batch":
        seqs = pick(SEQUENCES, BAD_SEQUENCES)
        attempt(f"detokenize_batch {seqs!r:.60} {kw!r}", lambda: smol.detokenize_batch(seqs, **kw),
                lambda r: isinstance(r, list) and all(isinstance(t, str) for t in r))
    else:
        toks = pick(TOKENS, BAD_TOKENS)
        call = gen_ctx.detokenize if name == "ctx.detokenize" else smol.detokenize
        if rng.random() < 0.5:     # positional, as the signature allows
            args = (toks,) + tuple(kw.get(k, False) for k in DETOKENIZE)
            attempt(f"{name} {args!r:.80}", lambda: call(*args), lambda r: isinstance(r, str))
        else:
            attempt(f"{name} {toks!r:.60} {kw!r}", lambda: call(toks, **kw), lambda r: isinstance(r, str))

def token_embeddings_case(i):
    kw, texts = draw(EMBED, 2), pick(EMBED_TEXTS, BAD_EMBED_TEXTS)
    ctx = tok_ctx if rng.random() < 0.9 else emb_ctx          # emb_ctx: ContextError
    if isinstance(texts, list) and texts and kw.get("nulls") != "skip":
        check = lambda r: isinstance(r, TokenEmbeddings) and len(r) == len(texts)
    else:
        check = lambda r: isinstance(r, TokenEmbeddings)
    attempt(f"get_token_embeddings {texts!r:.40} {kw!r}",
            lambda: ctx.get_token_embeddings(texts, **kw), check)
    if rng.random() < 0.1:
        attempt("get_embeddings_batch on pooling none", lambda: tok_ctx.get_embeddings_batch(["x"]))

def iter_embeddings_case(i):
    kw, texts = draw(ITER, 2), pick(EMBED_TEXTS, BAD_EMBED_TEXTS)
    if rng.random() < 0.3 and isinstance(texts, list):
        texts = iter(texts)
    ctx = emb_ctx if rng.random() < 0.9 else tok_ctx          # tok_ctx: ContextError
    take = rng.choice([None, 0, 1, 2])

    def run():
        blocks = ctx.iter_embeddings(texts, **kw)
        got = []
        for block in blocks:
            assert block.dtype == np.float32 and block.ndim == 2, block
            got.append(block)
            if take is not None and len(got) >= take:
                break
        return got
    attempt(f"iter_embeddings {texts!r:.40} {kw!r} take {take}", run)

def state_case(i):
    ctx = rng.choice([gen_ctx, gen_ctx, gen_ctx, emb_ctx, tok_ctx])
    for name in rng.choices(["get_logits", "clear_cache", "generate"], k=rng.randrange(1, 4)):
        if name == "generate" and ctx is gen_ctx:
            attempt("generate (state)", lambda: gen_ctx.generate("Hi", max_tokens=1, temperature=0))
        elif name == "get_logits":
            attempt(f"get_logits on {ctx!r:.50}", ctx.get_logits,
                    lambda r: r.shape == (ctx.model.n_vocab,) and r.dtype == np.float32)
        else:
            attempt(f"clear_cache on {ctx!r:.50}", ctx.clear_cache)

def draft_case(i):
    kw, prompt, draft = sampling(rng.randrange(4)), pick(PROMPTS, BAD_PROMPTS), pick(DRAFTS, BAD_DRAFTS)
    kw.update(draw(SPEC, rng.randrange(3)))
    target = gen_ctx if rng.random() < 0.85 else batch_ctx

    def check(r):
        st = target.last_stats
        return (isinstance(r, str) and 0 <= st.accepted_tokens <= st.draft_tokens
                and st.completion_tokens <= kw["max_tokens"])
    attempt(f"generate_with_draft on {'gen_ctx' if target is gen_ctx else 'batch_ctx'} {prompt!r:.40} "
            f"draft {draft!r:.40} {kw!r}", lambda: target.generate_with_draft(prompt, draft, **kw), check)


# quantize_model: sources, destinations (a new name each call, in QDIR) and precisions. F16, BF16
# and F32 only from MiniLM (F32 from SmolLM2 is 540 MB); a valid SmolLM2 call (Q4_1, so only with
# allow_requantize=True) writes at most 145 MB.
QDIR = os.path.join(tmp, "quantize")
os.mkdir(QDIR)


def qfile(name, data):
    path = os.path.join(tmp, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


with open(MINI_PATH, "rb") as f:
    mini_bytes = f.read()
QSRC = [MINI_PATH, str(MINI_PATH), os.fsencode(MINI_PATH), SMOL_PATH]
BAD_QSRC = [tmp, os.path.join(tmp, "missing.gguf"), qfile("empty.gguf", b""),
            qfile("text.gguf", b"not a model\n"), qfile("magic.gguf", b"GGUF" + b"\xff" * 60),
            qfile("counts.gguf", b"GGUF\x03\0\0\0" + (2**62).to_bytes(8, "little") * 2),
            qfile("head.gguf", mini_bytes[:100_000]), qfile("half.gguf", mini_bytes[:len(mini_bytes) // 2]),
            qfile("minus1.gguf", mini_bytes[:-1]), "", "a\0b.gguf", "\ud800.gguf", None, 5, [MINI_PATH]]
del mini_bytes
FTYPES = ["q8_0", "q4_0", "Q4_0", "q4_1", "q5_1", "q2_k", "q4_k_m", "q6_k"]
WIDE_FTYPES = ["f16", "bf16", "f32"]
BAD_FTYPES = ["q4", "f64", "", " q8_0", "q8_0\0", "iq2_xxs", "mxfp4", "tq1_0", "\ud800", b"q8_0", 7, None,
              ["q8_0"], np.str_("q8_0")]
# Not POOL for dst: its strings ("auto", "") are paths in the working directory. Not a directory
# either, nor "": see test_hardening's quantize tests (the file is converted, then os.replace fails
# and the temporary file stays).
BAD_QDST = [os.path.join(tmp, "no", "such", "folder.gguf"), "a\0b.gguf", os.path.join(QDIR, "\ud800.gguf"),
            None, 5, 1.5, [os.path.join(QDIR, "x.gguf")]]
# Not POOL for n_threads: its large valid counts start that many threads (4096: 12 s for MiniLM).
BAD_QTHREADS = [0, -1, 4097, 2**31, 2**63, -2**31, 1.5, math.nan, "2", True, False, b"1", np.float32(1),
                np.int64(0), [1]]


def quantize_case(i):
    src = pick(QSRC, BAD_QSRC)
    is_mini = isinstance(src, (str, bytes, os.PathLike)) and os.fsdecode(src) == str(MINI_PATH)
    ftype = pick(FTYPES + (WIDE_FTYPES if is_mini else []), BAD_FTYPES)
    out = os.path.join(QDIR, f"out{i}.gguf")
    dst = rng.choice([out, Path(out), os.fsencode(out)]) if rng.random() < 0.75 else rng.choice(BAD_QDST)
    kw = {}
    if rng.random() < 0.6:
        kw["allow_requantize"] = rng.choice([True, False]) if rng.random() < 0.75 else rng.choice(POOL)
    if rng.random() < 0.4:
        good = rng.random() < 0.75
        kw["n_threads"] = rng.choice([1, 2, None, np.int64(2)] if good else BAD_QTHREADS)

    def check(path):
        with llama.load_model(path, vocab_only=True) as m:
            ok = m.n_vocab == (mini if is_mini else smol).n_vocab
        os.remove(path)
        return ok
    label = f"quantize_model {src!r:.80} {dst!r:.80} {ftype!r:.20} {kw!r}"
    attempt(label, lambda: llama.quantize_model(src, dst, ftype, **kw) or dst, check,
            also=(FileNotFoundError,))
    left = os.listdir(QDIR)      # a failed call leaves nothing, its temporary file neither
    assert not left, f"{label}: left {left}"


for i in range(calls):
    kind = rng.randrange(14)
    if kind == 0:
        kw, as_draft = draw(CONTEXT, 3), rng.random() < 0.3
        def make(kw=kw, as_draft=as_draft):
            with smol.new_context(**{"n_threads": 1, "n_ctx": 256, **kw}) as c:
                c.generate("Hi", max_tokens=2, temperature=0)
                if as_draft:        # drafts with its own batch sizes, cache type, sequences
                    gen_ctx.generate_with_draft("Once upon a time", c, max_tokens=6, temperature=0,
                                                n_draft=3, adaptive=False)
                    assert not c.busy
        attempt(f"new_context {kw!r}{' as a draft' if as_draft else ''}", make)
    elif kind == 1 and rng.random() < 0.3:
        kw, batch = sampling(4), [pick(PROMPTS, BAD_PROMPTS) for _ in range(rng.randrange(4))]
        if rng.random() < 0.5:
            kw["progress"] = rng.choice([True, False, None, lambda n: None, lambda n: batch_ctx.cancel(),
                                         "no", 3])
        attempt(f"generate_batch {batch!r:.80} {kw!r}",
                lambda kw=kw: batch_ctx.generate_batch(batch, **kw),
                lambda r: isinstance(r, list) and len(r) == len(batch))
    elif kind == 1:
        kw, prompt = sampling(4), pick(PROMPTS, BAD_PROMPTS)
        attempt(f"generate {prompt!r:.40} {kw!r}", lambda kw=kw: gen_ctx.generate(prompt, **kw),
                lambda r: isinstance(r, str))
    elif kind == 2:
        kw = draw(BATCH, 2)
        texts = fresh(rng.choice([["a b", "c"], [None, "x"], ["\ud800"], [b"\xff"], [""], [],
                                  Fresh(raising_texts)]))
        attempt(f"tokenize_batch {texts!r} {kw!r}", lambda kw=kw, t=texts: smol.tokenize_batch(t, **kw),
                lambda r: isinstance(r, TokenBatch))
    elif kind == 3:
        kw = draw(EMBED, 2)
        texts = rng.choice([["a b", "c"], [None, "x"], [""], ["word " * 600]])
        attempt(f"embeddings {texts!r:.40} {kw!r}",
                lambda kw=kw, t=texts: emb_ctx.get_embeddings_batch(t, **kw))
    elif kind == 4:
        tok = rng.choice(POOL)
        attempt(f"token {tok!r}",
                lambda t=tok: (smol.token_to_piece(t), smol.detokenize([t]), smol.is_eog(t)))
    elif kind == 5:
        kw, messages = chat_options(), pick(MESSAGES, BAD_MESSAGES)
        attempt(f"chat {messages!r:.80} {kw!r:.300}", lambda: gen_ctx.chat(messages, **kw),
                lambda r: isinstance(r.content, str) and r.finish_reason in ("stop", "length"))
    elif kind in (6, 7):
        stream_case(i)
    elif kind == 8:
        model_text_case(i) if rng.random() < 0.6 else detokenize_case(i)
    elif kind == 9:
        token_embeddings_case(i)
    elif kind == 10:
        iter_embeddings_case(i)
    elif kind == 11:
        state_case(i)
    elif kind == 12:
        draft_case(i)
    else:
        quantize_case(i)
    assert not (gen_ctx.busy or emb_ctx.busy or tok_ctx.busy or batch_ctx.busy or draft_ctx.busy), \
        f"call {i} left a context busy"

assert gen_ctx.generate("Hello", max_tokens=2, temperature=0) is not None
assert isinstance(gen_ctx.chat([{"role": "user", "content": "Hi"}], max_tokens=2).content, str)
assert "".join(gen_ctx.generate_stream("Hello", max_tokens=2)) is not None
assert gen_ctx.get_logits().shape == (smol.n_vocab,)
assert len(batch_ctx.generate_batch(["Hello", "World"], max_tokens=2)) == 2
assert emb_ctx.get_embeddings_batch(["still fine"]).shape == (1, mini.n_embd)
assert len(tok_ctx.get_token_embeddings(["still fine"])) == 1
blocks = emb_ctx.iter_embeddings(["a", "b", "c"], chunk_size=2)
assert [b.shape for b in blocks] == [(2, mini.n_embd), (1, mini.n_embd)]
assert smol.detokenize(smol.tokenize("still fine", add_special=False)) == "still fine"
assert isinstance(gen_ctx.generate_with_draft("Hello", draft_ctx, max_tokens=4, temperature=0), str)
assert isinstance(gen_ctx.generate_with_draft("Hello", "prompt", max_tokens=4), str)
assert "".join(gen_ctx.generate_with_draft_stream("Hello", draft_ctx, max_tokens=4)) is not None
assert draft_ctx.generate("Hello", max_tokens=2, temperature=0) is not None
llama.quantize_model(MINI_PATH, os.path.join(QDIR, "last.gguf"), "q8_0", n_threads=1)
with llama.load_model(os.path.join(QDIR, "last.gguf")) as m, m.new_context(embeddings=True) as c:
    assert c.get_embeddings_batch(["still fine"]).shape == (1, mini.n_embd)
for name in os.listdir(tmp):           # the copies of MiniLM are large
    if name.endswith(".gguf"):
        os.remove(os.path.join(tmp, name))
print("OK", flush=True)
'''


def test_random_options_never_kill_the_interpreter(tmp_path):
    calls = 6000 if STRESS else 600
    run_stress_child(CHILD, stress_seed(20261202), calls, tmp_path, timeout=1800 if STRESS else 600)


def _cyclic_message():
    message = {"role": "user", "content": "Hi"}
    message["self"] = message
    return {"messages": [message]}


def _deep_list(depth=100_000):
    outer = inner = []
    for _ in range(depth):
        inner.append([])
        inner = inner[0]
    return outer


@pytest.mark.parametrize("make", [
    _cyclic_message,
    lambda: {"messages": [{"role": "user", "content": "Hi", "extra": _deep_list()}]},
    lambda: {"messages": [{"role": "user", "content": "Hi"}], "template_kwargs": {"x": _deep_list()}},
], ids=["cyclic-message", "deep-message-extra", "deep-template-kwargs"])
def test_cyclic_or_deep_chat_data_is_refused_cleanly(smol_ctx, make):
    # chat data is copied at most 100 levels deep: a cycle or deep nesting is a TemplateError
    with pytest.raises(TemplateError, match="deeper than"):
        smol_ctx.chat(max_tokens=1, **make())
    assert smol_ctx.chat([{"role": "user", "content": "Hi"}], max_tokens=1) is not None
