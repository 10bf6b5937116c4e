"""``tokenize`` and ``count``: token ids and token counts of a text, stdin lines or a file's column."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from llama_cython._optional import require
from llama_cython.cli._common import (
    Progress,
    add_input_arguments,
    add_model_argument,
    check_input,
    load,
    note,
    output_kind,
    positive_int,
    write_json_line,
)

TOKENIZE_EPILOG = """\
Each text gives one JSON line: {"tokens": [...]} (with "pieces" for --pieces, "id" for
--id-column). Without TEXT or --input, every stdin line is a text.

examples:
  llama-cython tokenize smollm2-135m-instruct "Hello world" --pieces
  cat lines.txt | llama-cython tokenize smollm2-135m-instruct
  llama-cython tokenize smollm2-135m-instruct -i docs.parquet -c text --id-column id -o tokens.parquet
"""

COUNT_EPILOG = """\
Prints the rows, total, mean and largest token counts; with -o, writes one count per row
instead (-o - prints them as JSON lines). Without TEXT or --input, every stdin line is a text.

examples:
  llama-cython count smollm2-135m-instruct "How many tokens is this?"
  llama-cython count smollm2-135m-instruct -i docs.parquet -c text
  llama-cython count smollm2-135m-instruct -i docs.csv -c body --id-column id -o counts.parquet
"""


def add_parsers(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "tokenize",
        parents=[parent],
        help="token ids (and pieces) of texts, as JSON lines or a file",
        description="Tokenize a text, stdin lines, or a column of a Parquet/CSV/JSONL file.",
        epilog=TOKENIZE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_argument(p)
    p.add_argument("text", metavar="TEXT", nargs="?", help="the text to tokenize")
    add_input_arguments(p, "text")
    p.add_argument("-o", "--output", metavar="FILE", help="write a .parquet or .jsonl file instead of stdout")
    p.add_argument(
        "--pieces", action="store_true", help="add each token's text (its bytes, decoded as UTF-8)"
    )
    p.add_argument(
        "--no-special",
        dest="add_special",
        action="store_false",
        help="do not add BOS/EOS tokens the model asks for",
    )
    p.add_argument(
        "--parse-special",
        action="store_true",
        help="read special-token text such as <|im_start|> as the special token",
    )
    p.add_argument(
        "--batch-rows", type=positive_int, default=4096, help="texts tokenized at once (default 4096)"
    )
    p.add_argument(
        "--nulls",
        choices=("raise", "empty"),
        default="raise",
        help="a missing text: an error (default) or tokenized as an empty text",
    )
    p.set_defaults(func=run_tokenize)

    p = sub.add_parser(
        "count",
        parents=[parent],
        help="token counts of texts: a summary, or one count per row",
        description="Count tokens of a text, stdin lines, or a column of a Parquet/CSV/JSONL file.",
        epilog=COUNT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_argument(p)
    p.add_argument("text", metavar="TEXT", nargs="?", help="the text to count")
    add_input_arguments(p, "text")
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write one count per row to a .parquet or .jsonl file (- : JSON lines on stdout)",
    )
    p.add_argument(
        "--no-special",
        dest="add_special",
        action="store_false",
        help="do not count BOS/EOS tokens the model adds",
    )
    p.add_argument("--chunk-rows", type=positive_int, default=65536, help="rows read at once (default 65536)")
    p.add_argument(
        "--nulls",
        choices=("raise", "empty", "skip"),
        default="raise",
        help="a missing text: an error (default), counted as an empty text, or left out",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file (else an error)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=run_count)


def _source(args: argparse.Namespace, outputs: tuple[str, ...]) -> str | None:
    """Check the arguments before the model loads; the input to read (--input, else stdin "-"),
    or None for a single TEXT."""
    if args.text is not None:
        if args.input is not None:
            raise ValueError("give either TEXT or --input, not both")
        if args.output:
            raise ValueError("-o needs --input or stdin lines (a single TEXT prints to stdout)")
        return None
    if args.output and args.output != "-":
        output_kind(args.output, outputs)
    path = args.input if args.input is not None else "-"
    check_input(path)
    if path == "-" and sys.stdin is not None and sys.stdin.isatty():
        note("reading texts from stdin, one a line (end with Ctrl-D)")
    return path


def _total(path: str) -> int | None:
    """Rows of the input for the progress bar where counting is cheap (not stdin, not CSV)."""
    if path == "-" or Path(path).suffix.lower() == ".csv":
        return None
    from llama_cython import jobs

    return jobs.count_rows(path)


def _batches(path: str, args: argparse.Namespace, rows: int) -> Iterator[Any]:
    from llama_cython import jobs

    return jobs.read_table_batches(path, args.column, id_column=args.id_column, batch_rows=rows)


def _in_rows(exc: Exception, path: str, batch: Any, nulls: str = "raise") -> Exception:
    """``exc`` about ``texts[k]`` of a batch, restated with the input's name and row numbers
    (with ``nulls="skip"`` the call saw only the texts that are not null: texts[k] is the k-th
    of those)."""
    from llama_cython.jobs._read import kept_rows

    rows = kept_rows(batch, nulls)

    def row(m: re.Match[str]) -> str:
        k = int(m.group(1))
        return f"row {int(rows[k])}" if k < len(rows) else m.group(0)

    text = re.sub(r"\btexts\[(\d+)\]", row, str(exc))
    if text == str(exc):
        text = f"{text} (in the rows from {batch.start})"
    source = "stdin" if path == "-" else path
    return type(exc)(f"{source}: {text}")


def _tokenized(model: Any, path: str, args: argparse.Namespace, options: dict[str, Any]) -> Iterator[Any]:
    """(input batch, its TokenBatch) for each batch of the input."""
    for batch in _batches(path, args, args.batch_rows):
        try:
            tokens = model.tokenize_batch(batch.texts, **options)
        except (TypeError, ValueError) as exc:
            raise _in_rows(exc, path, batch) from exc
        yield batch, tokens


def _ids_list(ids: Any) -> list[Any] | None:
    if ids is None:
        return None
    if hasattr(ids, "to_pylist"):
        return list(ids.to_pylist())
    return list(ids.tolist()) if hasattr(ids, "tolist") else list(ids)


# -- tokenize ---------------------------------------------------------------------------------


def run_tokenize(args: argparse.Namespace) -> int:
    if args.output == "-":
        raise ValueError("tokenize prints to stdout without -o; -o takes a .parquet or .jsonl file")
    path = _source(args, ("parquet", "jsonl"))
    with load(args, vocab_only=True) as model:
        pieces = model.vocab.pieces if args.pieces else None
        options = {"add_special": args.add_special, "parse_special": args.parse_special, "nulls": args.nulls}
        if path is None:
            ids = model.tokenize(args.text, add_special=args.add_special, parse_special=args.parse_special)
            write_json_line(_record(None, ids, pieces))
            return 0
        if args.output:
            return _tokenize_to_file(model, path, args, options, pieces)
        with Progress(_total(path), "tokenize", enabled=args.progress) as bar:
            for batch, tokens in _tokenized(model, path, args, options):
                _write_jsonl(sys.stdout, tokens, batch, pieces)
                bar.update(len(batch.texts))
    return 0


def _record(row_id: Any, ids: Any, pieces: Any) -> dict[str, Any]:
    record: dict[str, Any] = {} if row_id is None else {"id": row_id}
    record["tokens"] = [int(t) for t in ids]
    if pieces is not None:
        record["pieces"] = [bytes(pieces[t]).decode("utf-8", "backslashreplace") for t in record["tokens"]]
    return record


def _write_jsonl(out: IO[str], tokens: Any, batch: Any, pieces: Any) -> None:
    ids = _ids_list(batch.ids)
    flat = tokens.ids.tolist()
    offsets = tokens.offsets.tolist()
    for i in range(len(tokens)):
        row = flat[offsets[i] : offsets[i + 1]]
        write_json_line(_record(None if ids is None else ids[i], row, pieces), out)


def _tokenize_to_file(
    model: Any, path: str, args: argparse.Namespace, options: dict[str, Any], pieces: Any
) -> int:
    kind = Path(args.output).suffix.lower().lstrip(".")
    out = Path(args.output)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    rows = 0
    start = time.perf_counter()
    try:
        with Progress(_total(path), "tokenize", enabled=args.progress) as bar:
            if kind == "jsonl":
                with open(tmp, "w", encoding="utf-8") as f:
                    for batch, tokens in _tokenized(model, path, args, options):
                        _write_jsonl(f, tokens, batch, pieces)
                        rows += len(batch.texts)
                        bar.update(len(batch.texts))
            else:
                rows = _write_parquet(tmp, model, path, args, options, pieces, bar)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    note(f"tokenized {rows:,} rows in {time.perf_counter() - start:.1f} s -> {out}")
    return 0


def _write_parquet(
    tmp: Path,
    model: Any,
    path: str,
    args: argparse.Namespace,
    options: dict[str, Any],
    pieces: Any,
    bar: Progress,
) -> int:
    pa = require("pyarrow", "tokenize -o FILE.parquet")
    pq = require("pyarrow.parquet", "tokenize -o FILE.parquet")
    writer = None
    rows = 0
    try:
        for batch, tokens in _tokenized(model, path, args, options):
            columns: dict[str, Any] = {}
            if args.id_column is not None:
                ids = batch.ids
                columns[args.id_column] = (
                    ids if isinstance(ids, (pa.Array, pa.ChunkedArray)) else pa.array(ids)
                )
            columns["tokens"] = tokens.to_arrow()
            columns["n_tokens"] = pa.array(np.diff(tokens.offsets).astype(np.int32))
            if pieces is not None:
                flat = tokens.ids
                columns["pieces"] = pa.LargeListArray.from_arrays(
                    pa.array(tokens.offsets),
                    pa.array(
                        [bytes(pieces[t]).decode("utf-8", "backslashreplace") for t in flat.tolist()],
                        type=pa.large_string(),
                    ),
                )
            table = pa.table(columns)
            if writer is None:
                writer = pq.ParquetWriter(str(tmp), table.schema)
            writer.write_table(table)
            rows += len(batch.texts)
            bar.update(len(batch.texts))
        if writer is None:  # no rows: still write a valid, empty file
            schema = pa.schema([("tokens", pa.large_list(pa.int32())), ("n_tokens", pa.int32())])
            writer = pq.ParquetWriter(str(tmp), schema)
    finally:
        if writer is not None:
            writer.close()
    return rows


# -- count ------------------------------------------------------------------------------------


def run_count(args: argparse.Namespace) -> int:
    path = _source(args, ("parquet", "jsonl"))
    with load(args, vocab_only=True) as model:
        if path is None:
            print(model.count_tokens(args.text, add_special=args.add_special))
            return 0
        if args.output:
            from llama_cython import jobs

            with Progress(None, "count", enabled=args.progress) as bar:
                result = jobs.count_file(
                    model,
                    path,
                    args.output,
                    column=args.column,
                    id_column=args.id_column,
                    add_special=args.add_special,
                    chunk_rows=args.chunk_rows,
                    nulls=args.nulls,
                    progress=bar.report,
                    overwrite=args.overwrite,
                )
            where = "stdout" if args.output == "-" else result.output
            note(
                f"counted {result.tokens or 0:,} tokens in {result.rows:,} rows in {result.seconds:.1f} s "
                f"-> {where}"
            )
            return 0
        rows = total = 0
        largest = 0
        start = time.perf_counter()
        with Progress(_total(path), "count", enabled=args.progress) as bar:
            for batch in _batches(path, args, args.chunk_rows):
                try:
                    counts = np.asarray(
                        model.count_tokens(batch.texts, add_special=args.add_special, nulls=args.nulls)
                    )
                except (TypeError, ValueError) as exc:
                    raise _in_rows(exc, path, batch, args.nulls) from exc
                rows += int(counts.shape[0])
                total += int(counts.sum(dtype=np.int64))
                if counts.shape[0]:
                    largest = max(largest, int(counts.max()))
                bar.update(int(counts.shape[0]))
        summary = {
            "rows": rows,
            "tokens": total,
            "mean": total / rows if rows else 0.0,
            "max": largest,
            "seconds": round(time.perf_counter() - start, 3),
        }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"rows    {rows:,}\ntokens  {total:,}\nmean    {summary['mean']:.1f}\nmax     {largest:,}")
    return 0
