"""``bench MODEL``: this machine's tokens/s and texts/s for a model, in a few seconds."""

from __future__ import annotations

import argparse
import json
import random
import time
from typing import Any

import llama_cython as llama
from llama_cython.cli._common import (
    add_model_argument,
    context_options,
    is_embedding_model,
    load,
    positive_int,
)

BENCH_EPILOG = """\
Measures tokenize_batch (tokens/s) for every model; prompt processing and generation
(tokens/s, greedy, the end-of-generation token ignored) for a generative model; batch
embeddings (texts/s) for an embedding model (one whose GGUF states a pooling type). The
texts are synthetic sentences of 5 to 60 words, the same on every run.

examples:
  llama-cython bench smollm2-135m-instruct
  llama-cython --threads 1 bench all-minilm-l6-v2 --json
"""

_WORDS = (
    "the of and to in is was for on that with as by at from his her are an this be which have had "
    "not or one were all their they there been has more when will would who some into its time only "
    "river market window system language music science village engine garden letter history picture "
    "morning question number mountain station summer doctor paper network child water story evening "
    "quickly slowly carefully bright quiet ancient modern simple heavy golden narrow distant"
).split()


def add_parsers(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "bench",
        parents=[parent],
        help="measure tokens/s and texts/s of a model on this machine",
        description="Measure a model on this machine: tokenization, prompt processing and "
        "generation, or embeddings.",
        epilog=BENCH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_argument(p)
    p.add_argument(
        "--texts",
        type=positive_int,
        default=256,
        help="texts for tokenize_batch and embeddings (default 256)",
    )
    p.add_argument("--prompt-tokens", type=positive_int, default=256, help="prompt length (default 256)")
    p.add_argument("--gen-tokens", type=positive_int, default=64, help="tokens to generate (default 64)")
    p.add_argument("--repeat", type=positive_int, default=1, help="runs of each measurement; the best counts")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_bench)


def corpus(n: int, seed: int = 0) -> list[str]:
    """n synthetic sentences of 5 to 60 words (the same for the same n and seed)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = rng.choices(_WORDS, k=rng.randint(5, 60))
        out.append(" ".join(words).capitalize() + ".")
    return out


def _tokenize(model: llama.Model, texts: list[str], repeat: int, n_threads: int | None) -> dict[str, Any]:
    model.tokenize_batch(texts[:16], n_threads=n_threads)  # warm up
    best = float("inf")
    runs = 0
    tokens = 0
    start = time.perf_counter()
    # at least `repeat` runs and about half a second, so that a fast tokenizer is timed fairly
    while runs < repeat or (time.perf_counter() - start < 0.5 and runs < 50):
        t0 = time.perf_counter()
        batch = model.tokenize_batch(texts, n_threads=n_threads)
        best = min(best, time.perf_counter() - t0)
        tokens = len(batch.ids)
        runs += 1
    return {
        "texts": len(texts),
        "tokens": tokens,
        "runs": runs,
        "seconds": best,
        "tokens_per_second": tokens / best if best > 0 else 0.0,
    }


def _generation(model: llama.Model, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    text = " ".join(corpus(max(8, args.prompt_tokens // 8), seed=1))
    ids = model.tokenize(text)[: args.prompt_tokens]
    prompt = model.detokenize(ids, remove_special=True)
    need = len(ids) + args.gen_tokens + 16
    options = context_options(args, prefix_caching=False)
    options.setdefault("n_ctx", max(512, need))
    best_prompt: Any = None
    best_gen: Any = None
    with model.new_context(**options) as ctx:
        ctx.generate("Hello", max_tokens=4, temperature=0)  # warm up
        for _ in range(args.repeat):
            ctx.generate(prompt, max_tokens=args.gen_tokens, temperature=0, ignore_eos=True)
            stats = ctx.last_stats
            assert stats is not None
            if best_prompt is None or stats.prompt_tokens_per_second > best_prompt.prompt_tokens_per_second:
                best_prompt = stats
            if best_gen is None or stats.tokens_per_second > best_gen.tokens_per_second:
                best_gen = stats
        settings = {
            "n_ctx": ctx.n_ctx,
            "n_batch": ctx.n_batch,
            "n_ubatch": ctx.n_ubatch,
            "n_threads": ctx.n_threads,
            "n_threads_batch": ctx.n_threads_batch,
            "flash_attn": ctx.flash_attn,
            "kv_cache_type": ctx.kv_cache_type,
        }
    results = {
        "prompt": {
            "tokens": best_prompt.prompt_tokens,
            "ms": best_prompt.prompt_ms,
            "tokens_per_second": best_prompt.prompt_tokens_per_second,
        },
        "generation": {
            "tokens": best_gen.completion_tokens,
            "ms": best_gen.generation_ms,
            "tokens_per_second": best_gen.tokens_per_second,
        },
    }
    return results, settings


def _embeddings(
    model: llama.Model, texts: list[str], args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, Any]]:
    best: Any = None
    with model.new_context(**context_options(args, embeddings=True)) as ctx:
        ctx.get_embeddings_batch(texts[:8])  # warm up
        for _ in range(args.repeat):
            ctx.get_embeddings_batch(texts)
            stats = ctx.last_embedding_stats
            assert stats is not None
            if best is None or stats.texts_per_second > best.texts_per_second:
                best = stats
        settings = {
            "n_ctx": ctx.n_ctx,
            "n_batch": ctx.n_batch,
            "n_ubatch": ctx.n_ubatch,
            "n_threads": ctx.n_threads,
            "n_threads_batch": ctx.n_threads_batch,
            "flash_attn": ctx.flash_attn,
            "pooling": ctx.pooling,
        }
    results = {
        "embeddings": {
            "texts": best.texts,
            "tokens": best.tokens,
            "batches": best.batches,
            "ms": best.ms,
            "texts_per_second": best.texts_per_second,
        }
    }
    return results, settings


def run_bench(args: argparse.Namespace) -> int:
    system = llama.system_info()
    texts = corpus(args.texts)
    with load(args) as model:
        embedding = is_embedding_model(model)
        results: dict[str, Any] = {"tokenize_batch": _tokenize(model, texts, args.repeat, args.threads)}
        if embedding:
            more, settings = _embeddings(model, texts, args)
        else:
            more, settings = _generation(model, args)
        results.update(more)
        report = {
            "model": {
                "path": model.path,
                "description": model.description,
                "architecture": model.architecture,
                "kind": "embedding" if embedding else "generative",
            },
            "system": {
                "cpu": system.cpu_model,
                "core": system.cpu_variant,
                "llama_cpp": system.llama_cpp_commit,
                "summary": str(system),
            },
            "settings": settings,
            "results": results,
        }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"model     {report['model']['path']} ({report['model']['description']}, {report['model']['kind']})"
    )
    print(f"system    {system}")
    print("settings  " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    tok = results["tokenize_batch"]
    print(
        f"tokenize_batch  {tok['tokens_per_second']:>12,.0f} tokens/s  "
        f"({tok['texts']} texts, {tok['tokens']:,} tokens, best of {tok['runs']})"
    )
    if "prompt" in results:
        pp, tg = results["prompt"], results["generation"]
        print(f"prompt          {pp['tokens_per_second']:>12,.1f} tokens/s  ({pp['tokens']} tokens)")
        print(f"generation      {tg['tokens_per_second']:>12,.1f} tokens/s  ({tg['tokens']} tokens, greedy)")
    if "embeddings" in results:
        em = results["embeddings"]
        print(
            f"embeddings      {em['texts_per_second']:>12,.1f} texts/s   "
            f"({em['texts']} texts, {em['tokens']:,} tokens, {em['batches']} batches)"
        )
    return 0
