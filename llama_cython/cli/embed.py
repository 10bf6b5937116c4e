"""``embed``: a column of texts to a Parquet or .npy file of embeddings, resumable."""

from __future__ import annotations

import argparse
from typing import Any

from llama_cython.cli._common import (
    Progress,
    add_model_argument,
    check_input,
    context_options,
    job_summary,
    load,
    note,
    output_kind,
    positive_int,
    resumable,
)

EMBED_EPILOG = """\
Rows come out in input order, one float32 vector each (L2-normalised unless --no-normalize),
next to the --id-column's value (or the row number) in Parquet and JSONL output. The output is
written in chunks: run the same command again after an interruption and it continues after the
last complete chunk. The output appears only when complete.

examples:
  llama-cython embed all-minilm-l6-v2 docs.parquet -c text --id-column id -o vectors.parquet
  llama-cython embed all-minilm-l6-v2 lines.txt -o vectors.npy
  cat lines.txt | llama-cython embed all-minilm-l6-v2 - -o vectors.npy
"""


def add_parsers(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "embed",
        parents=[parent],
        help="embed a file's texts into .parquet, .npy or .jsonl (resumable)",
        description="Embed a column of a Parquet/CSV/JSONL file (or .txt/stdin lines).",
        epilog=EMBED_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_argument(p)
    p.add_argument(
        "input", metavar="INPUT", help="a .parquet, .csv, .jsonl or .txt file, or - for stdin lines"
    )
    p.add_argument(
        "-o", "--output", metavar="FILE", required=True, help="the .parquet, .npy or .jsonl file to write"
    )
    p.add_argument("-c", "--column", default="text", help="the column that holds the texts (default 'text')")
    p.add_argument(
        "--id-column", metavar="NAME", default=None, help="a column copied to the output with each row"
    )
    p.add_argument(
        "--chunk-rows", type=positive_int, default=4096, help="rows per output chunk (default 4096)"
    )
    p.add_argument(
        "--no-normalize", dest="normalize", action="store_false", help="keep the vectors' own lengths"
    )
    p.add_argument(
        "--pooling",
        choices=("mean", "cls", "last"),
        default=None,
        help="override the model's pooling (default: what the GGUF states, else mean)",
    )
    p.add_argument(
        "--nulls",
        choices=("raise", "empty", "skip"),
        default="raise",
        help="a missing text: an error (default), embedded as an empty text, or left out "
        "(not with .npy: the row numbers would be lost)",
    )
    p.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="start again instead of continuing an interrupted job",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file (else an error)")
    p.set_defaults(func=run_embed)


def run_embed(args: argparse.Namespace) -> int:
    from llama_cython import jobs

    output_kind(args.output, ("parquet", "npy", "jsonl"))
    check_input(args.input)
    options = context_options(args, embeddings=True)
    if args.pooling is not None:
        options["pooling"] = args.pooling
    with (
        resumable(args.output, args.input),
        load(args) as model,
        model.new_context(**options) as ctx,
        Progress(None, "embed", enabled=args.progress) as bar,
    ):
        result = jobs.embed_file(
            ctx,
            args.input,
            args.output,
            column=args.column,
            id_column=args.id_column,
            chunk_rows=args.chunk_rows,
            normalize=args.normalize,
            nulls=args.nulls,
            progress=bar.report,
            resume=args.resume,
            overwrite=args.overwrite,
        )
    note(job_summary("embedded", result))
    return 0
