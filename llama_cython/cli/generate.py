"""``generate`` (one prompt streamed, or every prompt of a file) and ``chat`` (interactive)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from llama_cython.cli._common import (
    CLIError,
    Progress,
    add_input_arguments,
    add_model_argument,
    add_sampling_arguments,
    check_input,
    context_options,
    eprint,
    job_summary,
    load,
    note,
    output_kind,
    positive_int,
    resumable,
    sampling_options,
)
from llama_cython.errors import ContextSizeError

GENERATE_EPILOG = """\
With PROMPT (or a prompt on stdin), the text is streamed to stdout as it is generated. With
--input, every row's prompt is generated in --n-parallel slots and written to -o in chunks;
run the same command again after an interruption and it continues where it stopped.

examples:
  llama-cython generate smollm2-135m-instruct "The capital of France is" --temperature 0
  echo "Once upon a time" | llama-cython generate smollm2-135m-instruct -n 64 --seed 1
  llama-cython generate smollm2-135m-instruct -i prompts.parquet -c prompt --id-column id -o out.parquet
"""

CHAT_EPILOG = """\
Each line you type is one user turn; the reply streams as it is generated. /reset clears the
conversation, /exit (or Ctrl-D) ends it. Ctrl-C during a reply stops that reply; Ctrl-C at the
prompt ends the chat (exit code 0). Lines piped to stdin are read as turns too.

examples:
  llama-cython chat smollm2-135m-instruct --system "You are terse."
  printf 'Hi!\\nName a colour.\\n' | llama-cython chat smollm2-135m-instruct --temperature 0
"""


def add_parsers(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "generate",
        parents=[parent],
        help="complete a prompt (streamed), or every prompt of a file",
        description="Generate text: one prompt streamed to stdout, or a column of prompts "
        "to a file (batched, resumable).",
        epilog=GENERATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_argument(p)
    p.add_argument(
        "prompt",
        metavar="PROMPT",
        nargs="?",
        help="the prompt; without it and without --input, stdin is read as one prompt",
    )
    p.add_argument("--stats", action="store_true", help="print token counts and speed to stderr")
    add_sampling_arguments(p, max_tokens=128)
    add_input_arguments(p, "prompt")
    files = p.add_argument_group("file jobs (with --input)")
    files.add_argument("-o", "--output", metavar="FILE", help="the .parquet or .jsonl file to write")
    files.add_argument(
        "--n-parallel",
        type=positive_int,
        default=8,
        help="prompts decoded together (default 8); the context is shared between them",
    )
    files.add_argument(
        "--chunk-rows", type=positive_int, default=256, help="rows per output chunk (default 256)"
    )
    files.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="start again instead of continuing an interrupted job",
    )
    files.add_argument(
        "--nulls",
        choices=("raise", "empty", "skip"),
        default="raise",
        help="a missing prompt: an error (default), an empty prompt, or left out",
    )
    files.add_argument(
        "--overwrite", action="store_true", help="replace an existing output file (else an error)"
    )
    p.set_defaults(func=run_generate)

    p = sub.add_parser(
        "chat",
        parents=[parent],
        help="chat with a model, replies streamed",
        description="An interactive chat using the model's own chat template.",
        epilog=CHAT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_argument(p)
    p.add_argument("-s", "--system", metavar="TEXT", help="a system message that starts the conversation")
    add_sampling_arguments(p, max_tokens=512)
    p.set_defaults(func=run_chat)


# -- generate ---------------------------------------------------------------------------------


def run_generate(args: argparse.Namespace) -> int:
    sampling = sampling_options(args)
    if args.input is not None:
        if args.prompt is not None:
            raise ValueError("give either PROMPT or --input, not both")
        if not args.output:
            raise ValueError("--input needs -o FILE for the results")
        return _generate_file(args, sampling)
    if args.output:
        raise ValueError("-o needs --input (a single PROMPT streams to stdout)")
    prompt = args.prompt
    if prompt is None:
        if sys.stdin is None:
            raise ValueError("give a PROMPT")
        if sys.stdin.isatty():
            note("reading the prompt from stdin (end with Ctrl-D)")
        prompt = sys.stdin.read()
    with load(args) as model, model.new_context(**context_options(args)) as ctx:
        stream = ctx.generate_stream(prompt, max_tokens=args.max_tokens, stop=args.stop, **sampling)
        with stream:
            for piece in stream:
                sys.stdout.write(piece)
                sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        stats = stream.stats
        if args.stats and stats is not None:
            eprint(
                f"{stats.prompt_tokens} prompt tokens ({stats.prompt_tokens_per_second:.1f}/s), "
                f"{stats.completion_tokens} generated ({stats.tokens_per_second:.1f}/s), "
                f"finish: {stats.finish_reason}"
            )
    return 0


def _generate_file(args: argparse.Namespace, sampling: dict[str, Any]) -> int:
    from llama_cython import jobs

    output_kind(args.output, ("parquet", "jsonl"))
    check_input(args.input)
    with (
        resumable(args.output, args.input),
        load(args) as model,
        model.new_context(**context_options(args, n_parallel=args.n_parallel)) as ctx,
        Progress(None, "generate", enabled=args.progress) as bar,
    ):
        result = jobs.generate_file(
            ctx,
            args.input,
            args.output,
            column=args.column,
            id_column=args.id_column,
            chunk_rows=args.chunk_rows,
            max_tokens=args.max_tokens,
            stop=args.stop,
            progress=bar.report,
            resume=args.resume,
            overwrite=args.overwrite,
            nulls=args.nulls,
            **sampling,
        )
    note(job_summary("generated", result))
    return 0


# -- chat -------------------------------------------------------------------------------------


def _read_turn(interactive: bool) -> str | None:
    """The next line the user typed, None at EOF."""
    if interactive:
        try:
            return input("> ")
        except EOFError:
            print()
            return None
    line = sys.stdin.readline()
    return line if line else None


def run_chat(args: argparse.Namespace) -> int:
    sampling = sampling_options(args)
    if sys.stdin is None:
        raise ValueError("chat reads the user's turns from stdin, which is closed")
    interactive = sys.stdin.isatty()
    with load(args) as model:
        if model.chat_template is None:
            raise CLIError(f"{args.model} has no chat template; use `generate` instead")
        start: list[dict[str, str]] = [{"role": "system", "content": args.system}] if args.system else []
        messages = list(start)
        with model.new_context(**context_options(args)) as ctx:
            if interactive:
                try:
                    import readline  # noqa: F401  (line editing and history for input())
                except ImportError:
                    pass
                note("chat: /reset clears the conversation, /exit or Ctrl-D ends it")
            while True:
                try:
                    line = _read_turn(interactive)
                except KeyboardInterrupt:
                    if interactive:
                        print()
                    return 0
                if line is None:
                    return 0
                text = line.strip()
                if not text:
                    continue
                if text in ("/exit", "/quit"):
                    return 0
                if text == "/reset":
                    messages = list(start)
                    note("conversation cleared")
                    continue
                messages.append({"role": "user", "content": line.rstrip("\r\n")})
                try:
                    reply = _stream_reply(ctx, messages, args, sampling)
                except ContextSizeError as exc:
                    messages.pop()
                    cause = str(exc).splitlines()[0] if str(exc) else "the conversation is too long"
                    note(f"error: {cause}; /reset starts over, a larger --n-ctx fits more")
                    continue
                messages.append({"role": "assistant", "content": reply})


def _stream_reply(
    ctx: Any, messages: list[dict[str, str]], args: argparse.Namespace, sampling: dict[str, Any]
) -> str:
    """Stream one reply to stdout; Ctrl-C stops it and keeps what was shown."""
    shown: list[str] = []
    interrupted = False
    stream = ctx.chat_stream(messages, max_tokens=args.max_tokens, stop=args.stop, **sampling)
    try:
        with stream:
            for piece in stream:
                shown.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
    except KeyboardInterrupt:
        interrupted = True
    sys.stdout.write("\n")
    sys.stdout.flush()
    if interrupted:
        note("reply stopped")
    return "".join(shown)
