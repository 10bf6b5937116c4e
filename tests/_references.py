"""Recorded references with one record per CPU build of ggml (scripts/_reference_records.py).

ggml's kernels differ between instruction sets (AVX2, AVX-512 with VNNI, ...), and with them
the last digits of a model's log-probabilities. A test compares exactly against the record made
under the same ggml options as the extension it runs, and otherwise, on a CPU family nobody
recorded, against another record with the cross-CPU tolerance it states.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


def _options() -> dict[str, str]:
    import llama_cython  # noqa: F401  (loads the core)
    from llama_cython._loader import loaded_variant

    variant = loaded_variant()
    opts = variant.options if variant is not None else {}
    return {k: v for k, v in sorted(opts.items()) if k.startswith("GGML_")}


def pick(path: Path, recorder: str) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """(the file's shared keys, the record to compare with, whether it was made under this
    extension's ggml options); skips the test when the file is absent."""
    if not path.exists():
        pytest.skip(f"reference not recorded ({recorder})")
    data = json.loads(path.read_text(encoding="utf-8"))
    records = data.pop("records")
    options = _options()
    for rec in records:
        if rec.get("cpu_options") == options:
            return data, rec, True
    return data, records[0], False
