#!/usr/bin/env python3
"""What the portable wheel costs: its cores against the native build, in one run.

Sides (each a worker process, since one process holds one core):

* ``native``: this checkout's build (``.venv``, compiled for this machine's CPU);
* ``x86_64_v4``, ``x86_64_v3``, ``x86_64_v2``: the portable wheel (``LLAMA_CYTHON_PORTABLE=1``)
  installed into ``build/portable-venv``, each core forced with ``LLAMA_CYTHON_CPU_VARIANT``
  (a variant this CPU cannot run is skipped).

Work, 2 threads: generation (SmolLM2-135M-Instruct Q4_1, greedy, 64 tokens after a short
prompt; tokens/s of the whole call) and batch embeddings (all-MiniLM-L6-v2 F16, the first 500
texts of ``benchmarks/corpus.py``; texts/s of one ``get_embeddings_batch`` call). The sides run
in rounds (``--rounds``, default 3), one after another within a round, so that a slow spell of
the shared machine falls on all of them; each figure is the median over rounds, and the ratio
is against ``native`` from the same run. Each side's greedy text is compared with native's: the
variants' kernels round differently (FMA or not, SIMD width), so a long greedy continuation may
part ways after a near-tie; the table says after how many characters (``same``).

    .venv/bin/python benchmarks/bench_portable.py                  # builds the wheel if needed
    .venv/bin/python benchmarks/bench_portable.py --wheel dist/llama_cython-...whl --rounds 5
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PORTABLE_VENV = ROOT / "build" / "portable-venv"
VARIANTS = ["x86_64_v4", "x86_64_v3", "x86_64_v2"]
PROMPT = "The three most important inventions of the twentieth century were"


def _worker(model: str, embed_model: str, n_texts: int, tokens: int) -> None:
    sys.path.insert(0, str(HERE))
    import corpus

    import llama_cython as llama

    info = llama.system_info()
    cpu = info.backend_features.get("CPU", {})
    used = " ".join(k for k, v in cpu.items() if v == "1")
    out: dict[str, object] = {"variant": info.cpu_variant, "cpu": used}
    with llama.load_model(model) as m, m.new_context(n_ctx=512, n_threads=2, n_threads_batch=2,
                                                      prefix_caching=False) as ctx:
        ctx.generate(PROMPT, max_tokens=8, temperature=0)            # warm-up
        t0 = time.perf_counter()
        text = ctx.generate(PROMPT, max_tokens=tokens, ignore_eos=True, temperature=0)
        dt = time.perf_counter() - t0
        out["gen_tokens_per_s"] = ctx.last_stats.completion_tokens / dt
        out["text"] = text
    texts = corpus.make_corpus()[:n_texts]
    with llama.load_model(embed_model) as m, m.new_context(embeddings=True, n_threads=2,
                                                            n_threads_batch=2) as ctx:
        ctx.get_embeddings_batch(texts[:32])                          # warm-up
        t0 = time.perf_counter()
        vectors = ctx.get_embeddings_batch(texts)
        out["embed_texts_per_s"] = len(texts) / (time.perf_counter() - t0)
        out["embed_first"] = [float(x) for x in vectors[0, :4]]
    print(json.dumps(out))


def portable_python(wheel: str | None) -> Path:
    python = PORTABLE_VENV / "bin" / "python"
    if wheel is None:
        dist = ROOT / "build" / "portable-dist"
        found = sorted(glob.glob(str(dist / "llama_cython-*.whl")))
        if not found:
            print("building the portable wheel (LLAMA_CYTHON_PORTABLE=1 pip wheel .)", file=sys.stderr)
            env = {**os.environ, "LLAMA_CYTHON_PORTABLE": "1"}
            subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist),
                            str(ROOT)], check=True, env=env)
            found = sorted(glob.glob(str(dist / "llama_cython-*.whl")))
        wheel = found[-1]
    if not python.exists():
        venv.EnvBuilder(with_pip=True).create(PORTABLE_VENV)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", wheel],
                   check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "numpy", "jinja2"], check=True)
    return python


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel", help="the portable wheel to measure (default: build it)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--texts", type=int, default=500)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import llama_cython as llama

    model = str(llama.models.model_path("smollm2-135m-instruct"))
    embed_model = str(llama.models.model_path("all-minilm-l6-v2"))
    info = llama.system_info()
    print(f"# CPU: {info.cpu_model}; native core: {info.cpu_variant}; {info}", flush=True)
    portable = portable_python(args.wheel)
    sides = {"native": sys.executable, **{v: str(portable) for v in VARIANTS}}
    results: dict[str, list[dict[str, object]]] = {s: [] for s in sides}
    skipped = set()
    for r in range(args.rounds):
        for side, python in sides.items():
            if side in skipped:
                continue
            env = {k: v for k, v in os.environ.items() if k != "LLAMA_CYTHON_CPU_VARIANT"}
            if side != "native":
                env["LLAMA_CYTHON_CPU_VARIANT"] = side
            code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import bench_portable as b; "
                    f"b._worker({model!r}, {embed_model!r}, {args.texts}, {args.tokens})")
            proc = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, cwd="/")
            if proc.returncode != 0:
                if "needs CPU features this CPU lacks" in proc.stderr:
                    print(f"# {side}: skipped, this CPU cannot run it", flush=True)
                    skipped.add(side)
                    continue
                print(proc.stderr[-3000:], file=sys.stderr)
                return 1
            results[side].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"# round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)

    def med(side: str, key: str) -> float:
        return statistics.median(float(x[key]) for x in results[side])  # type: ignore[arg-type]

    table = []
    reference = str(results["native"][0]["text"])
    for side in sides:
        if not results[side]:
            continue
        text = str(results[side][0]["text"])
        same = next((i for i, (a, b) in enumerate(zip(text, reference)) if a != b),
                    min(len(text), len(reference)))
        row = {"side": side, "variant": results[side][0]["variant"], "same_chars": same,
               "gen_tokens_per_s": med(side, "gen_tokens_per_s"),
               "gen_ratio": med(side, "gen_tokens_per_s") / med("native", "gen_tokens_per_s"),
               "embed_texts_per_s": med(side, "embed_texts_per_s"),
               "embed_ratio": med(side, "embed_texts_per_s") / med("native", "embed_texts_per_s"),
               "cpu_features": results[side][0]["cpu"]}
        table.append(row)
    if args.json:
        print(json.dumps(table, indent=1))
    else:
        print(f"{'side':<10} {'gen tok/s':>10} {'vs native':>9} {'embed texts/s':>14} {'vs native':>9}"
              f" {'same':>5}  CPU backend")
        for row in table:
            print(f"{row['side']:<10} {row['gen_tokens_per_s']:>10.1f} {row['gen_ratio']:>8.2f}x "
                  f"{row['embed_texts_per_s']:>14.1f} {row['embed_ratio']:>8.2f}x {row['same_chars']:>5}"
                  f"  {row['cpu_features']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
