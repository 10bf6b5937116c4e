"""Chat messages and the chat-template renderer: GGUF chat templates rendered like transformers.

A model's chat template (``model.chat_template``) is a Jinja2 program written for Hugging Face
``transformers``.  :func:`render_chat_template` runs it in the same kind of sandbox with the same
names available (``raise_exception``, ``strftime_now``, the ``tojson`` filter with its
``ensure_ascii``/``indent``/``separators``/``sort_keys`` options, the ``{% generation %}`` tag,
``tools`` and ``documents`` defaulting to ``None``, ...) so that the prompt text is exactly what
``tokenizer.apply_chat_template(..., tokenize=False)`` would give.  The test
``tests/test_chat_templates.py`` checks this against transformers itself for every template that
llama.cpp ships.

>>> from llama_cython.chat import ChatMessage, render_chat_template
>>> template = (
...     "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\\n{% endfor %}"
...     "{% if add_generation_prompt %}<|assistant|>{% endif %}"
... )
>>> print(render_chat_template(template, [ChatMessage("user", "Hi!")]))
<|user|>Hi!
<|assistant|>

Templates come from model files, which may be untrusted: the sandbox forbids reaching Python
internals, and every failure (bad syntax, the template's own ``raise_exception``, a sandbox
violation, an error while rendering) is raised as :class:`~llama_cython.errors.TemplateError`.

A template also cannot run for ever or fill the memory: it runs in the bounded sandbox of
:mod:`llama_cython.template_sandbox` (its docstring lists the limits, module constants there), and
one that goes past a limit fails with a TemplateError that names it (``chat template exceeded the
loop limit of 1,000,000 iterations``).  This module holds what is specific to chat templates: the
messages, the names transformers gives templates, and the conversion of errors.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
import jinja2.runtime
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError

from llama_cython.errors import TemplateError
from llama_cython.template_sandbox import LimitExceeded, TemplateSandbox, check_json_size

if TYPE_CHECKING:
    from llama_cython._core import Model

__all__ = ["ChatMessage", "normalize_messages", "render_chat_template", "render_model_chat"]

# Names a message's reasoning may come under; templates read "reasoning_content" (most) or
# "thinking" (gpt-oss), so a message carrying any of them gets both (as transformers does).
_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")

_TEMPLATE_FILENAME = "<template>"  # what Jinja calls a template made from a string


@dataclasses.dataclass(frozen=True)
class ChatMessage:
    """One message of a conversation: who speaks (``role``) and what they say (``content``).

    Plain dicts with ``"role"`` and ``"content"`` are accepted wherever a ChatMessage is; use a
    dict when a message needs more keys (``tool_calls``, ``reasoning_content``, ...).

    >>> ChatMessage("user", "Hello")
    ChatMessage(role='user', content='Hello')
    >>> normalize_messages([ChatMessage("user", "Hello")])
    [{'role': 'user', 'content': 'Hello'}]
    """

    role: str
    content: str


# --------------------------------------------------------------------------- input validation


# How deep chat data (message extras, tools, template_kwargs) may nest: real tool schemas stay
# within a few tens of levels; a cycle or a 100,000-deep list would exhaust Python's stack.
_MAX_DATA_DEPTH = 100


def _plain(value: Any, depth: int = 0) -> Any:
    """A copy of ``value`` made only of plain JSON-like types, safe to hand to a template.

    Subclasses of str/int/float (enums, numpy scalars, ...) may carry methods a template could
    call, so they become the base type; mappings, lists, tuples and dataclasses are copied
    recursively (at most ``_MAX_DATA_DEPTH`` levels: deeper data, or a cycle, is a
    TemplateError); anything else becomes an inert placeholder such as ``"<ndarray>"``.
    """
    if depth > _MAX_DATA_DEPTH:
        raise TemplateError(f"chat data nests deeper than {_MAX_DATA_DEPTH} levels "
                            "(or refers to itself)")
    depth += 1
    kind = type(value)
    if value is None or kind is str or kind is int or kind is float or kind is bool:
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(key, depth): _plain(item, depth) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item, depth) for item in value]
    if isinstance(value, tuple):
        return tuple(_plain(item, depth) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: _plain(getattr(value, field.name), depth)
                for field in dataclasses.fields(value)}
    item = getattr(value, "item", None)
    if kind.__module__ == "numpy" and callable(item):  # numpy scalar: its Python value
        return _plain(item(), depth)
    return f"<{kind.__name__}>"


def _type_name(value: object) -> str:
    return type(value).__name__


def normalize_messages(messages: Iterable[ChatMessage | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Check a conversation and return it as a list of plain dicts, ready for a chat template.

    Each item is a :class:`ChatMessage` or a mapping with a str ``"role"`` and a str
    ``"content"``; ``content`` may be ``None`` (or missing) only in a message that has
    ``tool_calls``.  Extra keys of a mapping (``tool_calls``, ``name``, ...) are kept, copied as
    plain data; keys whose value is ``None`` are dropped, as transformers does, because templates
    handle a missing key better than a ``None``.  Roles are not checked against a list: the
    template decides what it accepts.

    Raises ValueError for an empty conversation or a message without role/content, TypeError
    (naming the message's index) for a wrong type.

    >>> normalize_messages([{"role": "user", "content": "Hi", "name": None}])
    [{'role': 'user', 'content': 'Hi'}]
    >>> normalize_messages([])
    Traceback (most recent call last):
    ...
    ValueError: messages is empty
    >>> normalize_messages([{"role": "user", "content": 42}])
    Traceback (most recent call last):
    ...
    TypeError: messages[0]['content'] must be a str, got int
    """
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Iterable):
        raise TypeError(
            f"messages must be a sequence of ChatMessage or dicts, got {_type_name(messages)}"
        )
    items = list(messages)
    if not items:
        raise ValueError("messages is empty")
    result: list[dict[str, Any]] = []
    for index, message in enumerate(items):
        where = f"messages[{index}]"
        if isinstance(message, ChatMessage):
            fields: Mapping[str, Any] = {"role": message.role, "content": message.content}
        elif isinstance(message, Mapping):
            fields = message
        else:
            raise TypeError(
                f"{where} must be a ChatMessage or a mapping with 'role' and 'content', "
                f"got {_type_name(message)}"
            )
        if "role" not in fields:
            raise ValueError(f"{where} has no 'role'")
        role = fields["role"]
        if not isinstance(role, str):
            raise TypeError(f"{where}['role'] must be a str, got {_type_name(role)}")
        has_tool_calls = bool(fields.get("tool_calls"))
        if "content" not in fields and not has_tool_calls:
            raise ValueError(f"{where} has no 'content'")
        content = fields.get("content")
        if content is None and not has_tool_calls:
            raise TypeError(
                f"{where}['content'] must be a str, got NoneType (None only in a message with tool_calls)"
            )
        if content is not None and not isinstance(content, str):
            raise TypeError(f"{where}['content'] must be a str, got {_type_name(content)}")
        result.append({_plain(key): _plain(value) for key, value in fields.items() if value is not None})
    return result


def _alias_reasoning(message: dict[str, Any]) -> dict[str, Any]:
    """Give a message that carries reasoning both ``thinking`` and ``reasoning_content``."""
    for key in _REASONING_KEYS:
        reasoning = message.get(key)
        if reasoning is not None:
            aliased = {"thinking": reasoning}
            aliased.update(message)
            aliased["reasoning_content"] = reasoning
            return aliased
    return message


def _schema_list(name: str, value: Any) -> Any:
    """``tools``/``documents`` as plain data: None or a sequence of mappings (JSON schemas, documents)."""
    if value is None:
        return None
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a list of dicts, got {_type_name(value)}")
    items = list(value)
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise TypeError(f"{name}[{index}] must be a dict, got {_type_name(item)}")
    return [_plain(item) for item in items]


# --------------------------------------------------------------------------- transformers' names


class _RaisedByTemplate(jinja2.TemplateError):
    """What ``raise_exception(message)`` raises inside a template."""


def _raise_exception(message: object) -> None:
    """Template global: stop rendering with the template's own message."""
    raise _RaisedByTemplate(str(message))


def _strftime_now(fmt: str) -> str:
    """Template global: the local time now, formatted with ``fmt`` (``"%d %b %Y"``, ...)."""
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """Template filter: ``json.dumps`` without HTML escaping, non-ASCII kept unless asked.

    Jinja's own ``tojson`` escapes ``<``, ``>``, ``&`` and ``'`` for HTML, which would corrupt a
    prompt; templates written for transformers expect plain JSON and these keyword options.  The
    JSON's size is estimated first, so that a huge ``indent`` or a much-shared value is refused.
    """
    check_json_size(value, indent=indent, separators=separators)
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``: marks the assistant's text for training masks.

    transformers uses it to find which tokens the assistant wrote; for a prompt it only renders
    its body (in its own scope, like a ``{% call %}`` block).
    """

    tags = {"generation"}  # noqa: RUF012  (Jinja reads this class attribute)

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_render_body")
        return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _render_body(self, caller: jinja2.runtime.Macro) -> str:
        return str(caller())


_SANDBOX = TemplateSandbox(
    extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    filters={"tojson": _tojson},
    globals={"raise_exception": _raise_exception, "strftime_now": _strftime_now},
    trim_blocks=True,
    lstrip_blocks=True,
)
"""Where chat templates render: transformers' names and settings, within the sandbox's limits."""


# --------------------------------------------------------------------------- errors


def _template_line(tb: TracebackType | None) -> int | None:
    """The template line being run when an error was raised (Jinja rewrites tracebacks so)."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == _TEMPLATE_FILENAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _as_template_error(exc: Exception) -> TemplateError:
    """Our TemplateError for anything a template raised, saying which kind of failure it was."""
    if isinstance(exc, TemplateSyntaxError):
        return TemplateError(f"chat template has a syntax error at line {exc.lineno}: {exc.message}")
    line = _template_line(exc.__traceback__)
    at = f" (template line {line})" if line is not None else ""
    if isinstance(exc, _RaisedByTemplate):
        return TemplateError(f"chat template raised an error{at}: {exc.message}")
    if isinstance(exc, LimitExceeded):
        return TemplateError(f"chat template exceeded {exc.limit}{at}: {exc.detail}")
    if isinstance(exc, SecurityError):
        return TemplateError(f"chat template tried to leave its sandbox{at}: {exc}")
    if isinstance(exc, UndefinedError):
        return TemplateError(f"chat template used an undefined value{at}: {exc}")
    if isinstance(exc, jinja2.TemplateError):
        return TemplateError(f"chat template failed to render{at}: {exc}")
    return TemplateError(f"chat template failed to render{at}: {type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- rendering


def render_chat_template(
    template: str,
    messages: Iterable[ChatMessage | Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    **extra: Any,
) -> str:
    """Render a chat template for ``messages``, exactly as transformers' ``apply_chat_template``.

    ``messages`` go through :func:`normalize_messages`.  The template sees ``messages``,
    ``add_generation_prompt``, ``bos_token``, ``eos_token``, ``tools`` and ``documents`` (both
    ``None`` unless given) and every keyword in ``extra`` (``enable_thinking=False``,
    ``tools=[...]``, ``date_string="15 Jan 2026"``, ...), all copied as plain data.  A callable
    in ``extra`` stays callable and shadows the global of that name: ``strftime_now=...`` fixes
    the date a template prints.  Pass only functions you are happy for the template to call.

    Raises :class:`~llama_cython.errors.TemplateError` (a ValueError) when the template does not
    compile, calls ``raise_exception``, uses an undefined value wrongly, tries to leave the
    sandbox, goes past one of the limits (see :mod:`llama_cython.template_sandbox`) or fails in
    any other way; the original exception is chained as ``__cause__``.

    >>> t = "{% if not enable_thinking %}/no_think {% endif %}{{ messages[-1]['content'] }}"
    >>> render_chat_template(t, [{"role": "user", "content": "2+2?"}], enable_thinking=False)
    '/no_think 2+2?'
    >>> render_chat_template("{{ raise_exception('only user turns') }}", [ChatMessage("user", "x")])
    Traceback (most recent call last):
    ...
    llama_cython.errors.TemplateError: chat template raised an error (template line 1): only user turns
    """
    if not isinstance(template, str):
        raise TypeError(f"template must be a str, got {_type_name(template)}")
    conversation = [_alias_reasoning(message) for message in normalize_messages(messages)]
    variables: dict[str, Any] = {
        "tools": _schema_list("tools", extra.pop("tools", None)),
        "documents": _schema_list("documents", extra.pop("documents", None)),
        "bos_token": _plain(bos_token),
        "eos_token": _plain(eos_token),
    }
    for name, value in extra.items():
        variables[name] = value if callable(value) and not isinstance(value, type) else _plain(value)
    variables["messages"] = conversation
    if not isinstance(add_generation_prompt, bool):
        raise TypeError(f"add_generation_prompt must be a bool, got {_type_name(add_generation_prompt)}")
    variables["add_generation_prompt"] = add_generation_prompt
    try:
        # some real templates compare each message with the ones before it: hence the square
        return _SANDBOX.render(_SANDBOX.compile_template(template), variables,
                               extra_iterations=len(conversation) ** 2)
    except Exception as exc:
        raise _as_template_error(exc) from exc


def render_model_chat(
    model: Model,
    messages: Iterable[ChatMessage | Mapping[str, Any]],
    *,
    template: str | None = None,
    template_kwargs: Mapping[str, Any] | None = None,
    add_generation_prompt: bool = True,
) -> tuple[str, bool]:
    """The prompt text for ``messages`` on ``model``, and whether tokenizing it adds the BOS.

    Uses ``template`` or else the model's own ``tokenizer.chat_template``, with the model's BOS
    and EOS token text. A template that writes the BOS itself gets no second one from the
    tokenizer (``add_special`` is then False).
    """
    if template is None:
        template = model.chat_template
        if template is None:
            raise TemplateError("the model has no chat template (tokenizer.chat_template); "
                                "pass template=...")
    elif not isinstance(template, str):
        raise TypeError(f"template must be a str, got {_type_name(template)}")
    extra: dict[str, Any] = {}
    if template_kwargs is not None:
        if not isinstance(template_kwargs, Mapping):
            raise TypeError(f"template_kwargs must be a mapping, got {_type_name(template_kwargs)}")
        for key in template_kwargs:
            if not isinstance(key, str):
                raise TypeError(f"template_kwargs keys must be str, got {_type_name(key)}")
            if key in ("messages", "add_generation_prompt", "bos_token", "eos_token"):
                raise ValueError(f"template_kwargs cannot set {key!r}; it is set from the call")
        extra.update(template_kwargs)
    from llama_cython._core import chat_specials

    bos, eos, add_bos = chat_specials(model)
    text = render_chat_template(template, messages, add_generation_prompt=add_generation_prompt,
                                bos_token=bos or "", eos_token=eos or "", **extra)
    return text, add_bos and not (bos and text.startswith(bos))
