"""The public API is typed: mypy --strict accepts the package's Python and a usage example, and
stubtest finds the stubs of the compiled modules true to them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_strict() -> None:
    pytest.importorskip("mypy")
    files = [
        "llama_cython/__init__.py", "llama_cython/errors.py", "llama_cython/stats.py",
        "llama_cython/models.py", "llama_cython/_core.pyi",
        "llama_cython/chat.py", "llama_cython/template_sandbox.py", "llama_cython/streaming.py",
        "llama_cython/token_batch.py", "llama_cython/jobs", "llama_cython/cli", "llama_cython/__main__.py",
        "llama_cython/integrations",
        "llama_cython/encoding.py", "llama_cython/vocab.py", "llama_cython/_loader.py",
        "llama_cython/grammar_check.py",
        "llama_cython/_optional.py", "llama_cython/system.py", "llama_cython/_cpuid.pyi",
        "llama_cython/json_schema.py",
        "tests/typing/usage.py",
    ]
    cmd = [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", *files]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_stub_and_marker_are_shipped() -> None:
    assert (ROOT / "llama_cython" / "py.typed").is_file()
    assert (ROOT / "llama_cython" / "_core.pyi").is_file()


def test_stubs_match_compiled_modules() -> None:
    """_core and _cpuid have the names, parameters, properties and final classes the stubs say.

    (stubtest cannot see return types: the compiled functions carry no annotations.)

    Only what Cython adds to every module is allowed to differ (tests/stubtest_allowlist.txt,
    each entry with its reason); an entry no longer needed fails the test too.
    """
    pytest.importorskip("mypy.stubtest", reason="mypy is not installed (requirements-dev.txt)")
    cmd = [sys.executable, "-m", "mypy.stubtest", "llama_cython._core", "llama_cython._cpuid",
           "--allowlist", str(ROOT / "tests" / "stubtest_allowlist.txt")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
