#!/usr/bin/env python3
"""Tokens/s of speculative decoding against the target alone and llama.cpp's own, same run.

Speculative decoding is ``Context.generate_with_draft``; llama.cpp's is its example program
``llama-speculative-simple``.

The pair: target SmolLM2-135M-Instruct F32 (``smollm2-135m-instruct-f32``, derived from the
Q4_1 by the model registry), draft the same model in Q4_1 (``smollm2-135m-instruct``): one
vocabulary, very similar predictions, the draft about twice as fast (printed). Greedy decoding,
``--max-tokens`` (128) new tokens per prompt, end-of-generation ignored on every side so that
all sides generate the same number of tokens, ``--threads`` threads (2) everywhere.

Two workloads:

- ``chat``: free generation, three chat questions (SmolLM2's chat format);
- ``extract``: a 375-word document (made-up meeting minutes) in the prompt and a request to
  copy a section of it verbatim (SmolLM2-135M copies the minutes from the top whichever section
  is asked for, nearly word for word: the acceptance rates show how much of it is copied).

Sides, for each workload (ours: one target context and one draft context, ``prefix_caching``
off so that every call decodes its whole prompt, as llama.cpp's fresh process does):

- ``ours target``: ``ctx.generate`` on the target (the baseline of "x ours target");
- ``ours draft model alone``: ``generate`` on the draft (only for the pair's speed ratio);
- ``ours draft, adaptive``: ``generate_with_draft(prompt, draft_ctx)`` (n_draft 16, adaptive);
- ``ours draft, fixed N``: ``adaptive=False, n_draft=N``: always N drafted tokens, as llama.cpp;
- ``ours lookup, adaptive`` / ``fixed M``: ``generate_with_draft(prompt, "prompt")`` (n-grams
  of 2 to 8 tokens over prompt and output), adaptive (n_draft 16) and ``adaptive=False,
  n_draft=M`` (M = llama.cpp's ngram-simple draft length);
- ``llama.cpp target``: ``llama-speculative-simple`` with ngram-simple and a lookup n-gram of
  1024 tokens, longer than any text here, so it never drafts: its own loop, target alone (the
  example cannot run without a speculative type);
- ``llama.cpp draft-simple N``: ``-md DRAFT --spec-type draft-simple --spec-draft-n-max N``
  (``--n-draft``, 8 by default here; llama.cpp's own default is 3; on the chat prompts it made
  58, 66, 73 and 72 tokens/s with 3, 5, 8 and 16);
- ``llama.cpp ngram-simple n/M``: ``--spec-type ngram-simple --spec-ngram-simple-size-n n
  --spec-ngram-simple-size-m M`` (``--ngram-n``/``--ngram-m``, 4 and 16 by default here: on the
  extraction prompts 4/16 made 194 tokens/s, 3/32 and 4/8 176, 2/16 and 4/48 ~150-170, and
  llama.cpp's defaults, 12/48, 144).

llama.cpp's program is built from the same pinned tree (``scripts/build_llama_cpp.py``
``build_tool``, cached; the first build takes minutes, before anything is timed) and runs as a
fresh process per call, ``-c 2048 --temp 0 --ignore-eos -t THREADS``, with ``--poll 0
--spec-draft-poll 0``: its best setting on a small machine (with its default busy polling the
target's and the draft's thread pools fight for the cores and it runs ~2.5x slower). Loading
is not timed: its figure is its own "decoded N tokens in T seconds" line (the generation loop,
after the prompt; it stops past ``-n``, e.g. 136 tokens for 128, so tokens/s are compared,
not times). Ours is ``completion_tokens / generation_ms`` from ``ctx.last_stats`` (after the
prompt, draft-model work included).

One repeat runs every side on every prompt, the side order rotating from prompt to prompt and
from repeat to repeat; a workload's tokens/s in one repeat is its tokens over its generation
time, and the figure is the median of ``--repeats``. The machines are shared: a call during
which other processes took more than ``--max-foreign`` of the CPUs (from /proc/stat, less this
process's and its children's CPU time) is run again (up to ``--max-tries`` times); every call
first waits (up to ``--quiet-wait`` s) for the CPUs to be idle. Checked: every speculative
text of ours equals ``generate``'s for the same prompt (a ``MISMATCH`` line otherwise, with
where they part: verifying a draft decodes a batch, whose rounding can flip a near-tie of the
target's two best tokens), and llama.cpp's text starts with ours. The last lines compare the
ratios with the floors the feature is held to (``ok``/``BELOW``).

    .venv/bin/python benchmarks/bench_speculative.py
    .venv/bin/python benchmarks/bench_speculative.py --repeats 3 --json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "scripts"))

import build_llama_cpp  # noqa: E402
import build_native  # noqa: E402
from _cpu import Interference, add_interference_options, print_system, wait_quiet, warn_if_busy  # noqa: E402

import llama_cython as llama  # noqa: E402

TARGET = "smollm2-135m-instruct-f32"
DRAFT = "smollm2-135m-instruct"
N_CTX = 2048
NEVER_N = 1024   # an ngram-simple lookup this long never matches here: llama.cpp's target alone


def chat(user: str) -> str:
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


DOCUMENT = """\
Minutes of the Riverside Community Library board meeting, held on Tuesday, 14 March 2023, in \
the reading room of the main branch.

Present: Helen Okafor (chair), Martin Lindqvist (treasurer), Priya Raman (secretary), Tomas \
Ferreira, Grace Whitfield and Samuel Adeyemi. Apologies: Nadia Brennan.

1. Opening. The chair opened the meeting at 6:30 pm and welcomed Samuel Adeyemi, who joined \
the board in February. The minutes of the meeting of 10 January were approved without changes.

2. Budget. The treasurer reported that spending for the first quarter was 41,200 dollars, \
slightly below the planned 43,000 dollars, mainly because the heating repairs cost less than \
expected. The county grant of 15,000 dollars for new computers has been received. The board \
asked the treasurer to prepare a revised budget for the summer reading programme by the end of \
April.

3. Building. The roof over the children's section was inspected on 2 March. The contractor, \
Baxter and Sons, recommends replacing the gutters before the autumn rains. Tomas Ferreira will \
ask two other contractors for quotes so that the board can compare prices at the next meeting.

4. Summer reading programme. Grace Whitfield presented the plan for this year's programme, \
which will run from 19 June to 25 August. Children who read ten books will receive a \
certificate and a free pass to the city swimming pool. The programme needs at least twelve \
volunteers; so far eight have signed up.

5. Action items. The following tasks were agreed:
- Martin Lindqvist will prepare the revised summer budget and send it to all board members by \
28 April.
- Tomas Ferreira will collect two more quotes for the gutter replacement by 15 May.
- Grace Whitfield will contact the local high school to recruit four more volunteers for the \
reading programme.
- Priya Raman will update the library website with the new opening hours, which start on 1 \
April.
- Samuel Adeyemi will draft a short survey asking visitors which evening events they would \
like to attend.
- Helen Okafor will write to the county office to thank them for the computer grant.

6. Next meeting. The next meeting will be held on Tuesday, 9 May 2023, at 6:30 pm in the same \
room. The chair closed the meeting at 8:05 pm."""

WORKLOADS: dict[str, list[str]] = {
    "chat": [
        chat("Explain how a refrigerator keeps food cold."),
        chat("Write a short story about a lighthouse keeper who finds a message in a bottle."),
        chat("What are the main differences between a list and a tuple in Python?"),
    ],
    "extract": [
        chat(f"{DOCUMENT}\n\nRepeat section 5 of the minutes word for word."),
        chat(f"{DOCUMENT}\n\nCopy the list of action items from section 5 exactly as it is written "
             "above."),
    ],
}

# llama.cpp's closing report (stderr)
_DECODED = re.compile(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds")
_ENCODED = re.compile(r"encoded\s+(\d+) tokens in")
_DRAFTED = re.compile(r"n_drafted\s*=\s*(\d+)")
_ACCEPT = re.compile(r"n_accept\s*=\s*(\d+)")


def lcpp_command(exe: Path, target: Path, draft: Path, prompt: str, args: argparse.Namespace,
                 side: str) -> list[str]:
    cmd = [str(exe), "-m", str(target), "-p", prompt, "-n", str(args.max_tokens), "--temp", "0",
           "--ignore-eos", "-t", str(args.threads), "-c", str(N_CTX), "--poll", "0"]
    if side == "lcpp_draft":
        return [*cmd, "-md", str(draft), "--spec-type", "draft-simple", "--spec-draft-n-max",
                str(args.n_draft), "--spec-draft-poll", "0"]
    n, m = (NEVER_N, 1) if side == "lcpp_target" else (args.ngram_n, args.ngram_m)
    return [*cmd, "--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", str(n),
            "--spec-ngram-simple-size-m", str(m)]


def run_lcpp(cmd: list[str], prompt: str, timeout: float) -> dict[str, Any]:
    """One llama-speculative-simple process; its figures from its closing report."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    dec = _DECODED.search(out.stderr)
    if out.returncode != 0 or dec is None:
        return {"error": f"exit {out.returncode}: {out.stderr.strip()[-400:]}"}
    enc, drafted, accepted = (_ENCODED.search(out.stderr), _DRAFTED.search(out.stderr),
                              _ACCEPT.search(out.stderr))
    n_gen = int(dec.group(1))
    n_acc = int(accepted.group(1)) if accepted else 0
    # stdout: the prompt as it was tokenized, then the generated text
    at = out.stdout.find(prompt)
    return {
        "n_gen": n_gen,
        "gen_s": float(dec.group(2)),
        "n_prompt": int(enc.group(1)) if enc else None,
        "drafted": int(drafted.group(1)) if drafted else 0,
        "accepted": n_acc,
        "decodes": n_gen - n_acc,    # one target decode per step; each step adds accepted + 1
        "text": out.stdout[at + len(prompt):] if at >= 0 else None,
    }


def run_ours(ctx: Any, prompt: str, args: argparse.Namespace, draft: Any = None, **kw: Any) -> dict[str, Any]:
    """One call of ours: ``generate``, or ``generate_with_draft`` when ``draft`` is given."""
    common = {"max_tokens": args.max_tokens, "temperature": 0.0, "ignore_eos": True}
    if draft is None:
        text = ctx.generate(prompt, **common)
    else:
        text = ctx.generate_with_draft(prompt, draft, **kw, **common)
    st = ctx.last_stats
    spec = draft is not None
    return {
        "n_gen": st.completion_tokens,
        "gen_s": st.generation_ms / 1000.0,
        "n_prompt": st.prompt_tokens,
        "drafted": st.draft_tokens if spec else 0,
        "accepted": st.accepted_tokens if spec else 0,
        "decodes": st.decodes if spec else st.completion_tokens,
        "text": text,
    }


def make_sides(args: argparse.Namespace, target_ctx: Any, draft_ctx: Any, exe: Path, target_file: Path,
               draft_file: Path) -> dict[str, tuple[str, Callable[[str], dict[str, Any]]]]:
    """side -> (label, function of the prompt that runs one call)."""

    def ours(ctx: Any, draft: Any = None, **kw: Any) -> Callable[[str], dict[str, Any]]:
        return lambda p: run_ours(ctx, p, args, draft, **kw)

    def lcpp(side: str) -> Callable[[str], dict[str, Any]]:
        return lambda p: run_lcpp(lcpp_command(exe, target_file, draft_file, p, args, side), p,
                                  args.lcpp_timeout)

    return {
        "target": ("ours target (generate)", ours(target_ctx)),
        "draft_alone": ("ours draft model alone (generate)", ours(draft_ctx)),
        "lcpp_target": ("llama.cpp target (no drafts)", lcpp("lcpp_target")),
        "draft_adaptive": ("ours draft, adaptive (n_draft 16)", ours(target_ctx, draft_ctx)),
        "draft_fixed": (f"ours draft, fixed {args.n_draft}",
                        ours(target_ctx, draft_ctx, n_draft=args.n_draft, adaptive=False)),
        "lcpp_draft": (f"llama.cpp draft-simple {args.n_draft}", lcpp("lcpp_draft")),
        "lookup_adaptive": ("ours lookup, adaptive (n_draft 16)", ours(target_ctx, "prompt")),
        "lookup_fixed": (f"ours lookup, fixed {args.ngram_m}",
                         ours(target_ctx, "prompt", n_draft=args.ngram_m, adaptive=False)),
        "lcpp_ngram": (f"llama.cpp ngram-simple {args.ngram_n}/{args.ngram_m}", lcpp("lcpp_ngram")),
    }


def measure(call: Callable[[str], dict[str, Any]], prompt: str, args: argparse.Namespace) -> dict[str, Any]:
    """One call, after waiting for idle CPUs; run again while others took too much of the CPUs."""
    for attempt in range(args.max_tries):
        wait_quiet(args.quiet_wait)
        with Interference() as probe:
            r = call(prompt)
        r["foreign_cpu_share"], r["tries"] = probe.share, attempt + 1
        if probe.share <= args.max_foreign and "error" not in r:
            break
    r["disturbed"] = r["foreign_cpu_share"] > args.max_foreign
    return r


def summarize(runs: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """runs[repeat][prompt] of one side and workload -> its figures."""
    tps = [sum(r["n_gen"] for r in rep) / sum(r["gen_s"] for r in rep) for rep in runs]
    every = [r for rep in runs for r in rep]
    drafted = sum(r["drafted"] for r in every)
    return {
        "tok_s": statistics.median(tps),
        "tok_s_all": tps,
        "acceptance": sum(r["accepted"] for r in every) / drafted if drafted else None,
        "tokens_per_decode": sum(r["n_gen"] for r in every) / sum(r["decodes"] for r in every),
        "drafted_per_call": drafted / len(every),
        "n_gen": sorted({r["n_gen"] for r in every}),
        "n_prompt": sorted({r["n_prompt"] for r in every if r["n_prompt"] is not None}),
        "disturbed_calls": sum(r["disturbed"] for r in every),
        "retried_calls": sum(r["tries"] > 1 for r in every),
    }


def paired(runs: dict[str, list[list[dict[str, Any]]]], a: str, b: str) -> float:
    """Median over repeats of tok/s(a) / tok/s(b), each repeat's runs next to each other in time."""
    def tps(rep: list[dict[str, Any]]) -> float:
        return sum(r["n_gen"] for r in rep) / sum(r["gen_s"] for r in rep)
    return statistics.median(tps(x) / tps(y) for x, y in zip(runs[a], runs[b]))


def summarize_workload(wruns: dict[str, list[list[dict[str, Any]]]]) -> dict[str, Any]:
    """One workload's runs (side -> repeat -> prompt) -> figures per side and the ratios."""
    res = {s: summarize(rs) for s, rs in wruns.items()}

    def ratio(a: str, b: str) -> float:
        return float(res[a]["tok_s"] / res[b]["tok_s"])

    pairs = {"draft_fixed_vs_lcpp_draft": ("draft_fixed", "lcpp_draft"),
             "draft_adaptive_vs_lcpp_draft": ("draft_adaptive", "lcpp_draft"),
             "lookup_fixed_vs_lcpp_ngram": ("lookup_fixed", "lcpp_ngram"),
             "lookup_adaptive_vs_lcpp_ngram": ("lookup_adaptive", "lcpp_ngram"),
             "target_vs_lcpp_target": ("target", "lcpp_target"),
             "draft_adaptive_vs_target": ("draft_adaptive", "target"),
             "draft_fixed_vs_target": ("draft_fixed", "target"),
             "lookup_adaptive_vs_target": ("lookup_adaptive", "target"),
             "lookup_fixed_vs_target": ("lookup_fixed", "target"),
             "draft_alone_vs_target": ("draft_alone", "target")}
    return {
        "sides": res,
        "ratios": {k: ratio(a, b) for k, (a, b) in pairs.items()},
        "ratios_paired": {k: paired(wruns, a, b) for k, (a, b) in pairs.items()},
        "sample_text": wruns["target"][0][0]["text"],
    }


def find_mismatches(workload: str, wruns: dict[str, list[list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """Speculative texts of ours that differ from ``generate``'s for the same prompt, and
    llama.cpp texts that do not start with it (one entry per side and prompt)."""
    ref = [r["text"] for r in wruns["target"][0]]
    out = []
    for side, reps in wruns.items():
        if side in ("target", "draft_alone"):
            continue
        for i, want in enumerate(ref):
            bad = []
            for rep in reps:
                got = rep[i]["text"] or ""
                if got != want if not side.startswith("lcpp") else not got.startswith(want):
                    bad.append(got)
            if bad:
                got = bad[0]
                at = next((k for k, (x, y) in enumerate(zip(got, want)) if x != y), min(len(got), len(want)))
                out.append({"workload": workload, "prompt": i, "side": side, "repeats": len(bad), "at": at,
                            "text": got[max(0, at - 30):at + 30], "generate": want[max(0, at - 30):at + 30]})
    return out


def check_claims(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The figures the feature promises, each with its floor."""
    claims = []
    for w, r in results.items():
        claims += [
            {"what": f"{w}: ours/llama.cpp, draft model, same draft length", "min": 1.0,
             "ratio": r["ratios"]["draft_fixed_vs_lcpp_draft"]},
            {"what": f"{w}: ours/llama.cpp, prompt lookup fixed / ngram-simple", "min": 1.0,
             "ratio": r["ratios"]["lookup_fixed_vs_lcpp_ngram"]},
            {"what": f"{w}: ours draft model adaptive / target alone", "min": 1.0,
             "ratio": r["ratios"]["draft_adaptive_vs_target"]},
        ]
        if w == "extract":
            claims.append({"what": f"{w}: ours prompt lookup adaptive / target alone", "min": 1.5,
                           "ratio": r["ratios"]["lookup_adaptive_vs_target"]})
    for c in claims:
        c["ok"] = c["ratio"] >= c["min"]
    return claims

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-tokens", type=int, default=128, help="new tokens per prompt (default 128)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-draft", type=int, default=8,
                    help="draft length of llama.cpp's draft-simple and of ours with adaptive=False "
                         "(default 8)")
    ap.add_argument("--ngram-n", type=int, default=4, help="llama.cpp ngram-simple lookup n-gram (default 4)")
    ap.add_argument("--ngram-m", type=int, default=16,
                    help="llama.cpp ngram-simple draft length, and n_draft of ours fixed lookup (default 16)")
    ap.add_argument("--workloads", default="chat,extract", help="comma-separated: chat,extract")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds (default 3)")
    add_interference_options(ap, "call", "it")
    ap.add_argument("--max-tries", type=int, default=3, help="tries per call at most (default 3)")
    ap.add_argument("--lcpp-timeout", type=float, default=300.0, help="seconds per llama.cpp process")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead")
    args = ap.parse_args(argv)
    system = print_system()
    workloads = args.workloads.split(",")
    if set(workloads) - set(WORKLOADS):
        ap.error(f"--workloads: one or more of {', '.join(WORKLOADS)}")

    def say(msg: str) -> None:
        print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)

    load = warn_if_busy(say)

    with build_native.stdout_to_stderr():
        print("building llama-speculative-simple (cached after the first build, which takes minutes)",
              file=sys.stderr, flush=True)
        exe = build_llama_cpp.build_tool("llama-speculative-simple")
    target_file = llama.models.model_path(TARGET)
    draft_file = llama.models.model_path(DRAFT)
    target = llama.load_model(str(target_file))
    draft = llama.load_model(str(draft_file))
    opts = {"n_ctx": N_CTX, "n_threads": args.threads, "n_threads_batch": args.threads,
            "flash_attn": "auto", "prefix_caching": False}
    target_ctx = target.new_context(**opts)
    draft_ctx = draft.new_context(**opts)
    longest = max(len(target.tokenize(p)) for w in workloads for p in WORKLOADS[w])
    if longest + args.max_tokens + 16 >= NEVER_N:
        ap.error(f"prompts of {longest} tokens + {args.max_tokens}: too long for the no-draft llama.cpp run")
    sides = make_sides(args, target_ctx, draft_ctx, exe, target_file, draft_file)
    say(f"target {TARGET} ({target_file.name}), draft {DRAFT} ({draft_file.name}); {args.threads} threads, "
        f"{args.max_tokens} new tokens per prompt (greedy, EOS ignored), n_ctx {N_CTX}; "
        f"llama.cpp: {exe.name} --poll 0 --spec-draft-poll 0")

    # runs[workload][side][repeat][prompt]
    runs: dict[str, dict[str, list[list[dict[str, Any]]]]] = {
        w: {s: [] for s in sides} for w in workloads}
    errors: list[str] = []
    t_start = time.perf_counter()
    try:
        for _, call in sides.values():       # warm-up: page the models in, first-call costs
            r = call(WORKLOADS[workloads[0]][0])
            if "error" in r:
                errors.append(r["error"])
        if errors:
            say(f"llama.cpp failed: {errors[0]}")
            return 2
        names = list(sides)
        for rep in range(args.repeats):
            for w in workloads:
                one: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
                for i, prompt in enumerate(WORKLOADS[w]):
                    k = (rep * len(WORKLOADS[w]) + i) % len(names)
                    for side in names[k:] + names[:k]:
                        r = measure(sides[side][1], prompt, args)
                        if "error" in r:
                            say(f"llama.cpp failed: {r['error']}")
                            return 2
                        one[side].append(r)
                for side, rs in one.items():
                    runs[w][side].append(rs)
            say(f"repeat {rep + 1}/{args.repeats} done ({time.perf_counter() - t_start:.0f} s)")
    finally:
        target_ctx.close()
        draft_ctx.close()
        target.close()
        draft.close()
    elapsed = time.perf_counter() - t_start

    results = {w: summarize_workload(runs[w]) for w in workloads}
    mismatches = [m for w in workloads for m in find_mismatches(w, runs[w])]
    claims = check_claims(results)
    report: dict[str, Any] = {
        "system": system, "target": TARGET, "draft": DRAFT, "threads": args.threads,
        "max_tokens": args.max_tokens, "n_draft": args.n_draft, "ngram_n": args.ngram_n,
        "ngram_m": args.ngram_m, "repeats": args.repeats, "lcpp_exe": str(exe), "elapsed_s": elapsed,
        "load_avg_start": load, "workloads": results, "mismatches": mismatches, "claims": claims,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 1 if mismatches else 0

    print(f"median of {args.repeats} repeats, sides interleaved; tokens/s of the generation phase")
    for w in workloads:
        res = results[w]["sides"]
        print(f"\n{w}: {len(WORKLOADS[w])} prompts of {'/'.join(map(str, res['target']['n_prompt']))} tokens")
        hdr = (f"{'side':<36} {'tok/s':>7} {'x ours target':>13} {'x own target':>12} "
               f"{'acceptance':>10} {'tok/decode':>10}")
        print(hdr)
        print("-" * len(hdr))
        for side, (label, _) in sides.items():
            s = res[side]
            own = res["lcpp_target" if side.startswith("lcpp") else "target"]["tok_s"]
            acc = f"{100 * s['acceptance']:.1f}%" if s["acceptance"] is not None else "-"
            tpd = f"{s['tokens_per_decode']:.2f}" if side != "draft_alone" else "-"
            print(f"{label:<36} {s['tok_s']:>7.1f} {s['tok_s'] / res['target']['tok_s']:>12.2f}x "
                  f"{s['tok_s'] / own:>11.2f}x {acc:>10} {tpd:>10}")
        disturbed = sum(s["disturbed_calls"] for s in res.values())
        retried = sum(s["retried_calls"] for s in res.values())
        print(f"(calls run again after interference: {retried}; still disturbed: {disturbed})")
    print("\nx own target: against ours target for ours, against llama.cpp's no-draft run for llama.cpp;")
    print("acceptance: accepted / drafted tokens; tok/decode: generated tokens per target decode.")
    for m in mismatches:
        print(f"MISMATCH {m['workload']} prompt {m['prompt']}, {sides[m['side']][0]} "
              f"({m['repeats']}/{args.repeats} repeats): from character {m['at']}, "
              f"{m['text']!r} where generate has {m['generate']!r}")
    print(f"greedy texts: every speculative text of ours equal to generate's: "
          f"{'NO' if any(not m['side'].startswith('lcpp') for m in mismatches) else 'yes'}; "
          f"llama.cpp's texts start with ours: "
          f"{'NO' if any(m['side'].startswith('lcpp') for m in mismatches) else 'yes'}")
    print(f"bench time {elapsed:.0f} s\n")
    for w in workloads:
        r, p = results[w]["ratios"], results[w]["ratios_paired"]
        print(f"{w}: ours/llama.cpp, draft model fixed {args.n_draft}: {r['draft_fixed_vs_lcpp_draft']:.2f}x "
              f"(paired {p['draft_fixed_vs_lcpp_draft']:.2f}x), "
              f"adaptive: {r['draft_adaptive_vs_lcpp_draft']:.2f}x; "
              f"prompt lookup fixed {args.ngram_m}: {r['lookup_fixed_vs_lcpp_ngram']:.2f}x "
              f"(paired {p['lookup_fixed_vs_lcpp_ngram']:.2f}x), adaptive: "
              f"{r['lookup_adaptive_vs_lcpp_ngram']:.2f}x; target alone: {r['target_vs_lcpp_target']:.2f}x")
        print(f"{w}: over target alone: draft model adaptive {r['draft_adaptive_vs_target']:.2f}x "
              f"(paired {p['draft_adaptive_vs_target']:.2f}x), prompt lookup adaptive "
              f"{r['lookup_adaptive_vs_target']:.2f}x (paired {p['lookup_adaptive_vs_target']:.2f}x); "
              f"pair speed ratio (draft alone / target alone) {r['draft_alone_vs_target']:.2f}")
    print()
    for c in claims:
        print(f"{'ok   ' if c['ok'] else 'BELOW'} {c['what']}: {c['ratio']:.2f}x (target >= {c['min']}x)")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
