"""The bounded Jinja2 sandbox that chat templates run in (used by :mod:`llama_cython.chat`).

It holds the sandboxed environment with its limits: the limit constants, the deadline and budget
of a render, the code generator that counts loop passes, the bounded builtins (``range``,
``lipsum``, ``dict``, ``namespace``), filters and ``str``/``bytes``/``int`` methods, and the
cache of compiled templates.  :mod:`llama_cython.chat` builds one :class:`TemplateSandbox` with
the names that chat templates written for transformers expect, renders with it and turns what it
raises into :class:`~llama_cython.errors.TemplateError`.

>>> from llama_cython.template_sandbox import TemplateSandbox
>>> sandbox = TemplateSandbox()
>>> sandbox.render(sandbox.compile_template("{{ name * 2 }}"), {"name": "ab"})
'abab'
>>> sandbox.render(sandbox.compile_template("{{ 'a' * 10 ** 9 }}"), {})
Traceback (most recent call last):
...
llama_cython.template_sandbox.LimitExceeded: the string limit of 16,000,000 characters: \
the '*' operator would make 1,000,000,000 characters

Templates come from model files, which may be untrusted: besides forbidding Python internals (as
Jinja's sandbox does), the sandbox keeps a template from running for ever or filling the memory.
A render that goes past one of the limits below raises :class:`LimitExceeded`, which names it
(``the loop limit of 1,000,000 iterations``).  Real templates stay far below every limit; each
is a module constant, read when a render starts, that can be raised if ever needed.

``MAX_OUTPUT_LENGTH`` (16,000,000 characters)
    text written while rendering, counting what macros and ``{% set %}`` blocks write before it
    reaches the prompt, and the literal text of every loop pass.
``MAX_STRING_LENGTH`` (16,000,000 characters)
    any one string an operator (``+ * % ~``), a string method or a filter makes, checked before
    it is made: ``'a' * 2000000000``, ``'%01500000000d' % 1``, ``center(1500000000)``,
    ``'{:>1500000000}'.format(1)``, ``tojson(indent=...)``...  A list or dict turned into text
    (printed, ``~``, ``%s``, ``join``, ``tojson``, ``string``...) is sized first, without
    building the text, so a much-shared nested list cannot expand into gigabytes.
``MAX_SEQUENCE_LENGTH`` (1,000,000 items)
    any one list or tuple made by an operator, a call or a filter (``+``, ``*``, ``list``,
    ``sum``, ``batch``, ``slice``, ...).
``MAX_RANGE_LENGTH`` (100,000 items)
    one ``range()``.
``MAX_LOOP_ITERATIONS`` (1,000,000, plus the square of the number of messages)
    ``{% for %}`` passes in one render, all loops together (with the items a loop's ``if``
    skips), and the Python loops of ``lipsum()``, ``indent`` and ``wordwrap``.  Some real chat
    templates compare each message with the ones before it: hence the square, which
    :mod:`llama_cython.chat` adds (``extra_iterations`` of :meth:`TemplateSandbox.render`).
``MAX_INT_BITS`` (4,096 bits)
    any one integer an operator makes: ``10 ** (10 ** 9)`` fails before it is computed.
``MAX_RENDER_SECONDS`` (30 seconds)
    wall time of one render, checked at every loop pass, call, operator, filter and output.

No template expression is evaluated while compiling (Jinja's constant folding is off), so a
template cannot do its work outside these limits.  Compiled templates are cached by source, at
most ``TEMPLATE_CACHE_SIZE`` (64) of them holding at most ``TEMPLATE_CACHE_BYTES`` (16 MiB) of
source; a template larger than that is compiled for each render.
"""

from __future__ import annotations

import builtins
import collections
import collections.abc
import contextvars
import functools
import itertools
import operator
import re
import sys
import threading
import time
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import jinja2
import jinja2.ext
import jinja2.filters
import jinja2.nodes
import jinja2.runtime
import jinja2.utils
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEnvironment, SandboxedFormatter
from markupsafe import EscapeFormatter, Markup

__all__ = [
    "MAX_INT_BITS", "MAX_LOOP_ITERATIONS", "MAX_OUTPUT_LENGTH", "MAX_RANGE_LENGTH",
    "MAX_RENDER_SECONDS", "MAX_SEQUENCE_LENGTH", "MAX_STRING_LENGTH", "TEMPLATE_CACHE_BYTES",
    "TEMPLATE_CACHE_SIZE", "LimitExceeded", "TemplateSandbox", "check_json_size",
]


# --------------------------------------------------------------------------- limits

MAX_OUTPUT_LENGTH = 16_000_000
"""Most characters one render may write (see the module docstring for what counts)."""
MAX_STRING_LENGTH = 16_000_000
"""Most characters of any one string a template makes."""
MAX_SEQUENCE_LENGTH = 1_000_000
"""Most items of any one list or tuple a template makes."""
MAX_RANGE_LENGTH = 100_000
"""Most items of one ``range()``."""
MAX_LOOP_ITERATIONS = 1_000_000
"""Most loop passes of one render, plus its ``extra_iterations`` (chat: messages squared)."""
MAX_INT_BITS = 4_096
"""Most bits of an integer an operator makes (below Python's 4,300-digit ``str()`` limit)."""
MAX_RENDER_SECONDS = 30.0
"""Most wall-clock seconds one render may take."""
TEMPLATE_CACHE_SIZE = 64
"""Most compiled templates kept."""
TEMPLATE_CACHE_BYTES = 16 * 1024 * 1024
"""Most bytes of template source (``sys.getsizeof``) the compiled templates kept may hold."""

_CHECK_EVERY = 4096  # items a long walk goes through between checks of the deadline


class LimitExceeded(jinja2.TemplateError):
    """A template went past one of the limits: ``limit`` names it, ``detail`` says how."""

    def __init__(self, limit: str, detail: str) -> None:
        super().__init__(f"{limit}: {detail}")
        self.limit = limit
        self.detail = detail


def _string_limit(size: int, what: str) -> None:
    if size > MAX_STRING_LENGTH:
        raise LimitExceeded(f"the string limit of {MAX_STRING_LENGTH:,} characters",
                            f"{what} would make {size:,} characters")


def _sequence_limit(size: int, what: str) -> None:
    if size > MAX_SEQUENCE_LENGTH:
        raise LimitExceeded(f"the sequence limit of {MAX_SEQUENCE_LENGTH:,} items",
                            f"{what} would make {size:,} items")


def _int_limit(bits: int, what: str) -> None:
    if bits > MAX_INT_BITS:
        raise LimitExceeded(f"the integer limit of {MAX_INT_BITS:,} bits",
                            f"{what} would make an integer of {bits:,} bits")


class _Budget:
    """What one render may still spend: its deadline, loop passes and output characters."""

    __slots__ = ("deadline", "iterations_left", "max_iterations", "max_output", "output_left",
                 "seconds")

    def __init__(self, extra_iterations: int) -> None:
        self.seconds = float(MAX_RENDER_SECONDS)
        self.deadline = time.monotonic() + self.seconds
        self.max_iterations = MAX_LOOP_ITERATIONS + extra_iterations
        self.iterations_left = self.max_iterations
        self.max_output = MAX_OUTPUT_LENGTH
        self.output_left = self.max_output

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise LimitExceeded(f"the time limit of {self.seconds:g} seconds",
                                "the template was still rendering")

    def spend_iterations(self, count: int, what: str) -> None:
        self.iterations_left -= count
        if self.iterations_left < 0:
            raise LimitExceeded(f"the loop limit of {self.max_iterations:,} iterations",
                                f"{what} went past it")

    def spend_output(self, size: int) -> None:
        self.output_left -= size
        if self.output_left < 0:
            raise LimitExceeded(f"the output limit of {self.max_output:,} characters",
                                f"{self.max_output - self.output_left:,} characters written")


# The budget of the render running in this thread (None outside a render, e.g. while compiling:
# then only the limits on single values apply).
_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "llama_cython_template_budget", default=None)


def _check_time() -> _Budget | None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.check_time()
    return budget


def _spend_iterations(count: int, what: str) -> None:
    budget = _check_time()
    if budget is not None:
        budget.spend_iterations(count, what)
    elif count > MAX_LOOP_ITERATIONS:
        raise LimitExceeded(f"the loop limit of {MAX_LOOP_ITERATIONS:,} iterations",
                            f"{what} went past it")


# --------------------------------------------------------------------------- sizing values


def _index(value: Any) -> int | None:
    """``value`` as an int if it is one (a width, a count), else None (the call will complain)."""
    try:
        return operator.index(value)
    except TypeError:
        return None


def _digits_value(digits: str) -> int:
    """The number a run of digits in a format string stands for, capped to stay cheap."""
    return int(digits) if len(digits) <= 18 else 10**18


_TEXT_TYPES = (str, bytes, bytearray)
_SEQUENCE_TYPES = (list, tuple, set, frozenset, collections.abc.KeysView, collections.abc.ValuesView,
                   collections.abc.ItemsView)
_END = object()  # what next() gives at the end of an iterator


def _text_size(value: Any, *, item_extra: int = 2, indent: int = 0) -> int:
    """An estimate of ``len(str(value))``, counted without building it; at least the limit when big.

    Exact for a string.  Lists, tuples, sets, dicts and namespaces are walked (iteratively: a
    nested value cannot overflow the stack), counting a shared item each time it appears, as
    ``str()`` would write it each time; each item adds ``item_extra`` characters of quotes and
    separators, plus ``indent`` per level of nesting (for JSON with an indent).  The walk stops
    once the estimate passes MAX_STRING_LENGTH, so it is cheap even for a huge value.
    """
    if isinstance(value, str):
        return len(value)
    if value is None or isinstance(value, (bool, float)):
        return 24
    if isinstance(value, int):
        return value.bit_length() * 3 // 10 + 2
    limit = MAX_STRING_LENGTH
    total = 0
    visits = 0
    stack: list[tuple[Iterator[Any], int]] = [(iter((value,)), 0)]
    while stack:
        items, depth = stack[-1]
        item = next(items, _END)
        if item is _END:
            stack.pop()
            continue
        visits += 1
        if visits % _CHECK_EVERY == 0:
            _check_time()
        total += item_extra + indent * depth
        if isinstance(item, _TEXT_TYPES):
            total += len(item)
        elif isinstance(item, (bool, float)) or item is None:
            total += 24
        elif isinstance(item, int):
            total += item.bit_length() * 3 // 10 + 2
        elif isinstance(item, collections.abc.Mapping):
            stack.append((itertools.chain.from_iterable(item.items()), depth + 1))
        elif isinstance(item, jinja2.utils.Namespace):
            attrs = object.__getattribute__(item, "_Namespace__attrs")
            stack.append((itertools.chain.from_iterable(attrs.items()), depth + 1))
        elif isinstance(item, _SEQUENCE_TYPES):
            stack.append((iter(item), depth + 1))
        elif not isinstance(item, jinja2.runtime.Undefined):  # prints nothing
            total += 64  # other objects (macros, loop, range, ...) print a short repr
        if total > limit:
            break
    return total


def _bounded_list(value: Any, what: str) -> list[Any]:
    """``list(value)``, failing once it would pass MAX_SEQUENCE_LENGTH items."""
    if isinstance(value, collections.abc.Collection):
        _sequence_limit(len(value), what)
        return list(value)
    items: list[Any] = []
    for item in value:
        items.append(item)
        if len(items) % _CHECK_EVERY == 0:
            _check_time()
            _sequence_limit(len(items), what)
    _sequence_limit(len(items), what)
    return items


def _checked(result: Any, what: str) -> Any:
    """``result`` of an operator, call or filter, if it is within the limits on one value."""
    if isinstance(result, _TEXT_TYPES):
        _string_limit(len(result), what)
    elif isinstance(result, (list, tuple, dict, set, frozenset)):
        _sequence_limit(len(result), what)
    elif isinstance(result, int) and not isinstance(result, bool):
        _int_limit(result.bit_length(), what)
    return result


# --------------------------------------------------------------------------- operators and methods

# printf-style conversions: %[(key)][flags][width][.precision][length]type
_PERCENT_SPEC = re.compile(r"%(?:\(([^)]*)\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_percent(fmt: str | bytes, values: Any, what: str) -> None:
    """Refuse ``fmt % values`` when its widths, precisions and values would make too long a string."""
    text = fmt.decode("latin-1") if isinstance(fmt, bytes) else str(fmt)
    size = len(text)
    star = False
    mapping = values if isinstance(values, collections.abc.Mapping) else None
    for count, spec in enumerate(_PERCENT_SPEC.finditer(text)):
        key, width, precision = spec.groups()
        for number in (width, precision):
            if number == "*":
                star = True
            elif number:
                size += _digits_value(number)
        if key is not None and mapping is not None:
            size += _text_size(mapping.get(key))
        if size > MAX_STRING_LENGTH:
            break
        if count % _CHECK_EVERY == 0:
            _check_time()
    if mapping is None:
        for value in values if isinstance(values, tuple) else (values,):
            size += _text_size(value)
            if star and isinstance(value, int):
                size += abs(value)
            if size > MAX_STRING_LENGTH:
                break
    _string_limit(size, what)


def _check_format_spec(spec: str, value: Any, what: str) -> int:
    """Refuse a ``str.format`` field whose width or precision is too large; its estimated size."""
    size = _text_size(value)
    for digits in re.findall(r"\d+", spec):
        size += _digits_value(digits)
    _string_limit(size, what)
    return size


def _check_text_method(owner: str | bytes, name: str, args: tuple[Any, ...],
                       kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Refuse a call of a str/bytes method that would build too long a string (before it runs).

    Returns the arguments to call it with: ``join`` gets its items as a list, counted first.
    """
    what = f"{type(owner).__name__}.{name}()"
    length = len(owner)
    if name in ("center", "ljust", "rjust", "zfill") and args:
        width = _index(args[0])
        if width is not None:
            _string_limit(width, what)
    elif name == "expandtabs":
        tabsize = _index(args[0] if args else kwargs.get("tabsize", 8))
        if tabsize is not None:
            tab: str | bytes = "\t" if isinstance(owner, str) else b"\t"
            _string_limit(length + owner.count(tab) * max(tabsize, 0), what)  # type: ignore[arg-type]
    elif name == "replace" and len(args) >= 2:
        old, new = args[0], args[1]
        count = _index(args[2] if len(args) > 2 else kwargs.get("count", -1))
        if isinstance(old, type(owner)) and isinstance(new, type(owner)) and count is not None:
            found = owner.count(old) if old else length + 1  # type: ignore[arg-type]
            if count >= 0:
                found = min(found, count)
            _string_limit(length + found * (len(new) - len(old)), what)
    elif name == "join" and args:
        items = _bounded_list(args[0], what)
        size = max(len(items) - 1, 0) * length
        for item in items:
            size += len(item) if isinstance(item, _TEXT_TYPES) else 0
            if size > MAX_STRING_LENGTH:
                break
        _string_limit(size, what)
        return (items, *args[1:])
    elif name == "translate" and args and isinstance(args[0], collections.abc.Mapping):
        longest = max((len(v) for v in args[0].values() if isinstance(v, _TEXT_TYPES)), default=1)
        _string_limit(length * max(longest, 1), what)
    return args


def _check_call(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Pre-checks of the builtin methods that can build a huge value from small arguments."""
    if not isinstance(obj, types.BuiltinMethodType):
        return args
    owner = obj.__self__
    if isinstance(owner, (str, bytes)):
        return _check_text_method(owner, obj.__name__, args, kwargs)
    if isinstance(owner, int) and obj.__name__ == "to_bytes":
        size = _index(args[0] if args else kwargs.get("length", 1))
        if size is not None:
            _string_limit(size, "int.to_bytes()")
    return args


def _check_binop(op: str, left: Any, right: Any) -> None:
    """Refuse ``left <op> right`` when its result would be too large (before computing it)."""
    what = f"the {op!r} operator"
    if op == "*":
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, (str, bytes, list, tuple)) and isinstance(times, int):
                size = len(seq) * max(times, 0)
                if isinstance(seq, (str, bytes)):
                    _string_limit(size, what)
                else:
                    _sequence_limit(size, what)
        if isinstance(left, int) and isinstance(right, int):
            _int_limit(left.bit_length() + right.bit_length(), what)
    elif op == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 1 and abs(left) > 1:
            _int_limit((abs(left).bit_length() - 1) * right + 1, what)
    elif op == "+":
        if isinstance(left, (str, bytes)) and isinstance(right, (str, bytes)):
            _string_limit(len(left) + len(right), what)
        elif isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)):
            _sequence_limit(len(left) + len(right), what)
    elif op == "%" and isinstance(left, (str, bytes)):
        _check_percent(left, right, what)

def check_json_size(value: Any, *, indent: int | str | None = None,
                    separators: tuple[str, str] | None = None) -> None:
    """Refuse ``json.dumps(value, indent=indent, separators=separators)`` when it would be too long.

    The JSON's size is estimated without building it (:data:`MAX_STRING_LENGTH`), so that a huge
    ``indent`` or a much-shared value is refused; a ``tojson`` filter calls this first.
    """
    width = len(indent) if isinstance(indent, str) else max(_index(indent) or 0, 0)
    if isinstance(separators, (tuple, list)) and all(isinstance(sep, str) for sep in separators):
        between = sum(map(len, separators))
    else:
        between = 3
    _string_limit(_text_size(value, item_extra=between + 2 + (width > 0), indent=width),
                  "the tojson filter")


# --------------------------------------------------------------------------- output and builtins


def _finalize(value: Any) -> Any:
    """Every ``{{ value }}`` a template writes: its text is counted before ``str()`` makes it."""
    size = _text_size(value)
    budget = _check_time()
    if budget is not None:
        budget.spend_output(size)
    elif size > MAX_OUTPUT_LENGTH:
        raise LimitExceeded(f"the output limit of {MAX_OUTPUT_LENGTH:,} characters",
                            f"one value of {size:,} characters")
    return value


def _range(*args: Any) -> range:
    """Template global ``range``: Python's, at most MAX_RANGE_LENGTH items."""
    items = range(*args)
    try:
        size = len(items)
    except OverflowError:  # more than sys.maxsize items
        size = (items.stop - items.start + items.step - (1 if items.step > 0 else -1)) // items.step
    if size > MAX_RANGE_LENGTH:
        raise LimitExceeded(f"the range limit of {MAX_RANGE_LENGTH:,} items",
                            f"range({', '.join(map(str, args))}) has {size:,} items")
    return items


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    """Template global ``lipsum``: Jinja's, its words counted as loop iterations."""
    paragraphs, longest = _index(n), _index(max)
    if paragraphs is not None and longest is not None:
        _spend_iterations(builtins.max(paragraphs, 0) * builtins.max(longest, 1),
                          f"lipsum({n}) with up to {max} words a paragraph")
    return jinja2.utils.generate_lorem_ipsum(n, html, min, max)


class _DictBuiltin:
    """Template global ``dict``: builds dicts, and nothing else of the ``dict`` type is reachable."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        if args and not isinstance(args[0], collections.abc.Collection):  # pairs from a generator
            args = (_bounded_list(args[0], "dict()"), *args[1:])
        return dict(*args, **kwargs)

    def fromkeys(self, keys: Iterable[Any], value: Any = None) -> dict[Any, Any]:
        return dict.fromkeys(_bounded_list(keys, "dict.fromkeys()"), value)


def _check_namespace_name(name: object) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise SecurityError(f"a chat template may not set the underscore name {name!r} on a namespace")


class _Namespace(jinja2.utils.Namespace):
    """Template global ``namespace``: Jinja's, refusing names that start with an underscore."""

    # No named self, as in Jinja's Namespace: namespace(self=1) must still work.
    def __init__(*args: Any, **kwargs: Any) -> None:
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _check_namespace_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _check_namespace_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)


# --------------------------------------------------------------------------- filters


def _filter_arg(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str,
                default: Any) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


def _text_of(value: Any, what: str) -> str | None:
    """``value`` as the string a filter would make of it, or None when it is not a string."""
    if isinstance(value, str):
        return value
    _string_limit(_text_size(value), what)
    return None


def _check_center(value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    width = _index(_filter_arg(args, kwargs, 0, "width", 80))
    if width is not None:
        _string_limit(width, "the center filter")


def _check_indent(value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    text = _text_of(value, "the indent filter")
    width = _filter_arg(args, kwargs, 0, "width", 4)
    size = len(width) if isinstance(width, str) else _index(width)
    if text is not None and size is not None:
        lines = text.count("\n") + 1
        _string_limit(len(text) + lines * size, "the indent filter")
        _spend_iterations(lines, "the indent filter")  # it loops over the lines in Python


def _check_wordwrap(value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    text = _text_of(value, "the wordwrap filter")
    wrapstring = _filter_arg(args, kwargs, 2, "wrapstring", None)
    if text is not None:
        between = len(wrapstring) if isinstance(wrapstring, str) else 1
        _string_limit(len(text) + (len(text) + 1) * between, "the wordwrap filter")
        _spend_iterations((len(text) + 1) // 2, "the wordwrap filter")  # a Python loop per word


def _check_replace(value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    text = _text_of(value, "the replace filter")
    old, new = (_filter_arg(args, kwargs, i, name, "") for i, name in enumerate(("old", "new")))
    count = _filter_arg(args, kwargs, 2, "count", None)
    if text is not None:
        _check_text_method(text, "replace", (_text_of(old, "replace") or str(old),
                                             _text_of(new, "replace") or str(new),
                                             -1 if count is None else count), {})


def _check_format(value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    text = _text_of(value, "the format filter")
    if text is not None:
        _check_percent(text, kwargs or args, "the format filter")


def _check_batch(value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    linecount = _index(_filter_arg(args, kwargs, 0, "linecount", 0))
    if linecount is not None and _filter_arg(args, kwargs, 1, "fill_with", None) is not None:
        _sequence_limit(linecount, "the batch filter")


def _check_slice(value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    slices = _index(_filter_arg(args, kwargs, 0, "slices", 0))
    if slices is not None:
        _sequence_limit(slices, "the slice filter")


_FilterCheck = Callable[[Any, tuple[Any, ...], dict[str, Any]], None]
_FILTER_CHECKS: dict[str, _FilterCheck] = {
    "center": _check_center,
    "indent": _check_indent,
    "wordwrap": _check_wordwrap,
    "replace": _check_replace,
    "format": _check_format,
    "batch": _check_batch,
    "slice": _check_slice,
}
# Filters that make a list of their input (or sort it): a generator input is listed first, within
# MAX_SEQUENCE_LENGTH (e.g. ``'x' * 10**7 | batch(1) | sort``).
_LISTING_FILTERS = frozenset({"groupby", "reverse", "slice", "sort", "unique"})
# Filters that turn their input into a string: a list or dict input is sized first.
_STRINGIFYING_FILTERS = frozenset({
    "capitalize", "center", "e", "escape", "forceescape", "format", "indent", "lower", "pprint",
    "replace", "safe", "string", "striptags", "title", "trim", "truncate", "upper", "urlencode",
    "urlize", "wordcount", "wordwrap", "xmlattr",
})


def _limited_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """Jinja filter ``func`` with the deadline, its own pre-check and a check of its result."""
    check = _FILTER_CHECKS.get(name)
    stringifies = name in _STRINGIFYING_FILTERS
    lists = name in _LISTING_FILTERS
    skip = 1 if hasattr(func, "jinja_pass_arg") else 0  # the context/environment Jinja passes first
    what = f"the {name} filter"

    @functools.wraps(func)
    def limited(*args: Any, **kwargs: Any) -> Any:
        _check_time()
        if len(args) > skip:
            if lists and not isinstance(args[skip], collections.abc.Collection):
                args = (*args[:skip], _bounded_list(args[skip], what), *args[skip + 1:])
            if stringifies:
                _text_of(args[skip], what)
            if check is not None:
                check(args[skip], args[skip + 1:], kwargs)
        return _checked(func(*args, **kwargs), what)

    return limited


def _list_filter(value: Any) -> list[Any]:
    """Filter ``list``: at most MAX_SEQUENCE_LENGTH items."""
    return _bounded_list(value, "the list filter")


@jinja2.pass_eval_context
def _join_filter(eval_ctx: jinja2.nodes.EvalContext, value: Any, d: Any = "",
                 attribute: str | int | None = None) -> str:
    """Filter ``join``: Jinja's, its items and their text counted first."""
    items = _bounded_list(value, "the join filter")
    if attribute is not None:
        items = [jinja2.filters.make_attrgetter(eval_ctx.environment, attribute)(item) for item in items]
    size = max(len(items) - 1, 0) * _text_size(d)
    for item in items:
        size += _text_size(item)
        if size > MAX_STRING_LENGTH:
            break
    _string_limit(size, "the join filter")
    return jinja2.filters.sync_do_join(eval_ctx, items, d)


@jinja2.pass_environment
def _sum_filter(environment: jinja2.Environment, iterable: Any, attribute: str | int | None = None,
                start: Any = 0) -> Any:
    """Filter ``sum``: Jinja's, its items counted first, and lists joined in linear time.

    ``sum()`` of lists copies the running total at each step, which is quadratic and runs in
    C where the deadline cannot stop it; chaining the lists gives the same list.
    """
    items = _bounded_list(iterable, "the sum filter")
    if attribute is not None:
        items = [jinja2.filters.make_attrgetter(environment, attribute)(item) for item in items]
    if isinstance(start, (list, tuple)) and all(type(item) is type(start) for item in items):
        _sequence_limit(len(start) + sum(map(len, items)), "the sum filter")
        joined = list(itertools.chain(start, *items))
        return joined if isinstance(start, list) else tuple(joined)
    return sum(items, start)


# --------------------------------------------------------------------------- the environment


# Jinja forbids new node types: a loop-pass counter is an ExtensionAttribute node with this
# identifier (no extension has it), which _LimitedCodeGenerator compiles to a call of
# _LimitedEnvironment._llama_loop_tick; its name is the count of literal characters to charge.
_LOOP_TICK = "llama_cython.template_sandbox:loop-tick"


def _loop_tick_node(chars: int, lineno: int) -> jinja2.nodes.ExtensionAttribute:
    return jinja2.nodes.ExtensionAttribute(_LOOP_TICK, str(chars), lineno=lineno)


def _literal_length(body: list[jinja2.nodes.Node]) -> int:
    """Characters of literal text in a loop body, not counting nested loops (they count their own)."""
    total = 0
    stack = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, jinja2.nodes.TemplateData):
            total += len(node.data)
        elif not isinstance(node, jinja2.nodes.For):
            stack.extend(node.iter_child_nodes())
    return total


class _LimitedCodeGenerator(CodeGenerator):
    """Jinja's code generator, changed so that limits hold in every template.

    Every ``{% for %}`` counts its passes (:meth:`_LimitedEnvironment._llama_loop_tick`), ``~``
    sizes its parts before joining them, and nothing but literal text is evaluated at compile
    time, where no limit applies.
    """

    def visit_Template(self, node: jinja2.nodes.Template, frame: Frame | None = None) -> None:
        for loop in list(node.find_all(jinja2.nodes.For)):
            # first in the body: count the pass and the body's literal text
            tick = _loop_tick_node(_literal_length(loop.body), loop.lineno)
            loop.body = [jinja2.nodes.ExprStmt(tick, lineno=loop.lineno), *loop.body]
            if loop.test is not None:  # {% for x in xs if test %}: count the skipped items too
                loop.test = jinja2.nodes.And(_loop_tick_node(0, loop.lineno), loop.test,
                                             lineno=loop.lineno)
        super().visit_Template(node, frame)

    def visit_ExtensionAttribute(self, node: jinja2.nodes.ExtensionAttribute, frame: Frame) -> None:
        if node.identifier == _LOOP_TICK:
            self.write(f"environment._llama_loop_tick({int(node.name)})")
        else:
            super().visit_ExtensionAttribute(node, frame)

    def visit_Concat(self, node: jinja2.nodes.Concat, frame: Frame) -> None:
        # Jinja's, with the parts going through _llama_concat_check first
        if frame.eval_ctx.volatile:
            func_name = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            func_name = "markup_join"
        else:
            func_name = "str_join"
        self.write(f"{func_name}(environment._llama_concat_check((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write(")))")

    def _output_child_to_const(self, node: jinja2.nodes.Expr, frame: Frame,
                               finalize: CodeGenerator._FinalizeInfo) -> str:
        # Jinja folds constant output such as {{ 'a' * 10 ** 9 }} at compile time, outside any
        # limit: only literal text is folded here.
        if not isinstance(node, jinja2.nodes.TemplateData):
            raise jinja2.nodes.Impossible()
        return super()._output_child_to_const(node, frame, finalize)

    def visit_EvalContextModifier(self, node: jinja2.nodes.EvalContextModifier,
                                  frame: Frame) -> None:
        # {% autoescape expr %}: Jinja evaluates expr at compile time too; only a constant here
        if all(isinstance(keyword.value, jinja2.nodes.Const) for keyword in node.options):
            super().visit_EvalContextModifier(node, frame)
            return
        for keyword in node.options:
            self.writeline(f"context.eval_ctx.{keyword.key} = ")
            self.visit(keyword.value, frame)
        frame.eval_ctx.volatile = True


class _LimitedFormatter(SandboxedFormatter):
    """The sandbox's ``str.format``, refusing fields that would make too long a string."""

    def __init__(self, env: jinja2.Environment, **kwargs: Any) -> None:
        super().__init__(env, **kwargs)
        self._size = 0  # estimated size of the string being formatted

    def vformat(self, format_string: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
        self._size = len(format_string)
        return super().vformat(format_string, args, kwargs)

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion is not None:  # !r, !s, !a: the text of the whole value
            _string_limit(_text_size(value), "str.format()")
        return super().convert_field(value, conversion)

    def format_field(self, value: Any, format_spec: str) -> Any:
        self._size += _check_format_spec(format_spec, value, "str.format()")
        _string_limit(self._size, "str.format()")
        return super().format_field(value, format_spec)


class _LimitedEscapeFormatter(_LimitedFormatter, EscapeFormatter):
    pass


class _LimitedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, with every operator, call, format and loop pass going through the limits."""

    code_generator_class = _LimitedCodeGenerator
    # Intercepted operators are also never folded at compile time (nodes.BinExpr.as_const).
    intercepted_binops = frozenset(SandboxedEnvironment.default_binop_table)

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any,
                   right: Any) -> Any:
        _check_time()
        _check_binop(operator, left, right)
        return _checked(self.binop_table[operator](left, right), f"the {operator!r} operator")

    def call(self, context: jinja2.runtime.Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _check_time()
        if not self.is_safe_callable(obj):
            raise SecurityError(f"{obj!r} is not safely callable")
        args = _check_call(obj, args, kwargs)
        name = getattr(obj, "__name__", type(obj).__name__)
        return _checked(context.call(obj, *args, **kwargs), f"{name}()")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        # Jinja's SandboxedEnvironment.wrap_str_format, with the limited formatters
        if not isinstance(value, (types.MethodType, types.BuiltinMethodType)) or (
            value.__name__ not in ("format", "format_map")
        ):
            return None
        f_self: Any = value.__self__
        if not isinstance(f_self, str):
            return None
        str_type: type[str] = type(f_self)
        is_format_map = value.__name__ == "format_map"
        formatter: _LimitedFormatter
        if isinstance(f_self, Markup):
            formatter = _LimitedEscapeFormatter(self, escape=f_self.escape)
        else:
            formatter = _LimitedFormatter(self)

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs:
                    raise TypeError("format_map() takes no keyword arguments")
                if len(args) != 1:
                    raise TypeError(f"format_map() takes exactly one argument ({len(args)} given)")
                kwargs = args[0]
                args = ()
            return str_type(formatter.vformat(f_self, args, kwargs))

        return functools.update_wrapper(wrapper, value)

    def _llama_loop_tick(self, chars: int) -> bool:
        """One pass of a loop (generated code calls this): count it and its literal text."""
        budget = _BUDGET.get()
        if budget is not None:
            budget.iterations_left -= 1
            budget.output_left -= chars
            if budget.iterations_left < 0 or budget.output_left < 0 or (
                time.monotonic() > budget.deadline
            ):
                budget.check_time()
                budget.spend_iterations(0, "a {% for %} loop")
                budget.spend_output(0)
        return True

    def _llama_concat_check(self, parts: tuple[Any, ...]) -> tuple[Any, ...]:
        """The parts of ``a ~ b ~ ...`` (generated code calls this), sized before they are joined."""
        _check_time()
        size = 0
        for part in parts:
            size += _text_size(part)
            if size > MAX_STRING_LENGTH:
                break
        _string_limit(size, "the '~' operator")
        return parts


# --------------------------------------------------------------------------- the sandbox


class TemplateSandbox:
    """A bounded Jinja2 environment and its cache of compiled templates.

    ``extensions``, ``filters``, ``globals`` and the Jinja ``options`` (``trim_blocks=True``,
    ...) are the caller's: :mod:`llama_cython.chat` passes those of transformers.  Every filter,
    the caller's too, is checked against the limits; the bounded ``range``, ``lipsum``, ``dict``,
    ``namespace`` and the ``list``, ``join`` and ``sum`` filters replace Jinja's, and cannot be
    replaced.  The options ``optimized`` and ``finalize`` are the sandbox's own.
    """

    def __init__(
        self,
        *,
        extensions: Sequence[str | type[jinja2.ext.Extension]] = (),
        filters: Mapping[str, Callable[..., Any]] | None = None,
        globals: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        env = _LimitedEnvironment(
            extensions=extensions,
            optimized=False,  # no constant folding: nothing runs at compile time, outside the limits
            finalize=_finalize,
            **options,
        )
        env.filters.update(filters or {})
        env.filters.update(list=_list_filter, join=_join_filter, sum=_sum_filter)
        for name, func in list(env.filters.items()):
            env.filters[name] = _limited_filter(name, func)
        env.globals.update(globals or {})
        env.globals.update(dict=_DictBuiltin(), namespace=_Namespace, range=_range, lipsum=_lipsum)
        self._environment = env
        # Compiled templates by source, least recently used first; bounded by count and by bytes.
        self._cache: collections.OrderedDict[str, jinja2.Template] = collections.OrderedDict()
        self._cache_bytes = 0
        self._cache_lock = threading.Lock()

    def compile_template(self, source: str) -> jinja2.Template:
        """The compiled template (cached: a chat template is rendered for every chat turn).

        Raises :class:`jinja2.TemplateSyntaxError` for a template that does not compile.
        """
        with self._cache_lock:
            compiled = self._cache.get(source)
            if compiled is not None:
                self._cache.move_to_end(source)
                return compiled
        compiled = self._environment.from_string(source)
        size = sys.getsizeof(source)
        if size > TEMPLATE_CACHE_BYTES or TEMPLATE_CACHE_SIZE < 1:
            return compiled  # too big to keep: compiled again at each render
        with self._cache_lock:
            earlier = self._cache.get(source)  # another thread compiled it meanwhile
            if earlier is not None:
                return earlier
            self._cache[source] = compiled
            self._cache_bytes += size
            while len(self._cache) > TEMPLATE_CACHE_SIZE or self._cache_bytes > TEMPLATE_CACHE_BYTES:
                evicted, _ = self._cache.popitem(last=False)
                self._cache_bytes -= sys.getsizeof(evicted)
        return compiled

    def cache_usage(self) -> tuple[int, int]:
        """How many compiled templates are cached, and the bytes of their sources."""
        with self._cache_lock:
            return len(self._cache), self._cache_bytes

    def render(self, template: jinja2.Template, context: Mapping[str, Any], *,
               extra_iterations: int = 0) -> str:
        """Render ``template`` (from :meth:`compile_template`) with ``context``, within the limits.

        ``extra_iterations`` loop passes are allowed on top of ``MAX_LOOP_ITERATIONS``.  Raises
        :class:`LimitExceeded` for a template that goes past a limit, and whatever Jinja or the
        template raises otherwise (:class:`jinja2.TemplateError`, ``TypeError``, ...).
        """
        if template.environment is not self._environment:
            raise ValueError("the template was not compiled by this sandbox")
        token = _BUDGET.set(_Budget(extra_iterations))
        try:
            text = template.render(context)
        finally:
            _BUDGET.reset(token)
        if len(text) > MAX_OUTPUT_LENGTH:
            raise LimitExceeded(f"the output limit of {MAX_OUTPUT_LENGTH:,} characters",
                                f"the prompt has {len(text):,} characters")
        return text
