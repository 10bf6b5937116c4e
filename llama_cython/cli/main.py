"""The parser, the dispatch, and the error policy of ``llama-cython``.

Errors the user can fix (a missing file, a bad option value, a model that fails to load, a
missing optional extra, an input file that is not valid CSV, JSON, UTF-8 or Parquet, or whose
Parquet codec this pyarrow lacks) print one line, ``llama-cython: error: <cause>``, and exit with 2, as
argparse's own usage errors do; ``--traceback`` (or ``LLAMA_CYTHON_TRACEBACK=1``) adds the
traceback. Ctrl-C exits with 130; a closed stdout (``... | head -1``) ends quietly with 141.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import os
import sys
import traceback
from collections.abc import Iterator, Sequence

import llama_cython as llama
from llama_cython.cli import bench, embed, generate, info, tokens
from llama_cython.cli._common import PROG, CLIError, positive_int

__all__ = ["build_parser", "entry", "main"]

EPILOG = """\
MODEL is a .gguf file or a registry name (`llama-cython models` lists them; a name is fetched
into the cache on first use). Global options go before or after the command.

examples:
  llama-cython info smollm2-135m-instruct
  llama-cython generate smollm2-135m-instruct "The capital of France is" --temperature 0
  llama-cython chat smollm2-135m-instruct
  llama-cython embed all-minilm-l6-v2 docs.parquet -c text -o vectors.parquet
  llama-cython count smollm2-135m-instruct -i docs.parquet -c text
  llama-cython bench smollm2-135m-instruct

`llama-cython COMMAND --help` says more about each command.
"""

# Exceptions that describe the user's input or environment, not a bug: one line, exit 2.
USER_ERRORS: tuple[type[BaseException], ...] = (
    CLIError,
    llama.LlamaError,
    OSError,
    ValueError,
    TypeError,
    ImportError,
    csv.Error,
)


def _user_errors() -> tuple[type[BaseException], ...]:
    """USER_ERRORS, and pyarrow's errors (a file that is not Parquet, a codec this pyarrow lacks:
    ArrowNotImplementedError is no ValueError) when a command has imported pyarrow (never
    imported here for this: it is an optional extra, and slow to import)."""
    pa = sys.modules.get("pyarrow")
    arrow = getattr(pa, "ArrowException", None) if pa is not None else None
    if isinstance(arrow, type) and issubclass(arrow, BaseException):
        return (*USER_ERRORS, arrow)
    return USER_ERRORS


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The options every command takes. On the subcommands their defaults are SUPPRESS, so an
    option given before the command is not reset by the subcommand's parser."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("global options")
    group.add_argument(
        "-t",
        "--threads",
        type=positive_int,
        default=default(None),
        metavar="N",
        help="CPU threads for llama.cpp (default: the physical cores this process may use)",
    )
    group.add_argument(
        "--n-ctx",
        type=positive_int,
        default=default(None),
        metavar="N",
        help="context size in tokens (default: the model's training context)",
    )
    group.add_argument(
        "--gpu-layers",
        type=int,
        default=default(-1),
        metavar="N",
        help="layers to offload to a GPU when one is built in (default -1: all)",
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default(0),
        help="show llama.cpp's log on stderr (-vv: debug lines too)",
    )
    group.add_argument(
        "--no-progress", dest="progress", action="store_false", default=default(True), help="no progress bars"
    )
    group.add_argument("--traceback", action="store_true", default=default(False), help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="llama.cpp from the command line: inspect, tokenize, count, embed, generate, "
        "chat and benchmark GGUF models.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    _global_options(parser, suppress=False)
    parent = argparse.ArgumentParser(add_help=False)
    _global_options(parent, suppress=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    sub.required = True
    info.add_parsers(sub, parent)
    tokens.add_parsers(sub, parent)
    embed.add_parsers(sub, parent)
    generate.add_parsers(sub, parent)
    bench.add_parsers(sub, parent)
    return parser


def _version() -> str:
    try:
        commit = llama.system_info().llama_cpp_commit[:10]
    except Exception:  # the version must print even if the build manifest is unreadable
        commit = "unknown"
    return f"{PROG} {llama.__version__} (llama.cpp {commit})"


# The library's messages name its keyword arguments; on the command line they are flags.
_FLAGS = (
    ("overwrite=True", "--overwrite"),
    ("resume=False", "--no-resume"),
    ("nulls='empty'", "--nulls empty"),
    ("nulls='skip'", "--nulls skip"),
)


def _one_line(exc: BaseException) -> str:
    if (
        isinstance(exc, OSError)
        and exc.strerror
        and exc.filename is not None
        and not isinstance(exc, llama.LlamaError)
    ):
        text = f"{exc.strerror}: {exc.filename}"
    else:
        text = str(exc)
    for keyword, flag in _FLAGS:
        text = text.replace(keyword, flag)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines) or type(exc).__name__


@contextlib.contextmanager
def _log_to_stderr(level: int) -> Iterator[None]:
    """llama.cpp's log (the ``llama_cython`` logger) on stderr while a command runs."""
    if level <= 0:
        yield
        return
    logger = logging.getLogger("llama_cython")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if level == 1 else logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


def _quiet_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the interpreter's final flush is silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``llama-cython`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors (exit code 2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    show_traceback = args.traceback or os.environ.get("LLAMA_CYTHON_TRACEBACK", "") not in ("", "0")
    try:
        with _log_to_stderr(args.verbose):
            code = args.func(args)
            sys.stdout.flush()
        return int(code or 0)
    except KeyboardInterrupt:
        if show_traceback:
            traceback.print_exc()
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        return 141
    except Exception as exc:
        if not isinstance(exc, _user_errors()):
            raise
        if show_traceback:
            traceback.print_exc()
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 2


def entry() -> None:
    """The console script ``llama-cython``."""
    sys.exit(main())
