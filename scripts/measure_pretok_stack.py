#!/usr/bin/env python3
"""Measure how much C stack llama.cpp's BPE pre-tokenizers need per byte of a long run.

A developer tool, not run by CI. libstdc++'s ``std::regex`` matcher recurses once or more per
character of a match, so a long run of characters that one regex alternative matches (``"ACGT" *
8000``) overflows the stack. This tool measures the stack each pre-tokenizer needs, so the size of
the thread that tokenizes can be derived from the input (issue 10 item 2).

Two methods, each on the vocab-only SmolLM2 copies of ``tests/_pretok_models.py``:

``depth`` (default): in one process per batch of pre values, each ``tokenize`` call runs on a fresh
thread with a 1 GiB stack; the pages of that stack the call touched are counted with ``mincore``
(the deepest resident page), so nothing crashes. Two lengths per input give the slope, in stack
bytes per character and per UTF-8 byte of the run.

``bisect``: the crash itself. A child process sets ``threading.stack_size(S)`` and tokenizes a run
of length L in a new thread; L is bisected to the first crash for each S; the slope between the S
values gives the bytes per character (the ``depth`` figures predict the start point). Since the
package tokenizes on a thread sized from the text (``llama_cython/_tokenize.h``), only inputs whose
match outgrows that bound still crash; ``depth`` is unaffected (a 1 GiB stack has room, so the
call runs in place) up to runs of about a million bytes.

Measured on the llama.cpp pinned in December 2026: 320 bytes of stack per character of a match,
the same for every pattern and kind of character (runs of letters, digits, punctuation, spaces,
newlines, CJK, emoji...; 106.7 per UTF-8 byte for 3-byte characters), and 232-284 per character
for exaone-moe on words separated by single spaces, which it matches as one piece.

    .venv/bin/python scripts/measure_pretok_stack.py                      # depth, one value per branch
    .venv/bin/python scripts/measure_pretok_stack.py depth --pre tekken default --inputs ACGT letters
    .venv/bin/python scripts/measure_pretok_stack.py bisect --pre tekken --inputs ACGT --stack-mib 8 32 128
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import _pretok_models as pm  # noqa: E402

# One unit of each input: the run is the unit repeated; lengths are in characters.
INPUTS: dict[str, str] = {
    "letters": "a",
    "ACGT": "ACGT",
    "upper": "A",
    "digits": "7",
    "punct": "!",
    "punct_mix": "!?.,",
    "spaces": " ",
    "newlines": "\n",
    "latin1": "\u00e9",          # 2 bytes
    "cjk": "\u65e5",             # 3 bytes
    "emoji": "\U0001f642",       # 4 bytes
    "base64": "QWxhZGRpbjpvcGVuIHNlc2FtZQ+/",
    "words": "a b ",
    "words_upper": "AB CD ",
    "prose": "the quick brown fox jumps over the lazy dog ",   # one match for exaone-moe
    "mixed_case": "aA",
    "marks": "e\u0301",         # letter + combining mark
    "tabs": "\t",
    "crlf": "\r\n",
    "space_nl": " \n",
    "ideo_space": "\u3000",     # non-ASCII White_Space, 3 bytes
    "url": "https://example.com/a1/b2-c3_d4.e5?f=6&g=7#h",
}

PAGE = os.sysconf("SC_PAGE_SIZE")
BIG_STACK = 1 << 30


def run_text(name: str, n_chars: int) -> str:
    unit = INPUTS[name]
    return (unit * (n_chars // len(unit) + 1))[:n_chars]


# -- depth: deepest touched page of a fresh thread stack --------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.pthread_self.restype = ctypes.c_ulong
_libc.pthread_getattr_np.argtypes = [ctypes.c_ulong, ctypes.c_void_p]
_libc.pthread_attr_getstack.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p),
                                        ctypes.POINTER(ctypes.c_size_t)]
_libc.pthread_attr_destroy.argtypes = [ctypes.c_void_p]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


def _stack_bounds() -> tuple[int, int]:
    attr = ctypes.create_string_buffer(256)
    if _libc.pthread_getattr_np(_libc.pthread_self(), attr) != 0:
        raise OSError("pthread_getattr_np failed")
    addr, size = ctypes.c_void_p(), ctypes.c_size_t()
    _libc.pthread_attr_getstack(attr, ctypes.byref(addr), ctypes.byref(size))
    _libc.pthread_attr_destroy(attr)
    return int(addr.value or 0), int(size.value)


def _depth(addr: int, size: int) -> int:
    """Bytes from the top of the stack to its deepest resident page."""
    import numpy as np

    n = size // PAGE
    vec = (ctypes.c_ubyte * n)()
    if _libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(n * PAGE), vec) != 0:
        raise OSError(ctypes.get_errno(), "mincore failed")
    resident = np.flatnonzero(np.frombuffer(vec, dtype=np.uint8) & 1)
    return 0 if resident.size == 0 else size - int(resident[0]) * PAGE


def stack_used(fn) -> tuple[int, int, object]:
    """(depth before, depth after, result) of ``fn()`` run on a fresh 1 GiB thread stack."""
    out: dict[str, object] = {}

    def body() -> None:
        addr, size = _stack_bounds()
        out["before"] = _depth(addr, size)
        try:
            out["result"] = fn()
        except BaseException as exc:
            out["result"] = exc
        out["after"] = _depth(addr, size)

    old = threading.stack_size(BIG_STACK)
    try:
        t = threading.Thread(target=body)
        t.start()
        t.join()
    finally:
        threading.stack_size(old)
    return out["before"], out["after"], out["result"]  # type: ignore[return-value]


def _depth_rows(model: object, pre: str, inputs: list[str], lengths: list[int]) -> None:
    tokenize = model.tokenize  # type: ignore[attr-defined]
    _, base, _ = stack_used(lambda: tokenize("a"))
    for name in inputs:
        row: dict[str, object] = {"pre": pre, "input": name, "base": base}
        depth: dict[int, int] = {}
        secs: dict[int, float] = {}
        for n in lengths:
            text = run_text(name, n)
            t0 = time.perf_counter()
            before, after, res = stack_used(lambda text=text: tokenize(text))
            secs[n] = round(time.perf_counter() - t0, 4)
            if isinstance(res, BaseException):
                row["error"] = repr(res)
            if before > 1 << 20:
                row["warning"] = f"stack reused: {before} bytes resident before the call"
            depth[n] = after
        row["depth"], row["secs"] = depth, secs
        print(json.dumps(row), flush=True)


def depth_child(pres: list[str], inputs: list[str], lengths: list[int], folder: str) -> None:
    """Print one JSON line per (pre, input): stack depth per length, seconds per call."""
    import llama_cython as llama

    for pre in pres:
        model = llama.load_model(pm.write_pretok_model(Path(folder), pre), vocab_only=True)
        _depth_rows(model, pre, inputs, lengths)
        model.close()


def depth_report(rows: list[dict], lengths: list[int]) -> list[dict]:
    lo, hi = min(lengths), max(lengths)
    out = []
    for r in rows:
        d = {int(k): v for k, v in r["depth"].items()}
        per_char = (d[hi] - d[lo]) / (hi - lo)
        nbytes = len(INPUTS[r["input"]].encode("utf-8")) / len(INPUTS[r["input"]])
        out.append({**r, "per_char": per_char, "per_byte": per_char / nbytes,
                    "extra_at_hi": d[hi] - r["base"]})
    return out


# -- bisect: the crash itself -----------------------------------------------------------------

def crash_child(pre: str, name: str, n: int, stack: int, folder: str) -> None:
    import llama_cython as llama

    model = llama.load_model(pm.write_pretok_model(Path(folder), pre), vocab_only=True)
    text = run_text(name, n)
    threading.stack_size(stack)
    t = threading.Thread(target=lambda: model.tokenize(text))
    t.start()
    t.join()
    print("OK", flush=True)


def crashes(pre: str, name: str, n: int, stack: int, folder: str) -> bool:
    cmd = [sys.executable, __file__, "_crash", pre, name, str(n), str(stack), folder]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode == 0:
        return False
    if proc.returncode < 0:
        return True
    raise RuntimeError(f"child failed without a signal: {proc.stderr[-2000:]}")


def bisect(pre: str, name: str, stack: int, guess: int, folder: str, rel: float = 0.005) -> tuple[int, int]:
    """(longest run that passes, shortest that crashes), bracketing from ``guess`` outwards."""
    lo, hi, step = 0, 0, 0.02
    n = guess
    while not (lo and hi):
        if crashes(pre, name, n, stack, folder):
            hi = n
            n = int(n / (1 + step)) if not lo else n
        else:
            lo = n
            n = int(n * (1 + step)) if not hi else n
        step *= 2
        if n > 64 << 20:
            return lo, 0
    while hi - lo > max(rel * hi, 16):
        mid = (lo + hi) // 2
        if crashes(pre, name, mid, stack, folder):
            hi = mid
        else:
            lo = mid
    return lo, hi


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_depth":
        depth_child(json.loads(argv[1]), json.loads(argv[2]), json.loads(argv[3]), argv[4])
        return 0
    if argv and argv[0] == "_crash":
        crash_child(argv[1], argv[2], int(argv[3]), int(argv[4]), argv[5])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", choices=("depth", "bisect"), default="depth")
    parser.add_argument("--pre", nargs="*", help="pre values (default: the first of each branch)")
    parser.add_argument("--inputs", nargs="*", default=list(INPUTS), choices=list(INPUTS))
    parser.add_argument("--lengths", nargs=2, type=int, default=[2048, 32768],
                        help="depth: two run lengths in characters (slope between them)")
    parser.add_argument("--stack-mib", nargs="*", type=int, default=[8, 32, 128])
    parser.add_argument("--per-char", type=float, default=320.0,
                        help="bisect: stack bytes per character used to guess the crash length")
    parser.add_argument("--folder", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "pretok_models"))
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    pres = args.pre or [branch[0] for branch in pm.PRE_TOKENIZER_BRANCHES]
    pm.write_all(Path(args.folder), tuple(pres))

    if args.mode == "depth":
        rows, failed = [], 0
        for pre in pres:     # one child per value: an abort loses that value's rows only
            cmd = [sys.executable, __file__, "_depth", json.dumps([pre]), json.dumps(args.inputs),
                   json.dumps(args.lengths), args.folder]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            got = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
            rows += got
            if proc.returncode != 0:
                failed += 1
                print(f"{pre}: the child died (rc {proc.returncode}) after {len(got)} inputs: "
                      f"{proc.stderr.strip()[-500:]}", file=sys.stderr)
        report = depth_report(rows, args.lengths)
        hi = max(args.lengths)
        print(f"{'pre':26} {'input':12} {'B/char':>8} {'B/byte':>8} {'extra@' + str(hi):>12} "
              f"{'s@' + str(hi):>7}")
        for r in report:
            note = r.get("warning", "") + r.get("error", "")
            print(f"{r['pre']:26} {r['input']:12} {r['per_char']:8.1f} {r['per_byte']:8.1f} "
                  f"{r['extra_at_hi']:12d} {r['secs'][str(hi)]:7.3f} {note}")
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))
        return 1 if failed else 0

    rows = []
    for pre in pres:
        for name in args.inputs:
            found = []
            for mib in args.stack_mib:
                stack = mib << 20
                lo, hi = bisect(pre, name, stack, max(256, int(stack / args.per_char)), args.folder)
                found.append((stack, lo, hi))
                print(f"{pre:24} {name:10} stack {mib:4d} MiB: passes at {lo}, crashes at {hi} chars "
                      f"({stack / hi if hi else float('nan'):.1f} stack bytes per char)", flush=True)
            if len(found) > 1 and all(h for _, _, h in found):
                (s0, _, h0), (s1, _, h1) = found[0], found[-1]
                print(f"{pre:24} {name:10} slope {(s1 - s0) / (h1 - h0):.1f} bytes per char "
                      f"between {s0 >> 20} and {s1 >> 20} MiB", flush=True)
            rows.append({"pre": pre, "input": name, "found": found})
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
