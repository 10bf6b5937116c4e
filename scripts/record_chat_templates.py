#!/usr/bin/env python3
"""Record how Hugging Face transformers renders every chat template that llama.cpp ships.

    python scripts/record_chat_templates.py            # writes tests/data/chat_templates_reference.json
    python scripts/record_chat_templates.py --check    # renders again, exits 1 if the file would change

The reference renderer runs in its own virtual environment, ``build/ref-venv`` (created on the
first run, reused afterwards), holding only ``transformers`` and ``jinja2``: no torch, and nothing
of it leaks into the project's ``.venv``.  Templates are rendered by calling transformers' Jinja
renderer on the template text directly, without any tokenizer, for three fixed conversations (one
with a system message, one without, and one with a tool call, its result and ``tools``; each
normalized first as ``apply_chat_template`` does), ``add_generation_prompt=True``, ``bos_token="<s>"``,
``eos_token="</s>"`` and a clock frozen at 2026-01-15 for ``strftime_now``.

The JSON maps each template file name to ``{"sha256": of the template text, "system": R,
"no_system": R, "tools": R}`` where ``R`` is
``{"text": rendered}`` or ``{"error": exception class name, "message": text}``; the entry
``"_header"`` holds the versions, the conversations and the settings, so the test
(``tests/test_chat_templates.py``) renders exactly what was recorded without repeating them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REF_VENV = ROOT / "build" / "ref-venv"
REF_PY = REF_VENV / "bin" / "python"
OUTPUT = ROOT / "tests" / "data" / "chat_templates_reference.json"
REQUIREMENTS = ["transformers", "jinja2"]

# The frozen clock: strftime_now(fmt) returns FIXED_DATE formatted with fmt.
FIXED_DATE = (2026, 1, 15, 9, 30, 0)
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"

# Non-ASCII text, an apostrophe, a double quote and surrounding whitespace on purpose: templates
# that trim, escape or JSON-encode message content must agree with the reference on all of them.
CONVERSATIONS: dict[str, list[dict[str, Any]]] = {
    "system": [
        {"role": "system", "content": "You are a concise assistant. Answer in one sentence."},
        {"role": "user", "content": "What is the capital of France? Réponds en français, s'il te plaît."},
        {"role": "assistant", "content": "La capitale de la France est Paris."},
        {"role": "user", "content": '  And of Japan (日本)? Say "Tokyo" if unsure.  '},
    ],
    "no_system": [
        {"role": "user", "content": "Name a prime number between 10 and 20."},
        {"role": "assistant", "content": "13 is a prime number between 10 and 20."},
        {"role": "user", "content": "Now one between 20 and 30, please — in words."},
    ],
    # A tool call (its id nine alphanumerics, as Mistral templates demand) and its result, rendered
    # with TOOLS: exercises tojson on schemas and arguments.
    "tools": [
        {"role": "user", "content": "What is the weather in Paris right now?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call12345", "type": "function",
             "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}},
        ]},
        {"role": "tool", "tool_call_id": "call12345", "name": "get_weather",
         "content": '{"temperature": 21, "sky": "clear"}'},
    ],
}
# Passed as ``tools=`` with the "tools" conversation only.
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Zürich"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    }},
]

MAX_MESSAGE = 400  # error messages are clipped to keep the committed JSON small


def _say(msg: str) -> None:
    print(f"[record] {msg}", file=sys.stderr, flush=True)


def _in_ref_venv() -> bool:
    return Path(sys.prefix).resolve() == REF_VENV.resolve()


def _ensure_ref_venv() -> None:
    """Create build/ref-venv with transformers and jinja2 unless it already has them."""
    if REF_PY.exists():
        probe = subprocess.run([str(REF_PY), "-c", "import transformers, jinja2"],
                               capture_output=True, check=False)
        if probe.returncode == 0:
            return
    if not REF_PY.exists():
        _say(f"creating {REF_VENV.relative_to(ROOT)}")
        venv.EnvBuilder(with_pip=True, clear=True).create(REF_VENV)
    _say(f"installing {' '.join(REQUIREMENTS)} into {REF_VENV.relative_to(ROOT)}")
    subprocess.run([str(REF_PY), "-m", "pip", "install", "--quiet", *REQUIREMENTS], check=True)


def _templates_dir() -> Path:
    folder = ROOT / "vendor" / "llama.cpp" / "models" / "templates"
    if folder.is_dir():
        return folder
    sys.path.insert(0, str(ROOT / "scripts"))
    from fetch_llama_cpp import ensure_llama_cpp

    return ensure_llama_cpp() / "models" / "templates"


def _record_all() -> dict[str, Any]:
    """Render every template with transformers (runs inside build/ref-venv)."""
    import datetime as _dt
    import importlib
    from importlib.metadata import version

    ctu: Any = importlib.import_module("transformers.utils.chat_template_utils")

    class _FrozenClock(_dt.datetime):
        @classmethod
        def now(cls, tz: _dt.tzinfo | None = None) -> _FrozenClock:
            return cls(*FIXED_DATE, tzinfo=tz)

    # transformers' strftime_now global reads the clock through this module attribute.
    ctu.datetime = _FrozenClock

    def render(template: str, case: str) -> dict[str, str]:
        try:
            # what apply_chat_template does first: message objects to dicts, None-valued keys dropped
            messages = ctu._normalize_chat_messages(json.loads(json.dumps(CONVERSATIONS[case])))
            rendered, _ = ctu.render_jinja_template(
                conversations=[messages],
                tools=TOOLS if case == "tools" else None,
                chat_template=template,
                add_generation_prompt=True,
                bos_token=BOS_TOKEN,
                eos_token=EOS_TOKEN,
            )
        except Exception as exc:
            return {"error": type(exc).__name__, "message": str(exc)[:MAX_MESSAGE]}
        return {"text": rendered[0]}

    result: dict[str, Any] = {
        "_header": {
            "generator": "scripts/record_chat_templates.py",
            "transformers": version("transformers"),
            "jinja2": version("jinja2"),
            "python": sys.version.split()[0],
            "renderer": "transformers.utils.chat_template_utils.render_jinja_template",
            "add_generation_prompt": True,
            "bos_token": BOS_TOKEN,
            "eos_token": EOS_TOKEN,
            "strftime_now_date": list(FIXED_DATE),
            "conversations": CONVERSATIONS,
            "tools": TOOLS,
        }
    }
    for path in sorted(_templates_dir().glob("*.jinja")):
        template = path.read_text(encoding="utf-8")
        entry: dict[str, Any] = {"sha256": hashlib.sha256(template.encode("utf-8")).hexdigest()}
        entry.update({case: render(template, case) for case in CONVERSATIONS})
        result[path.name] = entry
    return result


def _dump(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, indent=1) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if the file would change")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="where to write the JSON")
    args = parser.parse_args(argv)

    if not _in_ref_venv():
        _ensure_ref_venv()
        os.execv(str(REF_PY), [str(REF_PY), str(Path(__file__).resolve()), *sys.argv[1:]])

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    text = _dump(_record_all())
    data = json.loads(text)
    renders = [v[c] for k, v in data.items() if k != "_header" for c in CONVERSATIONS]
    n_text = sum("text" in r for r in renders)
    n_err = sum("error" in r for r in renders)
    hdr = data["_header"]
    _say(f"{len(data) - 1} templates, {n_text} renders, {n_err} errors "
         f"(transformers {hdr['transformers']}, jinja2 {hdr['jinja2']})")
    if args.check:
        old = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if old != text:
            _say(f"{args.output} is out of date")
            return 1
        _say(f"{args.output} is up to date")
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    _say(f"wrote {args.output.relative_to(ROOT)} ({len(text.encode()) // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
