#!/usr/bin/env python3
"""The llama_cython demo: sets everything up, then shows the default model at work.

    python3 scripts/demo.py                       # SmolLM2-135M-Instruct
    python3 scripts/demo.py --model gemma-3-270m  # another model from the registry
    python3 scripts/demo.py --prompt "Once upon a time"
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _bootstrap  # noqa: E402


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"


def run_demo(model_name: str, prompt: str, max_tokens: int) -> None:
    import llama_cython as llama

    path = llama.models.model_path(model_name)
    print(f"llama_cython {llama.__version__}\n")

    with llama.load_model(path) as model:
        print("== Model")
        print(f"  file          {path.name}")
        print(f"  description   {model.description}")
        print(f"  architecture  {model.architecture}")
        print(f"  parameters    {model.n_params / 1e6:.1f} M   ({_human_bytes(model.size)} of weights)")
        print(f"  vocabulary    {model.n_vocab} tokens")
        print(f"  layers        {model.n_layer}, hidden size {model.n_embd}")
        print(f"  context       trained for {model.n_ctx_train} tokens")
        print(f"  chat template {'yes' if model.chat_template else 'no'}")

        text = "Tokenizers split text into pieces: naïve café, 東京, 🦙!"
        enc = model.encode(text)
        ids = enc.ids
        print(f"\n== Tokenization of {text!r}")
        print(f"  {len(ids)} tokens, numpy {ids.dtype} array: {ids.tolist()}")
        print("       id  piece                  text it covers (char offsets)")
        for tok, piece, (start, end) in zip(ids.tolist(), enc.pieces, enc.char_offsets.tolist()):
            try:
                shown = repr(piece.decode("utf-8"))
            except UnicodeDecodeError:   # part of a multi-byte character: show the bytes
                shown = repr(piece)
            print(f"  {tok:>7}  {shown:<22} {text[start:end]!r} [{start}:{end}]")
        print(f"  detokenized: {model.detokenize(ids, remove_special=True)!r}")
        batch = model.tokenize_batch([text, "a second text", "and a third"])
        print(f"  tokenize_batch of 3 texts: {batch}, lengths {batch.lengths.tolist()}; "
              f"vocabulary: {model.vocab}")

        with model.new_context(n_ctx=1024) as ctx:
            print(f"\n== Greedy generation (n_ctx={ctx.n_ctx}, {ctx.n_threads} threads, "
                  f"flash attention {ctx.flash_attn}, KV cache {ctx.kv_cache_type})")
            print(f"  prompt: {prompt!r}")
            out = ctx.generate(prompt, max_tokens=max_tokens, temperature=0)
            stats = ctx.last_stats
            print("  " + (prompt + out).replace("\n", "\n  "))
            print(f"  -> {stats.completion_tokens} tokens at {stats.tokens_per_second:.1f} tokens/s "
                  f"(prompt: {stats.prompt_tokens} tokens in {stats.prompt_ms:.1f} ms; "
                  f"finished: {stats.finish_reason})")

            print("\n== Sampled generation (temperature 0.8, top_k 40, top_p 0.95, seed 42)")
            out = ctx.generate(prompt, max_tokens=max_tokens, temperature=0.8, seed=42)
            stats = ctx.last_stats
            print("  " + (prompt + out).replace("\n", "\n  "))
            print(f"  -> {stats.completion_tokens} tokens at {stats.tokens_per_second:.1f} tokens/s")

            if model.chat_template:
                _chat(ctx)


def _chat(ctx) -> None:
    """Two chat turns, streamed; the second reuses the first's KV cache (prefix caching)."""
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "What is the capital of France?"}]
    print("\n== Chat with the model's own template, streamed piece by piece")
    for turn in range(2):
        print(f"  user: {messages[-1]['content']}\n  assistant: ", end="", flush=True)
        stream = ctx.chat_stream(messages, max_tokens=64, temperature=0)
        for piece in stream:
            print(piece.replace("\n", "\n  "), end="", flush=True)
        stats = stream.stats
        print(f"\n  -> {stats.completion_tokens} tokens ({stats.finish_reason}); "
              f"{stats.cached_tokens} of {stats.prompt_tokens} prompt tokens reused from the KV cache")
        if turn == 0:
            messages += [{"role": "assistant", "content": stream.text},
                         {"role": "user", "content": "What is the population of that city?"}]


def main() -> None:
    parser = argparse.ArgumentParser(description="llama_cython demo")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompt", default="The three most important inventions in history are")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    if not _bootstrap.in_venv():
        python = _bootstrap.ensure(models=(args.model,))
        os.execve(str(python), [str(python), __file__, *sys.argv[1:]], _bootstrap._env())
    run_demo(args.model, args.prompt, args.max_tokens)


if __name__ == "__main__":
    main()
