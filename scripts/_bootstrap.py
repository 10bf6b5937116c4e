"""Set up everything the demo and the tests need, reusing what an earlier run built.

1. a virtual environment in ``.venv`` with ``requirements-dev.txt``;
2. llama.cpp fetched (pinned, hash-checked) and built (cached per machine), then the extension
   built in place (``pip install -e .``) when its sources changed;
3. the models from the registry, fetched and verified.

Each step is skipped when a stamp says it is up to date, so a second run starts in seconds.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
VENV_PY = VENV / "bin" / "python"
BUILD_INPUTS = ["setup.py", "pyproject.toml", "scripts/build_llama_cpp.py",
                "scripts/fetch_llama_cpp.py", "scripts/llama_cpp_pin.json"]


def _say(msg: str) -> None:
    print(f"[setup] {msg}", file=sys.stderr, flush=True)


def _digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(str(p.relative_to(ROOT)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _stamp_ok(name: str, digest: str) -> bool:
    stamp = VENV / f".stamp-{name}"
    return stamp.is_file() and stamp.read_text() == digest


def _stamp_write(name: str, digest: str) -> None:
    (VENV / f".stamp-{name}").write_text(digest)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(VENV)
    env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    return env


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, cwd=ROOT, env=_env(), check=True)


def ensure(models: tuple[str, ...] = ()) -> Path:
    """Make .venv ready (packages, built extension, models); return its python."""
    if not VENV_PY.exists():
        _say("creating .venv")
        venv.EnvBuilder(with_pip=True).create(VENV)
    req = ROOT / "requirements-dev.txt"
    digest = _digest([req])
    if not _stamp_ok("requirements", digest):
        _say("installing requirements-dev.txt")
        _run([str(VENV_PY), "-m", "pip", "install", "-q", "-r", str(req)])
        _stamp_write("requirements", digest)
    sources = [ROOT / p for p in BUILD_INPUTS]
    sources += sorted((ROOT / "llama_cython").rglob("*.pyx"))
    sources += sorted((ROOT / "llama_cython").rglob("*.pxi"))
    sources += sorted((ROOT / "llama_cython").rglob("*.pxd"))
    sources += sorted((ROOT / "llama_cython").rglob("*.h"))
    digest = _digest(sources)
    built = list((ROOT / "llama_cython" / "_variants").glob("*/_core*.so"))
    if not built or not _stamp_ok("build", digest):
        _say("building llama.cpp (cached per machine) and the extension")
        _run([str(VENV_PY), "-m", "pip", "install", "-q", "--no-build-isolation", "-e", str(ROOT)])
        _stamp_write("build", digest)
    if models:
        _run([str(VENV_PY), str(ROOT / "scripts" / "fetch_models.py"), "-q", *models])
    return VENV_PY


def in_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()
