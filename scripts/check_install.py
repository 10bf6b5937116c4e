#!/usr/bin/env python3
"""Install llama_cython as a user would, in fresh virtual environments, and smoke-test it.

    python3 scripts/check_install.py                # what CI runs: wheel + sdist (below)
    python3 scripts/check_install.py --only wheel   # one of: wheel, sdist, emulated
    python3 scripts/check_install.py --matrix       # also pip install . / git+file:// / twice

``wheel``: a portable wheel (``LLAMA_CYTHON_PORTABLE=1 pip wheel``) built from a clean clone of
the committed tree with build isolation; its binaries disassembled (no AVX in the x86-64-v2
core, no AVX-512 in the v3 one, see ``scripts/scan_isa.py``); installed into a fresh venv with
only its declared dependencies; ``scripts/smoke_installed.py`` run from outside the checkout.

``emulated``: that wheel's smoke test again under ``qemu-x86_64 -cpu Nehalem`` (an x86-64-v2
CPU: no AVX) and ``-cpu Haswell`` (AVX2, no AVX-512), checking which core was loaded and that
its greedy text starts like the native one's. Skipped, with a message, where qemu-user is not
installed.

``sdist``: ``python -m build --sdist`` from a clean clone, then ``pip install`` of it with no
package index at all (build requirements from a local wheelhouse) and an empty llama_cython
cache, so llama.cpp can only come from the sdist itself; smoke test as above.

Everything happens under a temporary folder; the llama.cpp build cache is shared (that is what
it is for), except in the sdist check.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)
# What an isolated build of llama_cython asks for (pyproject.toml [build-system]) and what it
# needs at run time: the sdist check's wheelhouse, so that it can run with no package index.
WHEELHOUSE_REQUIREMENTS = ["setuptools>=77", "wheel", "Cython>=3.1", "numpy>=2.0", "cmake>=3.21",
                           "pip", "jinja2>=3.1.6"]


def say(msg: str) -> None:
    print(f"[check-install] {msg}", flush=True)


def run(cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
        quiet: bool = False) -> subprocess.CompletedProcess[str]:
    say("$ " + " ".join(str(c) for c in cmd))
    t0 = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, text=True,
                          stdout=subprocess.PIPE if quiet else None,
                          stderr=subprocess.STDOUT if quiet else None)
    if proc.returncode != 0:
        if quiet:
            print(proc.stdout[-6000:])
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(str(c) for c in cmd)}")
    say(f"  done in {time.perf_counter() - t0:.1f} s")
    return proc


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without this checkout's venv, so nothing leaks into the fresh ones."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"} and not k.startswith("LLAMA_CYTHON_")}
    venv_bin = str(ROOT / ".venv" / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.update(extra)
    return env


def clean_clone(dest: Path) -> Path:
    """What a fresh clone would hold: the files git tracks or would track (uncommitted changes
    included, ignored files such as vendor/, .venv/ and build outputs left out), as a git
    repository of its own (for ``git+file://``)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    quiet = {"cwd": dest, "check": True, "capture_output": True}
    subprocess.run(["git", "init", "-q"], **quiet)
    subprocess.run(["git", "add", "-A"], **quiet)
    subprocess.run(["git", "-c", "user.name=check", "-c", "user.email=check@localhost",
                    "commit", "-q", "-m", "snapshot"], **quiet)
    return dest


def fresh_venv(path: Path) -> Path:
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    return path / "bin" / "python"


def model_file() -> Path:
    """The default model, from the registry's cache (fetched by the test suite or the demo)."""
    import llama_cython.models as models  # the checkout's own (pure Python) registry

    return models.model_path()


def smoke(python: Path, workdir: Path, *, expect: str | None = None, prefix: list[str] | None = None,
          env: dict[str, str] | None = None) -> dict[str, object]:
    """Run scripts/smoke_installed.py with ``python`` from ``workdir`` (outside the checkout)."""
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir / "smoke_installed.py"
    shutil.copyfile(HERE / "smoke_installed.py", script)
    cmd = [*(prefix or []), str(python), str(script), str(model_file())]
    if expect:
        cmd += ["--expect-variant", expect]
    proc = run(cmd, cwd=workdir, env=env or clean_env(), quiet=True)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    if str(ROOT) in str(report["package"]):
        raise SystemExit(f"smoke test imported the checkout ({report['package']}), not the install")
    say(f"  smoke: {report}")
    return report


def check_wheel(tmp: Path) -> Path:
    """Build the portable wheel from a clean clone, scan it, install it, smoke-test it."""
    import scan_isa

    src = clean_clone(tmp / "clone-wheel")
    dist = tmp / "dist"
    run([BASE_PYTHON, "-m", "pip", "wheel", "--no-deps", "-w", dist, src],
        env=clean_env(LLAMA_CYTHON_PORTABLE="1"))
    wheel = Path(next(iter(glob.glob(str(dist / "llama_cython-*.whl")))))
    say(f"wheel: {wheel.name}, {wheel.stat().st_size / 1e6:.1f} MB")
    unpacked = tmp / "wheel-unpacked"
    shutil.unpack_archive(wheel, unpacked, format="zip")
    problems = scan_isa.check_tree(unpacked)
    if problems:
        raise SystemExit("instruction-set check failed:\n" + "\n".join(problems))
    say("  no AVX in x86_64_v2 or _cpuid, no AVX-512 in x86_64_v3")
    names = {Path(n).as_posix() for n in _zip_names(wheel)}
    for needed in ("llama_cython/_variants/variants.json", "llama_cython/py.typed"):
        if needed not in names:
            raise SystemExit(f"{wheel.name} lacks {needed}")
    if not any(n.endswith("licenses/llama.cpp.txt") for n in names):
        raise SystemExit(f"{wheel.name} lacks llama.cpp's license notice")
    python = fresh_venv(tmp / "venv-wheel")
    run([python, "-m", "pip", "install", "-q", wheel], env=clean_env())
    smoke(python, tmp / "outside-wheel")
    return python


def _zip_names(path: Path) -> list[str]:
    import zipfile

    with zipfile.ZipFile(path) as z:
        return z.namelist()


def check_emulated(tmp: Path, python: Path) -> None:
    """The installed portable wheel on older CPUs, emulated by qemu-user."""
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        say("emulated: SKIPPED, qemu-x86_64 is not installed (apt-get install qemu-user)")
        return
    # The venv's python is a symlink to the base interpreter; qemu needs the real file, and
    # the venv is found through pyvenv.cfg next to the path it is given.
    # OPENBLAS_CORETYPE, set on some of this project's machines to work around their CPUs,
    # would force numpy's OpenBLAS onto Haswell kernels inside the emulated older CPU.
    env = {k: v for k, v in clean_env().items() if not k.startswith("OPENBLAS_")}
    here = smoke(python, tmp / "outside-here")
    for cpu, expect in (("Nehalem", "x86_64_v2"), ("Haswell", "x86_64_v3")):
        emulated = smoke(python, tmp / f"outside-{cpu}", expect=expect, prefix=[qemu, "-cpu", cpu], env=env)
        # The variants' kernels round differently (FMA or not, SIMD width), so a greedy text may
        # part ways after a near-tie; the first word must agree (it did for all 8 tokens here).
        if str(emulated["generated"]).split()[:1] != str(here["generated"]).split()[:1]:
            raise SystemExit(f"{expect} under {cpu} generated {emulated['generated']!r}, "
                             f"{here['variant']} here {here['generated']!r}")
        if emulated["generated"] != here["generated"]:
            say(f"  note: {expect} continued differently after the first word")


def check_sdist(tmp: Path) -> None:
    """Build the sdist from a clean clone; install it with no index and an empty cache."""
    src = clean_clone(tmp / "clone-sdist")
    tools = fresh_venv(tmp / "venv-tools")
    run([tools, "-m", "pip", "install", "-q", "build"], env=clean_env())
    sdist_dir = tmp / "sdist"
    run([tools, "-m", "build", "--sdist", "-o", sdist_dir, src], env=clean_env(), quiet=True)
    sdist = Path(next(iter(glob.glob(str(sdist_dir / "llama_cython-*.tar.gz")))))
    say(f"sdist: {sdist.name}, {sdist.stat().st_size / 1e6:.1f} MB")
    wheelhouse = tmp / "wheelhouse"
    run([tools, "-m", "pip", "download", "-q", "-d", wheelhouse, *WHEELHOUSE_REQUIREMENTS], env=clean_env())
    python = fresh_venv(tmp / "venv-sdist")
    # No index: a build that tried to download llama.cpp (or anything else) would fail here.
    offline = clean_env(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheelhouse), PIP_CONFIG_FILE=os.devnull,
                        LLAMA_CYTHON_CACHE=str(tmp / "empty-cache"))
    run([python, "-m", "pip", "install", "-q", sdist], env=offline)
    smoke(python, tmp / "outside-sdist")


def check_matrix(tmp: Path) -> None:
    """pip install . / git+file:// / pip wheel, each twice, each in a fresh venv."""
    src = clean_clone(tmp / "clone-matrix")
    for attempt in (1, 2):
        for label, target in (("dir", str(src)), ("git", f"git+file://{src}")):
            python = fresh_venv(tmp / f"venv-{label}-{attempt}")
            run([python, "-m", "pip", "install", "-q", target], env=clean_env())
            smoke(python, tmp / f"outside-{label}-{attempt}")
        run([BASE_PYTHON, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp / f"dist-{attempt}", src],
            env=clean_env())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["wheel", "sdist", "emulated"], action="append")
    parser.add_argument("--matrix", action="store_true", help="also the slower install matrix")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--venv", type=Path, help="emulated: use this venv (with the wheel installed)")
    args = parser.parse_args()
    todo = args.only or ["wheel", "emulated", "sdist"]
    tmp = Path(tempfile.mkdtemp(prefix="llama_cython_install_"))
    t0 = time.perf_counter()
    try:
        python = None
        if args.venv is not None:
            python = args.venv / "bin" / "python"
        elif "wheel" in todo or "emulated" in todo:
            python = check_wheel(tmp)
        if "emulated" in todo and python is not None:
            check_emulated(tmp, python)
        if "sdist" in todo:
            check_sdist(tmp)
        if args.matrix:
            check_matrix(tmp)
    finally:
        if args.keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    say(f"all checks passed in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
