"""Chat templates are untrusted input: rendering is bounded in time and memory.

The limits are those of ``llama_cython.template_sandbox`` (patched there); they are tested through
``render_chat_template``, as a model's template meets them.

Each hostile template runs in a child process whose address space is capped, so that a guard that
failed shows as a MemoryError (or a timeout), not as a machine out of memory; the child checks
that it gets a TemplateError naming the limit, then renders a normal template.  Timeouts here
only guard against a hang: no test depends on how fast the machine is.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import jinja2
import pytest

from llama_cython import chat, template_sandbox
from llama_cython.chat import ChatMessage, render_chat_template
from llama_cython.errors import TemplateError

HI = [ChatMessage("user", "hi")]
NORMAL = "{% for m in messages %}[{{ m.role }}: {{ m.content }}]{% endfor %}"

# The child: cap the address space at what it uses now plus 1 GiB (every hostile template below
# would take 1.5 GB or more without its guard), apply the patches, then for each template render
# it and a normal template after it; one JSON line out per template.
_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from llama_cython import chat, template_sandbox
    from llama_cython.errors import TemplateError

    job = json.loads(sys.argv[1])
    if sys.platform.startswith("linux"):
        with open("/proc/self/status") as status:
            used = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
        cap = used + (1 << 30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    for name, value in job["patch"].items():
        setattr(template_sandbox, name, value)
    messages = [{"role": "user", "content": "hi"}]
    for template in job["templates"]:
        result = {"error": None, "cause": None}
        try:
            result["text"] = chat.render_chat_template(template, messages)[:200]
        except TemplateError as exc:
            result["error"] = str(exc)
            result["cause"] = type(exc.__cause__).__name__
        result["after"] = chat.render_chat_template(
            "{% for m in messages %}[{{ m.content }}]{% endfor %}", messages)
        print(json.dumps(result), flush=True)
    """
)


def _render_in_child(templates: list[str], patch: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    job = json.dumps({"templates": templates, "patch": patch or {}})
    proc = subprocess.run([sys.executable, "-c", _CHILD, job], capture_output=True, text=True,
                          timeout=240, check=False)  # a hang guard, not a speed test
    assert proc.returncode == 0, f"the child died ({proc.returncode}): {proc.stderr[-2000:]}"
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(templates), proc.stdout[-2000:]
    return results


def _check_refused(result: dict[str, Any], limit: str) -> str:
    assert result["after"] == "[hi]", "a normal template no longer renders after the hostile one"
    assert result["error"] is not None, f"rendered without an error: {result.get('text')!r}"
    assert f"chat template exceeded the {limit}" in result["error"], result["error"]
    assert result["cause"] == "LimitExceeded"
    return str(result["error"])


def _assert_refused(template: str, limit: str, patch: dict[str, Any] | None = None) -> str:
    return _check_refused(_render_in_child([template], patch)[0], limit)


# --------------------------------------------------------------------------- issue 10, item 8


def test_nested_range_loops_hit_the_loop_limit() -> None:
    _assert_refused(
        "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
        "loop limit of ",
    )


def test_items_a_loop_filter_skips_count_as_iterations() -> None:
    _assert_refused(
        "{% for a in range(100000) %}{% for b in range(100000) if b < 0 %}{% endfor %}{% endfor %}",
        "loop limit of ",
    )


def test_lipsum_hits_the_loop_limit() -> None:
    _assert_refused("{{ lipsum(10**7) }}", "loop limit of ")


def test_huge_power_is_refused_not_folded_at_compile_time() -> None:
    # Jinja's optimizer used to compute this while compiling, holding the GIL: it never finished
    message = _assert_refused("{{ 10 ** (10 ** 9) }}",
                              f"integer limit of {template_sandbox.MAX_INT_BITS:,} bits")
    assert "'**' operator" in message


def test_string_repetition_hits_the_string_limit() -> None:
    _assert_refused("{{ 'a' * 2000000000 }}",
                    f"string limit of {template_sandbox.MAX_STRING_LENGTH:,} characters")


def test_center_filter_hits_the_string_limit() -> None:
    _assert_refused("{{ 'a' | center(1500000000) }}", "string limit of ")


def test_center_method_hits_the_string_limit() -> None:
    _assert_refused("{{ 'a'.center(1500000000) }}", "string limit of ")


def test_percent_format_width_hits_the_string_limit() -> None:
    _assert_refused("{{ '%01500000000d' % 1 }}", "string limit of ")


def test_wall_time_limit() -> None:
    # The loop limit is patched out and the loops would run for hours: only the deadline stops them.
    patch = {"MAX_RENDER_SECONDS": 0.5, "MAX_LOOP_ITERATIONS": 10**15}
    _assert_refused(
        "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
        "time limit of 0.5 seconds", patch,
    )


def test_wall_time_limit_stops_recursion_without_loops() -> None:
    # 2**60 macro calls, no loop and no output: only the deadline stops it.
    template = (
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}"
    )
    _assert_refused(template, "time limit of 0.5 seconds", {"MAX_RENDER_SECONDS": 0.5})


# --------------------------------------------------------------------------- other ways to blow up

DOUBLE = "{% set ns = namespace(v=VALUE) %}{% for i in range(40) %}{% set ns.v = STEP %}{% endfor %}"
# a list nested 40 deep, each level twice: tiny in memory, 2**40 strings once turned into text
SHARED = DOUBLE.replace("VALUE", "['x' * 1000]").replace("STEP", "[ns.v, ns.v]")

HOSTILE = {
    "format_method": ("{{ '{:>1500000000}'.format(1) }}", "string limit"),
    "format_nested_width": ("{{ '{:>{}}'.format(1, 1500000000) }}", "string limit"),
    "format_filter": ("{{ '%01500000000d' | format(1) }}", "string limit"),
    "percent_star_width": ("{{ '%*d' % (1500000000, 1) }}", "string limit"),
    "zfill": ("{{ '1'.zfill(1500000000) }}", "string limit"),
    "expandtabs": ("{{ ('\\t' * 1000).expandtabs(10000000) }}", "string limit"),
    "replace_method": ("{{ ('a' * 1000000).replace('', 'b' * 2000) }}", "string limit"),
    "replace_filter": ("{{ ('a' * 1000000) | replace('a', 'b' * 2000) }}", "string limit"),
    "join_method": ("{{ ('y' * 2000).join('x' * 1000000) }}", "string limit"),
    "join_filter": ("{{ ('x' * 1000000) | join('y' * 2000) }}", "string limit"),
    "indent_filter": ("{{ 'a\\nb' | indent(1500000000) }}", "string limit"),
    "tojson_indent": ("{{ [[[1]]] | tojson(indent=1500000000) }}", "string limit"),
    "int_to_bytes": ("{{ (1).to_bytes(2000000000, 'big') }}", "string limit"),
    "concat_doubling": (DOUBLE.replace("VALUE", "'ab'").replace("STEP", "ns.v ~ ns.v"), "string limit"),
    "plus_doubling": (DOUBLE.replace("VALUE", "'ab'").replace("STEP", "ns.v + ns.v"), "string limit"),
    "list_doubling": (DOUBLE.replace("VALUE", "[1]").replace("STEP", "ns.v + ns.v"), "sequence limit"),
    "int_squaring": (DOUBLE.replace("VALUE", "3").replace("STEP", "ns.v * ns.v"), "integer limit"),
    "shared_list_printed": (SHARED + "{{ ns.v }}", "output limit"),
    "shared_list_concat": (SHARED + "{% set s = ns.v ~ '' %}", "string limit"),
    "shared_list_tojson": (SHARED + "{% set s = ns.v | tojson %}", "string limit"),
    "shared_list_percent": (SHARED + "{% set s = '%s' % (ns.v,) %}", "string limit"),
    "list_repetition": ("{{ [0] * 2000000000 }}", "sequence limit"),
    "sum_of_lists": ("{{ ([[0] * 1000] * 2000) | sum(start=[]) | length }}", "sequence limit"),
    "sort_of_a_generator": ("{{ ('x' * 10000000) | batch(1) | sort | length }}", "sequence limit"),
    "batch_padding": ("{{ [1] | batch(2000000000, 0) | list }}", "sequence limit"),
    "range": ("{{ range(10**8) | length }}", "range limit"),
    "output_in_a_loop": ("{% for i in range(100000) %}{{ 'x' * 10000 }}{% endfor %}", "output limit"),
    "literal_text_in_a_loop": (
        "{% macro m() %}{% for i in range(100000) %}" + "L" * 10000 + "{% endfor %}{% endmacro %}"
        "{% set x = m() %}", "output limit"),
    "set_block": ("{% set s = 'x' * 10000000 %}{% set y %}{{ s }}{{ s }}{% endset %}", "output limit"),
}


@pytest.fixture(scope="module")
def hostile_results() -> dict[str, dict[str, Any]]:
    """All of HOSTILE rendered in one child (one start instead of one each)."""
    names = sorted(HOSTILE)
    return dict(zip(names, _render_in_child([HOSTILE[name][0] for name in names]), strict=True))


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_template_is_refused(name: str, hostile_results: dict[str, dict[str, Any]]) -> None:
    _check_refused(hostile_results[name], HOSTILE[name][1] + " of ")


# --------------------------------------------------------------------------- in this process


def test_limits_are_read_when_a_render_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(template_sandbox, "MAX_STRING_LENGTH", 100)
    assert render_chat_template("{{ 'a' * 100 }}", HI) == "a" * 100
    with pytest.raises(TemplateError) as info:
        render_chat_template("x\n{{ 'a' * 101 }}", HI)
    assert str(info.value) == (
        "chat template exceeded the string limit of 100 characters (template line 2): "
        "the '*' operator would make 101 characters"
    )
    assert isinstance(info.value.__cause__, template_sandbox.LimitExceeded)
    assert render_chat_template(NORMAL, HI) == "[user: hi]"


def test_output_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(template_sandbox, "MAX_OUTPUT_LENGTH", 1000)
    assert render_chat_template(NORMAL, [ChatMessage("user", "x" * 900)]).endswith("x]")
    with pytest.raises(TemplateError, match="exceeded the output limit of 1,000 characters"):
        render_chat_template(NORMAL, [ChatMessage("user", "x" * 1001)])
    with pytest.raises(TemplateError, match="exceeded the output limit of 1,000 characters"):
        render_chat_template("{% for i in range(101) %}0123456789{% endfor %}", HI)


def test_loop_limit_grows_with_the_square_of_the_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    # some real templates compare each message with all the others
    monkeypatch.setattr(template_sandbox, "MAX_LOOP_ITERATIONS", 30)
    pairs = "{% for a in messages %}{% for b in messages %}.{% endfor %}{% endfor %}"
    assert render_chat_template(pairs, [ChatMessage("user", "hi")] * 20) == "." * 400  # 420 passes
    with pytest.raises(TemplateError, match="exceeded the loop limit of 31 iterations"):
        render_chat_template("{% for i in range(32) %}{% endfor %}", HI)


def test_range_and_integer_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    assert render_chat_template("{{ range(100000) | length }} {{ 2 ** 4095 > 0 }}", HI) == "100000 True"
    with pytest.raises(TemplateError, match=r"range limit of 100,000 items.*range\(0, 100001\)"):
        render_chat_template("{{ range(0, 100001) }}", HI)
    with pytest.raises(TemplateError, match="integer limit of 4,096 bits"):
        render_chat_template("{{ 2 ** 4096 }}", HI)


def test_usual_template_code_still_works() -> None:
    template = (
        "{{ '%s-%05.1f' % ('a', 2.5) }}|{{ '{}:{:>4}'.format('b', 7) }}|{{ 'x'.center(5) }}|"
        "{{ [1, 2] + [3] }}|{{ 'ab' * 2 }}|{{ 7 // 2 }} {{ 7 % 3 }} {{ 2 ** 10 }}|"
        "{{ ['a', 'b'] | join(', ') }}|{{ {'k': [1, 2]} | tojson(indent=2) }}|"
        "{{ 'a\\nb' | indent(2) }}|{{ [[1], [2]] | sum(start=[]) }}|{{ 'x' ~ 1 ~ none }}|"
        "{{ lipsum(1, html=false) | length > 0 }}|{{ messages | map(attribute='content') | list }}"
    )
    assert render_chat_template(template, HI) == (
        "a-002.5|b:   7|  x  |[1, 2, 3]|abab|3 1 1024|a, b|{\n  \"k\": [\n    1,\n    2\n  ]\n}|"
        "a\n  b|[1, 2]|x1None|True|['hi']"
    )


def test_real_template_renders_a_long_conversation(vendor_dir: Path) -> None:
    template = (vendor_dir / "models" / "templates" / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text(
        encoding="utf-8")
    messages = [ChatMessage("user" if i % 2 == 0 else "assistant", f"turn {i} " + "w" * 1000)
                for i in range(2000)]
    messages.append(ChatMessage("user", "z" * 4_000_000))
    text = render_chat_template(template, messages)
    assert text.count("<|im_start|>") == 2003  # the system prompt, the turns, the generation prompt
    assert len(text) > 6_000_000


def test_limits_are_documented() -> None:
    doc = template_sandbox.__doc__ or ""
    for name in ("MAX_OUTPUT_LENGTH", "MAX_STRING_LENGTH", "MAX_SEQUENCE_LENGTH", "MAX_RANGE_LENGTH",
                 "MAX_LOOP_ITERATIONS", "MAX_INT_BITS"):
        assert f"``{name}`` ({getattr(template_sandbox, name):,}" in doc, name
    assert f"``MAX_RENDER_SECONDS`` ({template_sandbox.MAX_RENDER_SECONDS:g} seconds)" in doc
    assert f"``TEMPLATE_CACHE_SIZE`` ({template_sandbox.TEMPLATE_CACHE_SIZE})" in doc
    assert f"``TEMPLATE_CACHE_BYTES`` ({template_sandbox.TEMPLATE_CACHE_BYTES // 2**20} MiB)" in doc
    assert "llama_cython.template_sandbox" in (chat.__doc__ or "")  # where chat.py sends its readers


# --------------------------------------------------------------------------- the compiled-template cache


def test_cache_is_bounded_by_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(template_sandbox, "TEMPLATE_CACHE_BYTES", 200_000)
    sandbox = chat._SANDBOX  # the one render_chat_template uses
    templates = [f"{i}:" + "x" * 50_000 + "{{ messages | length }}" for i in range(10)]
    compiled = [sandbox.compile_template(template) for template in templates]
    count, size = sandbox.cache_usage()
    assert size <= 200_000 and 1 <= count <= 4
    assert sandbox.compile_template(templates[-1]) is compiled[-1]  # the newest is kept
    assert sandbox.compile_template(templates[0]) is not compiled[0]  # the oldest was dropped
    assert render_chat_template(templates[3], HI) == "3:" + "x" * 50_000 + "1"
    # a template bigger than the whole cache is compiled for each render, never kept
    huge = "h" * 300_000
    assert sandbox.compile_template(huge) is not sandbox.compile_template(huge)
    assert sandbox.cache_usage()[1] <= 200_000


def test_default_cache_holds_at_most_its_bytes() -> None:
    # the case, scaled down: 64 distinct templates of 10 MB were all kept (1.2 GB)
    sandbox = chat._SANDBOX
    for i in range(18):  # 18 MB of source, more than the 16 MiB kept
        sandbox.compile_template(f"{i}:" + "t" * 1_000_000)
    count, size = sandbox.cache_usage()
    assert size <= template_sandbox.TEMPLATE_CACHE_BYTES and count <= template_sandbox.TEMPLATE_CACHE_SIZE
    assert template_sandbox.TEMPLATE_CACHE_BYTES <= 64 * 2**20


def test_sandbox_renders_only_its_own_templates() -> None:
    # a template from another environment would render outside the limits
    with pytest.raises(ValueError, match="not compiled by this sandbox"):
        chat._SANDBOX.render(jinja2.Environment().from_string("{{ 'a' * 10 }}"), {})
