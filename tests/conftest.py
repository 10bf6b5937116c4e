"""Shared fixtures: real models from the registry, the vendored llama.cpp, its static build."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import llama_cython as llama

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))


@pytest.fixture(scope="session")
def smol_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1 (BPE vocabulary, ChatML)."""
    return llama.models.model_path("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    """Gemma 3 270M Q4_K_M (SPM vocabulary, sliding-window attention)."""
    return llama.models.model_path("gemma-3-270m")


@pytest.fixture(scope="session")
def smol(smol_path: Path):
    """One SmolLM2 model shared by the whole session (never closed by tests)."""
    model = llama.load_model(smol_path)
    yield model


@pytest.fixture(scope="session")
def gemma(gemma_path: Path):
    model = llama.load_model(gemma_path)
    yield model


@pytest.fixture()
def smol_ctx(smol):
    """A fresh small context on the shared SmolLM2 model, closed after the test."""
    with smol.new_context(n_ctx=512, n_batch=512) as ctx:
        yield ctx


@pytest.fixture(scope="session")
def vendor_dir() -> Path:
    """The llama.cpp source tree the package was built from."""
    from fetch_llama_cpp import ensure_llama_cpp

    return ensure_llama_cpp()


@pytest.fixture(scope="session")
def llama_build():
    """The static llama.cpp build the extension links (scripts/build_llama_cpp.LlamaBuild)."""
    import build_llama_cpp

    return build_llama_cpp.build()
