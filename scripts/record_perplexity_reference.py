#!/usr/bin/env python3
"""Record what llama.cpp's own ``llama-perplexity`` reports on our test text, for the tests of
``ctx.perplexity`` (which follows the same method) to compare against without building
llama.cpp's ``common`` library on every CI run.

    python scripts/record_perplexity_reference.py            # build (or reuse), run, write the JSON
    python scripts/record_perplexity_reference.py --check    # run again, exit 1 if the values moved

The text is ``tests/data/perplexity_text.txt``: eleven paragraphs of English prose (one per
line, about 4 kB) written for this project, so we may redistribute it under the project's own
licence; it is not taken from any other source.

``llama-perplexity`` and ``llama-tokenize`` are built from the pinned tree (``vendor/llama.cpp``)
by :func:`build_llama_cpp.build_tool`: their own CMake folder ``build/tools-<key>`` under the
same cache root as the extension's libraries (``~/.cache/llama_cython`` or
``$LLAMA_CYTHON_CACHE``), with the same native CPU options, so the numbers are those of the
kernels the extension links; plus ``LLAMA_BUILD_COMMON``/``LLAMA_BUILD_TOOLS`` on and OpenSSL off
(this tree has no ``LLAMA_CURL`` switch any more: it only warns that it is deprecated). Only the
two targets are built, with ``LLAMA_CYTHON_JOBS`` jobs (2 unless set); a second run finds them
built. The first build takes several minutes on two cores.

Each model (SmolLM2-135M-Instruct Q4_1 and Gemma 3 270M Q4_K_M, from the model cache as the
tests find them: ``llama_cython/models.py``) is run with ``-c 128 -b 512`` (4 chunks per decode)
and ``-c 64 -b 128`` (2 per decode), 2 threads. The output's running perplexity after each chunk
(``[1]x,[2]y,...``, 4 decimals) and ``Final estimate: PPL = p +/- e`` are parsed; the token ids
of the text come from ``llama-tokenize`` (the text with one trailing newline dropped, as
``llama-perplexity -f`` drops it; BOS added when the model asks for it, as there).

Writes its record into ``tests/data/perplexity_reference.json``, replacing the record made under
the same CPU options and keeping the others (``scripts/_reference_records.py``: ggml's kernels,
and so the last digits, differ between AVX2 and AVX-512 builds). ``--check`` compares with the
record for this machine's options.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import _reference_records  # noqa: E402

TEXT_FILE = ROOT / "tests" / "data" / "perplexity_text.txt"
OUT_FILE = ROOT / "tests" / "data" / "perplexity_reference.json"
MODELS = ["smollm2-135m-instruct", "gemma-3-270m"]
SETTINGS = [{"n_ctx": 128, "n_batch": 512}, {"n_ctx": 64, "n_batch": 128}]
THREADS = 2
# --check: the tool prints 4 decimals; another machine's kernels may move the last ones
CHECK_RTOL = 2e-3
RECORD_KEYS = ("models",)

_CHUNKS_RE = re.compile(
    r"calculating perplexity over (\d+) chunks, n_ctx=(\d+), batch_size=(\d+), n_seq=(\d+)")
_RUNNING_RE = re.compile(r"\[(\d+)\](\d+(?:\.\d+)?),")
_FINAL_RE = re.compile(r"Final estimate: PPL = (\d+(?:\.\d+)?) \+/- (\d+(?:\.\d+)?)")
_IDS_RE = re.compile(r"\[([0-9,\s]*)\]")


def _say(msg: str) -> None:
    print(f"[record] {msg}", file=sys.stderr, flush=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_tools() -> dict[str, Path]:
    """llama-perplexity and llama-tokenize from the pinned tree (cached; incremental)."""
    import build_llama_cpp
    import build_native

    os.environ.setdefault("LLAMA_CYTHON_JOBS", "2")
    t0 = time.monotonic()
    with build_native.stdout_to_stderr():
        tools = {name: build_llama_cpp.build_tool(name) for name in ("llama-perplexity", "llama-tokenize")}
    _say(f"tools ready in {time.monotonic() - t0:.0f} s: {tools['llama-perplexity'].parent}")
    return tools


def tokenize(exe: Path, model: Path, text: str, add_bos: bool) -> list[int]:
    cmd = [str(exe), "-m", str(model), "--stdin", "--ids", "--no-escape", "--log-disable"]
    if not add_bos:
        cmd.append("--no-bos")
    out = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, check=True).stdout.decode()
    found = _IDS_RE.search(out)
    if found is None:
        raise RuntimeError(f"no token ids in llama-tokenize's output:\n{out[-2000:]}")
    return [int(x) for x in found.group(1).replace(",", " ").split()]


def run_perplexity(exe: Path, model: Path, n_ctx: int, n_batch: int) -> dict[str, Any]:
    args = ["-f", str(TEXT_FILE.relative_to(ROOT)), "-c", str(n_ctx), "-b", str(n_batch), "-t", str(THREADS)]
    cmd = [str(exe), "-m", str(model), *args]
    _say("+ " + " ".join(cmd))
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    took = time.monotonic() - t0
    log = proc.stdout + "\n" + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"llama-perplexity exited with {proc.returncode}:\n{log[-4000:]}")
    chunks = _CHUNKS_RE.search(log)
    final = _FINAL_RE.search(log)
    if chunks is None or final is None:
        raise RuntimeError(f"unexpected llama-perplexity output:\n{log[-4000:]}")
    n_chunk, n_ctx_seen, n_batch_seen, n_seq = (int(x) for x in chunks.groups())
    running = [(int(i), float(v)) for i, v in _RUNNING_RE.findall(proc.stdout)]
    if [i for i, _ in running] != list(range(1, n_chunk + 1)):
        # the per-chunk line may have gone to the other stream
        running = [(int(i), float(v)) for i, v in _RUNNING_RE.findall(log)]
    if [i for i, _ in running] != list(range(1, n_chunk + 1)):
        raise RuntimeError(f"expected running values [1]..[{n_chunk}], got {running}")
    first = n_ctx // 2
    return {
        "options": {"n_ctx": n_ctx, "n_batch": n_batch, "threads": THREADS},
        "args": args,
        "n_chunk": n_chunk,
        "n_seq": n_seq,
        "n_batch_used": n_batch_seen,
        "n_scored": n_chunk * (n_ctx - first - 1),
        "chunk_ppl": [v for _, v in running],
        "ppl": float(final.group(1)),
        "ppl_uncertainty": float(final.group(2)),
        "_seconds": round(took, 2),
        "_n_ctx_seen": n_ctx_seen,
    }


def record(tools: dict[str, Path]) -> tuple[dict[str, Any], dict[str, Any]]:
    sys.path.insert(0, str(HERE))
    from fetch_models import load_models_module

    models = load_models_module()
    raw = TEXT_FILE.read_text(encoding="utf-8")
    # llama-perplexity -f drops one trailing newline (common/arg.cpp); tokenize what it sees
    text = raw[:-1] if raw.endswith("\n") else raw
    pin = json.loads((HERE / "llama_cpp_pin.json").read_text(encoding="utf-8"))
    header: dict[str, Any] = {
        "about": "llama.cpp's llama-perplexity on tests/data/perplexity_text.txt, one record per "
                 "CPU build of ggml (scripts/_reference_records.py); made by "
                 "scripts/record_perplexity_reference.py",
        "llama_cpp_commit": pin["commit"],
        "tool": "llama-perplexity",
        "text_file": str(TEXT_FILE.relative_to(ROOT)),
        "text_sha256": _sha256(TEXT_FILE),
        "text_trailing_newline_dropped": raw.endswith("\n"),
    }
    out: dict[str, Any] = {"cpu_options": _reference_records.cpu_options(), "models": {}}
    for name in MODELS:
        path = models.model_path(name)
        with_bos = tokenize(tools["llama-tokenize"], path, text, add_bos=True)
        without = tokenize(tools["llama-tokenize"], path, text, add_bos=False)
        entry: dict[str, Any] = {
            "file": path.name,
            "sha256": _sha256(path),
            "add_bos": len(with_bos) != len(without),
            "n_tokens": len(with_bos),
            "token_ids": with_bos,
            "runs": [],
        }
        for setting in SETTINGS:
            run = run_perplexity(tools["llama-perplexity"], path, setting["n_ctx"], setting["n_batch"])
            if run.pop("_n_ctx_seen") != setting["n_ctx"]:
                raise RuntimeError("llama-perplexity used another n_ctx than asked")
            if run["n_chunk"] != len(with_bos) // setting["n_ctx"]:
                raise RuntimeError(f"{run['n_chunk']} chunks, expected {len(with_bos)} // {setting['n_ctx']}")
            took = run.pop("_seconds")
            entry["runs"].append(run)
            _say(f"{name} -c {setting['n_ctx']} -b {setting['n_batch']}: {run['n_chunk']} chunks, "
                 f"PPL {run['ppl']} +/- {run['ppl_uncertainty']} ({took} s)")
        out["models"][name] = entry
    return header, out


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    problems = []
    for name, entry in new["models"].items():
        was = old.get("models", {}).get(name)
        if was is None:
            problems.append(f"{name}: not in the recorded file")
            continue
        if was["token_ids"] != entry["token_ids"]:
            problems.append(f"{name}: token ids differ")
        for a, b in zip(was["runs"], entry["runs"]):
            pairs = [*zip(a["chunk_ppl"], b["chunk_ppl"]), (a["ppl"], b["ppl"])]
            if len(a["chunk_ppl"]) != len(b["chunk_ppl"]) or any(
                    abs(x - y) > CHECK_RTOL * abs(x) for x, y in pairs):
                problems.append(f"{name} {a['options']}: {a['chunk_ppl']} {a['ppl']} -> "
                                f"{b['chunk_ppl']} {b['ppl']}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="run again and compare with the recorded file instead of writing it")
    args = parser.parse_args(argv)
    tools = build_tools()
    header, new = record(tools)
    if args.check:
        old = _reference_records.find(_reference_records.load(OUT_FILE, RECORD_KEYS), new["cpu_options"])
        if old is None:
            _say(f"no record for this CPU's options {new['cpu_options']}")
            return 1
        problems = compare(old, new)
        for p in problems:
            _say(p)
        _say("matches the recorded values" if not problems else f"{len(problems)} difference(s)")
        return 1 if problems else 0
    n = _reference_records.merge(OUT_FILE, header, new, RECORD_KEYS)
    _say(f"wrote {OUT_FILE.relative_to(ROOT)} ({n} record(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
