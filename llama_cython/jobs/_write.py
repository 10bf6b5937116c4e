"""Writing the outputs of the jobs: one chunk's rows as a part file, and the parts joined, one
at a time, into the final Parquet, .npy or JSON-lines file."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from llama_cython._optional import require
from llama_cython.errors import OptionError
from llama_cython.jobs._files import kill_point
from llama_cython.jobs._read import PathArg

_dumps = json.JSONEncoder(ensure_ascii=False, default=str).encode


def _json_column(values: Any) -> list[str]:
    """Each value of a column as JSON text (what ``json.dumps`` writes for it)."""
    if isinstance(values, np.ndarray):
        if values.ndim == 1 and values.dtype.kind in "iu":
            return [str(v) for v in values.tolist()]
        values = values.tolist()
    return [_dumps(v) for v in values]


class Writer:
    """Parts and the final output of one format; ``columns`` maps output column -> kind."""

    def __init__(self, fmt: str, key: str, columns: dict[str, str], dim: int = 0) -> None:
        self.fmt, self.key, self.columns, self.dim = fmt, key, columns, dim
        if fmt == "parquet":
            self.pa = require("pyarrow", "writing Parquet files")
            self.pq = require("pyarrow.parquet", "writing Parquet files")

    # one chunk -------------------------------------------------------------------------------

    def write_part(self, f: IO[bytes], rows: npt.NDArray[np.int64], ids: Any,
                   values: dict[str, Any]) -> None:
        if self.fmt == "npy":
            np.save(f, values["embedding"], allow_pickle=False)
        elif self.fmt == "parquet":
            self.pq.write_table(self.table(rows, ids, values), f)
        else:
            keys = rows if ids is None else (ids if isinstance(ids, list) else ids.to_pylist())
            cols = [_json_column(keys)] + [_json_column(v) for v in values.values()]
            template = "{" + ", ".join(json.dumps(name).replace("%", "%%") + ": %s"
                                       for name in (self.key, *values)) + "}\n"
            f.write("".join(map(template.__mod__, zip(*cols))).encode("utf-8"))

    def table(self, rows: npt.NDArray[np.int64], ids: Any, values: dict[str, Any]) -> Any:
        pa = self.pa
        if ids is None:
            key = pa.array(rows, type=pa.int64())
        elif isinstance(ids, list):
            try:
                key = pa.array(ids)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
                raise TypeError(f"id column {self.key!r}: values of mixed types ({exc})") from None
        else:
            key = ids
        arrays, names = [key], [self.key]
        for name, kind in self.columns.items():
            v = values[name]
            if kind == "embedding":
                flat = pa.array(np.ascontiguousarray(v).reshape(-1), type=pa.float32())
                arrays.append(pa.FixedSizeListArray.from_arrays(flat, self.dim))
            elif kind == "int32":
                arrays.append(pa.array(np.asarray(v, dtype=np.int32), type=pa.int32()))
            else:
                arrays.append(pa.array(v, type=pa.string()))
            names.append(name)
        return pa.Table.from_arrays(arrays, names=names)

    # the final output --------------------------------------------------------------------------

    def assemble(self, f: IO[bytes], parts: list[Path], rows: int) -> None:
        """Join the parts, one at a time, into ``f``."""
        if self.fmt == "parquet":
            self._assemble_parquet(f, parts)
        elif self.fmt == "npy":
            fmt = np.lib.format
            fmt.write_array_header_1_0(f, {"descr": fmt.dtype_to_descr(np.dtype(np.float32)),
                                           "fortran_order": False, "shape": (rows, self.dim)})
            for part in parts:
                with open(part, "rb") as p:
                    version = fmt.read_magic(p)
                    shape, fortran, dtype = (fmt.read_array_header_1_0(p) if version == (1, 0)
                                             else fmt.read_array_header_2_0(p))
                    if fortran or dtype != np.float32 or len(shape) != 2 or shape[1] != self.dim:
                        raise ValueError(f"{part}: not a part of this job ({shape}, {dtype})")
                    shutil.copyfileobj(p, f, 1 << 20)
                kill_point()
        else:
            for part in parts:
                with open(part, "rb") as p:
                    shutil.copyfileobj(p, f, 1 << 20)
                kill_point()

    def _assemble_parquet(self, f: IO[bytes], parts: list[Path]) -> None:
        pa, pq = self.pa, self.pq
        schemas = [pq.read_schema(p) for p in parts]
        schema = schemas[0]
        # a chunk whose ids were all missing has a null-typed id column: take the first real type
        for s in schemas:
            if not pa.types.is_null(s.field(self.key).type):
                schema = schema.set(0, s.field(self.key))
                break
        with pq.ParquetWriter(f, schema) as writer:
            for part in parts:
                table = pq.read_table(part)
                if table.schema != schema:
                    try:
                        table = table.cast(schema)
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                        raise TypeError(f"id column {self.key!r} changes type between chunks "
                                        f"({exc})") from None
                if table.num_rows:
                    writer.write_table(table, row_group_size=table.num_rows)
                del table
                kill_point()


def output_format(output: PathArg, allowed: tuple[str, ...], what: str) -> str:
    suffix = Path(output).suffix.lower().lstrip(".")
    if suffix == "ndjson":
        suffix = "jsonl"
    if suffix not in allowed:
        raise OptionError(f"{what}: unknown output format for {os.fspath(output)!r}; expected "
                          + ", ".join("." + s for s in allowed))
    return suffix

