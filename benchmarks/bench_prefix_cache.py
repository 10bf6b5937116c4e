#!/usr/bin/env python3
"""Time to first token of a second chat turn with and without prefix caching, same run.

A chat application sends the same long system prompt with every request. With prefix caching
a context keeps the KV cache of the last prompt and, on the next call, decodes only the tokens
after a prefix it shares with it; with ``prefix_caching=False`` every call decodes its whole
prompt. This script measures what that saves where a user notices it: the time to the first
token of the answer, for both kinds of reuse:

- ``"exact"`` (the default): only whole physical batches (``n_ubatch``, 512 tokens by default)
  of earlier prompts are reused, so the logits are bit-identical to an uncached context's;
- ``"any"``: the longest common prefix is reused, at the cost of rounding differences (llama.cpp's
  results depend on the batch shape a token was computed in, flash attention most of all).

Three contexts on the same model, ``n_ctx`` 4096, ``--threads`` threads (2 by default): one per
``prefix_caching`` value. On each, one round is:

1. ``ctx.clear_cache()``, then a first turn: the system prompt below (a ~1,000-token support
   policy) and one user question, answered greedily (untimed for the claim, reported);
2. the second turn: the same system prompt and a *different* question, through
   ``ctx.chat_stream(messages, temperature=0)``. TTFT is ``time.perf_counter`` from the call
   (the chat template is rendered inside it) until the first piece comes out of the stream;
   the rest of the answer is then read out, so that it can be compared.

The contexts are measured round by round, strictly one call at a time (the bench machines
have two cores), the order rotating to cancel drift; each figure is the median of ``--repeats``
rounds, after one warm-up round. The machines
are shared: a round during which other processes took a noticeable share of the CPUs (from
/proc/stat, less this process's own CPU time) is thrown away and run again once the CPUs are
idle (the same probe as ``bench_generate.py``).

Checked: the second turn's greedy answer (its tokens and text) is the same with "exact" reuse
and without the cache, in every round (the exit code is 1 otherwise); for "any" it is reported;
``ctx.cached_tokens`` of the cached second turn is printed (the
system prompt and the chat template's text up to the user's question).

If ``ctx.chat_stream`` is not usable (``llama_cython.chat`` missing), the prompt is rendered
here with the model's chat format and sent to ``ctx.generate_stream`` instead; the output says
so. The base ``gemma-3-270m`` GGUF has no chat template: Gemma 3's own is passed (``template=``).

Gemma 3 uses sliding-window attention (``n_swa`` 512) on most layers. llama.cpp's default
context parameters keep a full-size cache for those layers too (``swa_full``), so a prefix
longer than the window is still all there and is reused as with SmolLM2 (llama_cython checks
that the positions the rest of the prompt attends to are still cached, and decodes the whole
prompt otherwise: with a window-sized SWA cache the reuse would be refused).

    .venv/bin/python benchmarks/bench_prefix_cache.py                   # SmolLM2, 2 threads
    .venv/bin/python benchmarks/bench_prefix_cache.py --model gemma-3-270m --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _cpu import Interference, add_interference_options, print_system, wait_quiet, warn_if_busy

import llama_cython as llama

MODELS = ("smollm2-135m-instruct", "gemma-3-270m")

# A realistic system prompt: the policy document of a support assistant (~1,000 tokens).
SYSTEM_PROMPT = """\
You are Juniper, the customer support assistant of Northwind Outfitters, an online retailer of \
outdoor clothing, camping equipment and climbing gear that ships to customers in the United \
States, Canada and the European Union. You answer questions from customers in a chat window on \
the Northwind website. Follow this policy exactly. If the policy does not cover a question, say \
so and offer to hand the conversation to a human agent.

1. Tone and format
- Be friendly, calm and brief. Most answers should be two to five sentences long.
- Address the customer by first name if they have given it; never guess a name.
- Use plain language. Avoid jargon, internal code names and abbreviations the customer may not \
know. Do not use emoji.
- When you list steps, number them. When you quote a price, include the currency.
- Never invent order details, tracking numbers, prices, stock levels or delivery dates. If you \
do not have the information, say that you will check, or ask the customer for it.

2. Identity and privacy
- Before discussing a specific order, ask for the order number (eight digits, starting with \
NW) and the email address used for the purchase. Both must match before you share anything \
about the order.
- Never ask for or accept full card numbers, security codes, passwords or one-time codes. If a \
customer types one, tell them to delete the message and that Northwind will never ask for it.
- Do not reveal any information about other customers or their orders.

3. Orders and shipping
- Standard shipping is free on orders over 75 US dollars (100 Canadian dollars, 70 euros) and \
takes three to six business days. Below that amount, standard shipping costs 6.95 in the \
local currency.
- Express shipping costs 19.95 and takes one to two business days; orders placed before 1 pm \
Eastern Time on a business day leave the warehouse the same day.
- Orders can be changed or cancelled free of charge until they are packed, usually within two \
hours of the purchase. After that, the customer must wait for the delivery and return the \
items.
- Shipments to Canada and the European Union include duties and taxes in the price shown at \
checkout; the customer never pays anything on delivery. If a carrier asks for a fee, the \
customer should refuse it and contact us.
- If tracking shows no movement for five business days, open a carrier investigation and offer \
to send a replacement at no cost once the investigation has started.

4. Returns and refunds
- Unused items in their original packaging can be returned within 60 days of delivery for a \
full refund to the original payment method. Members of the Northwind Trail Club have 90 days.
- Returns are free with the prepaid label from the returns page. Items returned without a \
label are accepted, but the customer pays the postage.
- Refunds are issued within five business days of the return reaching the warehouse; the bank \
may take another three to ten days to show it.
- Used items can be returned only under the warranty (section 5). Swimwear, underwear and \
socks can be returned only unopened, for hygiene reasons. Gift cards cannot be returned.

5. Warranty and repairs
- Clothing and packs are covered against defects in materials and workmanship for two years; \
tents, sleeping bags and stoves for three years; climbing hardware for one year.
- Normal wear, accidents, misuse and damage from improper washing are not covered, but our \
repair partner can often fix them for a fee. Offer a repair quote in that case.
- Climbing ropes, harnesses, slings and helmets that have held a fall, been exposed to \
chemicals or are older than their retirement date must be retired, never repaired. Safety \
comes before any sale: say so plainly.
- For a warranty claim, ask for the order number, a description of the problem and two \
photos; the team answers within three business days.

6. Product advice
- You may recommend products from the Northwind catalogue that fit the customer's stated \
needs, budget and conditions. Give one main recommendation and at most one alternative.
- Do not make claims about waterproof ratings, temperature ratings or load limits beyond \
what the product page states. For sleeping bags, explain that the comfort rating, not the \
limit rating, is the temperature at which most people sleep well.
- Do not give medical advice or advice on technical climbing, avalanche terrain or water \
safety beyond pointing the customer to qualified instruction.

7. Escalation
- Hand the conversation to a human agent when the customer asks for one, when they are upset \
after two attempts to help, when an order is worth more than 1,000 US dollars, or when the \
question involves an injury, a legal threat or a press enquiry.
- Tell the customer that an agent will reply within one business hour between 8 am and 8 pm \
Eastern Time, and by 9 am the next business day otherwise."""

FIRST_QUESTION = "Hi, I bought a tent three weeks ago and one of the poles snapped. What can I do?"
SECOND_QUESTION = ("Hello! How long do I have to return a rain jacket I have not worn, and do I have "
                   "to pay for the return shipping?")

# Gemma 3's chat template (google/gemma-3-270m-it's, for str contents), for a GGUF that carries
# none (the base gemma-3-270m): the system prompt goes at the start of the first user turn.
GEMMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)
FALLBACK_TEMPLATES = {"gemma-3-270m": GEMMA3_TEMPLATE}

# How each model's chat template lays out these messages (only used when ctx.chat_stream cannot
# be used); generate_stream adds the BOS token itself (add_special), so it is not written here.
HAND_TEMPLATES = {
    "smollm2-135m-instruct": ("<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
                              "<|im_start|>assistant\n"),
    "gemma-3-270m": "<start_of_turn>user\n{system}\n\n{user}<end_of_turn>\n<start_of_turn>model\n",
}


def messages_for(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]


def chat_stream_works(ctx: Any, template: str | None) -> str | None:
    """None if ``ctx.chat_stream`` can be used; else why not."""
    try:
        stream = ctx.chat_stream([{"role": "user", "content": "Hi"}], max_tokens=1, temperature=0.0,
                                 template=template)
        for _ in stream:
            pass
    except (ImportError, AttributeError, NotImplementedError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def start_turn(ctx: Any, model_name: str, question: str, max_tokens: int, use_chat: bool,
               template: str | None) -> Iterator[str]:
    """Start one turn (greedy) and return its stream of pieces."""
    if use_chat:
        return iter(ctx.chat_stream(messages_for(question), max_tokens=max_tokens, temperature=0.0,
                                    template=template))
    prompt = HAND_TEMPLATES[model_name].format(system=SYSTEM_PROMPT, user=question)
    return iter(ctx.generate_stream(prompt, max_tokens=max_tokens, temperature=0.0))


def run_turn(ctx: Any, model_name: str, question: str, max_tokens: int, use_chat: bool,
             template: str | None) -> dict[str, Any]:
    """One turn: TTFT (call to first piece), then the rest of the answer, and its stats."""
    t0 = time.perf_counter()
    pieces = start_turn(ctx, model_name, question, max_tokens, use_chat, template)
    first = next(pieces, "")
    t1 = time.perf_counter()
    text = first + "".join(pieces)
    t2 = time.perf_counter()
    st = ctx.last_stats
    return {
        "ttft_ms": (t1 - t0) * 1000.0,
        "total_ms": (t2 - t0) * 1000.0,
        "prompt_ms": st.prompt_ms,
        "prompt_tokens": st.prompt_tokens,
        "cached_tokens": ctx.cached_tokens,
        "completion_tokens": st.completion_tokens,
        "finish": st.finish_reason,
        "tokens": st.tokens.tolist(),
        "text": text,
    }


def run_round(ctx: Any, args: argparse.Namespace, use_chat: bool, template: str | None) -> dict[str, Any]:
    """Clear the cache, first turn, then the timed second turn."""
    ctx.clear_cache()
    first = run_turn(ctx, args.model, FIRST_QUESTION, args.first_tokens, use_chat, template)
    second = run_turn(ctx, args.model, SECOND_QUESTION, args.max_tokens, use_chat, template)
    return {"first": first, "second": second}


def summarize_side(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    second = [r["second"] for r in rounds]
    first = [r["first"] for r in rounds]
    return {
        "ttft_ms": statistics.median(s["ttft_ms"] for s in second),
        "ttft_ms_all": [s["ttft_ms"] for s in second],
        "prompt_ms": statistics.median(s["prompt_ms"] for s in second),
        "prompt_tokens": second[0]["prompt_tokens"],
        "cached_tokens": sorted({s["cached_tokens"] for s in second}),
        "completion_tokens": sorted({s["completion_tokens"] for s in second}),
        "finish": sorted({s["finish"] for s in second}),
        "first_turn_ttft_ms": statistics.median(f["ttft_ms"] for f in first),
        "first_turn_cached_tokens": sorted({f["cached_tokens"] for f in first}),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", choices=MODELS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds per side (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds per side first")
    ap.add_argument("--max-tokens", type=int, default=48,
                    help="tokens of the second turn's answer (compared across sides; default 48)")
    ap.add_argument("--first-tokens", type=int, default=16, help="tokens of the first turn's answer")
    add_interference_options(ap, "round", "one of its second turns")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead")
    args = ap.parse_args(argv)
    system = print_system()

    def say(msg: str) -> None:
        print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)

    load = warn_if_busy(say)

    model_file = llama.models.model_path(args.model)
    model = llama.load_model(str(model_file))
    system_tokens = len(model.tokenize(SYSTEM_PROMPT, add_special=False))
    n_swa = model.n_swa
    opts = {"n_ctx": args.n_ctx, "n_threads": args.threads, "n_threads_batch": args.threads}
    contexts = {
        "cached": model.new_context(prefix_caching="exact", **opts),
        "any": model.new_context(prefix_caching="any", **opts),
        "uncached": model.new_context(prefix_caching=False, **opts),
    }
    template = FALLBACK_TEMPLATES.get(args.model) if model.chat_template is None else None
    why_not_chat = chat_stream_works(contexts["cached"], template)
    use_chat = why_not_chat is None
    if not use_chat:
        say(f"note: ctx.chat_stream is not usable ({why_not_chat}); the prompt is rendered here "
            f"with the model's chat format and sent to ctx.generate_stream")

    pids: list[int | str] = ["self"]
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in contexts}
    discarded = 0
    t_start = time.perf_counter()
    try:
        for _ in range(args.warmup):
            for ctx in contexts.values():
                run_round(ctx, args, use_chat, template)
        attempts = 0
        while len(runs["cached"]) < args.repeats and attempts < 2 * args.repeats:
            sides_order = list(contexts)
            k = attempts % len(sides_order)
            order = sides_order[k:] + sides_order[:k]
            attempts += 1
            one: dict[str, dict[str, Any]] = {}
            worst = 0.0
            for side in order:
                with Interference(pids) as probe:
                    one[side] = run_round(contexts[side], args, use_chat, template)
                one[side]["foreign_cpu_share"] = probe.share
                worst = max(worst, probe.share)
            if worst > args.max_foreign and attempts < 2 * args.repeats:
                discarded += 1
                wait_quiet(args.quiet_wait)
                continue
            for side in order:
                runs[side].append(one[side])
    finally:
        for ctx in contexts.values():
            ctx.close()
        model.close()
    elapsed = time.perf_counter() - t_start

    sides = {side: summarize_side(rs) for side, rs in runs.items()}
    ref = runs["uncached"][0]["second"]

    def same_as_uncached(side: str) -> bool:
        return all(r["second"]["tokens"] == ref["tokens"] and r["second"]["text"] == ref["text"]
                   for r in runs[side] + runs["uncached"])

    same_answer = same_as_uncached("cached")
    same_answer_any = same_as_uncached("any")
    speedup = sides["uncached"]["ttft_ms"] / sides["cached"]["ttft_ms"]
    speedup_any = sides["uncached"]["ttft_ms"] / sides["any"]["ttft_ms"]
    paired = statistics.median(u["second"]["ttft_ms"] / c["second"]["ttft_ms"]
                               for c, u in zip(runs["cached"], runs["uncached"]))
    report: dict[str, Any] = {
        "system": system,
        "model": args.model,
        "model_file": str(model_file),
        "n_swa": n_swa,
        "threads": args.threads,
        "n_ctx": args.n_ctx,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "api": ("chat_stream" + (" (Gemma 3 template given: the GGUF has none)" if template else "")
                if use_chat else "generate_stream (prompt rendered by hand)"),
        "system_prompt_tokens": system_tokens,
        "second_turn_prompt_tokens": ref["prompt_tokens"],
        "sides": sides,
        "same_greedy_answer": same_answer,
        "same_greedy_answer_any": same_answer_any,
        "ttft_speedup_any": speedup_any,
        "second_turn_answer": ref["text"],
        "ttft_speedup": speedup,
        "ttft_speedup_paired_median": paired,
        "rounds": len(runs["cached"]),
        "discarded_rounds": discarded,
        "max_foreign_cpu_share": max(r["foreign_cpu_share"] for rs in runs.values() for r in rs),
        "elapsed_s": elapsed,
        "load_avg_start": load,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0 if same_answer else 1

    print(f"model {args.model} ({model_file.name}), {args.threads} threads, n_ctx {args.n_ctx}, "
          f"n_swa {report['n_swa']}, via {report['api']}")
    print(f"system prompt {system_tokens} tokens; second turn prompt {ref['prompt_tokens']} tokens; "
          f"median of {len(runs['cached'])} rounds (+{args.warmup} warm-up), cached and uncached interleaved")
    hdr = (f"{'context':<22} {'2nd-turn TTFT':>14} {'prompt decode':>14} {'cached tokens':>14} "
           f"{'1st-turn TTFT':>14}")
    print(hdr)
    print("-" * len(hdr))
    for side, label in (("uncached", "prefix_caching=False"), ("cached", 'prefix_caching="exact"'),
                        ("any", 'prefix_caching="any"')):
        s = sides[side]
        print(f"{label:<22} {s['ttft_ms']:>11.1f} ms {s['prompt_ms']:>11.1f} ms "
              f"{'/'.join(map(str, s['cached_tokens'])):>14} {s['first_turn_ttft_ms']:>11.1f} ms")
    print("TTFT: perf_counter from the chat call to its first piece; "
          "prompt decode: ctx.last_stats.prompt_ms;")
    print("cached tokens: ctx.cached_tokens after the second turn (prompt tokens taken from the KV cache).")
    print(f"second turn greedy answer ({ref['completion_tokens']} tokens, finish {ref['finish']}) "
          f"the same with \"exact\" reuse and without the cache in every round: "
          f"{'yes' if same_answer else 'NO'}; with \"any\": {'yes' if same_answer_any else 'no'}")
    print(f"  {ref['text'][:160]!r}")
    print(f"paired (median of the per-round ratios): {paired:.1f}x; {len(runs['cached'])} rounds kept, "
          f"{discarded} disturbed rounds run again; bench time {elapsed:.1f} s")
    if not same_answer:
        print("WARNING: the cached and uncached second turns gave different answers")
    print(f"prefix cache TTFT speed-up (second turn, {system_tokens}-token system prompt): "
          f"{speedup:.1f}x exact (the default), {speedup_any:.1f}x any")
    return 0 if same_answer else 1


if __name__ == "__main__":
    sys.exit(main())
