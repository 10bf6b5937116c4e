"""``python -m llama_cython``: the ``llama-cython`` command line."""

from __future__ import annotations

from llama_cython.cli.main import entry

if __name__ == "__main__":
    entry()
