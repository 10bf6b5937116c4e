#!/usr/bin/env python3
"""Run a notebook-style docs page and write what each Python block prints into its output block.

A notebook page (``<!-- notebook`` near its top) runs its ```python blocks in order in one
namespace; the ```output block right after a Python block holds what that block prints.
tests/test_docs.py runs such pages and compares; this script writes the outputs:

    .venv/bin/python scripts/render_notebook.py docs/tokenizers.md
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
from pathlib import Path

BLOCK = re.compile(r"```python\n(.*?)```\n\n```output\n(.*?)```", re.S)


def is_notebook(text: str) -> bool:
    return "<!-- notebook" in text[:2000]


def run_blocks(text: str, name: str) -> list[tuple[str, str, str]]:
    """(code, recorded output, printed output) of each Python block with an output block."""
    namespace: dict[str, object] = {}
    results = []
    for i, match in enumerate(BLOCK.finditer(text)):
        code, recorded = match.group(1), match.group(2)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(compile(code, f"{name}[python block {i}]", "exec"), namespace)
        results.append((code, recorded, buf.getvalue()))
    return results


def render(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    outputs = iter([printed for _, _, printed in run_blocks(text, path.name)])
    return BLOCK.sub(lambda m: f"```python\n{m.group(1)}```\n\n```output\n{next(outputs)}```", text)


def main() -> None:
    for arg in sys.argv[1:]:
        path = Path(arg)
        if not is_notebook(path.read_text(encoding="utf-8")):
            raise SystemExit(f"{path} is not a notebook page (no '<!-- notebook' near its top)")
        path.write_text(render(path), encoding="utf-8")
        print(f"wrote the outputs of {path}")


if __name__ == "__main__":
    main()
