"""Packaging: what an install carries and needs, the CPU-variant loader, the build cache.

The installs themselves (a portable wheel and an offline sdist in fresh venvs, smoke-tested
from outside the checkout, the wheel also under an emulated older CPU) are
``scripts/check_install.py``, which ``.ci/run`` runs after this suite.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

import llama_cython as llama
from llama_cython import _loader, _optional

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


# --- what is declared ---------------------------------------------------------------------------

def _top_level_imports(path: Path) -> set[str]:
    """Modules a file imports when it is imported (not inside functions or TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def _declared() -> set[str]:
    names = set()
    for req in PYPROJECT["project"]["dependencies"]:
        names.add(re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].lower().replace("-", "_"))
    return names


def test_every_import_at_run_time_is_declared_or_stdlib() -> None:
    allowed = set(sys.stdlib_module_names) | _declared() | {"llama_cython"}
    for path in sorted((ROOT / "llama_cython").glob("*.py")):
        extra = _top_level_imports(path) - allowed
        assert not extra, f"{path.name} imports {sorted(extra)} at import time; pyproject.toml lacks it"
    for path in sorted((ROOT / "llama_cython").glob("*.p[yx]*")):
        if path.suffix in {".pyx", ".pxi"}:
            text = path.read_text(encoding="utf-8")
            for mod in re.findall(r"^(?:import|from) ([a-zA-Z_]\w*)", text, flags=re.M):
                assert mod in allowed | {"cpython", "libc", "libcpp", "cython"}, f"{path.name} imports {mod}"


def test_optional_integrations_are_extras() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    for module, extra in _optional.EXTRAS.items():
        assert any(req.startswith(module) for req in extras[extra]), (module, extra)
        assert any(req.startswith(module) for req in extras["all"]), module


@pytest.mark.parametrize("module", ["pandas", "tqdm.auto", "pyarrow"])
def test_a_missing_extra_names_what_to_install(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, module.split(".")[0], None)   # import of it now fails
    monkeypatch.setitem(sys.modules, module, None)
    extra = _optional.EXTRAS[module.split(".")[0]]
    with pytest.raises(ImportError, match=re.escape(f"llama_cython[{extra}]")):
        _optional.require(module, "feature()")


def test_to_pandas_without_pandas_names_the_extra(smol, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"Vocab\.to_pandas\(\) needs pandas.*llama_cython\[pandas\]"):
        smol.vocab.to_pandas()
    assert len(smol.tokenize("still usable")) > 0


def test_metadata_for_a_pip_user() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "MIT"                       # an SPDX expression, not a table
    for pattern in project["license-files"]:
        assert list(ROOT.glob(pattern)), pattern
    assert any(c == "Programming Language :: Python :: 3.10" for c in project["classifiers"])
    assert project["urls"]
    readme = ROOT / project["readme"]["file"]
    text = readme.read_text(encoding="utf-8")
    assert "scripts/" not in text, "the long description is for pip users, who have no scripts/"
    assert "pip install" in text


def test_llama_cpp_notice_is_its_license(vendor_dir: Path) -> None:
    notice = (ROOT / "licenses" / "llama.cpp.txt").read_text(encoding="utf-8")
    assert (vendor_dir / "LICENSE").read_text(encoding="utf-8").strip() in notice
    import fetch_llama_cpp

    assert fetch_llama_cpp.load_pin()["commit"] in notice


def test_sdist_manifest_carries_the_build_tree() -> None:
    import fetch_llama_cpp

    manifest = (ROOT / "MANIFEST.in").read_text(encoding="utf-8")
    carried = set(re.findall(r"^graft vendor/llama\.cpp/(\S+)$", manifest, flags=re.M))
    for line in re.findall(r"^include (vendor/llama\.cpp/.+)$", manifest, flags=re.M):
        carried |= {p.removeprefix("vendor/llama.cpp/") for p in line.split()}
    pruned = set(re.findall(r"^prune vendor/llama\.cpp/(\S+)$", manifest, flags=re.M))
    assert set(fetch_llama_cpp.BUILD_TREE) <= carried
    assert pruned == set(fetch_llama_cpp.BUILD_TREE_EXCLUDE)
    assert fetch_llama_cpp.STAMP_NAME in carried


# --- which core is loaded -----------------------------------------------------------------------

def _variant(name: str, *requires: str) -> _loader.CoreVariant:
    return _loader.CoreVariant(name, tuple(requires), {}, Path(f"/nowhere/{name}/_core.so"))


PORTABLE = [_variant("x86_64_v4", "avx2", "avx512f", "avx512_vnni"), _variant("x86_64_v3", "avx2"),
            _variant("x86_64_v2", "sse4_2")]


def test_loader_picks_the_best_variant_the_cpu_runs() -> None:
    every = frozenset({"sse4_2", "avx2", "avx512f", "avx512_vnni"})
    assert _loader.choose(PORTABLE, every, None).name == "x86_64_v4"
    assert _loader.choose(PORTABLE, frozenset({"sse4_2", "avx2", "avx512f"}), None).name == "x86_64_v3"
    assert _loader.choose(PORTABLE, frozenset({"sse4_2"}), None).name == "x86_64_v2"


def test_loader_refuses_a_core_the_cpu_cannot_run() -> None:
    native = [_variant("native", "avx2", "avx512f")]
    with pytest.raises(ImportError, match=r"lacks \(avx512f\).*compiled for another machine"):
        _loader.choose(native, frozenset({"avx2"}), None)
    with pytest.raises(ImportError, match=r"CPU features this CPU lacks: avx512f, avx512_vnni"):
        _loader.choose(PORTABLE, frozenset({"sse4_2", "avx2"}), "x86_64_v4")
    with pytest.raises(ImportError, match=r"has x86_64_v4, x86_64_v3, x86_64_v2"):
        _loader.choose(PORTABLE, frozenset(), "zen9")
    assert _loader.choose(PORTABLE, frozenset({"sse4_2", "avx2"}), "x86_64_v2").name == "x86_64_v2"


def test_the_loaded_core_is_the_one_the_loader_chose() -> None:
    chosen = _loader.loaded_variant()
    assert chosen is not None
    assert Path(sys.modules["llama_cython._core"].__file__).resolve() == chosen.path.resolve()
    assert not chosen.missing(_loader.cpu_features())


def test_forced_variant_in_a_child_process() -> None:
    name = _loader.loaded_variant().name
    code = "import llama_cython as l; print(l.system_info().cpu_variant)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**_env(), "LLAMA_CYTHON_CPU_VARIANT": name}).stdout.strip()
    assert out == name
    bad = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**_env(), "LLAMA_CYTHON_CPU_VARIANT": "no_such_variant"})
    assert bad.returncode == 1
    assert "ImportError: LLAMA_CYTHON_CPU_VARIANT='no_such_variant'" in bad.stderr


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "LLAMA_CYTHON_CPU_VARIANT"}


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="needs Linux's /proc/cpuinfo")
def test_cpuid_agrees_with_the_kernel() -> None:
    from llama_cython import _cpuid

    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    ours = _cpuid.features()
    if not flags or not ours:
        pytest.skip("not an x86 CPU")
    names = {"sse2", "pni", "ssse3", "sse4_1", "sse4_2", "popcnt", "cx16", "avx", "avx2", "fma", "f16c",
             "bmi1", "bmi2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd", "avx512vbmi",
             "avx512_vnni", "avx_vnni"}
    assert {n for n in names if n in ours} == {n for n in names if n in flags}


def test_system_info_says_what_runs() -> None:
    info = llama.system_info()
    assert info.cpu_variant in info.cpu_variants
    assert "CPU" in info.backend_features
    pin = (ROOT / "scripts" / "llama_cpp_pin.json").read_text()
    assert info.llama_cpp_commit and info.llama_cpp_commit in pin
    cpu = info.backend_features["CPU"]
    # What the loaded core was compiled to use is what llama.cpp reports using.
    if "avx2" in info.required_features:
        assert cpu.get("AVX2") == "1"
    if "avx512f" in info.required_features:
        assert cpu.get("AVX512") == "1"
    if info.required_features and "avx" not in info.required_features:
        assert cpu.get("AVX", "0") == "0"
    assert info.cpu_variant in str(info)


# --- instruction-set scan and build cache -------------------------------------------------------

@pytest.mark.skipif(shutil.which("objdump") is None or shutil.which("gcc") is None,
                    reason="needs binutils and gcc")
def test_isa_scan_counts_vex_and_evex(tmp_path: Path) -> None:
    import scan_isa

    src = tmp_path / "t.c"
    src.write_text(
        "#include <immintrin.h>\n"
        '__attribute__((target("avx512f"))) void f512(float *a)'
        "{ _mm512_storeu_ps(a, _mm512_add_ps(_mm512_loadu_ps(a), _mm512_loadu_ps(a))); }\n"
        '__attribute__((target("avx2"))) void f256(float *a)'
        "{ _mm256_storeu_ps(a, _mm256_add_ps(_mm256_loadu_ps(a), _mm256_loadu_ps(a))); }\n"
        "void f128(float *a) { _mm_storeu_ps(a, _mm_add_ps(_mm_loadu_ps(a), _mm_loadu_ps(a))); }\n"
    )
    so = tmp_path / "t.so"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", str(src), "-o", str(so)], check=True)
    _, per_func = scan_isa.scan(so)
    assert per_func["f512"]["evex"] >= 2
    assert per_func["f256"]["vex"] >= 2 and per_func["f256"]["evex"] == 0
    assert "f128" not in per_func
    assert scan_isa.encoding(bytes.fromhex("62f17c4810")) == "evex"
    assert scan_isa.encoding(bytes.fromhex("66c4e27d18")) == "vex"
    assert scan_isa.encoding(bytes.fromhex("0f1005")) is None


def test_installed_cores_keep_to_their_instruction_sets() -> None:
    """The scan CI runs on the portable wheel, here on this build: a native core may use what
    this CPU has; the CPU probe that runs before it may use no AVX at all."""
    import scan_isa

    if shutil.which("objdump") is None:
        pytest.skip("needs binutils")
    problems = scan_isa.check_tree(ROOT)
    assert problems == []


def test_build_cache_is_reused_and_independent_of_the_source_folder(llama_build) -> None:
    import build_llama_cpp

    assert (llama_build.prefix / ".complete").is_file()
    # The build ran from a copy of the sources at a fixed path under the cache, not from
    # wherever the llama.cpp tree was (pip's temporary folders).
    staged = build_llama_cpp.cache_dir() / "src"
    assert any(p.name.startswith("llama.cpp-") for p in staged.iterdir())
    again = build_llama_cpp.build()
    assert again.prefix == llama_build.prefix
    assert [v.cpu_lib for v in again.variants] == [v.cpu_lib for v in llama_build.variants]


def test_a_build_folder_left_by_a_deleted_build_environment_is_configured_again(tmp_path: Path) -> None:
    import build_llama_cpp

    source = tmp_path / "src"
    source.mkdir()
    cache = tmp_path / "CMakeCache.txt"
    cache.write_text(f"CMAKE_HOME_DIRECTORY:INTERNAL={source}\nCMAKE_COMMAND:INTERNAL={sys.executable}\n")
    assert build_llama_cpp.stale_reason(cache, source) is None
    cache.write_text(f"CMAKE_HOME_DIRECTORY:INTERNAL={source}\n"
                     "CMAKE_COMMAND:INTERNAL=/tmp/pip-build-env-gone/overlay/bin/cmake\n")
    assert "cmake" in build_llama_cpp.stale_reason(cache, source)
    cache.write_text(f"CMAKE_HOME_DIRECTORY:INTERNAL={tmp_path / 'elsewhere'}\n"
                     f"CMAKE_COMMAND:INTERNAL={sys.executable}\n")
    assert "source" in build_llama_cpp.stale_reason(cache, source)


def test_portable_plan_is_a_ladder() -> None:
    import build_llama_cpp

    if not build_llama_cpp.is_x86():
        pytest.skip("x86 variants")
    plan = build_llama_cpp.variant_plan(portable=True)
    assert [name for name, _, _ in plan] == ["x86_64_v4", "x86_64_v3", "x86_64_v2"]
    needs = [set(n) for _, _, n in plan]
    assert needs[2] < needs[1] < needs[0]          # each variant needs more than the next
    assert "avx" not in needs[2] and "avx512f" not in needs[1]
    for _, opts, _ in plan:
        assert opts["GGML_NATIVE"] == "OFF" and opts.get("GGML_AMX_TILE", "OFF") == "OFF"
