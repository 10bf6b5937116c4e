"""The chat-template renderer renders every llama.cpp template exactly as transformers does.

The reference, ``tests/data/chat_templates_reference.json``, was recorded with transformers' own
renderer by ``scripts/record_chat_templates.py`` (rerun it when llama.cpp's templates change);
these tests need only jinja2.
"""

from __future__ import annotations

import doctest
import hashlib
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from llama_cython import chat
from llama_cython.chat import ChatMessage, normalize_messages, render_chat_template
from llama_cython.errors import LlamaError, TemplateError

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_PATH = Path(__file__).resolve().parent / "data" / "chat_templates_reference.json"
REFERENCE: dict[str, Any] = json.loads(REFERENCE_PATH.read_text(encoding="utf-8"))
HEADER: dict[str, Any] = REFERENCE["_header"]
TEMPLATE_NAMES = sorted(name for name in REFERENCE if name != "_header")
CASES = [(name, case) for name in TEMPLATE_NAMES for case in HEADER["conversations"]]
RERECORD = "rerun scripts/record_chat_templates.py"


def _fixed_strftime_now(fmt: str) -> str:
    return datetime(*HEADER["strftime_now_date"]).strftime(fmt)


def _render_case(template: str, case: str) -> str:
    return render_chat_template(
        template,
        HEADER["conversations"][case],
        add_generation_prompt=HEADER["add_generation_prompt"],
        bos_token=HEADER["bos_token"],
        eos_token=HEADER["eos_token"],
        tools=HEADER["tools"] if case == "tools" else None,
        strftime_now=_fixed_strftime_now,
    )


@pytest.fixture(scope="module")
def templates_dir(vendor_dir: Path) -> Path:
    return vendor_dir / "models" / "templates"


# --------------------------------------------------------------------------- against transformers


def test_reference_covers_every_vendored_template(templates_dir: Path) -> None:
    on_disk = sorted(path.name for path in templates_dir.glob("*.jinja"))
    assert on_disk, f"no templates in {templates_dir}"
    missing = sorted(set(on_disk) - set(TEMPLATE_NAMES))
    stale = sorted(set(TEMPLATE_NAMES) - set(on_disk))
    assert not missing, f"templates not in the reference JSON ({RERECORD}): {missing}"
    assert not stale, f"reference JSON names templates llama.cpp no longer ships ({RERECORD}): {stale}"


def test_reference_header() -> None:
    assert HEADER["transformers"] and HEADER["jinja2"]
    assert set(HEADER["conversations"]) == {"system", "no_system", "tools"}
    assert REFERENCE_PATH.stat().st_size < 1_000_000


@pytest.mark.parametrize(("name", "case"), CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_renders_like_transformers(templates_dir: Path, name: str, case: str) -> None:
    path = templates_dir / name
    if not path.is_file():
        pytest.fail(f"{name} is in the reference but not in {templates_dir} ({RERECORD})")
    template = path.read_text(encoding="utf-8")
    recorded = REFERENCE[name]
    assert hashlib.sha256(template.encode("utf-8")).hexdigest() == recorded["sha256"], (
        f"{name} changed since the reference was recorded ({RERECORD})"
    )
    expected = recorded[case]
    if "text" in expected:
        assert _render_case(template, case) == expected["text"]
    else:
        with pytest.raises(TemplateError) as info:
            _render_case(template, case)
        # our message carries transformers' one (which the JSON keeps clipped)
        assert expected["message"][:200] in str(info.value)
        assert info.value.__cause__ is not None


def test_most_references_render() -> None:
    """The reference is a content check, not a list of failures."""
    texts = sum("text" in REFERENCE[name][case] for name, case in CASES)
    assert texts >= 0.85 * len(CASES)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.__class__.__base__.__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os.system('true') }}",
        "{% set x = messages.append({'role': 'user', 'content': 'x'}) %}",
        "{{ raise_exception.__globals__ }}{{ raise_exception.__globals__.keys() }}",
        "{% set ns = namespace(_hidden=1) %}",
        "{% set ns = namespace() %}{% set ns._hidden = 1 %}",
        "{{ dict.__class__.__subclasses__() }}",
    ],
)
def test_sandbox_escape_is_a_template_error(template: str) -> None:
    with pytest.raises(TemplateError, match="tried to leave its sandbox") as info:
        render_chat_template(template, [ChatMessage("user", "hi")])
    assert info.value.__cause__ is not None


def test_raise_exception_message_reaches_the_caller() -> None:
    template = (
        "{% for m in messages %}{% if m.role == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}{% endfor %}ok"
    )
    assert render_chat_template(template, [ChatMessage("user", "hi")]) == "ok"
    with pytest.raises(TemplateError, match=r"raised an error.*: System role not supported$") as info:
        render_chat_template(template, [ChatMessage("system", "be brief"), ChatMessage("user", "hi")])
    assert isinstance(info.value, LlamaError) and isinstance(info.value, ValueError)
    assert "System role not supported" in str(info.value.__cause__)


def test_syntax_error_is_a_template_error() -> None:
    with pytest.raises(TemplateError, match="syntax error at line 2") as info:
        render_chat_template("ok\n{% if %}", [ChatMessage("user", "hi")])
    assert type(info.value.__cause__).__name__ == "TemplateSyntaxError"


def test_undefined_use_is_a_template_error() -> None:
    # printing an undefined name is allowed (empty), as in transformers; calling it is not
    assert render_chat_template("[{{ nothing }}]", [ChatMessage("user", "hi")]) == "[]"
    with pytest.raises(TemplateError, match=r"undefined value.*'nothing' is undefined"):
        render_chat_template("{{ nothing() }}", [ChatMessage("user", "hi")])


def test_python_error_inside_a_template_is_a_template_error() -> None:
    with pytest.raises(TemplateError, match=r"template line 2\): TypeError"):
        render_chat_template("x\n{{ messages[0].content + 1 }}", [ChatMessage("user", "hi")])


# --------------------------------------------------------------------------- variables and filters


def test_extra_variables_reach_the_template() -> None:
    template = (
        "{% if enable_thinking is defined and not enable_thinking %}<no_think>{% endif %}"
        "{{ date_string | default('?') }}|{{ messages[0].content }}"
    )
    msgs = [ChatMessage("user", "hi")]
    assert render_chat_template(template, msgs) == "?|hi"
    assert render_chat_template(template, msgs, enable_thinking=False, date_string="15 Jan") == (
        "<no_think>15 Jan|hi"
    )
    assert render_chat_template(template, msgs, enable_thinking=True) == "?|hi"


def test_default_variables() -> None:
    template = (
        "{{ tools is none }} {{ documents is none }} {{ add_generation_prompt }} "
        "[{{ bos_token }}] [{{ eos_token }}]"
    )
    msgs = [ChatMessage("user", "hi")]
    assert render_chat_template(template, msgs) == "True True True [] []"
    assert render_chat_template(template, msgs, add_generation_prompt=False, bos_token="<s>",
                                eos_token="</s>") == "True True False [<s>] [</s>]"


def test_strftime_now_global_and_override() -> None:
    template = "{{ strftime_now('%Y-%m-%d') }}"
    msgs = [ChatMessage("user", "hi")]
    today = render_chat_template(template, msgs)
    assert today in {datetime.now().strftime("%Y-%m-%d")} | {
        datetime.fromordinal(datetime.now().toordinal() - 1).strftime("%Y-%m-%d")  # around midnight
    }
    assert render_chat_template(template, msgs, strftime_now=_fixed_strftime_now) == "2026-01-15"


def test_tojson_filter_like_transformers() -> None:
    msgs = [ChatMessage("user", "hi")]
    value = {"b": "<a & 'q'> é", "a": [1, 2]}
    assert render_chat_template("{{ v | tojson }}", msgs, v=value) == json.dumps(value, ensure_ascii=False)
    assert render_chat_template("{{ v | tojson(indent=2) }}", msgs, v=value) == json.dumps(
        value, ensure_ascii=False, indent=2
    )
    assert render_chat_template("{{ v | tojson(separators=(',', ':'), sort_keys=true) }}", msgs, v=value) == (
        '{"a":[1,2],"b":"<a & \'q\'> é"}'
    )
    assert render_chat_template("{{ v | tojson(ensure_ascii=true) }}", msgs, v="é") == '"\\u00e9"'


def test_tools_reach_the_template() -> None:
    tools = HEADER["tools"]
    template = (
        "{% for t in tools %}{{ t.function.name }}:{{ t.function.parameters.required | tojson }}{% endfor %}"
    )
    assert render_chat_template(template, [ChatMessage("user", "hi")], tools=tools) == 'get_weather:["city"]'
    with pytest.raises(TypeError, match=r"tools\[0\] must be a dict, got str"):
        render_chat_template(template, [ChatMessage("user", "hi")], tools=["get_weather"])


def test_generation_tag_renders_its_body() -> None:
    template = (
        "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}[{{ m.content }}]"
        "{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}"
    )
    msgs = [ChatMessage("user", "q"), ChatMessage("assistant", "a")]
    assert render_chat_template(template, msgs) == "q[a]"


def test_loop_controls_and_namespace_and_dict() -> None:
    template = (
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% if m.role == 'system' %}{% continue %}"
        "{% endif %}{% set ns.n = ns.n + 1 %}{% if ns.n > 1 %}{% break %}{% endif %}{{ m.content }}"
        "{% endfor %}|{{ dict(a=1) | tojson }}|{{ dict.fromkeys(['x'], 0) | tojson }}"
    )
    msgs = [ChatMessage("system", "s"), ChatMessage("user", "u1"), ChatMessage("user", "u2")]
    assert render_chat_template(template, msgs) == 'u1|{"a": 1}|{"x": 0}'


def test_trim_and_lstrip_blocks() -> None:
    template = "{% for m in messages %}\n    {% if true %}\n{{ m.content }}\n    {% endif %}\n{% endfor %}\n"
    assert render_chat_template(template, [ChatMessage("user", "a"), ChatMessage("user", "b")]) == "a\nb\n"


def test_reasoning_fields_are_aliased() -> None:
    template = "{{ messages[0].thinking }}|{{ messages[0].reasoning_content }}"
    msgs = [{"role": "assistant", "content": "4", "reasoning": "2+2"}]
    assert render_chat_template(template, msgs) == "2+2|2+2"


def test_rich_values_become_plain_data() -> None:
    np = pytest.importorskip("numpy")
    template = "{{ n + 1 }} {{ o }} {{ m[0].content }}"
    msgs = [{"role": "user", "content": "hi"}]
    assert render_chat_template(template, msgs, n=np.int32(41), o=object(), m=msgs) == "42 <object> hi"


def test_compiled_templates_are_cached() -> None:
    template = "{{ messages | length }} cached"
    assert chat._SANDBOX.compile_template(template) is chat._SANDBOX.compile_template(template)
    assert render_chat_template(template, [ChatMessage("user", "x")]) == "1 cached"


def test_template_must_be_a_str() -> None:
    with pytest.raises(TypeError, match="template must be a str, got NoneType"):
        render_chat_template(None, [ChatMessage("user", "x")])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- messages


def test_chat_message_and_dict_render_the_same(templates_dir: Path) -> None:
    template = (templates_dir / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text(encoding="utf-8")
    as_dicts: list[dict[str, str]] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    as_messages = [ChatMessage("system", "Be brief."), ChatMessage("user", "Hi")]
    mixed: list[ChatMessage | dict[str, str]] = [as_messages[0], as_dicts[1]]
    expected = render_chat_template(template, as_dicts)
    assert "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n" in expected
    assert render_chat_template(template, as_messages) == expected
    assert render_chat_template(template, tuple(mixed)) == expected


def test_normalize_messages_keeps_extra_keys_and_drops_none() -> None:
    call = {"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}
    msgs: list[ChatMessage | dict[str, Any]] = [
        ChatMessage("user", "go"),
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "1", "name": "f", "tool_call_id": None},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "narrator", "content": "unknown roles pass"},
    ]
    assert normalize_messages(msgs) == [
        {"role": "user", "content": "go"},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "content": "1", "name": "f"},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "narrator", "content": "unknown roles pass"},
    ]


@pytest.mark.parametrize(
    ("messages", "error", "pattern"),
    [
        ([], ValueError, "^messages is empty$"),
        ((), ValueError, "^messages is empty$"),
        ("hello", TypeError, "messages must be a sequence of ChatMessage or dicts, got str"),
        ({"role": "user", "content": "x"}, TypeError, "messages must be a sequence .* got dict"),
        (None, TypeError, "messages must be a sequence .* got NoneType"),
        ([ChatMessage("user", "a"), "b"], TypeError,
         r"^messages\[1\] must be a ChatMessage or a mapping with 'role' and 'content', got str$"),
        ([ChatMessage("user", "a"), ("user", "b")], TypeError, r"^messages\[1\] must be .* got tuple$"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": 3}], TypeError,
         r"^messages\[1\]\['content'\] must be a str, got int$"),
        ([{"role": "user", "content": ["part"]}], TypeError,
         r"^messages\[0\]\['content'\] must be a str, got list$"),
        ([ChatMessage("user", b"bytes")], TypeError,  # type: ignore[arg-type]
         r"^messages\[0\]\['content'\] must be a str, got bytes$"),
        ([{"role": "user", "content": None}], TypeError,
         r"^messages\[0\]\['content'\] must be a str, got NoneType"),
        ([{"role": 1, "content": "x"}], TypeError, r"^messages\[0\]\['role'\] must be a str, got int$"),
        ([{"content": "x"}], ValueError, r"^messages\[0\] has no 'role'$"),
        ([{"role": "user"}], ValueError, r"^messages\[0\] has no 'content'$"),
    ],
)
def test_bad_messages_are_refused(messages: Any, error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        normalize_messages(messages)
    with pytest.raises(error, match=pattern):
        render_chat_template("{{ messages }}", messages)


def test_chat_message_is_frozen() -> None:
    message = ChatMessage("user", "hi")
    with pytest.raises(AttributeError):
        message.content = "changed"  # type: ignore[misc]


# --------------------------------------------------------------------------- quality


def test_chat_doctests() -> None:
    result = doctest.testmod(chat, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_chat_module_is_mypy_strict_clean() -> None:
    pytest.importorskip("mypy")
    cmd = [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "llama_cython/chat.py",
           "llama_cython/template_sandbox.py"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
