#!/usr/bin/env python3
"""Record llama-cpp-python's per-token log-probabilities of a few texts, a second reference
(besides ``llama-perplexity``) for ``ctx.score``.

    python scripts/record_llama_cpp_python_logprobs.py

Runs in ``build/peers-venv`` (a virtual environment with llama-cpp-python, made by another
script; this one never builds it): started with any other Python, it runs itself again with
that venv's interpreter.

What it does: loads SmolLM2-135M-Instruct Q4_1 from the model cache (``llama_cython/models.py``)
with ``Llama(model_path, logits_all=True, n_ctx=512, n_batch=512, n_threads=2, verbose=False)``;
for each of the first three lines of ``tests/data/perplexity_text.txt`` (one text per line,
without its newline), tokenizes it with llama-cpp-python (BOS added as the model asks, special
tokens not parsed), resets the context and evaluates the ids in one go, then takes every
position's logits in float64 numpy: log p(token i | tokens < i) is
``logits[i-1, tok[i]] - logsumexp(logits[i-1])`` for i >= 1 (the first token has no value).

Writes ``tests/data/llama_cpp_python_logprobs.json``: llama-cpp-python's version, the model
file and its sha256, the options, and a record for this machine's CPU build of ggml (replacing
an earlier one made under the same options, keeping the others: scripts/_reference_records.py)
with per text its token ids and the log-probabilities rounded to 6 decimals.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import _reference_records  # noqa: E402

PEERS_PY = ROOT / "build" / "peers-venv" / "bin" / "python"
TEXT_FILE = ROOT / "tests" / "data" / "perplexity_text.txt"
OUT_FILE = ROOT / "tests" / "data" / "llama_cpp_python_logprobs.json"
MODEL = "smollm2-135m-instruct"
N_TEXTS = 3
OPTIONS = {"logits_all": True, "n_ctx": 512, "n_batch": 512, "n_threads": 2, "verbose": False}


def _say(msg: str) -> None:
    print(f"[record] {msg}", file=sys.stderr, flush=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _in_peers_venv() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def record() -> tuple[dict, dict]:
    import llama_cpp
    import numpy as np
    from fetch_models import load_models_module

    model_path = load_models_module().model_path(MODEL)
    lines = TEXT_FILE.read_text(encoding="utf-8").splitlines()[:N_TEXTS]
    llm = llama_cpp.Llama(str(model_path), **OPTIONS)
    texts = []
    for text in lines:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        if len(ids) > OPTIONS["n_ctx"]:
            raise RuntimeError(f"{len(ids)} tokens: more than n_ctx")
        llm.reset()
        llm.eval(ids)
        logits = np.array(llm.scores[: len(ids)], dtype=np.float64)  # (n, n_vocab), a copy
        top = logits.max(axis=1, keepdims=True)
        lse = (top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))[:, 0]
        rows = np.arange(len(ids) - 1)
        logprobs = logits[rows, ids[1:]] - lse[:-1]
        texts.append({"text": text, "token_ids": [int(t) for t in ids],
                      "logprobs": [round(float(v), 6) for v in logprobs]})
        _say(f"{len(ids)} tokens, sum of log-probabilities {float(logprobs.sum()):.4f}")
    del llm
    header = {
        "about": "llama-cpp-python's log p(token i | tokens < i) of the first lines of "
                 "tests/data/perplexity_text.txt, one record per CPU build of ggml "
                 "(scripts/_reference_records.py); made by scripts/record_llama_cpp_python_logprobs.py",
        "llama_cpp_python": llama_cpp.__version__,
        "model": {"name": MODEL, "file": model_path.name, "sha256": _sha256(model_path)},
        "options": {k: v for k, v in OPTIONS.items() if k != "verbose"},
        "tokenize": {"add_bos": True, "special": False},
        "logsoftmax": "float64 numpy over the full vocabulary",
    }
    return header, {"cpu_options": _reference_records.cpu_options(), "texts": texts}


def main() -> int:
    if not _in_peers_venv():
        if not PEERS_PY.is_file() or Path(sys.prefix).resolve() == PEERS_PY.parent.parent.resolve():
            _say(f"llama_cpp cannot be imported here and {PEERS_PY.relative_to(ROOT)} is not ready")
            return 1
        os.execv(str(PEERS_PY), [str(PEERS_PY), str(Path(__file__).resolve()), *sys.argv[1:]])
    header, rec = record()
    n = _reference_records.merge(OUT_FILE, header, rec, ("texts",))
    _say(f"wrote {OUT_FILE.relative_to(ROOT)} ({n} record(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
