"""The ``llama-cython`` command line (also ``python -m llama_cython``): see ``llama-cython --help``."""

from __future__ import annotations

from llama_cython.cli.main import build_parser, entry, main

__all__ = ["build_parser", "entry", "main"]
