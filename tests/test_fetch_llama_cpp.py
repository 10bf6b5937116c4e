"""The pinned llama.cpp: one pin, hash-checked, idempotent, overridable."""

from __future__ import annotations

import json
import time
from pathlib import Path

import fetch_llama_cpp as fetch
import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_pin_lives_in_one_file() -> None:
    pin = json.loads((ROOT / "scripts" / "llama_cpp_pin.json").read_text())
    assert pin["version"] == "0.3.36"
    assert pin["commit"].startswith("0c1e5709")
    assert len(pin["sha256"]) == 64
    # No other file repeats the hash.
    hits = [
        p for p in ROOT.rglob("*")
        if p.is_file() and p.suffix in {".py", ".toml", ".txt", ".cfg"}
        and "vendor" not in p.parts and ".venv" not in p.parts
        and pin["sha256"] in p.read_text(errors="ignore")
    ]
    assert hits == []


def test_hash_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    fake = tmp_path / "llama_cpp_python-0.3.36.tar.gz"
    fake.write_bytes(b"not the pinned archive")
    with pytest.raises(fetch.FetchError, match="sha256 mismatch"):
        fetch.verify_archive(fake, fetch.load_pin()["sha256"])


def test_second_call_is_free(vendor_dir: Path) -> None:
    t0 = time.perf_counter()
    again = fetch.ensure_llama_cpp()
    assert again == vendor_dir
    assert time.perf_counter() - t0 < 1.0
    assert (vendor_dir / "include" / "llama.h").is_file()
    stamp = (vendor_dir / fetch.STAMP_NAME).read_text().strip()
    assert stamp == fetch.load_pin()["sha256"]


def test_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, vendor_dir: Path) -> None:
    monkeypatch.setenv("LLAMA_CPP_DIR", str(vendor_dir))
    assert fetch.ensure_llama_cpp() == vendor_dir.resolve()
    monkeypatch.setenv("LLAMA_CPP_DIR", str(tmp_path))
    with pytest.raises(fetch.FetchError, match=r"does not look like a llama\.cpp checkout"):
        fetch.ensure_llama_cpp()
