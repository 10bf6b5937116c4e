#!/usr/bin/env python3
"""Smoke test of an *installed* llama_cython, run from outside the checkout.

    python smoke_installed.py MODEL.gguf [--expect-variant NAME]

Loads the model, tokenizes, generates 8 tokens, embeds 2 texts, pickles the model, checks that
an optional integration that is not installed names its extra, runs the ``llama-cython``
console script installed beside this Python (``--version``, ``info MODEL --json``), and prints
one JSON line with what it saw (the CPU variant of the core that was loaded among it). Exits
non-zero on any failure.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--expect-variant")
    args = parser.parse_args()

    t0 = time.perf_counter()
    import llama_cython as llama

    info = llama.system_info()
    report: dict[str, object] = {"package": llama.__file__, "variant": info.cpu_variant,
                                 "backend_features": info.backend_features}
    if args.expect_variant and info.cpu_variant != args.expect_variant:
        raise SystemExit(f"loaded variant {info.cpu_variant!r}, expected {args.expect_variant!r}")
    with llama.load_model(args.model) as model:
        ids = model.tokenize("Hello world")
        assert ids.dtype.name == "int32" and len(ids) >= 2, ids
        assert model.detokenize(ids, remove_special=True) == "Hello world"
        with model.new_context(n_ctx=256, n_threads=2) as ctx:
            text = ctx.generate("The capital of France is", max_tokens=8,
                                temperature=0)
            report["generated"] = text
            report["tokens"] = ctx.last_stats.completion_tokens
        with model.new_context(n_ctx=256, embeddings=True, pooling="mean") as ectx:
            vectors = ectx.get_embeddings_batch(["a first text", "and a second one"])
        assert vectors.shape == (2, model.n_embd) and vectors.dtype.name == "float32", vectors.shape
        report["embeddings"] = list(vectors.shape)
        assert pickle.loads(pickle.dumps(model)) is model
        try:
            import pandas  # noqa: F401
        except ImportError:
            try:
                model.vocab.to_pandas()
            except ImportError as exc:
                assert "llama_cython[pandas]" in str(exc), exc
                report["missing_extra_message"] = str(exc)
            else:
                raise SystemExit("to_pandas() worked without pandas")
    # The console script of this environment (under qemu, sys.executable may be the base
    # interpreter's real file: look in sys.prefix too, else run the package's __main__).
    cli = [sys.executable, "-m", "llama_cython"]
    for folder in (os.path.join(sys.prefix, "bin"), os.path.dirname(sys.executable)):
        if os.path.isfile(os.path.join(folder, "llama-cython")):
            cli = [os.path.join(folder, "llama-cython")]
            break
    report["cli"] = os.path.basename(cli[0])
    version = subprocess.run([*cli, "--version"], capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and "llama-cython" in version.stdout, version
    info_out = subprocess.run([*cli, "info", args.model, "--json"], capture_output=True,
                              text=True, timeout=300)
    assert info_out.returncode == 0, info_out.stderr
    report["cli_info_architecture"] = json.loads(info_out.stdout).get("architecture")
    report["seconds"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
