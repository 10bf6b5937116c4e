"""Vocab-only GGUF files with SmolLM2's tokenizer under every BPE pre-tokenizer llama.cpp knows.

Not a test module: ``tests/test_pretokenizers.py`` and developer scripts import it.

* ``PRE_TOKENIZERS``: every ``tokenizer.ggml.pre`` value the pinned llama.cpp accepts, parsed at
  import from the vendored ``src/llama-vocab.cpp`` (the ``tokenizer_pre == "..."`` chain in
  ``llama_vocab::impl::load``), so the list follows the pin.
* ``write_pretok_model(dst, pre)``: a GGUF holding SmolLM2-135M's metadata and tokenizer
  (vocabulary, merges, token types, special ids, chat template) with ``tokenizer.ggml.pre`` set to
  ``pre`` and no tensors; ``llama_cython.load_model(path, vocab_only=True)`` loads it.

The source file is read once (only its key/value header, about 1.8 MB, is parsed: ``gguf``'s
``GGUFReader`` takes ~15 s on this vocabulary because it builds one numpy part per string), and
each variant is the same key/value bytes with one string swapped, so writing all of them takes a
fraction of a second.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from gguf import GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUFValueType

ROOT = Path(__file__).resolve().parent.parent
SOURCE_MODEL = "smollm2-135m-instruct"
PRE_KEY = "tokenizer.ggml.pre"
_MIN_PRE_TOKENIZERS = 80


def _llama_vocab_cpp() -> Path:
    """The vendored ``llama-vocab.cpp`` (``LLAMA_CPP_DIR`` overrides, as in the build scripts)."""
    base = os.environ.get("LLAMA_CPP_DIR")
    root = Path(base).expanduser().resolve() if base else ROOT / "vendor" / "llama.cpp"
    return root / "src" / "llama-vocab.cpp"


def parse_pre_tokenizers(source: str) -> tuple[str, ...]:
    """The ``tokenizer_pre == "..."`` values of the BPE pre-tokenizer chain, in source order.

    Only the chain counts: it runs from ``tokenizer_pre.empty()`` to the ``unknown pre-tokenizer
    type`` error (comparisons elsewhere, e.g. the ``kimi-k2`` special case above it, name values
    that the chain repeats anyway).
    """
    start = source.find("if (tokenizer_pre.empty())")
    end = source.find("unknown pre-tokenizer type", start)
    if start < 0 or end < 0:
        raise RuntimeError("llama-vocab.cpp: the tokenizer_pre chain was not found (layout changed?)")
    values = re.findall(r'tokenizer_pre\s*==\s*"([^"\\]+)"', source[start:end])
    return tuple(dict.fromkeys(values))


def parse_pre_tokenizer_branches(source: str) -> tuple[tuple[str, ...], ...]:
    """The values grouped by branch of the chain: values of one branch get identical settings
    (same ``pre_type``, hence the same regexes, and the same flags), so one of each is a fair
    sample when every value is too many."""
    start = source.find("if (tokenizer_pre.empty())")
    end = source.find("unknown pre-tokenizer type", start)
    branches = []
    for chunk in re.split(r"\}\s*else\s+if\s*\(", source[start:end]):
        values = re.findall(r'tokenizer_pre\s*==\s*"([^"\\]+)"', chunk)
        if values:
            branches.append(tuple(dict.fromkeys(values)))
    return tuple(branches)


def _vocab_source() -> str:
    path = _llama_vocab_cpp()
    if not path.is_file():
        raise RuntimeError(f"{path} not found: fetch the pinned llama.cpp first "
                           "(scripts/fetch_llama_cpp.py, or set LLAMA_CPP_DIR)")
    return path.read_text(encoding="utf-8")


def _load_pre_tokenizers(source: str) -> tuple[str, ...]:
    path = _llama_vocab_cpp()
    values = parse_pre_tokenizers(source)
    if len(values) < _MIN_PRE_TOKENIZERS:
        raise RuntimeError(
            f"{path}: found only {len(values)} tokenizer.ggml.pre values (expected at least "
            f"{_MIN_PRE_TOKENIZERS}); the parser in tests/_pretok_models.py needs updating"
        )
    return values


_SOURCE = _vocab_source()
PRE_TOKENIZERS: tuple[str, ...] = _load_pre_tokenizers(_SOURCE)
PRE_TOKENIZER_BRANCHES: tuple[tuple[str, ...], ...] = parse_pre_tokenizer_branches(_SOURCE)
del _SOURCE
if sorted(v for b in PRE_TOKENIZER_BRANCHES for v in b) != sorted(PRE_TOKENIZERS):
    raise RuntimeError("llama-vocab.cpp: the branches of the tokenizer_pre chain do not cover its values")


# -- reading the source header ----------------------------------------------------------------

_SCALAR_SIZE = {
    GGUFValueType.UINT8: 1, GGUFValueType.INT8: 1, GGUFValueType.BOOL: 1,
    GGUFValueType.UINT16: 2, GGUFValueType.INT16: 2,
    GGUFValueType.UINT32: 4, GGUFValueType.INT32: 4, GGUFValueType.FLOAT32: 4,
    GGUFValueType.UINT64: 8, GGUFValueType.INT64: 8, GGUFValueType.FLOAT64: 8,
}


@dataclass(frozen=True)
class _Template:
    version: int
    before: bytes         # serialized key/value pairs before tokenizer.ggml.pre (or all of them)
    after: bytes          # those after it
    n_kv: int             # pairs in before + after
    alignment: int
    digest: str           # of the source's key/value bytes, names the written files


def _skip_value(buf: bytes, pos: int, vtype: int) -> int:
    if vtype == GGUFValueType.STRING:
        (n,) = struct.unpack_from("<Q", buf, pos)
        return pos + 8 + n
    if vtype == GGUFValueType.ARRAY:
        sub, count = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        if sub == GGUFValueType.STRING:
            unpack = struct.Struct("<Q").unpack_from
            for _ in range(count):
                pos += 8 + unpack(buf, pos)[0]
            return pos
        if sub == GGUFValueType.ARRAY:
            for _ in range(count):
                pos = _skip_value(buf, pos, sub)
            return pos
        return pos + _SCALAR_SIZE[GGUFValueType(sub)] * count
    return pos + _SCALAR_SIZE[GGUFValueType(vtype)]


def _read_header(path: Path) -> tuple[int, list[tuple[str, bytes]], int]:
    """(version, [(key, serialized pair)], alignment) of a GGUF file, tensors ignored."""
    size = 1 << 22
    with open(path, "rb") as f:
        buf = f.read(size)
        while True:
            try:
                magic, version, _n_tensors, n_kv = struct.unpack_from("<IIQQ", buf, 0)
                if magic != GGUF_MAGIC:
                    raise RuntimeError(f"{path}: not a GGUF file")
                pos = 24
                pairs: list[tuple[str, bytes]] = []
                alignment = GGUF_DEFAULT_ALIGNMENT
                for _ in range(n_kv):
                    start = pos
                    (klen,) = struct.unpack_from("<Q", buf, pos)
                    key = buf[pos + 8:pos + 8 + klen].decode("utf-8")
                    pos += 8 + klen
                    (vtype,) = struct.unpack_from("<I", buf, pos)
                    pos = _skip_value(buf, pos + 4, vtype)
                    if pos > len(buf):
                        raise struct.error("header past the buffer")
                    if key == "general.alignment":
                        (alignment,) = struct.unpack_from("<I", buf, pos - 4)
                    pairs.append((key, buf[start:pos]))
                return version, pairs, alignment
            except struct.error:
                more = f.read(size)
                if not more:
                    raise
                buf += more


def _pack_string_pair(key: str, value: str) -> bytes:
    k = key.encode("utf-8")
    v = value.encode("utf-8")
    return struct.pack("<Q", len(k)) + k + struct.pack("<IQ", GGUFValueType.STRING, len(v)) + v


@functools.lru_cache(maxsize=4)
def _template(source: str) -> _Template:
    version, pairs, alignment = _read_header(Path(source))
    keys = [key for key, _ in pairs]
    if "tokenizer.ggml.tokens" not in keys or "tokenizer.ggml.merges" not in keys:
        raise RuntimeError(f"{source}: no BPE vocabulary (tokens and merges) to copy")
    index = keys.index(PRE_KEY) if PRE_KEY in keys else len(pairs)
    before = b"".join(raw for _, raw in pairs[:index])
    after = b"".join(raw for _, raw in pairs[index + 1:])
    digest = hashlib.sha256(before + b"\0" + after).hexdigest()[:12]
    n_kv = len(pairs) - (1 if PRE_KEY in keys else 0)
    return _Template(version, before, after, n_kv, alignment, digest)


def source_model_path() -> Path:
    import llama_cython

    return llama_cython.models.model_path(SOURCE_MODEL)


def pretok_model_bytes(pre: str, source: Path | None = None) -> bytes:
    """The GGUF bytes of SmolLM2's tokenizer with ``tokenizer.ggml.pre = pre`` and no tensors."""
    t = _template(str(source or source_model_path()))
    header = struct.pack("<IIQQ", GGUF_MAGIC, t.version, 0, t.n_kv + 1)
    data = header + t.before + _pack_string_pair(PRE_KEY, pre) + t.after
    return data + b"\0" * (-len(data) % t.alignment)


def _file_name(pre: str, digest: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", pre)
    return f"pretok-{safe}-{digest}.gguf"


def write_pretok_model(dst: Path, pre: str, source: Path | None = None) -> Path:
    """Write (once) SmolLM2's tokenizer with ``tokenizer.ggml.pre = pre`` into folder ``dst``.

    Returns the file's path, ``dst/pretok-<pre>-<digest>.gguf``; the digest is of the source's
    metadata, so a file already there for the same source is reused and a changed source writes
    a new one. ``dst`` is created if missing. The file has no tensors: load it with
    ``load_model(path, vocab_only=True)``.
    """
    src = Path(source) if source is not None else source_model_path()
    t = _template(str(src))
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    path = dst / _file_name(pre, t.digest)
    if path.is_file():
        return path
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(pretok_model_bytes(pre, src))
    os.replace(tmp, path)
    return path


def write_all(dst: Path, pres: tuple[str, ...] = PRE_TOKENIZERS) -> dict[str, Path]:
    """``{pre: path}`` for every value (by default all of ``PRE_TOKENIZERS``)."""
    return {pre: write_pretok_model(dst, pre) for pre in pres}
