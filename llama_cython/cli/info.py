"""``info MODEL``: what a GGUF holds; ``models``: the registry and what is cached."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from llama_cython import models
from llama_cython.cli._common import add_model_argument, human_bytes, human_count, load

INFO_EPILOG = """\
examples:
  llama-cython info smollm2-135m-instruct
  llama-cython info ./model.gguf --metadata
  llama-cython info all-minilm-l6-v2 --json | jq .n_embd
"""

MODELS_EPILOG = """\
examples:
  llama-cython models
  llama-cython models --json
"""

# Metadata shown without --metadata: the general.* keys that say what the model is.
_SHORT_KEYS = (
    "general.name",
    "general.basename",
    "general.size_label",
    "general.finetune",
    "general.license",
    "general.file_type",
    "general.quantization_version",
)


def add_parsers(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "info",
        parents=[parent],
        help="show a model's architecture, sizes, vocabulary and metadata",
        description="Show what a GGUF model is: architecture, sizes, vocabulary, chat template and metadata.",
        epilog=INFO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_argument(p)
    p.add_argument(
        "--metadata", action="store_true", help="list every metadata key (default: a few general.* keys)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_info)

    p = sub.add_parser(
        "models",
        parents=[parent],
        help="list the registry's model names and which are cached",
        description="List the models that MODEL may name instead of a path, and whether each is "
        f"already in the cache ({models.cache_dir()}).",
        epilog=MODELS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per model")
    p.set_defaults(func=run_models)


def model_info(model: Any, all_metadata: bool) -> dict[str, Any]:
    meta = model.metadata
    arch = model.architecture
    vocab = model.vocab
    pooling = meta.get(f"{arch}.pooling_type")
    info: dict[str, Any] = {
        "path": model.path,
        "architecture": arch,
        "description": model.description,
        "n_params": model.n_params,
        "size": model.size,
        "n_ctx_train": model.n_ctx_train,
        "n_embd": model.n_embd,
        "n_layer": model.n_layer,
        "n_head": model.n_head,
        "vocab_type": vocab.type,
        "n_vocab": model.n_vocab,
        "special_tokens": vocab.special_ids,
        "chat_template": model.chat_template is not None,
        "embedding_model": pooling is not None,
        "pooling_type": pooling,
        "has_encoder": model.has_encoder,
    }
    if all_metadata:
        info["metadata"] = dict(sorted(meta.items()))
    else:
        info["metadata"] = {k: meta[k] for k in _SHORT_KEYS if k in meta}
    info["n_metadata"] = len(meta)
    return info


def run_info(args: argparse.Namespace) -> int:
    with load(args) as model:
        info = model_info(model, args.metadata)
    if args.json:
        print(json.dumps(info, ensure_ascii=False, indent=2))
        return 0
    rows = [
        ("file", info["path"]),
        ("architecture", info["architecture"]),
        ("description", info["description"]),
        ("parameters", f"{human_count(info['n_params'])} ({info['n_params']:,})"),
        ("size", f"{human_bytes(info['size'])} ({info['size']:,} bytes)"),
        ("context (train)", info["n_ctx_train"]),
        ("embedding size", info["n_embd"]),
        ("layers / heads", f"{info['n_layer']} / {info['n_head']}"),
        ("vocabulary", f"{info['n_vocab']:,} tokens, {info['vocab_type']}"),
        ("special tokens", ", ".join(f"{k}={v}" for k, v in info["special_tokens"].items()) or "-"),
        ("chat template", "yes" if info["chat_template"] else "no"),
        ("embedding model", f"yes (pooling {info['pooling_type']})" if info["embedding_model"] else "no"),
        ("encoder", "yes" if info["has_encoder"] else "no"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    shown = info["metadata"]
    title = (
        "metadata"
        if args.metadata
        else f"metadata ({len(shown)} of {info['n_metadata']} keys; --metadata for all)"
    )
    print(f"{title}:")
    key_width = max((len(k) for k in shown), default=0)
    for key, value in shown.items():
        text = value if args.metadata or len(value) <= 100 else value[:97] + "..."
        text = text.replace("\n", "\\n")
        print(f"  {key:<{key_width}}  {text}")
    return 0


def run_models(args: argparse.Namespace) -> int:
    folder = models.cache_dir()
    rows: list[dict[str, Any]] = []
    for name, source in models.KNOWN_MODELS.items():
        path = folder / source.filename
        rows.append(
            {
                "name": name,
                "cached": path.is_file(),
                "path": str(path),
                "default": name == models.DEFAULT_MODEL,
                "description": source.description,
                "license": source.license,
            }
        )
    if args.json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return 0
    width = max(len(r["name"]) for r in rows)
    print(f"{'name':<{width}}  cached  description")
    for r in rows:
        print(f"{r['name']:<{width}}  {'yes' if r['cached'] else 'no':<6}  {r['description']}")
    print(f"default: {models.DEFAULT_MODEL}; cache: {folder}", file=sys.stderr)
    return 0
