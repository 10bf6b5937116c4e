"""Reading the inputs of the jobs: one text column (and an id column) of a Parquet, CSV, JSONL
or text file, or stdin lines, streamed in batches of a fixed number of rows."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import sys
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt

from llama_cython._checks import positive_int
from llama_cython._optional import require
from llama_cython.errors import OptionError

PathArg: TypeAlias = "str | os.PathLike[str]"
Nulls: TypeAlias = Literal["raise", "empty", "skip"]

_INPUTS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl",
           ".ndjson": "jsonl", ".txt": "txt"}
# The csv module refuses fields over 128 KiB by default; a document can be longer.
_CSV_FIELD_LIMIT = 1 << 30


@dataclass(frozen=True)
class InputBatch:
    """Rows ``start .. start + len(texts)`` of an input file.

    ``texts`` is a pyarrow string array (Parquet input) or a list of ``str`` (``None`` where a
    value is missing); ``ids`` the id column's values for the same rows (same kinds), or None.
    """

    start: int
    texts: Any
    ids: Any | None = None

    def __len__(self) -> int:
        return len(self.texts)


def input_format(path: PathArg) -> str:
    if os.fspath(path) == "-":
        return "stdin"
    suffix = Path(path).suffix.lower()
    if suffix not in _INPUTS:
        raise OptionError(f"{os.fspath(path)}: unknown input format {suffix or '(no suffix)'!r}; "
                          "expected .parquet, .csv, .jsonl/.ndjson, .txt or '-' (stdin lines)")
    return _INPUTS[suffix]


def read_table_batches(path: PathArg, column: str, *, id_column: str | None = None,
                       batch_rows: int = 4096) -> Iterator[InputBatch]:
    """Stream one text column (and optionally an id column) of a file in batches of ``batch_rows``
    rows (the last may be shorter), holding one batch at a time.

    ``path`` is a ``.parquet`` file (needs the ``arrow`` extra; texts come as a pyarrow string
    array), a ``.csv`` file with a header row (values as written, so ids stay strings), a
    ``.jsonl``/``.ndjson`` file of one object per line (a missing key reads as None; blank lines
    are not rows), a ``.txt`` file of one text per line, or ``"-"`` for stdin lines (these two
    have no columns: ``column`` is not used and ``id_column`` must be None).
    """
    batch_rows = positive_int(batch_rows, "batch_rows")
    return batches(path, input_format(path), column, id_column, batch_rows, 0)


def count_rows(path: PathArg) -> int:
    """The number of rows of an input file: from the metadata of a Parquet file, otherwise by a
    streaming pass (stdin cannot be counted without consuming it: ValueError)."""
    fmt = input_format(path)
    if fmt == "stdin":
        raise ValueError("stdin cannot be counted without reading it")
    if fmt == "parquet":
        return int(_parquet_file(path).metadata.num_rows)
    n = 0
    if fmt == "csv":
        with contextlib.closing(_csv_records(path)) as rows:
            if next(rows, None) is not None:
                n = sum(1 for row in rows if row)
        return n
    with open(path, "rb") as fb:
        if fmt == "txt":
            last = b"\n"
            for block in iter(lambda: fb.read(1 << 20), b""):
                n += block.count(b"\n")
                last = block[-1:]
            return n + (last != b"\n")
        return sum(1 for line in fb if line.strip())


def cheap_count(path: PathArg, fmt: str) -> int | None:
    """Rows, for progress, where counting costs a small fraction of the job (not CSV: a full parse)."""
    return count_rows(path) if fmt in ("parquet", "txt", "jsonl") else None


def check_columns(path: PathArg, fmt: str, column: str, id_column: str | None, nulls: str) -> None:
    """Refuse a column the input does not have before a job creates anything: from a Parquet
    file's schema, a CSV file's header, or a JSONL file's first object (where a missing key
    reads as a null: an error only with ``nulls="raise"``, and none for the id column)."""
    name = os.fspath(path)
    if fmt in ("txt", "stdin"):
        if id_column is not None:
            raise ValueError(f"{name}: a text input (one text per line) has no columns; "
                             "id_column must be None")
        return
    if fmt == "jsonl":
        if nulls == "raise":
            with contextlib.closing(_jsonl_objects(path, 0)) as objects:
                first = next(objects, None)
            if first is not None and column not in first[1]:
                raise ValueError(f"{name} has no column {column!r}: its first object (line "
                                 f"{first[0]}) has the keys {sorted(first[1])}")
        return
    if fmt == "parquet":
        names = list(_parquet_file(path).schema_arrow.names)
    else:
        with contextlib.closing(_csv_records(path)) as rows:
            header = next(rows, None)
        if header is None:                      # an empty file: no rows, no columns to check
            return
        names = header
    _column_index(path, names, column)
    if id_column is not None:
        _column_index(path, names, id_column)


def kept_rows(batch: InputBatch, nulls: str) -> npt.NDArray[np.int64]:
    """The file rows of the texts a call on ``batch.texts`` sees under the null policy
    ``nulls``: texts[k] is file row ``kept_rows(...)[k]`` (``"skip"`` leaves the nulls out)."""
    rows = np.arange(batch.start, batch.start + len(batch), dtype=np.int64)
    if nulls != "skip":
        return rows
    if isinstance(batch.texts, list):
        keep = np.array([not _is_null(t) for t in batch.texts], dtype=bool)
    else:
        keep = np.asarray(batch.texts.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    kept: npt.NDArray[np.int64] = rows[keep]
    return kept


def batches(path: PathArg, fmt: str, column: str, id_column: str | None, batch_rows: int,
            skip: int) -> Iterator[InputBatch]:
    """Batches of rows ``skip, skip + batch_rows, ...``; the rows before ``skip`` are passed over
    as cheaply as the format allows (Parquet: whole row groups unread)."""
    if fmt == "parquet":
        yield from _parquet_batches(path, column, id_column, batch_rows, skip)
        return
    if fmt in ("txt", "stdin") and id_column is not None:
        raise ValueError(f"{os.fspath(path)}: a text input (one text per line) has no columns; "
                         "id_column must be None")
    if fmt in ("txt", "stdin"):
        yield from _line_batches(path, batch_rows, skip)
        return
    if fmt == "csv":
        rows = _csv_rows(path, column, id_column, skip)
    else:
        rows = _jsonl_rows(path, column, id_column, skip)
    start = skip
    texts: list[Any] = []
    ids: list[Any] | None = [] if id_column is not None else None
    for text, ident in rows:
        texts.append(text)
        if ids is not None:
            ids.append(ident)
        if len(texts) == batch_rows:
            yield InputBatch(start, texts, ids)
            start += batch_rows
            texts = []
            ids = [] if ids is not None else None
    if texts:
        yield InputBatch(start, texts, ids)


def _line_batches(path: PathArg, batch_rows: int, skip: int) -> Iterator[InputBatch]:
    """Lines of a text file (or stdin) as batches, read in blocks of 1 MiB: the rows before
    ``skip`` are counted, not decoded. A line ends at ``\n`` (a ``\r`` before it is dropped);
    a last line without one is a row too; a UTF-8 byte-order mark at the start is dropped."""
    name = os.fspath(path)
    f = sys.stdin.buffer if name == "-" else open(path, "rb")
    try:
        row = 0                                 # file row of the first line in ``data``
        start = skip                            # file row of pending[at]
        pending: list[str] = []
        at = 0
        rest = b""
        first = True
        while True:
            block = f.read(1 << 20)
            data = rest + block
            if first and (len(data) >= 3 or not block):
                if data.startswith(b"\xef\xbb\xbf"):
                    data = data[3:]
                first = False
            if not block:
                if not data:
                    break
                data, rest = data + b"\n", b""
            else:
                cut = data.rfind(b"\n") + 1
                data, rest = data[:cut], data[cut:]
            n = data.count(b"\n")
            if row + n > skip:
                pos = 0
                for _ in range(skip - row):     # resuming inside this block
                    pos = data.index(b"\n", pos) + 1
                pending.extend(_decode_lines(data[pos:], name, max(row, skip)))
                while len(pending) - at >= batch_rows:
                    yield InputBatch(start, pending[at:at + batch_rows])
                    start += batch_rows
                    at += batch_rows
                del pending[:at]
                at = 0
            row += n
            if not block:
                break
        if pending:
            yield InputBatch(start, pending)
    finally:
        if f is not sys.stdin.buffer:
            f.close()


def _decode_lines(data: bytes, name: str, first_row: int) -> list[str]:
    """The lines of ``data`` (whole lines, each ending with a newline) as str."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        row = first_row + data.count(b"\n", 0, exc.start)
        byte = exc.start - data.rfind(b"\n", 0, exc.start) - 1
        raise ValueError(f"{name}: row {row} is not valid UTF-8 ({exc.reason} at byte {byte})") from None
    lines = text.split("\n")
    lines.pop()                                 # after the last newline
    if "\r" in text:
        lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    return lines


def _jsonl_objects(path: PathArg, skip: int) -> Generator[tuple[int, dict[str, Any]], None, None]:
    """(line number, object) of each row of a JSONL file after the first ``skip`` rows."""
    n = 0
    name = os.fspath(path)
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            n += 1
            if n <= skip:
                continue
            try:
                obj = json.loads(line)
            except UnicodeDecodeError as exc:
                raise ValueError(f"{name}: line {lineno} is not valid UTF-8 ({exc.reason} at byte "
                                 f"{exc.start})") from None
            except ValueError as exc:
                raise ValueError(f"{name}: line {lineno} is not JSON ({exc})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{name}: line {lineno} is a JSON {type(obj).__name__}, not an object")
            yield lineno, obj


def _jsonl_rows(path: PathArg, column: str, id_column: str | None,
                skip: int) -> Iterator[tuple[Any, Any]]:
    for _, obj in _jsonl_objects(path, skip):
        yield obj.get(column), (obj.get(id_column) if id_column is not None else None)


def _csv_records(path: PathArg) -> Generator[list[str], None, None]:
    """The records of a CSV file, header first; a byte that is not UTF-8 or a record the csv
    module refuses is a ValueError that names the file and the line."""
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        csv.field_size_limit(_CSV_FIELD_LIMIT)
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = csv.reader(f)
        try:
            yield from rows
        except UnicodeDecodeError:
            raise ValueError(_not_utf8(path)) from None
        except csv.Error as exc:
            raise ValueError(f"{os.fspath(path)}: line {rows.line_num} is not valid CSV ({exc})") from None


def _not_utf8(path: PathArg) -> str:
    """Where a text file's first byte that is not UTF-8 is (the decoder reads ahead in blocks,
    so its own error does not say): its line, found again line by line (a newline is never
    inside a UTF-8 sequence)."""
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                return (f"{os.fspath(path)}: line {lineno} is not valid UTF-8 ({exc.reason} at "
                        f"byte {exc.start})")
    return f"{os.fspath(path)} is not valid UTF-8"


def _csv_rows(path: PathArg, column: str, id_column: str | None,
              skip: int) -> Iterator[tuple[Any, Any]]:
    with contextlib.closing(_csv_records(path)) as rows:
        header = next(rows, None)
        if header is None:
            return
        at = _column_index(path, header, column)
        at_id = _column_index(path, header, id_column) if id_column is not None else -1
        n = 0
        for row in rows:
            if not row:
                continue
            n += 1
            if n <= skip:
                continue
            text = row[at] if at < len(row) else None
            ident = (row[at_id] if at_id < len(row) else None) if at_id >= 0 else None
            yield text, ident


def _column_index(path: PathArg, names: list[str], column: str) -> int:
    if column not in names:
        raise ValueError(f"{os.fspath(path)} has no column {column!r}; its columns are {names}")
    return names.index(column)


def _parquet_file(path: PathArg) -> Any:
    """``pyarrow.parquet.ParquetFile(path)``; an Arrow error (not a Parquet file) names the file."""
    pa = require("pyarrow", "reading Parquet files")
    pq = require("pyarrow.parquet", "reading Parquet files")
    try:
        return pq.ParquetFile(os.fspath(path))
    except pa.ArrowException as exc:
        raise _arrow_error(exc, path) from exc


def _arrow_error(exc: BaseException, path: PathArg) -> BaseException:
    """``exc`` (a pyarrow error) of the same type, its message prefixed with the file."""
    try:
        return type(exc)(f"{os.fspath(path)}: {exc}")
    except Exception:
        return exc


def _parquet_batches(path: PathArg, column: str, id_column: str | None, batch_rows: int,
                     skip: int) -> Iterator[InputBatch]:
    pa = require("pyarrow", "reading Parquet files")
    pf = _parquet_file(path)
    try:
        yield from _parquet_file_batches(pa, pf, path, column, id_column, batch_rows, skip)
    except pa.ArrowException as exc:            # e.g. a compression codec this pyarrow lacks
        raise _arrow_error(exc, path) from exc


def _parquet_file_batches(pa: Any, pf: Any, path: PathArg, column: str, id_column: str | None,
                          batch_rows: int, skip: int) -> Iterator[InputBatch]:
    names = pf.schema_arrow.names
    _column_index(path, names, column)
    cols = [column]
    if id_column is not None:
        _column_index(path, names, id_column)
        if id_column != column:
            cols.append(id_column)
    meta = pf.metadata
    first, before = 0, 0
    while first < meta.num_row_groups and before + meta.row_group(first).num_rows <= skip:
        before += meta.row_group(first).num_rows
        first += 1
    drop = skip - before
    start = skip
    pending = None
    if first < meta.num_row_groups:
        for rb in pf.iter_batches(batch_size=batch_rows, row_groups=range(first, meta.num_row_groups),
                                  columns=cols):
            if drop:
                cut = min(drop, rb.num_rows)
                rb, drop = rb.slice(cut), drop - cut
            if rb.num_rows == 0:
                continue
            table = pa.Table.from_batches([rb])
            pending = table if pending is None else pa.concat_tables([pending, table])
            while pending.num_rows >= batch_rows:
                yield _parquet_batch(start, pending.slice(0, batch_rows), column, id_column)
                start += batch_rows
                pending = pending.slice(batch_rows)
    if pending is not None and pending.num_rows:
        yield _parquet_batch(start, pending, column, id_column)


def _parquet_batch(start: int, table: Any, column: str, id_column: str | None) -> InputBatch:
    texts = table.column(column).combine_chunks()
    ids = table.column(id_column).combine_chunks() if id_column is not None else None
    return InputBatch(start, texts, ids)


def _is_null(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def prepare(batch: InputBatch, nulls: str, column: str, source: str,
            as_list: bool) -> tuple[Any, npt.NDArray[np.int64], Any]:
    """(texts, row numbers, ids) of a batch after the null policy; texts as a list of str when
    ``as_list``, otherwise as they came (a pyarrow array stays one)."""
    n = len(batch)
    rows = np.arange(batch.start, batch.start + n, dtype=np.int64)
    texts, ids = batch.texts, batch.ids
    where = f"{source}: column {column!r}"
    if not isinstance(texts, list):
        pa = require("pyarrow", "reading Parquet files")
        texts = _arrow_strings(pa, texts, where)
        if texts.null_count:
            valid = texts.is_valid()
            if nulls == "raise":
                k = int(np.flatnonzero(~valid.to_numpy(zero_copy_only=False))[0])
                raise TypeError(f"{where}: row {batch.start + k} is null; pass nulls='empty' to "
                                "read nulls as '' or nulls='skip' to leave them out")
            if nulls == "empty":
                texts = texts.fill_null("")
            else:
                texts = texts.filter(valid)
                keep = valid.to_numpy(zero_copy_only=False)
                rows = rows[keep]
                if ids is not None:
                    ids = ids.filter(valid)
        if as_list:
            texts = texts.to_pylist()
        return texts, rows, ids
    drop: list[int] = []
    for k, t in enumerate(texts):
        if type(t) is str:
            continue
        if not _is_null(t):
            raise TypeError(f"{where}: row {batch.start + k} is a {type(t).__name__}, not a string")
        if nulls == "raise":
            raise TypeError(f"{where}: row {batch.start + k} is missing; pass nulls='empty' to "
                            "read missing values as '' or nulls='skip' to leave them out")
        if nulls == "empty":
            texts[k] = ""
        else:
            drop.append(k)
    if drop:
        gone = set(drop)
        texts = [t for k, t in enumerate(texts) if k not in gone]
        rows = np.delete(rows, drop)
        if ids is not None:
            ids = [v for k, v in enumerate(ids) if k not in gone]
    return texts, rows, ids


def _arrow_strings(pa: Any, arr: Any, where: str) -> Any:
    t = arr.type
    if pa.types.is_dictionary(t):
        arr, t = arr.dictionary_decode(), t.value_type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return arr
    if getattr(pa.types, "is_string_view", None) and pa.types.is_string_view(t):
        return arr.cast(pa.large_string())
    raise TypeError(f"{where} holds {t}, not strings")
