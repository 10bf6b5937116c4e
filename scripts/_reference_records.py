"""Reference files that hold one record per CPU build of ggml (used by the record_* scripts).

llama.cpp's CPU kernels differ by instruction set: on AVX-512 with VNNI ggml takes other
matrix-multiplication paths than on AVX2 (for K-quants a tiled kernel; elsewhere other
accumulation orders), and a 135M model's log-probabilities then move by up to a few tenths of
a nat, its perplexity by about 0.5 %. A reference recorded on one CPU family is exact only for
the extension built with the same ggml options, so a reference file keeps a list of records,
each with the ``cpu_options`` (the ``GGML_*`` options of the extension this machine builds, as
``llama_cython._loader.loaded_variant().options`` reports them) it was recorded under. The
tests compare exactly against the record for their own options, and against the others with
the cross-CPU tolerance they state.

File layout: the keys shared by every record (what was run, on which text) at the top, then
``"records": [{"cpu_options": {...}, <the record's own keys>}, ...]``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any


def cpu_options() -> dict[str, str]:
    """The ``GGML_*`` options of the extension build this machine makes (scripts/build_llama_cpp.py)."""
    import build_llama_cpp

    _name, opts, _needs = build_llama_cpp.variant_plan(False)[-1]
    return {k: v for k, v in sorted(opts.items()) if k.startswith("GGML_")}


def dump(data: dict[str, Any]) -> str:
    """JSON with one key per line, but each list of numbers on a single line."""
    text = json.dumps(data, indent=1)
    flat = re.sub(r"\[\s*(-?\d[-0-9.eE,\s]*?)\s*\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    return flat + "\n"


def load(path: Path, record_keys: tuple[str, ...]) -> dict[str, Any] | None:
    """The file at ``path`` in the records layout (a file of the earlier one-record layout is
    read as one record); None if there is none."""
    if not path.exists():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    if "records" not in data:
        rec = {"cpu_options": data.pop("cpu_options", None)}
        for key in record_keys:
            rec[key] = data.pop(key)
        data["records"] = [rec]
    return data


def find(data: dict[str, Any] | None, options: dict[str, str]) -> dict[str, Any] | None:
    """The record made under ``options``, if any."""
    for rec in (data or {}).get("records", []):
        if rec.get("cpu_options") == options:
            return rec
    return None


def merge(path: Path, header: dict[str, Any], record: dict[str, Any], record_keys: tuple[str, ...]) -> int:
    """Write ``header`` and the records of ``path`` with ``record`` put in place of the one with
    the same ``cpu_options`` (or added). Returns the number of records written.

    A record made under another header (another llama.cpp commit, text or options) is dropped:
    its values no longer describe what the tests run."""
    old = load(path, record_keys)
    records = []
    if old is not None and all(old.get(k) == v for k, v in header.items() if k != "about"):
        records = [r for r in old["records"] if r.get("cpu_options") != record["cpu_options"]]
    records.append(record)
    path.write_text(dump({**header, "records": records}), encoding="utf-8")
    return len(records)
