#!/usr/bin/env python3
"""Disassemble compiled modules and count AVX (VEX) and AVX-512 (EVEX) instructions.

    python scripts/scan_isa.py FILE.so ...          # counts per file
    python scripts/scan_isa.py --tree UNPACKED_WHEEL # check each core against what it may use

The check reads instruction *encodings*, not mnemonics: in 64-bit code an instruction whose
first byte after the legacy prefixes is 0xC4 or 0xC5 is VEX-encoded (AVX, AVX2, FMA, F16C and
BMI), and one whose first byte is 0x62 is EVEX-encoded (AVX-512). That is exact, where names
are not (an AVX-512VL instruction on xmm0..15 prints like its AVX twin).

``--tree`` applies the rule of a portable install: a core under ``_variants/<name>/`` may use
VEX only if its variant needs ``avx`` and EVEX only if it needs ``avx512f``
(``_variants/variants.json``); ``_cpuid``, which runs before any check, may use neither.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

LEGACY_PREFIXES = {0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x66, 0x67}
_LINE = re.compile(r"^\s*[0-9a-f]+:\t((?:[0-9a-f]{2} )+)\s*\t")
_FUNC = re.compile(r"^[0-9a-f]+ <(.+)>:$")


def encoding(raw: bytes) -> str | None:
    """``"vex"``, ``"evex"`` or None for one instruction's bytes."""
    i = 0
    while i < len(raw) and raw[i] in LEGACY_PREFIXES:
        i += 1
    if i >= len(raw):
        return None
    if raw[i] in (0xC4, 0xC5):
        return "vex"
    if raw[i] == 0x62:
        return "evex"
    return None


def scan(path: Path) -> tuple[Counter[str], dict[str, Counter[str]]]:
    """(counts of vex/evex instructions, the same per function) in ``path``'s code."""
    objdump = shutil.which("objdump")
    if objdump is None:
        raise RuntimeError("objdump (binutils) is needed")
    proc = subprocess.Popen([objdump, "-d", "-w", str(path)],
                            stdout=subprocess.PIPE, text=True, errors="replace")
    assert proc.stdout is not None
    total: Counter[str] = Counter()
    per_func: dict[str, Counter[str]] = {}
    func = "?"
    for line in proc.stdout:
        m = _LINE.match(line)
        if m is None:
            f = _FUNC.match(line.strip())
            if f:
                func = f.group(1)
            continue
        kind = encoding(bytes.fromhex(m.group(1).replace(" ", "")))
        if kind:
            total[kind] += 1
            per_func.setdefault(func, Counter())[kind] += 1
    if proc.wait() != 0:
        raise RuntimeError(f"objdump failed on {path}")
    return total, per_func


def _allowed(requires: list[str]) -> set[str]:
    allowed = set()
    if "avx" in requires:
        allowed.add("vex")
    if "avx512f" in requires:
        allowed.add("evex")
    return allowed


def check_tree(root: Path) -> list[str]:
    """Problems found in an unpacked install (empty when every module keeps to its variant)."""
    direct = root / "llama_cython" / "_variants" / "variants.json"
    found = direct if direct.is_file() else next(root.rglob("llama_cython/_variants/variants.json"))
    pkg = found.parent.parent
    manifest = json.loads((pkg / "_variants" / "variants.json").read_text())
    problems = []
    targets: list[tuple[Path, set[str]]] = [(p, set()) for p in pkg.glob("_cpuid*.so")]
    for entry in manifest["variants"]:
        for so in (pkg / "_variants" / entry["name"]).glob("_core*.so"):
            targets.append((so, _allowed(entry["requires"])))
    if not targets:
        return [f"no compiled modules under {pkg}"]
    for so, allowed in targets:
        total, per_func = scan(so)
        print(f"  {so.relative_to(pkg)}: {total['vex']} VEX (AVX), {total['evex']} EVEX (AVX-512); "
              f"allowed: {', '.join(sorted(allowed)) or 'neither'}", flush=True)
        for kind in ("vex", "evex"):
            if total[kind] and kind not in allowed:
                worst = sorted(per_func.items(), key=lambda kv: -kv[1][kind])[:5]
                where = ", ".join(f"{name} ({c[kind]})" for name, c in worst if c[kind])
                problems.append(f"{so.name} in {so.parent.name}: {total[kind]} {kind.upper()} "
                                f"instructions, e.g. in {where}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--tree", action="store_true", help="check an unpacked wheel or site-packages")
    args = parser.parse_args()
    if args.tree:
        problems = [p for root in args.paths for p in check_tree(root)]
        for p in problems:
            print("PROBLEM:", p)
        return 1 if problems else 0
    for path in args.paths:
        total, _ = scan(path)
        print(f"{path}: {total['vex']} VEX (AVX), {total['evex']} EVEX (AVX-512)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
