"""Long runs of characters under every BPE pre-tokenizer llama.cpp knows (issue 10 item 2).

llama.cpp splits text with ``std::regex`` for most pre-tokenizers, and libstdc++'s matcher
recurses for every character of a match: 320 bytes of C stack per character, the same for every
pattern (``scripts/measure_pretok_stack.py``). A run of 26,000 characters that one alternative
matches (``"ACGT" * 6600``, a base64 blob, a URL, 26,000 spaces) overflowed the 8 MiB main stack
with SIGSEGV, and a run of 400 characters overflows a 128 KiB thread stack (musl's default).

Each ``tokenizer.ggml.pre`` value gets SmolLM2's vocabulary under that pre-tokenizer
(``tests/_pretok_models.py``). The calls run in child processes, one per group of values; the
child prints a ``CALL`` line before every call, so a child killed by a signal names the value,
the call and the input. Per value, the child checks:

* tier 1, every value: runs of every kind (letters, ``ACGT``, digits, punctuation, spaces,
  newlines, base64, a URL: ``RUN`` characters; unpunctuated prose: ``RUN_SPACED``) through
  ``tokenize``, ``tokenize_batch``, ``count_tokens`` (and ``encode`` for ``ENCODE_KINDS``) on a
  thread with a ``SMALL_STACK`` stack, which each of them overflowed before the fix. The ids
  agree between the calls and with a plain ``tokenize`` of the same text on the main thread (a
  run this short fits the 8 MiB main stack: that call is the code as it was) and, for the values
  of ``FRESH_REFERENCE`` (every value with ``LLAMA_CYTHON_STRESS=1``), with a plain ``tokenize``
  in a separate fresh process;
* tier 2, the values of ``LONG_VALUES`` (every value with ``LLAMA_CYTHON_STRESS=1``): runs of
  ``LONG_RUN`` characters on the main thread, beyond what its 8 MiB held;
* tier 3, the (value, kind) pairs of ``HUGE`` (more with ``LLAMA_CYTHON_STRESS=1``): 1 MiB runs.

A value loads in ~0.7 s (llama.cpp's vocabulary load), so 91 values cost a minute of CPU before
any text; two children run at a time.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _pretok_models import PRE_TOKENIZER_BRANCHES, PRE_TOKENIZERS, write_pretok_model  # noqa: E402

STRESS = os.environ.get("LLAMA_CYTHON_STRESS") == "1"

SMALL_STACK = 128 << 10      # tier 1 thread: a 1 Ki-character match needs 320 KiB of stack
RUN = 1 << 10                # tier 1 run length, characters
RUN_SPACED = 8 << 10         # tier 1 run length of the kinds with single spaces inside (see below)
LONG_RUN = 32 << 10          # tier 2: a 32 Ki-character match needs 10 MiB (8 MiB main stack)
HUGE_RUN = 1 << 20           # tier 3

# Each kind: its prefix, then the unit repeated, cut to the run length in characters.
_B64 = base64.b64encode(b"".join(hashlib.sha256(i.to_bytes(4, "little")).digest()
                                 for i in range(2048))).decode("ascii")
KINDS: dict[str, str] = {
    "letters": "abcdefghijklmnopqrstuvwxyz",
    "ACGT": "ACGT",
    "digits": "0123456789",
    "punct": "!?.,;:#%&*",
    "spaces": " ",
    "newlines": "\n",
    "base64": _B64,
    "url": "seg-01/Ab_9.x%20y?k=v&",
    "prose": "the quick brown fox jumps over the lazy dog ",   # exaone-moe matches across spaces
}
PREFIX = {"url": "https://example.com/"}
# Kinds with single spaces inside. A stack sized from the longest run without whitespace is
# enough for every pattern but those that match across a space (exaone-moe:
# `(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+`), so these are long enough in tier 1 to overflow a stack
# of a few MiB, for every value.
SPACED = ("prose",)
# Tier 1 kinds ("letters" only under stress: "ACGT" and base64 are letter runs too).
TIER1_KINDS = tuple(k for k in KINDS if k != "letters")
# Tier 1 calls encode (Python-side alignment, ~25 us per id) on these kinds only.
ENCODE_KINDS = ("ACGT", "spaces")

# Kinds left out for a value, with the reason (a llama.cpp bug other than the stack).
SKIP: dict[tuple[str, str], str] = {
    # byte_encode=false and no space escaping: a piece of two spaces would reach find_bpe_rank,
    # which aborts (GGML_ASSERT); refused instead, see test_whitespace_pre_refuses_runs_of_spaces
    ("whitespace", "spaces"): "refused: llama.cpp aborts on runs of spaces",
}
# Kinds whose run is shorter for a value, with the reason.
SHORTER: dict[tuple[str, str], tuple[int, str]] = {
    # (?=(\d{3})+(?!\d)) scans to the end of the digit run at every position: quadratic
    # (2 Ki digits 1 s, 32 Ki digits 330 s)
    ("superbpe", "digits"): (1024, "quadratic in llama.cpp"),
}

# Tier 2 (main thread, LONG_RUN): one value per kind of splitter, by default; encode on the
# first kind of each.
LONG_VALUES: dict[str, tuple[str, ...]] = {
    "tekken": ("ACGT", "spaces"),                            # collapsed text, lookaheads
    "deepseek-llm": ("letters",),                            # std::wregex on code points
    "whitespace": ("url", "base64"),                         # \S+: any non-space run
    "exaone-moe": ("prose",),                                # a match spans single spaces
    "default": ("digits",),                                  # the fallback of a missing pre
}
LONG_KINDS_STRESS = ("letters", "ACGT", "digits", "punct", "spaces", "newlines", "base64", "url", "prose")

# Tier 3 (main thread, 1 MiB); encode only under stress (about 25 s per MiB of ids).
HUGE: tuple[tuple[str, str], ...] = (("tekken", "punct"),)
HUGE_STRESS: tuple[tuple[str, str], ...] = (
    ("tekken", "ACGT"), ("gpt-4o", "letters"), ("deepseek-llm", "letters"), ("whitespace", "url"),
    ("default", "digits"), ("exaone-moe", "prose"), ("bloom", "base64"), ("youtu", "spaces"),
)

FRESH_REFERENCE = ("tekken", "deepseek-llm", "exaone-moe", "llama3")

N_WORKERS = max(1, min(2, os.cpu_count() or 1))   # children at a time (the test machine has 2 cores)
N_GROUPS = 4                 # children (each ~1.5 s to start), two at a time
CHILD_TIMEOUT = 1800 if STRESS else 300


def run_length(pre: str, kind: str, n: int) -> int:
    short = SHORTER.get((pre, kind))
    return min(n, short[0]) if short else n


def make_text(kind: str, n: int) -> str:
    unit, prefix = KINDS[kind], PREFIX.get(kind, "")
    return (prefix + unit * (n // len(unit) + 1))[:n]


def digest(ids: Any) -> str:
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int32).tobytes()).hexdigest()[:16]


# -- the child --------------------------------------------------------------------------------

def _say(*fields: object) -> None:
    print("\t".join(str(f) for f in fields), flush=True)


class _Checker:
    """Runs the calls for one value and collects what disagrees."""

    def __init__(self, model: Any, pre: str) -> None:
        self.m = model
        self.pre = pre
        self.problems: list[str] = []

    def call(self, api: str, what: str, where: str, fn: Any) -> Any:
        _say("CALL", self.pre, api, what, where)
        try:
            return fn()
        except Exception as exc:
            self.problems.append(f"{api}({what}) on the {where} raised {type(exc).__name__}: {exc}")
            return None

    def check(self, texts: dict[str, str], where: str, ref: dict[str, Any] | None,
              encode: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
        """tokenize each, tokenize_batch and count_tokens of all, encode each; compare."""
        import numpy as np

        names = list(texts)
        label = {k: f"{k} x{len(texts[k])}" for k in names}
        ids = {k: self.call("tokenize", label[k], where, lambda k=k: self.m.tokenize(texts[k]))
               for k in names}
        all_label = ", ".join(label.values())
        batch = self.call("tokenize_batch", all_label, where,
                          lambda: self.m.tokenize_batch([texts[k] for k in names]))
        counts = self.call("count_tokens", all_label, where,
                           lambda: self.m.count_tokens([texts[k] for k in names]))
        for i, k in enumerate(names):
            got = ids[k]
            if got is None:
                continue
            if ref is not None and ref.get(k) is not None and not np.array_equal(got, ref[k]):
                self.problems.append(f"tokenize({label[k]}) on the {where}: {len(got)} ids differ from "
                                     f"a plain tokenize on the main thread ({len(ref[k])} ids)")
            if batch is not None and not np.array_equal(batch[i], got):
                self.problems.append(f"tokenize_batch({label[k]}) on the {where}: {len(batch[i])} ids "
                                     f"differ from tokenize ({len(got)} ids)")
            if counts is not None and int(counts[i]) != len(got):
                self.problems.append(f"count_tokens({label[k]}) on the {where}: {int(counts[i])} != "
                                     f"{len(got)} ids of tokenize")
            if k in encode:
                enc = self.call("encode", label[k], where, lambda k=k: self.m.encode(texts[k]))
                if enc is not None and not np.array_equal(enc.ids, got):
                    self.problems.append(f"encode({label[k]}) on the {where}: {len(enc.ids)} ids differ "
                                         f"from tokenize ({len(got)} ids)")
        return ids

    def on_small_thread(self, fn: Any) -> Any:
        out: dict[str, Any] = {}

        def body() -> None:
            try:
                out["value"] = fn()
            except BaseException as exc:     # reported, not lost in the thread
                out["error"] = exc

        old = threading.stack_size(SMALL_STACK)
        try:
            t = threading.Thread(target=body, name=f"small-stack-{self.pre}")
            t.start()
            t.join()
        finally:
            threading.stack_size(old)
        if "error" in out:
            self.problems.append(f"the {SMALL_STACK >> 10} KiB thread raised {out['error']!r}")
        return out.get("value")


def _child_value(llama: Any, job: dict[str, Any], reference_only: bool) -> None:
    pre = job["pre"]
    t0 = time.perf_counter()
    _say("CALL", pre, "load_model", "vocab_only", "main thread")
    model = llama.load_model(job["path"], vocab_only=True)
    c = _Checker(model, pre)
    kinds = [k for k in KINDS if (pre, k) not in SKIP and (STRESS or k in TIER1_KINDS)]
    short = {k: make_text(k, run_length(pre, k, RUN_SPACED if k in SPACED else RUN)) for k in kinds}

    # the code as it was: a plain tokenize, on the main thread, of runs that fit its 8 MiB
    where = "main thread" if reference_only else "main thread (plain)"
    ref = {k: c.call("tokenize", f"{k} x{len(t)}", where, lambda t=t: model.tokenize(t))
           for k, t in short.items()}
    ids = ref
    if not reference_only:
        small = f"{SMALL_STACK >> 10} KiB thread"
        ids = c.on_small_thread(lambda: c.check(short, small, ref, ENCODE_KINDS)) or {}
        texts = {k: make_text(k, run_length(pre, k, LONG_RUN))
                 for k in job.get("long_kinds") or () if (pre, k) not in SKIP}
        if texts:
            c.check(texts, "main thread", None, list(texts)[:2] if STRESS else list(texts)[:1])
        for kind in job.get("huge_kinds") or ():
            c.check({kind: make_text(kind, run_length(pre, kind, HUGE_RUN))}, "main thread", None,
                    [kind] if STRESS else [])
    result = {"pre": pre, "problems": c.problems, "secs": round(time.perf_counter() - t0, 3),
              "digests": {k: digest(v) for k, v in ids.items() if v is not None}}
    _say("RESULT", json.dumps(result))
    model.close()


def child_main(spec_path: str) -> int:
    import faulthandler

    faulthandler.enable()
    import llama_cython as llama

    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    for job in spec["values"]:
        _child_value(llama, job, bool(spec.get("reference_only")))
    _say("DONE")
    return 0


# -- the parent -------------------------------------------------------------------------------

@dataclass
class Outcome:
    pre: str
    problems: list[str] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)
    done: bool = False


def _signal_name(rc: int) -> str:
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


def run_children(values: list[dict[str, Any]], folder: Path, tag: str,
                 reference_only: bool = False) -> dict[str, Outcome]:
    """Run ``values`` in a child; after a crash, go on in a new child from the next value."""
    outcomes = {v["pre"]: Outcome(v["pre"]) for v in values}
    todo = list(values)
    attempt = 0
    while todo:
        attempt += 1
        spec = folder / f"spec-{tag}-{attempt}.json"
        spec.write_text(json.dumps({"values": todo, "reference_only": reference_only}), encoding="utf-8")
        cmd = [sys.executable, "-X", "faulthandler", __file__, str(spec)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT,
                                  errors="replace")
            rc, out, err = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as exc:
            rc = None
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        last_call: list[str] | None = None
        for line in out.splitlines():
            parts = line.split("\t")
            if parts[0] == "CALL":
                last_call = parts[1:]
            elif parts[0] == "RESULT":
                r = json.loads(parts[1])
                o = outcomes[r["pre"]]
                o.problems += r["problems"]
                o.digests = r["digests"]
                o.done = True
                last_call = None
        todo = [v for v in todo if not outcomes[v["pre"]].done]
        if rc == 0 or not todo:
            for v in todo:
                outcomes[v["pre"]].problems.append(f"the child ended (rc {rc}) before this value")
            break
        how = (f"timed out after {CHILD_TIMEOUT} s" if rc is None
               else f"was killed by {_signal_name(rc)}" if rc < 0 else f"exited with status {rc}")
        if rc == -signal.SIGSEGV:
            how += " (most likely a C stack overflow in llama.cpp's std::regex)"
        lines = err.strip().splitlines()
        key = [ln.strip() for ln in lines if any(m in ln for m in (
            "Fatal Python error", "GGML_ASSERT", "terminate called", "what():"))]
        tail = (" | ".join(key[:3] or [ln.strip() for ln in lines[-3:]])
                or "(nothing: faulthandler has no signal stack on llama.cpp's threads)")
        if last_call is None:
            victim = todo[0]["pre"]
            what = "between calls"
        else:
            victim, api, text, where = [*last_call, "", "", "", ""][:4]
            what = f"in {api}({text}) on the {where}"
        outcomes[victim].problems.append(f"the child {how} {what}; stderr: {tail[-1000:]}")
        outcomes[victim].done = True
        todo = [v for v in todo if not outcomes[v["pre"]].done]
    return outcomes


def _weight(job: dict[str, Any]) -> float:
    """Rough seconds of a value: the load, tier 1, then the long and huge runs."""
    return 1.0 + 1.0 * len(job.get("long_kinds") or ()) + 9.0 * len(job.get("huge_kinds") or ())


def plan(paths: dict[str, Path]) -> list[list[dict[str, Any]]]:
    """The values in N_GROUPS groups of about equal weight (largest first into the lightest)."""
    huge = HUGE + (HUGE_STRESS if STRESS else ())
    jobs = []
    for pre in PRE_TOKENIZERS:
        long_kinds = list(LONG_KINDS_STRESS) if STRESS else list(LONG_VALUES.get(pre, ()))
        jobs.append({"pre": pre, "path": str(paths[pre]), "long_kinds": long_kinds,
                     "huge_kinds": [k for p, k in huge if p == pre]})
    groups: list[list[dict[str, Any]]] = [[] for _ in range(N_GROUPS)]
    for job in sorted(jobs, key=_weight, reverse=True):
        min(groups, key=lambda g: sum(map(_weight, g))).append(job)
    return [g for g in groups if g]


def _run_all(folder: Path) -> dict[str, Outcome]:
    paths = {pre: write_pretok_model(folder, pre) for pre in PRE_TOKENIZERS}
    groups = plan(paths)
    ref_values = [{"pre": p, "path": str(paths[p])}
                  for p in (PRE_TOKENIZERS if STRESS else FRESH_REFERENCE) if p in paths]
    # the heaviest child first, the short reference run last: both workers finish together
    with concurrent.futures.ThreadPoolExecutor(N_WORKERS) as pool:
        futures = [pool.submit(run_children, g, folder, f"g{i}") for i, g in
                   enumerate(sorted(groups, key=lambda g: -sum(map(_weight, g))))]
        ref_future = pool.submit(run_children, ref_values, folder, "ref", True)
        outcomes: dict[str, Outcome] = {}
        for f in futures:
            outcomes.update(f.result())
        refs = ref_future.result()
    for pre, r in refs.items():
        o = outcomes[pre]
        if r.problems:
            o.problems += [f"fresh reference process: {p}" for p in r.problems]
            continue
        for kind, d in r.digests.items():
            if kind in o.digests and o.digests[kind] != d:
                n = run_length(pre, kind, RUN_SPACED if kind in SPACED else RUN)
                o.problems.append(f"tokenize({kind} x{n}) on the "
                                  f"{SMALL_STACK >> 10} KiB thread differs from a plain tokenize "
                                  f"in a fresh process")
    return outcomes


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1]))


# -- the tests --------------------------------------------------------------------------------

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    folder = tmp_path_factory.mktemp("pretok")
    try:
        return _run_all(folder)
    finally:                 # 91 x 1.8 MB; pytest keeps the last three runs' folders
        for f in folder.glob("*.gguf"):
            f.unlink()


def test_pre_tokenizer_list() -> None:
    assert len(PRE_TOKENIZERS) >= 80
    assert len(set(PRE_TOKENIZERS)) == len(PRE_TOKENIZERS)
    for pre in ("default", "llama3", "gpt-2", "qwen2", "tekken", "gpt-4o", "llama4", "deepseek-v3",
                "falcon", "whitespace", "exaone-moe"):
        assert pre in PRE_TOKENIZERS
    assert sum(len(b) for b in PRE_TOKENIZER_BRANCHES) == len(PRE_TOKENIZERS)
    for table in (LONG_VALUES, dict(HUGE), dict(HUGE_STRESS), dict.fromkeys(FRESH_REFERENCE)):
        assert set(table) <= set(PRE_TOKENIZERS), "a value named here is gone from llama.cpp"
    for pre, kind in [*SKIP, *SHORTER]:
        assert pre in PRE_TOKENIZERS and kind in KINDS


def test_written_model_is_smollm2(tmp_path: Path, smol_path: Path) -> None:
    """The copy under its own pre value ("smollm") tokenizes as SmolLM2 itself."""
    import llama_cython as llama

    path = write_pretok_model(tmp_path, "smollm")
    assert write_pretok_model(tmp_path, "smollm") == path          # cached
    text = "Hello world, it's 12345 ACGT!! \u65e5\u672c\u8a9e \U0001f642\n\n  x"
    with llama.load_model(path, vocab_only=True) as copy, \
            llama.load_model(smol_path, vocab_only=True) as smol:
        assert copy.metadata["tokenizer.ggml.pre"] == "smollm"
        assert copy.n_vocab == smol.n_vocab
        assert copy.tokenize(text).tolist() == smol.tokenize(text).tolist()
        assert copy.vocab.special_ids == smol.vocab.special_ids


@pytest.mark.parametrize("pre", PRE_TOKENIZERS)
def test_long_runs(pre: str, outcomes: dict[str, Outcome]) -> None:
    o = outcomes[pre]
    assert o.done and not o.problems, f"tokenizer.ggml.pre = {pre!r}:\n  " + "\n  ".join(o.problems)


def test_whitespace_pre_refuses_runs_of_spaces(tmp_path: Path) -> None:
    # llama.cpp aborts (GGML_ASSERT in find_bpe_rank) when the 'whitespace' pre-tokenizer meets
    # a run of whitespace that holds an ASCII space: such text is refused before the call.
    path = write_pretok_model(tmp_path, "whitespace")
    code = (
        "import sys, llama_cython as l\n"
        "m = l.load_model(sys.argv[1], vocab_only=True)\n"
        "for text in ['a  b', 'a \\tb', '  ', 'x\\n y']:\n"
        "    for call in (m.tokenize, lambda t: m.tokenize_batch([t]), lambda t: m.count_tokens([t])):\n"
        "        try:\n"
        "            call(text)\n"
        "        except l.TokenizeError as exc:\n"
        "            assert 'whitespace' in str(exc), exc\n"
        "        else:\n"
        "            raise AssertionError(repr(text))\n"
        "print(m.tokenize('a b\\tc\\nd').tolist())\n"
        "print('OK')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-1500:]
