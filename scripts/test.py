#!/usr/bin/env python3
"""Run the test suite: sets up .venv, llama.cpp, the extension and the models first.

    python3 scripts/test.py              # the whole suite
    python3 scripts/test.py -k tokenizer # extra arguments go to pytest
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bootstrap


def main() -> None:
    # all-minilm-l6-v2(-f32) are converted to GGUF on first use: about a minute, in a venv with torch;
    # smollm2-135m-instruct-f32 and all-minilm-l6-v2-bf16 are derived from the Q4_1 and F32
    # files by the built extension (seconds)
    python = _bootstrap.ensure(models=(
        "smollm2-135m-instruct", "gemma-3-270m", "all-minilm-l6-v2", "all-minilm-l6-v2-f32",
        "all-minilm-l6-v2-bf16", "smollm2-135m-instruct-f32",
    ))
    os.chdir(_bootstrap.ROOT)
    args = [str(python), "-m", "pytest", "tests", *sys.argv[1:]]
    os.execve(str(python), args, _bootstrap._env())


if __name__ == "__main__":
    main()
