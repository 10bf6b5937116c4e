#!/usr/bin/env python3
"""Fuzz llama_cython with corrupt GGUF files and report the inputs that kill the interpreter.

A developer tool, not run by CI. It writes variants of a tiny random-weight llama GGUF (32 wide,
2 blocks, SPM vocabulary of ~270 tokens) and runs each one in a fresh subprocess that does
``load_model``, a few ``tokenize`` calls (plain, with special tokens, empty, odd text),
``detokenize``/``token_to_piece``, ``new_context(n_ctx=64, n_threads=1)`` and
``generate(max_tokens=4, temperature=0)``. Python exceptions are fine (the step records the
class); a variant *kills* when the subprocess dies by a signal, or exits non-zero without a
Python traceback. Kills are grouped by the llama.cpp source line of the abort message
(``src/llama-vocab.cpp:NNNN: GGML_ASSERT(...) failed``), or by signal and step.

Mutation strategies (all driven by ``--seed``):

* ``catalog``: every llama hyperparameter and tokenizer key read by ``load_hparams`` /
  ``llama_vocab::load`` set to 0, negative, huge, NaN/Inf, wrong types, arrays, or removed;
  shape-changing keys also with tensors whose shapes follow the mutated hyperparameters, so the
  load gets past the shape checks; tensor types and contents.
* ``combo``: random combinations of 2-3 catalog mutations.
* ``bytes``: byte flips and truncations in the header/KV region and the tensor-info region, and
  structured overwrites of the integer fields (counts, lengths, types, dims, offsets).

New crash classes found by a combination are reduced (one-minimal) by dropping mutations.

    .venv/bin/python scripts/fuzz_gguf.py                         # everything, ~14 minutes
    .venv/bin/python scripts/fuzz_gguf.py --count 200 --time-budget 300 --seed 7
    .venv/bin/python scripts/fuzz_gguf.py --only catalog --out /tmp/fuzz
    .venv/bin/python scripts/fuzz_gguf.py --replay /tmp/fuzz/crash-01.gguf
    .venv/bin/python scripts/fuzz_gguf.py --sample 20 --count 30 --time-budget 150   # CI's stress run

Crash reproducers (``crash-NN.gguf``) and ``report.json`` go to ``--out``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import fnmatch
import json
import math
import os
import random
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ARCH = "llama"
A = ARCH
N_EMBD, N_HEAD, N_FF, N_LAYER = 32, 4, 64, 2
MAX_ELEMENTS = 6_000_000          # derived tensor shapes larger than this fall back to the base ones

INT_TYPES = ("UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "UINT64", "INT64")

# -- the child: one variant, every public step ------------------------------------------------

CHILD_STEPS = ("load", "tokenize", "tokenize_special", "tokenize_empty", "tokenize_odd",
               "detokenize", "token_to_piece", "new_context", "generate")


def child_main(path: str) -> int:
    """Run every step on ``path``; print ``STEP``/``OK``/``EXC`` lines (flushed) to stdout."""
    import faulthandler

    faulthandler.enable()
    import llama_cython as llama

    def step(name: str, fn: Callable[[], Any]) -> Any:
        print(f"STEP {name}", flush=True)
        try:
            value = fn()
        except Exception as exc:
            message = " ".join(str(exc).split())[:300]
            print(f"EXC {name} {type(exc).__name__} {message}", flush=True)
            if not isinstance(exc, (llama.LlamaError, TypeError)):
                # outside the documented hierarchy; a MemoryError here usually means an
                # unbounded allocation that only the child's address-space limit stopped
                print(f"RAW {name} {type(exc).__name__}", flush=True)
            return None
        print(f"OK {name}", flush=True)
        return value

    model = step("load", lambda: llama.load_model(path))
    if model is None:
        print("DONE", flush=True)
        return 0
    ids = step("tokenize", lambda: model.tokenize("Hello world"))
    step("tokenize_special", lambda: model.tokenize("<s>hi</s>\n<unk>", add_special=True, parse_special=True))
    step("tokenize_empty", lambda: model.tokenize(""))
    step("tokenize_odd", lambda: model.tokenize("h\u00e9llo \u65e5\u672c\t\n  x\x00y <a>", add_special=False))
    if ids is not None:
        step("detokenize", lambda: model.detokenize(ids))

    def pieces() -> int:
        n = 0
        for tok in range(min(model.n_vocab, 2048)):
            n += len(model.token_to_piece(tok))
        return n

    step("token_to_piece", pieces)
    ctx = step("new_context", lambda: model.new_context(n_ctx=64, n_threads=1))
    if ctx is not None:
        step("generate", lambda: ctx.generate("hi", max_tokens=4, temperature=0.0))
        ctx.close()
    model.close()
    print("DONE", flush=True)
    return 0


# -- the base model and the semantic mutations -------------------------------------------------

KV = tuple[str, Any, "str | None"]     # (GGUFValueType name, value, array element type name)


def base_tokens() -> list[Any]:
    words = ["\u2581", "h", "i", "e", "l", "o", "\u2581h", "he", "ll", "lo", "hi", "\u2581hi"]
    return ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)] + words


def base_token_types(n_words: int = 12) -> list[int]:
    return [2, 3, 3] + [6] * 256 + [1] * n_words


def base_kv() -> dict[str, KV]:
    tokens = base_tokens()
    n = len(tokens)
    return {
        "general.architecture": ("STRING", ARCH, None),
        f"{A}.block_count": ("UINT32", N_LAYER, None),
        f"{A}.context_length": ("UINT32", 256, None),
        f"{A}.embedding_length": ("UINT32", N_EMBD, None),
        f"{A}.feed_forward_length": ("UINT32", N_FF, None),
        f"{A}.attention.head_count": ("UINT32", N_HEAD, None),
        f"{A}.attention.head_count_kv": ("UINT32", N_HEAD, None),
        f"{A}.attention.layer_norm_rms_epsilon": ("FLOAT32", 1e-5, None),
        f"{A}.rope.dimension_count": ("UINT32", N_EMBD // N_HEAD, None),
        "tokenizer.ggml.model": ("STRING", "llama", None),
        "tokenizer.ggml.tokens": ("ARRAY", tokens, "STRING"),
        "tokenizer.ggml.scores": ("ARRAY", [0.0] * (n - 12) + [-float(i) for i in range(12)], "FLOAT32"),
        "tokenizer.ggml.token_type": ("ARRAY", base_token_types(), "INT32"),
        "tokenizer.ggml.bos_token_id": ("UINT32", 1, None),
        "tokenizer.ggml.eos_token_id": ("UINT32", 2, None),
        "tokenizer.ggml.unknown_token_id": ("UINT32", 0, None),
        "tokenizer.ggml.add_bos_token": ("BOOL", True, None),
        "tokenizer.ggml.add_eos_token": ("BOOL", False, None),
    }


@dataclass(frozen=True)
class Atom:
    """One mutation: ``op`` is set/drop/derived/ttype/tfill/tdrop/tadd."""

    label: str
    op: str
    key: str = ""
    vtype: str = ""
    value: Any = None
    sub: str | None = None

    def apply(self, state: dict[str, Any]) -> None:
        kv = state["kv"]
        if self.op == "set":
            kv[self.key] = (self.vtype, self.value, self.sub)
        elif self.op == "drop":
            kv.pop(self.key, None)
        elif self.op == "derived":
            state["derived"] = True
        elif self.op == "ttype":
            state["ttypes"][self.key] = self.value
        elif self.op == "tfill":
            state["tfills"][self.key] = self.value
        elif self.op == "tdrop":
            state["tdrops"].add(self.key)
        elif self.op == "tadd":
            state["tadds"][self.key] = self.value
        else:
            raise ValueError(self.op)


def S(key: str, vtype: str, value: Any, sub: str | None = None, label: str | None = None) -> Atom:
    if label is None:
        shown = value if not isinstance(value, list) else f"[{len(value)}x {sub}] {value[:4]!r}"
        label = f"{key}={vtype}:{shown!r}" if not isinstance(value, list) else f"{key}={shown}"
    return Atom(label, "set", key, vtype, value, sub)


def D(key: str) -> Atom:
    return Atom(f"drop {key}", "drop", key)


DERIVED = Atom("tensors follow the hyperparameters", "derived")


def _kv_int(kv: dict[str, KV], key: str) -> int | None:
    vtype, value, _ = kv.get(key, (None, None, None))
    if vtype in INT_TYPES:
        return int(value)
    return None


def _kv_layers(kv: dict[str, KV], key: str, n_layer: int) -> list[int] | None:
    vtype, value, sub = kv.get(key, (None, None, None))
    if vtype == "ARRAY" and sub in INT_TYPES and len(value) == n_layer:
        return [int(v) for v in value]
    one = _kv_int(kv, key)
    return None if one is None else [one] * n_layer


def _n_vocab(kv: dict[str, KV]) -> int:
    model = kv.get("tokenizer.ggml.model", ("", "", None))[1]
    if model in ("no_vocab", "none"):
        n = _kv_int(kv, f"{A}.vocab_size")
        return n if n is not None and 0 <= n <= 100_000 else 0
    vtype, value, sub = kv.get("tokenizer.ggml.tokens", (None, None, None))
    if vtype == "ARRAY" and sub == "STRING" and len(value) <= 100_000:
        return len(value)
    return len(base_tokens())


def tensor_shapes(kv: dict[str, KV], derived: bool) -> list[tuple[str, tuple[int, ...]]]:
    """numpy shapes (ggml ``ne`` reversed) of the llama tensors for these hyperparameters."""
    n_vocab = _n_vocab(kv)
    base = dict(n_layer=N_LAYER, n_embd=N_EMBD, n_head=N_HEAD, n_head_kv=N_HEAD,
                head_k=N_EMBD // N_HEAD, head_v=N_EMBD // N_HEAD, n_ff=N_FF, n_expert=0)
    hp = dict(base)
    if derived:
        bc = _kv_int(kv, f"{A}.block_count")
        hp["n_layer"] = bc if bc is not None and 1 <= bc <= 8 else N_LAYER
        n_layer = hp["n_layer"]
        el = _kv_int(kv, f"{A}.embedding_length")
        hp["n_embd"] = el if el is not None and 0 <= el <= 1024 else N_EMBD
        heads = _kv_layers(kv, f"{A}.attention.head_count", n_layer)
        hp["n_head"] = heads[0] if heads and 0 <= heads[0] <= 64 else N_HEAD
        heads_kv = _kv_layers(kv, f"{A}.attention.head_count_kv", n_layer)
        hp["n_head_kv"] = heads_kv[0] if heads_kv and 0 <= heads_kv[0] <= 64 else hp["n_head"]
        per_head = hp["n_embd"] // hp["n_head"] if hp["n_head"] > 0 else 0
        kl = _kv_int(kv, f"{A}.attention.key_length")
        vl = _kv_int(kv, f"{A}.attention.value_length")
        hp["head_k"] = kl if kl is not None and 0 <= kl <= 1024 else per_head
        hp["head_v"] = vl if vl is not None and 0 <= vl <= 1024 else per_head
        ff = _kv_layers(kv, f"{A}.feed_forward_length", n_layer)
        hp["n_ff"] = ff[0] if ff and 0 <= ff[0] <= 4096 else N_FF
        ne = _kv_int(kv, f"{A}.expert_count")
        hp["n_expert"] = ne if ne is not None and 0 <= ne <= 64 else 0
    e, q = hp["n_embd"], hp["head_k"] * hp["n_head"]
    k, v, ff, nx = hp["head_k"] * hp["n_head_kv"], hp["head_v"] * hp["n_head_kv"], hp["n_ff"], hp["n_expert"]
    shapes: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (n_vocab, e)),
                                                  ("output_norm.weight", (e,))]
    for i in range(hp["n_layer"]):
        b = f"blk.{i}."
        shapes += [(b + "attn_norm.weight", (e,)), (b + "attn_q.weight", (q, e)),
                   (b + "attn_k.weight", (k, e)), (b + "attn_v.weight", (v, e)),
                   (b + "attn_output.weight", (e, q)), (b + "ffn_norm.weight", (e,))]
        if nx == 0:
            shapes += [(b + "ffn_gate.weight", (ff, e)), (b + "ffn_up.weight", (ff, e)),
                       (b + "ffn_down.weight", (e, ff))]
        else:
            shapes += [(b + "ffn_gate_inp.weight", (nx, e)), (b + "ffn_gate_exps.weight", (nx, ff, e)),
                       (b + "ffn_up_exps.weight", (nx, ff, e)), (b + "ffn_down_exps.weight", (nx, e, ff))]
    if derived and sum(math.prod(s) for _, s in shapes) > MAX_ELEMENTS:
        return tensor_shapes(kv, False)
    return shapes


def write_semantic(path: Path, atoms: Sequence[Atom]) -> None:
    """Write the base model with ``atoms`` applied, through the ``gguf`` package."""
    import gguf
    import numpy as np

    class Writer(gguf.GGUFWriter):
        # The stock writer refuses empty arrays; write them (llama.cpp must cope with them).
        def _pack_val(self, val: Any, vtype: Any, add_vtype: bool, sub_type: Any = None) -> bytes:
            if vtype == gguf.GGUFValueType.ARRAY and len(val) == 0:
                head = self._pack("I", vtype) if add_vtype else b""
                sub = sub_type if sub_type is not None else gguf.GGUFValueType.UINT32
                return head + self._pack("I", sub) + self._pack("Q", 0)
            return super()._pack_val(val, vtype, add_vtype, sub_type)

    state: dict[str, Any] = {"kv": base_kv(), "derived": False, "ttypes": {}, "tfills": {},
                             "tdrops": set(), "tadds": {}}
    for atom in atoms:
        atom.apply(state)
    kv = state["kv"]
    writer = Writer(str(path), ARCH)
    writer.kv_data[0].clear()
    vt = gguf.GGUFValueType
    for key, (vtype, value, sub) in kv.items():
        writer.add_key_value(key, value, vt[vtype], vt[sub] if sub else None)
    rng = np.random.default_rng(0)
    shapes = tensor_shapes(kv, state["derived"]) + list(state["tadds"].items())
    for name, shape in shapes:
        if any(fnmatch.fnmatchcase(name, pat) for pat in state["tdrops"]):
            continue
        if name.endswith("norm.weight"):
            data = np.ones(shape, np.float32)
        else:
            data = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        for pat, fill in state["tfills"].items():
            if fnmatch.fnmatchcase(name, pat):
                data[...] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "zero": 0.0, "huge": 3e38}[fill]
        raw = None
        for pat, dtype in state["ttypes"].items():
            if not fnmatch.fnmatchcase(name, pat):
                continue
            if dtype in ("F16", "F64"):
                data = data.astype(np.float16 if dtype == "F16" else np.float64)
            elif dtype in ("I8", "I16", "I32"):
                itype = {"I8": np.int8, "I16": np.int16, "I32": np.int32}[dtype]
                data = (np.clip(data, -1.0, 1.0) * 100).astype(itype)
            elif shape and shape[-1] % 32 == 0:
                qtype = gguf.GGMLQuantizationType[dtype]
                data, raw = gguf.quants.quantize(data, qtype), qtype
        writer.add_tensor(name, data, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _u32_atoms(key: str, base: int | None, per_layer: bool) -> list[Atom]:
    out = [S(key, "UINT32", v) for v in (0, 1, 3, 7, 65536, 2**31 - 1, 2**32 - 1)]
    out += [S(key, "INT32", -1), S(key, "INT32", 5), S(key, "UINT64", 4), S(key, "INT64", -1),
            S(key, "UINT16", 4), S(key, "UINT8", 4), S(key, "FLOAT32", 4.0), S(key, "STRING", "4"),
            S(key, "BOOL", True), S(key, "ARRAY", ["4", "4"], "STRING"),
            S(key, "ARRAY", [4] * 3, "UINT32"), S(key, "ARRAY", [], "UINT32")]
    if per_layer:
        b = base if base is not None else 2
        out += [S(key, "ARRAY", [b] * N_LAYER, "UINT32"), S(key, "ARRAY", [b, 0], "UINT32"),
                S(key, "ARRAY", [0, b], "UINT32"), S(key, "ARRAY", [b, 2 * b], "UINT32"),
                S(key, "ARRAY", [b, max(1, b // 2)], "UINT32"), S(key, "ARRAY", [-1] * N_LAYER, "INT32"),
                S(key, "ARRAY", [2**31] * N_LAYER, "UINT32"), S(key, "ARRAY", [b] * N_LAYER, "UINT64"),
                S(key, "ARRAY", [float(b)] * N_LAYER, "FLOAT32")]
    if base is not None:
        out.append(D(key))
    return out


def _f32_atoms(key: str, base: float | None) -> list[Atom]:
    out = [S(key, "FLOAT32", v) for v in (0.0, -1.0, math.nan, math.inf, -math.inf, 1e30, 1e-30, 3.4e38)]
    out += [S(key, "FLOAT64", 1.0), S(key, "UINT32", 1), S(key, "STRING", "1.0"),
            S(key, "ARRAY", [1.0, 1.0], "FLOAT32")]
    if base is not None:
        out.append(D(key))
    return out


def _bool_atoms(key: str, base: bool | None) -> list[Atom]:
    out = [S(key, "BOOL", True), S(key, "BOOL", False), S(key, "UINT8", 1), S(key, "STRING", "true")]
    if base is not None:
        out.append(D(key))
    return out


def _str_atoms(key: str, values: Sequence[Any], base: str | None) -> list[Atom]:
    out = [S(key, "STRING", v) for v in values]
    out += [S(key, "UINT32", 0), S(key, "ARRAY", ["linear"], "STRING")]
    if base is not None:
        out.append(D(key))
    return out


# hyperparameters read by load_hparams (generic part) and llama's load_arch_hparams:
# (key, kind, base value or None, per-layer array allowed, changes tensor shapes)
HPARAMS: list[tuple[str, str, Any, bool, bool]] = [
    (f"{A}.context_length", "u32", 256, False, False),
    (f"{A}.embedding_length", "u32", N_EMBD, False, True),
    (f"{A}.embedding_length_out", "u32", None, False, False),
    (f"{A}.attention.causal", "bool", None, False, False),
    (f"{A}.pooling_type", "u32", None, False, False),
    (f"{A}.classifier.pooling_type", "u32", None, False, False),
    (f"{A}.block_count", "u32", N_LAYER, False, True),
    (f"{A}.nextn_predict_layers", "u32", None, False, False),
    (f"{A}.expert_count", "u32", None, False, True),
    (f"{A}.expert_used_count", "u32", None, True, False),
    (f"{A}.expert_group_count", "u32", None, False, False),
    (f"{A}.expert_group_used_count", "u32", None, False, False),
    (f"{A}.feed_forward_length", "u32", N_FF, True, True),
    (f"{A}.attention.head_count", "u32", N_HEAD, True, True),
    (f"{A}.attention.head_count_kv", "u32", N_HEAD, True, True),
    (f"{A}.rope.scaling.finetuned", "bool", None, False, False),
    (f"{A}.rope.scaling.original_context_length", "u32", None, False, False),
    (f"{A}.rope.freq_base", "f32", None, False, False),
    (f"{A}.rope.scaling.factor", "f32", None, False, False),
    (f"{A}.rope.scale_linear", "f32", None, False, False),
    (f"{A}.rope.scaling.attn_factor", "f32", None, False, False),
    (f"{A}.rope.scaling.alpha", "f32", None, False, False),
    (f"{A}.attention.key_length", "u32", None, False, True),
    (f"{A}.attention.value_length", "u32", None, False, True),
    (f"{A}.rope.dimension_count", "u32", N_EMBD // N_HEAD, False, False),
    (f"{A}.attention.key_length_swa", "u32", None, False, False),
    (f"{A}.attention.value_length_swa", "u32", None, False, False),
    (f"{A}.rope.dimension_count_swa", "u32", None, False, False),
    (f"{A}.vocab_size", "u32", None, False, False),
    (f"{A}.attention.layer_norm_rms_epsilon", "f32", 1e-5, False, False),
    ("general.alignment", "u32", None, False, False),
    ("general.file_type", "u32", None, False, False),
    ("general.quantization_version", "u32", None, False, False),
]


def catalog_hparams() -> list[list[Atom]]:
    variants: list[list[Atom]] = []
    for key, kind, base, per_layer, shape in HPARAMS:
        if kind == "u32":
            atoms = _u32_atoms(key, base, per_layer)
        elif kind == "f32":
            atoms = _f32_atoms(key, base)
        else:
            atoms = _bool_atoms(key, base)
        for atom in atoms:
            variants.append([atom])
            if shape:
                variants.append([atom, DERIVED])
    rs = f"{A}.rope.scaling.type"
    for atom in _str_atoms(rs, ["", "linear", "none", "yarn", "longrope", "nosuch", "LINEAR",
                                b"\xff\xfe"], None):
        variants.append([atom])
    labels = f"{A}.classifier.output_labels"
    variants += [[S(labels, "ARRAY", ["a", "b"], "STRING")], [S(labels, "ARRAY", [1, 2], "UINT32")],
                 [S(labels, "STRING", "a")], [S(labels, "ARRAY", [], "STRING")]]
    variants += [[S("general.architecture", "STRING", v)] for v in ("", "LLAMA", "llama\x00x", "bert", "t5",
                                                                       "rwkv6", "mamba", "gemma3", "clip")]
    variants += [[S("general.architecture", "UINT32", 0)], [D("general.architecture")]]
    variants += [[S("general.alignment", "UINT32", v)] for v in (2, 4, 8, 16, 32, 64, 4096)]
    variants += [[S(k, "UINT16", v)] for k in ("split.count", "split.no") for v in (0, 1, 2, 65535)]
    variants += [[S("split.tensors.count", "INT32", v)] for v in (0, -1, 3)]
    # coherent shape changes that pass the loader's shape checks
    hk, hkv, kl, vl, rd = (f"{A}.attention.head_count", f"{A}.attention.head_count_kv",
                           f"{A}.attention.key_length", f"{A}.attention.value_length",
                           f"{A}.rope.dimension_count")
    coherent = [
        [S(hkv, "UINT32", 3)], [S(hkv, "UINT32", 8)], [S(hkv, "UINT32", 1)], [S(hkv, "UINT32", 0)],
        [S(hk, "UINT32", 5), D(rd)], [S(hk, "UINT32", 3), D(rd)], [S(hk, "UINT32", 64), D(rd)],
        [S(kl, "UINT32", 16), S(vl, "UINT32", 8), S(rd, "UINT32", 16)],
        [S(kl, "UINT32", 8), S(vl, "UINT32", 16)],
        [S(kl, "UINT32", 16), S(vl, "UINT32", 16), S(rd, "UINT32", 16)],
        [S(kl, "UINT32", 6), S(vl, "UINT32", 6), S(rd, "UINT32", 6)],
        [S(kl, "UINT32", 0), S(vl, "UINT32", 0), S(rd, "UINT32", 0)],
        [S(kl, "UINT32", 7), S(vl, "UINT32", 7), S(rd, "UINT32", 7)],
        [S(rd, "UINT32", 4)], [S(rd, "UINT32", 0)], [S(rd, "UINT32", 6)],
        [S(hk, "ARRAY", [4, 2], "UINT32")], [S(hkv, "ARRAY", [4, 2], "UINT32")],
        [S(hkv, "ARRAY", [4, 0], "UINT32")],
        [S(hk, "ARRAY", [4, 0], "UINT32")], [S(hkv, "ARRAY", [4, 3], "UINT32")],
        [S(f"{A}.feed_forward_length", "ARRAY", [64, 0], "UINT32")],
        [S(f"{A}.feed_forward_length", "UINT32", 0)], [S(f"{A}.embedding_length", "UINT32", 0)],
        [S(f"{A}.embedding_length", "UINT32", 33)], [S(f"{A}.embedding_length", "UINT32", 8), D(rd)],
        [S(f"{A}.block_count", "UINT32", 1)], [S(f"{A}.block_count", "UINT32", 8)],
        [S(f"{A}.expert_count", "UINT32", 2), S(f"{A}.expert_used_count", "UINT32", 1)],
        [S(f"{A}.expert_count", "UINT32", 2), S(f"{A}.expert_used_count", "UINT32", 2)],
        [S(f"{A}.expert_count", "UINT32", 4), S(f"{A}.expert_used_count", "ARRAY", [2, 0], "UINT32")],
        [S(f"{A}.expert_count", "UINT32", 4), S(f"{A}.expert_used_count", "UINT32", 2),
         S(f"{A}.expert_group_count", "UINT32", 2), S(f"{A}.expert_group_used_count", "UINT32", 1)],
        [S(f"{A}.expert_count", "UINT32", 2)], [S(f"{A}.expert_used_count", "UINT32", 1)],
        [S(f"{A}.expert_count", "UINT32", 4), S(f"{A}.expert_used_count", "UINT32", 2),
         S(f"{A}.expert_group_count", "UINT32", 3)],
        [S(f"{A}.expert_count", "UINT32", 1025), S(f"{A}.expert_used_count", "UINT32", 1)],
        [S(f"{A}.nextn_predict_layers", "UINT32", 3)], [S(f"{A}.nextn_predict_layers", "UINT32", 2)],
        [S(f"{A}.nextn_predict_layers", "UINT32", 1)],
        [S(f"{A}.context_length", "UINT32", 0)], [S(f"{A}.context_length", "UINT32", 2**32 - 1)],
        [S(f"{A}.rope.scaling.type", "STRING", "yarn"), S(f"{A}.rope.scaling.factor", "FLOAT32", 4.0),
         S(f"{A}.rope.scaling.original_context_length", "UINT32", 0)],
        [S(f"{A}.rope.scaling.type", "STRING", "longrope")],
        [S(f"{A}.pooling_type", "UINT32", 99), S(f"{A}.attention.causal", "BOOL", False)],
        [S(f"{A}.attention.causal", "BOOL", False)],
        [S(f"{A}.embedding_length_out", "UINT32", 7)],
    ]
    variants += [[*atoms, DERIVED] for atoms in coherent]
    return variants


TOK = "tokenizer.ggml."
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id", "seperator_token_id",
                 "eot_token_id", "eom_token_id", "mask_token_id", "cls_token_id", "fim_pre_token_id",
                 "fim_suf_token_id", "fim_mid_token_id", "fim_pad_token_id", "fim_rep_token_id",
                 "fim_sep_token_id", "prefix_token_id", "suffix_token_id", "middle_token_id")
TOKENIZER_MODELS = ("", "nosuch", "no_vocab", "none", "bert", "gpt2", "t5", "rwkv", "test", "plamo2",
                    "gemma4", "hybriddna", "whitespace", "LLAMA")


def _tokens_with(edit: Callable[[list[Any]], None]) -> list[Any]:
    tokens = base_tokens()
    edit(tokens)
    return tokens


def catalog_tokenizer() -> list[list[Atom]]:
    n = len(base_tokens())
    tk, tt, sc, mg, md = TOK + "tokens", TOK + "token_type", TOK + "scores", TOK + "merges", TOK + "model"
    variants: list[list[Atom]] = []
    # tokenizer model strings, alone and with the keys each one needs
    for name in TOKENIZER_MODELS:
        variants.append([S(md, "STRING", name)])
        for extra in ([S(TOK + "add_bos_token", "BOOL", True), D(TOK + "bos_token_id")],
                      [S(TOK + "add_eos_token", "BOOL", True), D(TOK + "eos_token_id")],
                      [S(TOK + "add_sep_token", "BOOL", True)],
                      [S(TOK + "pre", "STRING", "default")], [S(TOK + "pre", "STRING", "llama3")],
                      [S(TOK + "pre", "STRING", "nosuch")],
                      [S(mg, "ARRAY", ["h i", "l o", "\u2581 h"], "STRING")],
                      [S(tt, "ARRAY", [1] * n, "INT32")],
                      [S(f"{A}.vocab_size", "UINT32", n)]):
            variants.append([S(md, "STRING", name), *extra])
    variants += [[S(md, "UINT32", 0)], [D(md)], [S(md, "ARRAY", ["llama"], "STRING")]]
    variants += [[S(md, "STRING", "no_vocab"), S(f"{A}.vocab_size", "UINT32", v)] for v in (0, 1, 2**31)]
    variants += [[S(md, "STRING", "no_vocab"), S(f"{A}.vocab_size", "UINT32", n), D(tk), D(sc), D(tt)]]
    # merges (BPE)
    for merges in (["hi"], [" "], ["h i j"], [""], [" h"], ["h  i"], ["x y"], ["h i", "h i"],
                   ["\u2581 h"] * 3, ["h i"] * 2000):
        variants.append([S(md, "STRING", "gpt2"), S(TOK + "pre", "STRING", "default"),
                         S(mg, "ARRAY", merges, "STRING")])
    variants += [[S(md, "STRING", "gpt2"), S(mg, v, w, s)]
                 for v, w, s in (("ARRAY", [1, 2], "UINT32"), ("STRING", "h i", None),
                                 ("ARRAY", [], "STRING"))]
    # special token ids
    for key in TOKEN_ID_KEYS:
        for atom in (S(TOK + key, "UINT32", n), S(TOK + key, "UINT32", n + 1000),
                     S(TOK + key, "UINT32", 2**32 - 1),
                     S(TOK + key, "UINT32", 2**31), S(TOK + key, "UINT32", 5), S(TOK + key, "UINT32", 0),
                     S(TOK + key, "INT32", -1), S(TOK + key, "UINT64", 1), S(TOK + key, "STRING", "1")):
            variants.append([atom])
        variants.append([D(TOK + key)])
    for model in ("llama", "t5", "rwkv", "test", "gemma4", "bert", "gpt2"):
        for ids in ((TOK + "bos_token_id", n), (TOK + "eos_token_id", n), (TOK + "seperator_token_id", n)):
            variants.append([S(md, "STRING", model), S(TOK + "add_bos_token", "BOOL", True),
                             S(TOK + "add_eos_token", "BOOL", True), S(TOK + "add_sep_token", "BOOL", True),
                             S(ids[0], "UINT32", ids[1])])
    for flag in ("add_bos_token", "add_eos_token", "add_sep_token", "add_space_prefix",
                 "remove_extra_whitespaces",
                 "normalizer.lowercase", "normalizer.strip_accents"):
        variants += [[a] for a in _bool_atoms(TOK + flag, None)]
    # token types
    for types, sub in (([1] * (n - 1), "INT32"), ([1] * (n + 5), "INT32"), ([99] * n, "INT32"),
                       ([-1] * n, "INT32"), ([0] * n, "INT32"), ([3] * n, "INT32"), ([4] * n, "INT32"),
                       ([5] * n, "INT32"), ([6] * n, "INT32"), ([2] * n, "INT32"), ([1] * n, "UINT32"),
                       ([1.0] * n, "FLOAT32"), (["1"] * n, "STRING"), ([], "INT32")):
        variants.append([S(tt, "ARRAY", types, sub, label=f"{tt}=[{len(types)}x {sub}] {types[:1]!r}...")])
    variants.append([S(tt, "INT32", 1)])
    variants.append([D(tt)])
    for model in ("bert", "gpt2", "t5", "rwkv", "plamo2", "gemma4"):
        variants.append([S(md, "STRING", model), S(TOK + "pre", "STRING", "default"),
                         S(mg, "ARRAY", ["h i"], "STRING"), S(tt, "ARRAY", [6] * n, "INT32",
                                                              label=f"{tt}=all BYTE (6)")])
    # scores
    for scores, sub in (([0.0] * (n - 1), "FLOAT32"), ([math.nan] * n, "FLOAT32"),
                        ([math.inf] * n, "FLOAT32"),
                        ([-math.inf] * n, "FLOAT32"), ([1] * n, "INT32"), ([1] * n, "UINT32"),
                        (["0"] * n, "STRING"), ([], "FLOAT32"), ([0.0] * (n + 3), "FLOAT32")):
        variants.append([S(sc, "ARRAY", scores, sub, label=f"{sc}=[{len(scores)}x {sub}] {scores[:1]!r}...")])
    variants += [[S(sc, "FLOAT32", 0.0)], [D(sc)]]
    # token lists
    token_edits: list[tuple[str, Callable[[list[Any]], None]]] = [
        ("token 270 is empty", lambda t: t.__setitem__(270, "")),
        ("token 5 is '' and token 270 is '[EMPTY_5]'",
         lambda t: (t.__setitem__(5, ""), t.__setitem__(270, "[EMPTY_5]"))),
        ("tokens 5 and 270 are both empty", lambda t: (t.__setitem__(5, ""), t.__setitem__(270, ""))),
        ("token 270 = 'a\\x00b', 269 = 'a\\x00c'", lambda t: (t.__setitem__(270, "a\x00b"),
                                                              t.__setitem__(269, "a\x00c"))),
        ("token 270 = 'h\\x00x' (same C string as 'h')", lambda t: t.__setitem__(270, "h\x00x")),
        ("token 270 is invalid UTF-8", lambda t: t.__setitem__(270, b"\xff\xfe\x80")),
        ("token 270 is 100 KB", lambda t: t.__setitem__(270, "x" * 100_000)),
        ("no <0x0A> byte token", lambda t: t.__setitem__(3 + 10, "<newline>")),
        ("byte token <0xZZ>", lambda t: t.__setitem__(3 + 10, "<0xZZ>")),
        ("byte token '<0x'", lambda t: t.__setitem__(3 + 10, "<0x")),
        ("byte token 'a'", lambda t: t.__setitem__(3 + 10, "a")),
        ("'<s>' renamed", lambda t: t.__setitem__(1, "<bos>")),
        ("control tokens named <|im_end|>, <|eot_id|>", lambda t: (t.__setitem__(1, "<|im_end|>"),
                                                                   t.__setitem__(2, "<|eot_id|>"))),
        ("fim-like tokens",
         lambda t: (t.__setitem__(269, "<|fim_prefix|>"), t.__setitem__(270, "<|fim_pad|>"))),
        ("gpt-oss '<|channel|>' token", lambda t: t.__setitem__(270, "<|channel|>")),
        ("'unused' control token", lambda t: t.__setitem__(2, "<unused0>")),
        ("'<oov>' token (hybriddna)", lambda t: t.__setitem__(270, "<oov>")),
    ]
    for label, edit in token_edits:
        tokens = _tokens_with(edit)
        atom = S(tk, "ARRAY", tokens, "STRING", label=f"{tk}: {label}")
        variants.append([atom])
        variants.append([atom, S(md, "STRING", "gpt2"), S(TOK + "pre", "STRING", "default"),
                         S(mg, "ARRAY", ["h i"], "STRING")])
    small = ["<unk>", "<s>", "</s>"]
    for label, tokens in (("only <unk>", ["<unk>"]), ("3 control tokens", small), ("one empty token", [""]),
                          ("no tokens", [])):
        m = len(tokens)
        variants.append([S(tk, "ARRAY", tokens, "STRING", label=f"{tk}: {label}"),
                         S(sc, "ARRAY", [0.0] * m, "FLOAT32", label=f"{sc}: {m} scores"),
                         S(tt, "ARRAY", [3] * m, "INT32", label=f"{tt}: {m} CONTROL")])
        variants.append([S(tk, "ARRAY", tokens, "STRING", label=f"{tk}: {label}"), D(sc), D(tt)])
    for model in ("test", "gpt2", "t5", "rwkv", "bert", "plamo2", "gemma4", "whitespace"):
        for label, tokens in (("no tokens", []), ("only <unk>", ["<unk>"]), ("one empty token", [""])):
            variants.append([S(md, "STRING", model), S(TOK + "pre", "STRING", "default"),
                             S(mg, "ARRAY", ["h i"], "STRING"),
                             S(tk, "ARRAY", tokens, "STRING", label=f"{tk}: {label}"), D(sc), D(tt)])
    variants += [[S(tk, "ARRAY", [1, 2, 3], "UINT32")], [S(tk, "STRING", "<unk>")], [D(tk)]]
    # t5 / UGM charsmap, suppress tokens, misc
    pc = TOK + "precompiled_charsmap"
    for data, sub in (([1, 2, 3], "UINT8"), ([255, 255, 255, 255, 0, 0], "UINT8"),
                      ([8, 0, 0, 0] + [0] * 12, "UINT8"),
                      ([4, 0, 0, 0] + [255] * 8, "UINT8"), ([1, 2], "INT32"), ([], "UINT8")):
        variants.append([S(md, "STRING", "t5"), S(pc, "ARRAY", data, sub)])
    variants.append([S(md, "STRING", "t5"), S(pc, "STRING", "x")])
    sp = TOK + "suppress_tokens"
    variants += [[S(sp, "ARRAY", [-1, n, 2**31 - 1], "INT32")], [S(sp, "ARRAY", [1], "UINT32")],
                 [S(sp, "UINT32", 1)]]
    variants += [[S(TOK + "token_type_count", "UINT32", v)] for v in (0, 2**32 - 1)]
    variants += [[S("tokenizer.chat_template", "STRING", v)] for v in ("{% for", "", "\xff")]
    return variants


def catalog_tensors() -> list[list[Atom]]:
    variants: list[list[Atom]] = []
    targets = ("token_embd.weight", "output_norm.weight", "blk.*.attn_norm.weight", "blk.0.attn_q.weight",
               "blk.*.attn_k.weight", "blk.*.attn_output.weight", "blk.*.ffn_down.weight",
               "blk.*.ffn_gate.weight")
    for pat in targets:
        for dtype in ("F16", "F64", "I8", "I16", "I32", "BF16", "Q8_0", "Q4_0", "Q5_1"):
            variants.append([Atom(f"tensor {pat} as {dtype}", "ttype", pat, value=dtype)])
        for fill in ("nan", "inf", "zero", "huge"):
            variants.append([Atom(f"tensor {pat} filled with {fill}", "tfill", pat, value=fill)])
        variants.append([Atom(f"tensor {pat} missing", "tdrop", pat)])
    adds = [("output.weight", (len(base_tokens()), N_EMBD)),
            ("output.weight", (len(base_tokens()) + 7, N_EMBD)),
            ("rope_freqs.weight", (N_EMBD // N_HEAD // 2,)), ("rope_freqs.weight", (3,)),
            ("blk.0.attn_qkv.weight", (3 * N_EMBD, N_EMBD)), ("blk.0.attn_q.bias", (N_EMBD,)),
            ("blk.0.attn_q.bias", (5,)), ("blk.9.attn_q.weight", (N_EMBD, N_EMBD)), ("extra.weight", (4,))]
    for name, shape in adds:
        variants.append([Atom(f"extra tensor {name} {shape}", "tadd", name, value=shape)])
    variants.append([Atom("extra tensor rope_freqs.weight (4,) = 0", "tadd", "rope_freqs.weight", value=(4,)),
                     Atom("rope_freqs zero", "tfill", "rope_freqs.weight", value="zero")])
    variants.append([Atom("extra tensor rope_freqs.weight (4,) = nan", "tadd", "rope_freqs.weight",
                          value=(4,)),
                     Atom("rope_freqs nan", "tfill", "rope_freqs.weight", value="nan")])
    return variants


# -- byte-level mutations ----------------------------------------------------------------------

GGUF_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def gguf_layout(data: bytes) -> tuple[list[tuple[str, int, int]], int, int]:
    """(integer fields as (label, offset, size), tensor-info start, tensor-info end) of a GGUF v3 file."""
    fields: list[tuple[str, int, int]] = [("version", 4, 4), ("n_tensors", 8, 8), ("n_kv", 16, 8)]
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    off = 24

    def string(label: str) -> None:
        nonlocal off
        fields.append((label + ".len", off, 8))
        (n,) = struct.unpack_from("<Q", data, off)
        off += 8 + n

    def value(label: str, vtype: int) -> None:
        nonlocal off
        if vtype in GGUF_SCALAR:
            fields.append((label + ".value", off, GGUF_SCALAR[vtype]))
            off += GGUF_SCALAR[vtype]
        elif vtype == 8:
            string(label)
        elif vtype == 9:
            fields.append((label + ".arr_type", off, 4))
            fields.append((label + ".arr_n", off + 4, 8))
            atype, n = struct.unpack_from("<IQ", data, off)
            off += 12
            for i in range(n):
                if i < 4:
                    value(f"{label}[{i}]", atype)
                elif atype == 8:
                    (m,) = struct.unpack_from("<Q", data, off)
                    off += 8 + m
                else:
                    off += GGUF_SCALAR[atype]
        else:
            raise ValueError(f"type {vtype}")

    for _ in range(n_kv):
        key_off = off
        (n,) = struct.unpack_from("<Q", data, off)
        key = data[off + 8:off + 8 + n].decode("utf-8", "replace")
        fields.append((f"kv {key}.key_len", key_off, 8))
        off += 8 + n
        fields.append((f"kv {key}.type", off, 4))
        (vtype,) = struct.unpack_from("<I", data, off)
        off += 4
        value(f"kv {key}", vtype)
    ti_start = off
    for _ in range(n_tensors):
        (n,) = struct.unpack_from("<Q", data, off)
        name = data[off + 8:off + 8 + n].decode("utf-8", "replace")
        fields.append((f"tensor {name}.name_len", off, 8))
        off += 8 + n
        fields.append((f"tensor {name}.n_dims", off, 4))
        (n_dims,) = struct.unpack_from("<I", data, off)
        off += 4
        for d in range(n_dims):
            fields.append((f"tensor {name}.ne[{d}]", off, 8))
            off += 8
        fields.append((f"tensor {name}.type", off, 4))
        fields.append((f"tensor {name}.offset", off + 4, 8))
        off += 12
    return fields, ti_start, off


@dataclass
class ByteEdit:
    label: str
    kind: str          # "xor", "set", "trunc"
    offset: int
    data: bytes = b""


def apply_bytes(base: bytes, edits: Sequence[ByteEdit]) -> bytes:
    out = bytearray(base)
    cut = len(out)
    for e in edits:
        if e.kind == "xor":
            out[e.offset] ^= e.data[0]
        elif e.kind == "set":
            out[e.offset:e.offset + len(e.data)] = e.data
        elif e.kind == "trunc":
            cut = min(cut, e.offset)
    return bytes(out[:cut])


def interesting_ints(size: int, current: int, rng: random.Random) -> list[int]:
    top = 2 ** (8 * size) - 1
    vals = {0, 1, 2, 3, 4, 8, 31, 32, 63, 64, 255, 256, 4096, 0x7F, 0x80, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF,
            0x80000000, 0xFFFFFFFF, top, top - 1, top // 2, top // 2 + 1, current + 1, current - 1,
            current * 2,
            current // 2, current + 32, rng.randrange(top + 1)}
    return sorted(v for v in vals if 0 <= v <= top)


# -- variants, running, classification ---------------------------------------------------------

@dataclass
class Variant:
    vid: str
    strategy: str                      # catalog, combo, bytes
    atoms: list[Atom] = field(default_factory=list)
    edits: list[ByteEdit] = field(default_factory=list)
    parent: str = ""                   # set for minimization runs

    @property
    def label(self) -> str:
        if self.strategy == "bytes":
            return "; ".join(e.label for e in self.edits)
        return " + ".join(a.label for a in self.atoms)

    @property
    def size(self) -> int:
        if self.strategy == "bytes":
            return len(self.edits)
        return len([a for a in self.atoms if a is not DERIVED])

    def write(self, path: Path, base_bytes: bytes) -> None:
        if self.strategy == "bytes":
            path.write_bytes(apply_bytes(base_bytes, self.edits))
        else:
            write_semantic(path, self.atoms)


@dataclass
class Outcome:
    variant: Variant
    kind: str                  # clean, kill, hang, error (the harness failed to write the file)
    step: str = ""
    signature: str = ""        # the crash class: "file:line", "std::terminate(type)" or "SIGSEGV in step"
    message: str = ""          # the abort message
    rc: int | None = None
    steps: list[str] = field(default_factory=list)
    stderr_tail: str = ""
    seconds: float = 0.0


ABORT_RE = re.compile(r"^(?P<file>[^\s:]+\.(?:c|cc|cpp|h|hpp|cu|m)):(?P<line>\d+): (?P<msg>.*)$", re.M)
TERMINATE_RE = re.compile(r"terminate called after throwing an instance of '([^']+)'(?:\s+what\(\):\s*(.*))?")
FATAL_RE = re.compile(r"Fatal Python error: (.+)")


def _short_path(path: str) -> str:
    for marker in ("llama.cpp/", "/src/", "/ggml/"):
        i = path.rfind(marker)
        if i >= 0:
            rest = path[i + len(marker):]
            return rest if marker == "llama.cpp/" else marker.strip("/") + "/" + rest
    return path


def signature_of(rc: int, stderr: str, step: str) -> tuple[str, str]:
    """(crash class, message): aborts are grouped by source line, signals by name and step."""
    m = ABORT_RE.search(stderr)
    if m:
        return f"{_short_path(m['file'])}:{m['line']}", m["msg"].strip()[:300]
    m = TERMINATE_RE.search(stderr)
    if m:
        return f"std::terminate({m[1]})", (m[2] or "").strip()[:300]
    m = FATAL_RE.search(stderr)
    fatal = m[1].strip() if m else ""
    if rc < 0:
        import signal
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return f"{name} in {step}", fatal
    return f"exit code {rc} in {step}", fatal


def run_variant(variant: Variant, workdir: Path, base_bytes: bytes, timeout: float, mem_mb: int) -> Outcome:
    path = workdir / f"{variant.vid}.gguf"
    t0 = time.monotonic()
    try:
        variant.write(path, base_bytes)
    except Exception as exc:                        # the writer refused this mutation
        return Outcome(variant, "error", signature=f"writer: {type(exc).__name__}: {exc}"[:200])
    env = dict(os.environ, GGML_NO_BACKTRACE="1", PYTHONFAULTHANDLER="1", OMP_NUM_THREADS="1")

    def limit() -> None:
        if mem_mb > 0:
            import resource
            resource.setrlimit(resource.RLIMIT_AS, (mem_mb << 20, mem_mb << 20))

    try:
        proc = subprocess.run([sys.executable, __file__, "--child", str(path)], capture_output=True,
                              timeout=timeout,
                              env=env, preexec_fn=limit, check=False)
        stdout = proc.stdout.decode("utf-8", "replace")
        stderr = proc.stderr.decode("utf-8", "replace")
        rc: int | None = proc.returncode
        timed_out = False
    except subprocess.TimeoutExpired as exc:
        stdout = (exc.stdout or b"").decode("utf-8", "replace")
        stderr = (exc.stderr or b"").decode("utf-8", "replace")
        rc, timed_out = None, True
    lines = stdout.splitlines()
    steps = [ln for ln in lines if ln.startswith(("OK ", "EXC ", "RAW "))]
    started = [ln.split()[1] for ln in lines if ln.startswith("STEP ")]
    step = started[-1] if started else "startup"
    out = Outcome(variant, "clean", step=step, rc=rc, steps=steps, stderr_tail=stderr[-3000:],
                  seconds=time.monotonic() - t0)
    if timed_out:
        out.kind, out.signature = "hang", f"timeout ({timeout:.0f} s) in {step}"
    elif rc != 0 and (rc is None or rc < 0 or "Traceback (most recent call last)" not in stderr):
        out.kind = "kill"
        out.signature, out.message = signature_of(rc or 0, stderr, step)
    elif rc != 0:
        out.kind, out.signature = "clean", f"uncaught Python exception in {step}"
    elif "DONE" not in lines:
        out.kind, out.signature = "kill", f"exit 0 without finishing, in {step}"
    if out.kind == "clean":
        path.unlink(missing_ok=True)
    return out


def clean_classes(outcome: Outcome) -> list[str]:
    """'step: ExceptionClass' for every step that raised."""
    out = []
    for ln in outcome.steps:
        if ln.startswith("EXC "):
            parts = ln.split(" ", 3)
            out.append(f"{parts[1]}: {parts[2]}")
    return out


def mutation_class(v: Variant) -> str:
    """A coarse name for what a variant changed: the first key, tensor change or byte field kind."""
    if v.strategy == "bytes":
        e = v.edits[0]
        if e.kind == "trunc":
            return "bytes: truncation"
        if e.kind == "xor":
            return "bytes: flips in tensor infos" if "tensor info" in e.label else "bytes: flips in header/KV"
        name = e.label.split("=", 1)[0]
        name = re.sub(r"^kv .*?\.(key_len|type|len|value|arr_type|arr_n)$", r"kv *.\1", name)
        name = re.sub(r"^kv .*?\[\d\]\.(\w+)$", r"kv *[i].\1", name)
        name = re.sub(r"^tensor \S+\.", "tensor *.", name)
        return f"bytes: {name}"
    if v.strategy == "combo":
        return "combo: 2-3 catalog mutations"
    for a in v.atoms:
        if a is DERIVED:
            continue
        if a.op in ("set", "drop"):
            return a.key
        return {"ttype": "tensor type", "tfill": "tensor contents", "tdrop": "tensor missing",
                "tadd": "extra tensor"}[a.op]
    return "base"


def combos(pool: list[list[Atom]], rng: random.Random, n: int) -> Iterator[list[Atom]]:
    for _ in range(n):
        k = rng.choice((2, 2, 3))
        atoms: list[Atom] = []
        keys: set[str] = set()
        for group in rng.sample(pool, k):
            for a in group:
                if a is DERIVED or (a.op in ("set", "drop") and a.key in keys):
                    continue
                keys.add(a.key)
                atoms.append(a)
        if rng.random() < 0.6:
            atoms.append(DERIVED)
        yield atoms


def byte_variants(base: bytes, rng: random.Random, n: int) -> Iterator[list[ByteEdit]]:
    fields, ti_start, ti_end = gguf_layout(base)
    head_end = min(4096, ti_start)
    values = [f for f in fields if f[0].endswith(".value")]
    scalar_types = [f for f in fields if f[0].endswith(".type") and f[0].startswith("kv ")
                    and struct.unpack_from("<I", base, f[1])[0] in GGUF_SCALAR]
    same_size = {1: (0, 1, 7), 2: (2, 3), 4: (4, 5, 6), 8: (10, 11, 12)}
    for i in range(n):
        choice = i % 7
        if choice == 0:                     # random flips in the first 4 KB
            offs = [rng.randrange(0, head_end) for _ in range(rng.choice((1, 1, 2, 4, 8)))]
            yield [ByteEdit(f"xor @{o}", "xor", o, bytes([rng.randrange(1, 256)])) for o in offs]
        elif choice == 1:                   # random flips in the tensor infos
            offs = [rng.randrange(ti_start, ti_end) for _ in range(rng.choice((1, 1, 2, 4)))]
            yield [ByteEdit(f"xor @{o} (tensor info)", "xor", o, bytes([rng.randrange(1, 256)]))
                   for o in offs]
        elif choice in (2, 3, 4):           # an integer field (2: any, 3-4: a KV value) set to an odd value
            edits = []
            for _ in range(rng.choice((1, 1, 1, 2))):
                label, off, size = rng.choice(fields if choice == 2 else values)
                current = int.from_bytes(base[off:off + size], "little")
                val = rng.choice(interesting_ints(size, current, rng))
                edits.append(ByteEdit(f"{label}={val:#x} (was {current:#x})", "set", off,
                                      val.to_bytes(size, "little")))
            yield edits
        elif choice == 5:                   # a scalar KV retyped to another type of the same size
            label, off, _ = rng.choice(scalar_types)
            current = struct.unpack_from("<I", base, off)[0]
            new = rng.choice([t for t in same_size[GGUF_SCALAR[current]] if t != current])
            yield [ByteEdit(f"{label}={new} (was {current})", "set", off, struct.pack("<I", new))]
        else:                               # truncation inside the header / tensor infos
            cut = rng.randrange(24, ti_end + 64)
            yield [ByteEdit(f"truncate at {cut} (tensor infos end at {ti_end})", "trunc", cut)]


class Fuzzer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.deadline = time.monotonic() + args.time_budget
        self.reserve = 0 if args.no_minimize else 0.12 * args.time_budget   # kept for minimization
        self.tmp = Path(tempfile.mkdtemp(prefix="fuzz_gguf_"))
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        base_path = self.tmp / "base.gguf"
        write_semantic(base_path, [])
        self.base_bytes = base_path.read_bytes()
        self.crashes: dict[str, list[Outcome]] = {}
        self.classes: dict[str, dict[str, Any]] = {}
        self.examples: dict[str, str] = {}          # first input that raised each "step: Class"
        self.raw: dict[str, list[str]] = {}         # exceptions outside LlamaError/TypeError
        self.errors: list[str] = []
        self.n_run = 0
        self.n_by_strategy: dict[str, int] = {}
        self.lock = threading.Lock()
        self.counter = 0

    def new_id(self, prefix: str) -> str:
        with self.lock:
            self.counter += 1
            return f"{prefix}{self.counter:05d}"

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def run_all(self, variants: Iterator[Variant]) -> None:
        args = self.args
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.workers) as pool:
            pending: set[concurrent.futures.Future[Outcome]] = set()
            exhausted = False
            while True:
                while (not exhausted and len(pending) < args.workers * 2
                       and self.time_left() > args.timeout + self.reserve):
                    v = next(variants, None)
                    if v is None:
                        exhausted = True
                        break
                    pending.add(pool.submit(run_variant, v, self.tmp, self.base_bytes, args.timeout,
                                            args.mem_limit_mb))
                if not pending:
                    break
                done, pending = concurrent.futures.wait(pending,
                                                        return_when=concurrent.futures.FIRST_COMPLETED)
                for fut in done:
                    self.record(fut.result())

    def record(self, o: Outcome) -> None:
        self.n_run += 1
        s = o.variant.strategy
        self.n_by_strategy[s] = self.n_by_strategy.get(s, 0) + 1
        if o.kind == "error":
            self.errors.append(f"{o.variant.label}: {o.signature}")
            return
        empty: dict[str, Any] = {"runs": 0, "crashes": {}, "exceptions": {}, "loaded_ok": 0, "all_ok": 0}
        stats = self.classes.setdefault(mutation_class(o.variant), empty)
        stats["runs"] += 1
        if o.kind in ("kill", "hang"):
            stats["crashes"][o.signature] = stats["crashes"].get(o.signature, 0) + 1
            first = o.signature not in self.crashes
            self.crashes.setdefault(o.signature, []).append(o)
            if first and not self.args.quiet:
                print(f"  [{o.kind}] {o.signature}: {o.message[:120]}\n      step {o.step}; "
                      f"{o.variant.label[:200]}", flush=True)
        else:
            excs = clean_classes(o)
            for cls in excs:
                stats["exceptions"][cls] = stats["exceptions"].get(cls, 0) + 1
                if cls not in self.examples:
                    msg = next((ln.split(" ", 3)[3] for ln in o.steps
                                if ln.startswith("EXC ") and ln.count(" ") >= 3
                                and f"{ln.split()[1]}: {ln.split()[2]}" == cls), "")
                    self.examples[cls] = f"{o.variant.label[:160]} -> {msg[:200]}"
            for ln in o.steps:
                if ln.startswith("RAW "):
                    key = f"{ln.split()[1]}: {ln.split()[2]}"
                    self.raw.setdefault(key, []).append(o.variant.label[:200])
            if "OK load" in o.steps:
                stats["loaded_ok"] += 1
            if not excs:
                stats["all_ok"] += 1
        if self.n_run % 250 == 0 and not self.args.quiet:
            print(f"  ... {self.n_run} variants, {len(self.crashes)} crash classes, "
                  f"{self.time_left():.0f} s left", flush=True)

    def minimize(self) -> None:
        """One-minimal reduction of the smallest reproducer of each crash class."""
        for sig, outs in list(self.crashes.items()):
            best = min(outs, key=lambda o: o.variant.size)
            v = best.variant
            changed = True
            while changed and self.time_left() > 2 * self.args.timeout:
                changed = False
                parts: list[Any] = v.edits if v.strategy == "bytes" else v.atoms
                if len(parts) < 2:
                    break
                for i in range(len(parts)):
                    trial_parts = parts[:i] + parts[i + 1:]
                    if not trial_parts:
                        continue
                    trial = Variant(self.new_id("min"), v.strategy, parent=v.vid,
                                    atoms=trial_parts if v.strategy != "bytes" else [],
                                    edits=trial_parts if v.strategy == "bytes" else [])
                    o = run_variant(trial, self.tmp, self.base_bytes, self.args.timeout,
                                    self.args.mem_limit_mb)
                    if o.kind in ("kill", "hang") and o.signature == sig:
                        outs.append(o)
                        v, changed = trial, True
                        break

    def report(self) -> dict[str, Any]:
        crashes = []
        for n, (sig, outs) in enumerate(sorted(self.crashes.items(), key=lambda kv: kv[0]), 1):
            best = min(outs, key=lambda o: (o.variant.size, len(o.variant.label)))
            path = self.out / f"crash-{n:02d}.gguf"
            try:
                best.variant.write(path, self.base_bytes)
            except Exception as exc:
                path = Path(f"(could not rewrite: {exc})")
            others = sorted({o.variant.label[:200] for o in outs} - {best.variant.label}, key=len)[:10]
            crashes.append({"signature": sig, "message": best.message, "kind": best.kind,
                            "steps": sorted({o.step for o in outs}), "count": len(outs),
                            "minimal": best.variant.label, "strategy": best.variant.strategy,
                            "reproducer": str(path), "returncode": best.rc,
                            "stderr_tail": best.stderr_tail[-1500:], "other_inputs": others})
        return {"seed": self.args.seed, "variants_run": self.n_run, "by_strategy": self.n_by_strategy,
                "build": build_info(),
                "crashes": crashes, "mutation_classes": dict(sorted(self.classes.items())),
                "exception_examples": dict(sorted(self.examples.items())),
                "non_llama_exceptions": {k: {"count": len(v), "inputs": sorted(set(v), key=len)[:8]}
                                         for k, v in sorted(self.raw.items())},
                "writer_errors": self.errors[:50]}


def build_info() -> dict[str, str]:
    """Which llama_cython build was fuzzed (the extension file and its modification time)."""
    import importlib.util
    spec = importlib.util.find_spec("llama_cython._core")
    origin = spec.origin if spec and spec.origin else ""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(origin))) if origin else ""
    return {"extension": origin, "modified": when}


def build_variants(fz: Fuzzer, args: argparse.Namespace) -> Iterator[Variant]:
    rng = random.Random(args.seed)
    cat = catalog_hparams() + catalog_tokenizer() + catalog_tensors()
    if args.only in ("all", "catalog"):
        chosen = cat
        if args.sample is not None and args.sample < len(cat):
            chosen = random.Random(rng.random()).sample(cat, args.sample)
        for atoms in chosen:
            yield Variant(fz.new_id("cat"), "catalog", atoms=atoms)
    n_random = args.count
    if args.only == "all":
        n_combo, n_bytes = n_random // 2, n_random - n_random // 2
    elif args.only == "combo":
        n_combo, n_bytes = n_random, 0
    elif args.only == "bytes":
        n_combo, n_bytes = 0, n_random
    else:
        n_combo = n_bytes = 0
    combo_iter = combos(cat, random.Random(rng.random()), n_combo)
    byte_iter = byte_variants(fz.base_bytes, random.Random(rng.random()), n_bytes)
    while True:                      # interleave, so a short budget still samples both
        a = next(combo_iter, None)
        b = next(byte_iter, None)
        if a is None and b is None:
            return
        if a is not None:
            yield Variant(fz.new_id("combo"), "combo", atoms=a)
        if b is not None:
            yield Variant(fz.new_id("bytes"), "bytes", edits=b)


def print_report(rep: dict[str, Any]) -> None:
    print(f"\n{rep['variants_run']} variants run {rep['by_strategy']}")
    print(f"\n== {len(rep['crashes'])} crash classes")
    for c in rep["crashes"]:
        print(f"\n* [{c['kind']}] {c['signature']}: {c['message'][:200]}")
        print(f"  died in: {', '.join(c['steps'])}; {c['count']} variant(s); minimal ({c['strategy']}):")
        print(f"    {c['minimal'][:400]}")
        print(f"  reproducer: {c['reproducer']}")
    print("\n== mutation classes: runs, crashes, and the exceptions raised instead")
    for name, st in rep["mutation_classes"].items():
        crash = ", ".join(f"{k} x{v}" for k, v in st["crashes"].items()) or "none"
        excs = ", ".join(f"{k} x{v}" for k, v in sorted(st["exceptions"].items())) or "-"
        print(f"  {name}: {st['runs']} runs, {st['all_ok']} without exception; crashes: {crash}")
        print(f"      exceptions: {excs}")
    print("\n== first input that raised each exception class")
    for cls, example in rep["exception_examples"].items():
        print(f"  {cls}: {example}")
    if rep["non_llama_exceptions"]:
        print("\n== exceptions outside LlamaError/TypeError (MemoryError: an unbounded allocation)")
        for cls, info in rep["non_llama_exceptions"].items():
            print(f"  {cls} x{info['count']}: e.g. {info['inputs'][0]}")
    print(f"\nbuild: {rep['build']}")
    if rep["writer_errors"]:
        print(f"\n({len(rep['writer_errors'])} mutations the gguf writer refused; see report.json)")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--count", type=int, default=6000,
                   help="random variants after the catalog (combos + bytes)")
    p.add_argument("--time-budget", type=float, default=840.0, help="seconds for the whole run")
    p.add_argument("--sample", type=int, default=None,
                   help="run this many catalog entries, drawn with the seed (default: all)")
    p.add_argument("--timeout", type=float, default=20.0, help="seconds per variant")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--mem-limit-mb", type=int, default=4096, help="address-space limit per child (0: none)")
    p.add_argument("--only", choices=("all", "catalog", "combo", "bytes"), default="all")
    p.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "fuzz_gguf_out"))
    p.add_argument("--no-minimize", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--list", action="store_true", help="print the catalog and exit")
    p.add_argument("--replay", metavar="GGUF", help="run the child steps on one file, in a subprocess")
    p.add_argument("--child", metavar="GGUF", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child_main(args.child)
    if args.list:
        for atoms in catalog_hparams() + catalog_tokenizer() + catalog_tensors():
            print(" + ".join(a.label for a in atoms))
        return 0
    if args.replay:
        proc = subprocess.run([sys.executable, __file__, "--child", args.replay], check=False,
                              env=dict(os.environ, GGML_NO_BACKTRACE="1", PYTHONFAULTHANDLER="1"))
        print(f"return code {proc.returncode}")
        return 0 if proc.returncode == 0 else 1
    fz = Fuzzer(args)
    print(f"fuzz_gguf: seed {args.seed}, {args.workers} workers, budget {args.time_budget:.0f} s, "
          f"work dir {fz.tmp}, reports in {fz.out}", flush=True)
    fz.run_all(build_variants(fz, args))
    if not args.no_minimize:
        fz.minimize()
    rep = fz.report()
    (fz.out / "report.json").write_text(json.dumps(rep, indent=1, default=str))
    print_report(rep)
    import shutil
    shutil.rmtree(fz.tmp, ignore_errors=True)
    return 1 if rep["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
