"""Checks GBNF grammar text before llama.cpp compiles it.

llama.cpp's grammar parser (``src/llama-grammar.cpp``) reports a mistake only as "error parsing
grammar" in its log, recurses once per level of parentheses, expands ``x{m,n}`` by copying, and
can loop or build millions of parse stacks on grammars it accepts. :func:`check_gbnf` reads the
same language in pure Python, without recursion, and raises
:class:`~llama_cython.errors.GrammarError` with a line, a column and a plain message for:

* syntax errors: a rule without ``::=``, an unterminated string or character class, an unknown
  escape, an empty character class, a reversed range (``[z-a]``), reversed or too large
  repetition bounds (``{3,1}``, ``{5000}``), a repetition with nothing before it, an unclosed or
  unmatched parenthesis, a character llama.cpp cannot read (NUL, a lone surrogate);
* a rule that is used but never defined, and a missing root rule;
* left recursion, in llama.cpp's sense (a rule reaches itself through the first symbols of its
  alternatives, skipping rules that have an empty alternative), and also through symbols that
  can only *derive* the empty string when the loop would make llama.cpp's parse stack grow
  forever (``root ::= opt root "x"`` with ``opt ::= "a"?``);
* a root rule that cannot match any text (every derivation is infinite, or needs a character
  class that matches no character);
* input that would exhaust llama.cpp: parentheses nested deeper than ``max_depth`` (its parser
  recurses), repetitions whose copies would exceed ``max_expanded`` grammar elements, and
  alternatives that would make it build more than ``max_stacks`` parse stacks at once.

Duplicate definitions are not errors: like llama.cpp, the last definition of a rule replaces
the earlier ones. ``<token>`` references are accepted as written (only the model's vocabulary
can tell whether they name one token); ``<[id]>`` ids are checked to fit 32 bits.

>>> check_gbnf('root ::= "yes" | "no"')
GrammarInfo(rules=('root',), root='root')
>>> check_gbnf('root ::= expr\\nexpr ::= expr "+" term | term\\nterm ::= [0-9]+')
Traceback (most recent call last):
...
llama_cython.errors.GrammarError: line 2, column 10: rule 'expr' is left-recursive (expr -> expr)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llama_cython.errors import GrammarError

__all__ = ["GrammarError", "GrammarInfo", "check_gbnf"]


@dataclass(frozen=True)
class GrammarInfo:
    """What :func:`check_gbnf` found in a valid grammar."""

    rules: tuple[str, ...]
    """The names of the rules the text defines, in the order of their first definition."""
    root: str
    """The rule generation starts from."""


# llama.cpp's MAX_REPETITION_THRESHOLD: the largest repetition count it accepts, and the most
# rules it lets one repetition copy (a group counts every rule created inside it).
_LLAMA_REPEAT_LIMIT = 2000
_MAX_CODE_POINT = 0x10FFFF
# llama.cpp's left-recursion check recurses once per rule along a chain of leftmost references
# (in frames far smaller than its parser's): such chains may be this many times max_depth long.
_CHAIN_DEPTH_FACTOR = 64

_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
_NAME = re.compile(r"[A-Za-z0-9-]+")
_NAME_BLANKS = re.compile(r"([A-Za-z0-9-]+)[ \t]*")
_RULE_HEAD = re.compile(r"([A-Za-z0-9-]+)[ \t]*::=(?:[ \t\r\n]+|#[^\r\n]*)*")
# a string literal whose escapes are all two characters long, and the blanks after it
_SIMPLE_STRING_BLANKS = re.compile(r'"((?:[^"\\]|\\[tnr"\\\[\]-])*)"[ \t]*')
_DIGITS = re.compile(r"[0-9]+")
_SPACE = re.compile(r"(?:[ \t]+|#[^\r\n]*)*")            # llama.cpp's parse_space(newline_ok=false)
_SPACE_NL = re.compile(r"(?:[ \t\r\n]+|#[^\r\n]*)*")     # parse_space(newline_ok=true)
_STRING_STOP = re.compile(r'["\\]')
_LINE_END = re.compile(r"[\r\n]")
_UNREADABLE = re.compile("[\x00\ud800-\udfff]")
_HEX = {"x": re.compile(r"[0-9A-Fa-f]{2}"), "u": re.compile(r"[0-9A-Fa-f]{4}"),
        "U": re.compile(r"[0-9A-Fa-f]{8}")}
_SIMPLE_ESCAPES = {"t": 9, "n": 10, "r": 13, "\\": 92, '"': 34, "[": 91, "]": 93, "-": 45}
_REPEAT_OPS = {"*": (0, None), "+": (1, None), "?": (0, 1)}
_ITEM_STARTS = frozenset('"[(<!.|*+?{')

# The grammar as llama.cpp will hold it, compactly. A node is a named rule, a parenthesized
# group, or the rules one repetition operator creates (its "chain": llama.cpp writes x{m,n} as
# m copies of x and then n-m nested optional rules R_k ::= x R_k-1 | ε, or R ::= x R | ε when
# unbounded). An alternative is a list of atoms (kind, target node, copies, position); copies
# of a repeated sequence are kept as a count on each of its references.
_TERM = 0         # a terminal that can match something: literal, class, '.', token
_DEAD = 1         # a character class that matches no character
_REF = 2          # a reference to a node
_NAMED, _GROUP, _CHAIN = 0, 1, 2

_Atom = tuple[int, int, int, int]
_LIVE_TERMINAL: _Atom = (_TERM, -1, 1, -1)


class _Fail(Exception):
    """An error at a position of the text (made a GrammarError with line and column later)."""

    def __init__(self, pos: int, message: str) -> None:
        super().__init__(message)
        self.pos = pos
        self.message = message


class _Grammar:
    """The parsed grammar: one entry per node in each list."""

    __slots__ = ("alts", "chain_k", "has_dead", "kind", "names", "node_pos", "op_text", "owner",
                 "rule_order", "undefined")

    def __init__(self) -> None:
        self.kind: list[int] = []
        self.owner: list[str] = []                 # the named rule the node belongs to
        self.node_pos: list[int] = []              # definition, '(' or operator position
        self.alts: list[list[list[_Atom]]] = []    # alternatives; a chain's one is what it repeats
        self.chain_k: dict[int, int] = {}          # chains: n-m, or 0 when unbounded
        self.op_text: dict[int, str] = {}          # chains: the repetition operator
        self.has_dead: set[int] = set()            # nodes with a class that matches nothing
        self.undefined: dict[int, int] = {}        # named rules used, not defined: first use
        self.names: dict[str, int] = {}
        self.rule_order: list[str] = []

    def add(self, kind: int, owner: str, pos: int) -> int:
        self.kind.append(kind)
        self.owner.append(owner)
        self.node_pos.append(pos)
        self.alts.append([])
        return len(self.kind) - 1


def check_gbnf(text: str, root: str = "root", *, max_depth: int = 256,
               max_expanded: int = 1_000_000, max_stacks: int = 20_000) -> GrammarInfo:
    """Check GBNF ``text`` the way llama.cpp will read it, with ``root`` as its start rule.

    Raises :class:`~llama_cython.errors.GrammarError` (a ``ValueError``) for text llama.cpp
    would reject, and for text that would crash it or make it hang:

    * ``max_depth``: the deepest nesting of parentheses (llama.cpp's parser recurses on each);
      chains of rules referenced at the start of each other's alternatives, which its
      left-recursion check follows recursively, may be 64 times as long;
    * ``max_expanded``: the most grammar elements the text may expand to once every
      repetition is written out as llama.cpp does, with groups counted where they are used
      (so ``(x{1000}){1000}`` counts a million ``x``);
    * ``max_stacks``: the most parse stacks llama.cpp may have to build at once when it
      expands one point of the grammar (each alternative reachable there without consuming
      a character is one; its work grows with the square of that number).

    Returns the rule names defined, in order, and the root.
    """
    if not isinstance(text, str):
        raise TypeError(f"grammar text must be a str, got {type(text).__name__}")
    if not isinstance(root, str):
        raise TypeError(f"root must be a str, got {type(root).__name__}")
    for label, value in (("max_depth", max_depth), ("max_expanded", max_expanded),
                         ("max_stacks", max_stacks)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be a positive int, got {value!r}")
    try:
        grammar = _parse(text, max_depth, max_expanded)
        _check(grammar, text, root, max_depth, max_stacks)
    except _Fail as fail:
        if fail.pos < 0:
            raise GrammarError(fail.message) from None
        line, column = _line_column(text, fail.pos)
        raise GrammarError(fail.message, line, column) from None
    return GrammarInfo(tuple(grammar.rule_order), root)


# ---------------------------------------------------------------------------------------------
# positions and descriptions


def _line_column(text: str, pos: int) -> tuple[int, int]:
    """1-based line and column (in characters) of ``pos``; "\\r\\n", "\\n" and "\\r" end lines."""
    if 0 < pos < len(text) and text[pos] == "\n" and text[pos - 1] == "\r":
        pos -= 1
    head = text[:pos]
    line = head.count("\n") + head.count("\r") - head.count("\r\n") + 1
    start = max(head.rfind("\n"), head.rfind("\r")) + 1
    return line, pos - start + 1


def _describe_char(text: str, pos: int) -> str:
    if pos >= len(text):
        return "end of input"
    c = text[pos]
    if c in "\r\n":
        return "end of line"
    if c == "\ufeff":
        return "byte order mark U+FEFF"
    if c == "'":
        return '"\'"'
    if c.isprintable() and not c.isspace():
        return f"'{c}'"
    return f"U+{ord(c):04X}"


def _where(text: str, pos: int) -> str:
    line, column = _line_column(text, pos)
    return f"line {line}, column {column}"


# ---------------------------------------------------------------------------------------------
# parsing


def _skip(space: re.Pattern[str], text: str, pos: int) -> int:
    """The position after the spaces and comments at ``pos``."""
    m = space.match(text, pos)
    return m.end() if m is not None else pos


def _read_escape(text: str, pos: int) -> tuple[int, int]:
    """The code point of the escape at ``text[pos] == '\\\\'`` and the position after it."""
    c = text[pos + 1]
    simple = _SIMPLE_ESCAPES.get(c)
    if simple is not None:
        return simple, pos + 2
    hex_digits = _HEX.get(c)
    if hex_digits is None:
        shown = (f"'\\{c}'" if c.isprintable() and not c.isspace()
                 else f"'\\' before {_describe_char(text, pos + 1)}")
        raise _Fail(pos, f"unknown escape {shown} (known: \\x.. \\u.... \\U........ \\t \\n \\r "
                         f"\\\\ \\\" \\[ \\] \\-)")
    m = hex_digits.match(text, pos + 2)
    if m is None:
        n = {"x": 2, "u": 4, "U": 8}[c]
        raise _Fail(pos, f"escape '\\{c}' needs {n} hex digits")
    value = int(m.group(), 16)
    if value > _MAX_CODE_POINT:
        raise _Fail(pos, f"escape '\\{c}{m.group()}' is beyond U+10FFFF, the last code point")
    return value, m.end()


def _surrogate(pos: int, value: int) -> _Fail:
    return _Fail(pos, f"escape for U+{value:04X} is a lone surrogate, which never appears in text "
                      "(write the character itself, or \\U and its 8 hex digits)")


def _parse_string(text: str, start: int) -> tuple[int, int]:
    """The string literal at ``text[start] == '"'``: (characters in it, position after it)."""
    n = len(text)
    pos = start + 1
    count = 0
    while True:
        stop = _STRING_STOP.search(text, pos)
        if stop is None:
            raise _Fail(start, "unterminated string literal (no closing '\"')")
        j = stop.start()
        count += j - pos
        if text[j] == '"':
            return count, j + 1
        if j + 1 >= n:
            raise _Fail(start, "unterminated string literal (no closing '\"')")
        value, pos = _read_escape(text, j)
        if 0xD800 <= value <= 0xDFFF:
            raise _surrogate(j, value)
        count += 1


def _parse_class(text: str, start: int) -> tuple[int, int, bool]:
    """The character class at ``text[start] == '['``: (elements, position after it, whether it
    can match a character)."""
    n = len(text)
    pos = start + 1
    negated = pos < n and text[pos] == "^"
    if negated:
        pos += 1
    elements = 0
    spans: list[tuple[int, int]] = []
    while True:
        if pos >= n:
            raise _Fail(start, "unterminated character class (no closing ']')")
        c = text[pos]
        if c == "]":
            pos += 1
            break
        first = pos
        if c == "\\":
            if pos + 1 >= n:
                raise _Fail(start, "unterminated character class (no closing ']')")
            lo, pos = _read_escape(text, pos)
        else:
            lo = ord(c)
            pos += 1
        if pos < n and text[pos] == "-" and (pos + 1 >= n or text[pos + 1] != "]"):
            pos += 1
            if pos >= n:
                raise _Fail(start, "unterminated character class (no closing ']')")
            if text[pos] == "\\":
                if pos + 1 >= n:
                    raise _Fail(start, "unterminated character class (no closing ']')")
                hi, pos = _read_escape(text, pos)
            else:
                hi = ord(text[pos])
                pos += 1
            if hi < lo:
                raise _Fail(first, f"reversed character range {text[first:pos]!r} "
                                   f"(U+{lo:04X} comes after U+{hi:04X})")
            elements += 2
        else:
            if 0xD800 <= lo <= 0xDFFF:
                raise _surrogate(first, lo)
            hi = lo
            elements += 1
        if negated:
            spans.append((lo, hi))
    if elements == 0:
        shown = "[^]" if negated else "[]"
        raise _Fail(start, f"empty character class '{shown}' (llama.cpp would read it as the "
                           "empty string)")
    live = True
    if negated:
        spans.sort()
        covered = -1          # every code point up to here is excluded
        for lo, hi in spans:
            if lo > covered + 1:
                break
            covered = max(covered, hi)
        live = covered < _MAX_CODE_POINT
    return elements, pos, live


def _parse_token(text: str, pos: int) -> int:
    """The token reference at ``text[pos]`` ('<' or '!'): the position after it."""
    n = len(text)
    if text[pos] == "!":
        pos += 1
        if pos >= n or text[pos] != "<":
            raise _Fail(pos, f"expected '<' after '!' (a negated token), found "
                             f"{_describe_char(text, pos)}")
    start = pos
    if pos + 1 < n and text[pos + 1] == "[":
        m = _DIGITS.match(text, pos + 2)
        if m is None:
            raise _Fail(pos + 2, f"expected a token id after '<[', found "
                                 f"{_describe_char(text, pos + 2)}")
        if len(m.group()) > 10 or int(m.group()) > 0xFFFFFFFF:
            raise _Fail(pos + 2, f"token id {m.group()[:24]} does not fit in 32 bits")
        pos = m.end()
        if pos >= n or text[pos] != "]":
            raise _Fail(pos, f"expected ']' after the token id, found {_describe_char(text, pos)}")
        if pos + 1 >= n or text[pos + 1] != ">":
            raise _Fail(pos + 1, f"expected '>' after ']', found {_describe_char(text, pos + 1)}")
        return pos + 2
    close = text.find(">", pos + 1)
    if close < 0 or _LINE_END.search(text, pos + 1, close) is not None:
        raise _Fail(start, "token reference '<' is not closed by '>' on the same line")
    return close + 1


def _parse_braces(text: str, start: int, nested: bool) -> tuple[int, int | None, int]:
    """``{m}``, ``{m,}`` or ``{m,n}`` at ``text[start]``: (m, n or None, position after it)."""
    space = _SPACE_NL if nested else _SPACE
    n = len(text)
    pos = _skip(space, text, start + 1)
    m = _DIGITS.match(text, pos)
    if m is None:
        raise _Fail(pos, f"expected a number after '{{', found {_describe_char(text, pos)}")
    if len(m.group()) > 9:
        raise _Fail(pos, f"repetition count {m.group()[:12]}... is more than llama.cpp accepts "
                         f"({_LLAMA_REPEAT_LIMIT})")
    lo = int(m.group())
    pos = _skip(space, text, m.end())
    hi: int | None
    if pos < n and text[pos] == "}":
        hi = lo
    elif pos < n and text[pos] == ",":
        pos = _skip(space, text, pos + 1)
        hi = None
        m = _DIGITS.match(text, pos)
        if m is not None:
            if len(m.group()) > 20 or int(m.group()) >= 1 << 64:
                raise _Fail(pos, f"repetition bound {m.group()[:24]} does not fit in 64 bits")
            hi = int(m.group())
            pos = _skip(space, text, m.end())
        if pos >= n or text[pos] != "}":
            raise _Fail(pos, f"expected '}}' to end the repetition, found "
                             f"{_describe_char(text, pos)}")
    else:
        raise _Fail(pos, f"expected ',' or '}}' in the repetition, found "
                         f"{_describe_char(text, pos)}")
    if hi is not None and hi < lo:
        raise _Fail(start, f"repetition {text[start:pos + 1]}: the maximum is less than the minimum")
    if lo > _LLAMA_REPEAT_LIMIT:
        raise _Fail(start, f"repetition count {lo} is more than llama.cpp accepts "
                           f"({_LLAMA_REPEAT_LIMIT})")
    return lo, hi, pos + 1


def _parse(text: str, max_depth: int, max_expanded: int) -> _Grammar:
    """Read every rule, iteratively: nesting is bounded by max_depth, not by Python's stack.

    Follows llama.cpp's parser: spaces, tabs and comments may separate symbols anywhere, a
    newline only inside parentheses, after '|' or after '::='; a rule ends at a newline.
    """
    bad = _UNREADABLE.search(text)
    if bad is not None:
        if bad.group() == "\x00":
            raise _Fail(bad.start(), "NUL character in the grammar (llama.cpp would stop reading "
                                     "there)")
        raise _Fail(bad.start(), f"lone surrogate U+{ord(bad.group()):04X} in the grammar (not "
                                 "valid UTF-8)")
    g = _Grammar()
    names = g.names
    kinds = g.kind
    owners = g.owner
    node_pos = g.node_pos
    node_alts = g.alts
    n = len(text)
    symbols = 0        # llama.cpp's symbol_ids.size(): rule names seen plus rules it generated
    expanded = 0       # grammar elements after expansion, groups counted where they are used
    pos = _skip(_SPACE_NL, text, 0)
    while pos < n:
        # rule name, '::='
        m = _RULE_HEAD.match(text, pos)
        if m is None:
            raise _Fail(*_bad_rule_head(text, pos, bool(g.rule_order)))
        name = m.group(1)
        name_pos = pos
        pos = m.end()
        node = names.get(name)
        if node is None:
            node = names[name] = g.add(_NAMED, name, name_pos)
            symbols += 1
            g.rule_order.append(name)
        elif g.undefined.pop(node, -1) >= 0:
            g.rule_order.append(name)
        node_pos[node] = name_pos

        # the body: one frame per open parenthesis, the rule's own frame at the bottom
        frames: list[tuple[int, list[list[_Atom]], list[_Atom], int, int, int, int, int]] = []
        nested = False
        alts: list[list[_Atom]] = []
        seq: list[_Atom] = []
        alts.append(seq)
        last = -1          # where the last item starts in seq (-1: no item yet in it)
        n_prev = 1         # llama.cpp's n_prev_rules: rules the next repetition would copy
        last_size = 0      # expanded size of the last item
        group_start = expanded     # the frame's own size is what expanded gains while it is open
        group = node
        group_pos = name_pos
        group_symbols = 0
        expanded += 1
        while pos < n:
            c = text[pos]
            if c == " " or c == "\t":
                pos += 1
                if pos < n and text[pos] in " \t#":
                    pos = _skip(_SPACE, text, pos)
            elif c == '"':
                m = _SIMPLE_STRING_BLANKS.match(text, pos)
                if m is not None:
                    body = m.group(1)
                    count = len(body)
                    if "\\" in body:      # each escape is two characters for one
                        count += body.count("\\\\") - body.count("\\")
                    pos = m.end()
                else:
                    count, pos = _parse_string(text, pos)
                last = len(seq)
                if count:
                    seq.append(_LIVE_TERMINAL)
                n_prev = 1
                last_size = count
                expanded += count
            elif c in _WORD_CHARS:
                m = _NAME_BLANKS.match(text, pos)
                assert m is not None
                ref_name = m.group(1)
                target = names.get(ref_name)
                if target is None:
                    target = names[ref_name] = g.add(_NAMED, ref_name, pos)
                    g.undefined[target] = pos
                    symbols += 1
                last = len(seq)
                seq.append((_REF, target, 1, pos))
                n_prev = 1
                last_size = 1
                expanded += 1
                pos = m.end()
            elif c == "|":
                seq = []
                alts.append(seq)
                last = -1
                n_prev = 1
                expanded += 1
                pos = pos + 1 if nested else _skip(_SPACE_NL, text, pos + 1)
            elif c == "\n" or c == "\r":
                if not nested:
                    break
                pos = _skip(_SPACE_NL, text, pos)
            elif c == "(":
                if len(frames) >= max_depth:
                    raise _Fail(pos, f"parentheses nested more than {max_depth} deep (max_depth)")
                frames.append((group, alts, seq, last, n_prev, group_start, group_pos,
                               group_symbols))
                group_symbols = symbols
                group_start = expanded
                group = len(kinds)
                seq = []
                alts = [seq]
                kinds.append(_GROUP)
                owners.append(name)
                node_pos.append(pos)
                node_alts.append(alts)
                symbols += 1
                group_pos = pos
                last = -1
                n_prev = 1
                expanded += 1
                nested = True
                pos += 1           # inside parentheses the loop skips newlines too
            elif c == ")" and nested:
                inner_size = expanded - group_start
                inner = group
                inner_pos = group_pos
                inner_symbols = group_symbols
                group, alts, seq, last, n_prev, group_start, group_pos, group_symbols = frames.pop()
                nested = bool(frames)
                last = len(seq)
                seq.append((_REF, inner, 1, inner_pos))
                n_prev = symbols - inner_symbols    # the group and the rules made inside it
                last_size = 1 + inner_size
                expanded += 1
                pos += 1
            elif c == "[":
                start = pos
                elements, pos, live = _parse_class(text, pos)
                last = len(seq)
                if live:
                    seq.append(_LIVE_TERMINAL)
                else:
                    seq.append((_DEAD, -1, 1, start))
                    g.has_dead.add(group)
                n_prev = 1
                last_size = elements
                expanded += elements
            elif c in "*+?{":
                op_pos = pos
                if c == "{":
                    lo, hi, pos = _parse_braces(text, pos, nested)
                    op = text[op_pos:pos]
                else:
                    lo, hi = _REPEAT_OPS[c]
                    pos += 1
                    op = c
                if last < 0:
                    raise _Fail(op_pos, f"'{op}' has nothing before it to repeat")
                if last == len(seq):
                    raise _Fail(op_pos, f"'{op}' follows an empty item (\"\" or a repetition of "
                                        "zero times), which llama.cpp cannot repeat")
                if hi is not None and hi > _LLAMA_REPEAT_LIMIT:
                    hi = None        # llama.cpp reads {m,n} with n > 2000 as {m,}
                times = hi if hi else (lo if lo else 1)
                if n_prev * times > _LLAMA_REPEAT_LIMIT:
                    raise _Fail(op_pos, (
                        f"'{op}' would make llama.cpp copy {n_prev} rules {times} times, more than "
                        f"the {_LLAMA_REPEAT_LIMIT} it accepts (it counts every group, repetition "
                        "and first use of a rule name inside what is repeated; a named rule "
                        "counts as one)"))
                n_prev *= times
                n_opt = 1 if hi is None else hi - lo
                new_size = lo * last_size + (1 + n_opt * (last_size + 3) if n_opt else 0)
                expanded += new_size - last_size
                last_size = new_size
                if expanded > max_expanded:
                    raise _Fail(op_pos, f"'{op}' expands the grammar to more than {max_expanded} "
                                        f"elements (at least {expanded}; max_expanded)")
                repeated = seq[last:]
                if lo == 0:
                    del seq[last:]
                elif lo > 1:
                    seq[last:] = [(k, t, copies * lo, p) if k == _REF else (k, t, copies, p)
                                  for k, t, copies, p in repeated]
                if n_opt:
                    chain = len(kinds)
                    kinds.append(_CHAIN)
                    owners.append(name)
                    node_pos.append(op_pos)
                    node_alts.append([repeated])
                    g.chain_k[chain] = 0 if hi is None else n_opt
                    g.op_text[chain] = op
                    seq.append((_REF, chain, 1, op_pos))
                symbols += n_opt
            elif c == "#":
                pos = _skip(_SPACE, text, pos)
            elif c == ".":
                last = len(seq)
                seq.append(_LIVE_TERMINAL)
                n_prev = 1
                last_size = 1
                expanded += 1
                pos += 1
            elif c == "<" or c == "!":
                pos = _parse_token(text, pos)
                last = len(seq)
                seq.append(_LIVE_TERMINAL)
                n_prev = 1
                last_size = 1
                expanded += 1
            else:
                break
        if nested:
            if pos >= n:
                raise _Fail(group_pos, "'(' is never closed")
            raise _Fail(pos, f"expected ')' or '|' inside parentheses, found "
                             f"{_describe_char(text, pos)}")
        if pos < n:
            c = text[pos]
            if c == "\r":
                pos += 2 if text.startswith("\n", pos + 1) else 1
            elif c == "\n":
                pos += 1
            elif c == ")":
                raise _Fail(pos, "unmatched ')'")
            else:
                raise _Fail(pos, f"unexpected {_describe_char(text, pos)} in rule {name!r}")
        node_alts[node] = alts
        if expanded > max_expanded:
            raise _Fail(name_pos, f"the grammar expands to more than {max_expanded} elements by rule "
                                  f"{name!r} (at least {expanded}; max_expanded)")
        pos = _skip(_SPACE_NL, text, pos)
    return g


def _bad_rule_head(text: str, pos: int, after_rule: bool) -> tuple[int, str]:
    """Where and why no rule starts at ``pos``."""
    m = _NAME.match(text, pos)
    if m is None:
        message = f"expected a rule name, found {_describe_char(text, pos)}"
        if after_rule and text[pos] in _ITEM_STARTS:
            message += (" (a rule continues on the next line only after '|' or inside "
                        "parentheses)")
        return pos, message
    name = m.group()
    pos = _skip(_SPACE, text, m.end())
    message = f"expected '::=' after rule name {name!r}, found {_describe_char(text, pos)}"
    if pos == m.end() and pos < len(text) and text[pos] == "_":
        message += " ('_' cannot appear in a rule name; '-' can)"
    return pos, message


# ---------------------------------------------------------------------------------------------
# analysis


def _acyclic_order(adj: list[list[int]]) -> list[int] | None:
    """Every node after the nodes it points to, or None when the graph has a cycle (Kahn)."""
    n = len(adj)
    pending = [len(targets) for targets in adj]      # out-degree: unfinished targets
    sources: list[list[int]] = [[] for _ in range(n)]
    ready: list[int] = []
    for v in range(n):
        targets = adj[v]
        if not targets:
            ready.append(v)
        for w in targets:
            sources[w].append(v)
    order: list[int] = []
    while ready:
        w = ready.pop()
        order.append(w)
        for v in sources[w]:
            pending[v] -= 1
            if pending[v] == 0:
                ready.append(v)
    return order if len(order) == n else None


def _sccs(adj: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """Strongly connected components (Tarjan, iterative): the component of each node, and the
    components in the order found (each one after every component it reaches)."""
    n = len(adj)
    index = [-1] * n
    low = [0] * n
    on_stack = [False] * n
    comp = [-1] * n
    stack: list[int] = []
    comps: list[list[int]] = []
    counter = 0
    for s in range(n):
        if index[s] >= 0:
            continue
        index[s] = low[s] = counter
        counter += 1
        stack.append(s)
        on_stack[s] = True
        work = [(s, 0)]
        while work:
            v, i = work[-1]
            edges = adj[v]
            if i < len(edges):
                work[-1] = (v, i + 1)
                w = edges[i]
                if index[w] < 0:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack[w] = True
                    work.append((w, 0))
                elif on_stack[w] and index[w] < low[v]:
                    low[v] = index[w]
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                if low[v] < low[parent]:
                    low[parent] = low[v]
            if low[v] == index[v]:
                members: list[int] = []
                while True:
                    w = stack.pop()
                    on_stack[w] = False
                    comp[w] = len(comps)
                    members.append(w)
                    if w == v:
                        break
                comps.append(members)
    return comp, comps


def _worklist(count: int, slots: list[tuple[int, list[int]]], ready: list[int]) -> list[bool]:
    """Nodes that become true: a node is true when all the nodes of one of its slots are (a
    slot is an alternative: its owner and the nodes it needs); ``ready`` are true already."""
    result = [False] * count
    for u in ready:
        result[u] = True
    waiting: list[list[int]] = [[] for _ in range(count)]
    pending = [0] * len(slots)
    todo = list(ready)
    for i, (u, needs) in enumerate(slots):
        if not needs:
            if not result[u]:
                result[u] = True
                todo.append(u)
            continue
        pending[i] = len(needs)
        for t in needs:
            waiting[t].append(i)
    while todo:
        t = todo.pop()
        for i in waiting[t]:
            pending[i] -= 1
            if pending[i] == 0:
                u = slots[i][0]
                if not result[u]:
                    result[u] = True
                    todo.append(u)
    return result


def _node_words(g: _Grammar, text: str, u: int) -> str:
    kind = g.kind[u]
    if kind == _NAMED:
        return f"rule {g.owner[u]!r}"
    if kind == _GROUP:
        return f"the group at {_where(text, g.node_pos[u])}"
    return f"the repetition '{g.op_text[u]}' at {_where(text, g.node_pos[u])}"


class _Edge:
    """A reference at the start of an alternative (after symbols that can match nothing)."""

    __slots__ = ("copies", "llama", "pos", "tail", "target", "via")

    def __init__(self, target: int, copies: int, pos: int, tail: bool, llama: bool,
                 via: int) -> None:
        self.target = target
        self.copies = copies      # consecutive copies of the reference (x{3} writes x x x)
        self.pos = pos
        self.tail = tail          # last symbol of its alternative: llama.cpp pushes nothing after it
        self.llama = llama        # followed by llama.cpp's own left-recursion check
        self.via = via            # the first node skipped because it can match empty text, or -1


def _cycle_path(edges: list[list[_Edge]], comp: list[int], first: _Edge, source: int,
                llama_only: bool) -> list[tuple[int, _Edge]]:
    """A cycle through ``first`` (an edge from ``source``) inside its component: the list of
    (node, edge leaving it)."""
    target = first.target
    back: dict[int, tuple[int, _Edge]] = {}
    queue = [target]
    seen = {target}
    found = target == source
    for v in queue:
        if found:
            break
        for e in edges[v]:
            if llama_only and not e.llama:
                continue
            w = e.target
            if comp[w] != comp[source] or w in seen:
                continue
            seen.add(w)
            back[w] = (v, e)
            if w == source:
                found = True
                break
            queue.append(w)
    path: list[tuple[int, _Edge]] = []
    w = source
    while w != target:
        v, e = back[w]
        path.append((v, e))
        w = v
    path.reverse()
    return [(source, first), *path]


def _path_names(g: _Grammar, path: list[int]) -> list[str]:
    """The rules along a path of nodes, in the grammar's terms: a group or a repetition shows
    as the rule it is written in, unless that rule is shown just before."""
    shown: list[str] = []
    for v in path:
        if g.kind[v] == _NAMED or not shown or shown[-1] != g.owner[v]:
            shown.append(g.owner[v])
    return shown


def _cycle_error(g: _Grammar, text: str, cycle: list[tuple[int, _Edge]], llama: bool) -> _Fail:
    if len(cycle) == 1 and g.kind[cycle[0][0]] == _CHAIN:
        u, e = cycle[0]
        what = _node_words(g, text, e.via) if e.via >= 0 else "something"
        return _Fail(g.node_pos[u], (
            f"'{g.op_text[u]}' in rule {g.owner[u]!r} repeats what can match the empty string "
            f"({what} can), which llama.cpp rejects as left recursion"))
    # start at the named rule defined first, so that the message reads in the grammar's terms
    starts = [i for i, (v, _) in enumerate(cycle) if g.kind[v] == _NAMED]
    if starts:
        i = min(starts, key=lambda j: g.node_pos[cycle[j][0]])
        cycle = cycle[i:] + cycle[:i]
    shown = _path_names(g, [v for v, _ in cycle] + [cycle[0][0]])
    message = f"rule {shown[0]!r} is left-recursive ({' -> '.join(shown)})"
    vias = [e.via for _, e in cycle if e.via >= 0]
    if vias:
        message += f"; {_node_words(g, text, vias[0])} can match the empty string"
    if not llama:
        message += " (llama.cpp would loop forever on it)"
    return _Fail(cycle[0][1].pos, message)


def _unproductive_reason(g: _Grammar, text: str, root_node: int, productive: list[bool]) -> str:
    """Why the root can match no text: follow the first blocked symbol until a node repeats or
    a class matches nothing."""
    path = [root_node]
    seen = {root_node}
    u = root_node
    root = g.owner[root_node]
    while True:
        blocker: _Atom | None = None
        for alt in g.alts[u]:
            for atom in alt:
                if atom[0] == _DEAD or (atom[0] == _REF and not productive[atom[1]]):
                    blocker = atom
                    break
            if blocker is not None:
                break
        if blocker is None:       # only a node without alternatives (not parsed as such)
            return f"rule {root!r} matches no text"
        if blocker[0] == _DEAD:
            chain = " -> ".join(_path_names(g, path))
            return (f"rule {root!r} matches no text: every alternative needs something that "
                    f"matches nothing (as {chain} needs the character class at "
                    f"{_where(text, blocker[3])}, which matches no character)")
        u = blocker[1]
        path.append(u)
        if u in seen:
            chain = " -> ".join(_path_names(g, path))
            return (f"rule {root!r} matches no text: every alternative needs a rule that never "
                    f"finishes ({chain} -> ...)")
        seen.add(u)


def _check(g: _Grammar, text: str, root: str, max_depth: int, max_stacks: int) -> None:
    if g.undefined:
        u = min(g.undefined, key=g.undefined.__getitem__)
        raise _Fail(g.undefined[u], f"undefined rule {g.owner[u]!r}")
    if not g.rule_order:
        raise _Fail(-1, "the grammar defines no rules")
    root_node = g.names.get(root)
    if root_node is None:
        shown = ", ".join(repr(r) for r in g.rule_order[:5])
        more = ", ..." if len(g.rule_order) > 5 else ""
        raise _Fail(-1, f"the grammar has no rule {root!r} to start from (it defines "
                        f"{shown}{more})")

    kind = g.kind
    all_alts = g.alts
    count = len(kind)
    has_dead = g.has_dead

    # one pass over the alternatives: what each needs to match empty text, and to match at all
    empty_slots: list[tuple[int, list[int]]] = []
    finite_slots: list[tuple[int, list[int]]] = []
    lnull = [False] * count        # has an empty alternative: what llama.cpp's check skips
    out: list[list[int]] = []      # every reference of each node
    for u in range(count):
        refs_u: list[int] = []
        if kind[u] == _CHAIN:      # R ::= S R' | ε
            lnull[u] = True
            for a in all_alts[u][0]:
                if a[0] == _REF:
                    refs_u.append(a[1])
            out.append(refs_u)
            continue
        dead = u in has_dead
        for alt in all_alts[u]:
            if not alt:
                lnull[u] = True
                continue
            refs = [a[1] for a in alt if a[0] == _REF]
            refs_u += refs
            if len(refs) == len(alt):
                empty_slots.append((u, refs))
            elif dead and any(a[0] == _DEAD for a in alt):
                continue
            finite_slots.append((u, refs))
        out.append(refs_u)
    always = [u for u in range(count) if lnull[u]]
    nullable = _worklist(count, empty_slots, always)
    productive = _worklist(count, finite_slots, always)

    reachable = [False] * count
    reachable[root_node] = True
    todo = [root_node]
    while todo:
        for t in out[todo.pop()]:
            if not reachable[t]:
                reachable[t] = True
                todo.append(t)

    edges, tadj, self_loop = _left_edges(g, nullable, lnull)
    order = _acyclic_order(tadj)
    if order is not None:            # the usual case: no cycle at all
        tcomps = [[u] for u in order]
        tcomp = [0] * count
        for i, u in enumerate(order):
            tcomp[u] = i
        lcomps = tcomps
    else:
        tcomp, tcomps = _sccs(tadj)
        # llama.cpp's own left-recursion check: a cycle through references that follow only
        # rules with an empty alternative (it rejects those even in unused rules)
        ladj = [[e.target for e in es if e.llama] for es in edges]
        lcomp, lcomps = _sccs(ladj)
        for u in range(count):
            for e in edges[u]:
                if e.llama and lcomp[e.target] == lcomp[u]:
                    raise _cycle_error(g, text, _cycle_path(edges, lcomp, e, u, True), True)
        # other cycles through rules that can match empty text: harmless when every step is the
        # last symbol of its alternative (llama.cpp's parse stack stays the same), endless
        # otherwise once generation reaches them
        for u in range(count):
            if reachable[u]:
                for e in edges[u]:
                    if not e.tail and tcomp[e.target] == tcomp[u]:
                        raise _cycle_error(g, text, _cycle_path(edges, tcomp, e, u, False), False)

    if not productive[root_node]:
        raise _Fail(g.node_pos[root_node], _unproductive_reason(g, text, root_node, productive))

    # llama.cpp's left-recursion check recurses along leftmost references, revisiting shared
    # rules on every path: bound the longest chain and the number of paths (lcomps lists one
    # node each now, every node after those it references)
    depth_limit = _CHAIN_DEPTH_FACTOR * max_depth
    cap = max_stacks + 1
    depth = [0] * count
    calls = [0] * count
    for (u,) in lcomps:
        deepest = 0
        steps = 1
        for e in edges[u]:
            if e.llama:
                t = e.target
                if depth[t] > deepest:
                    deepest = depth[t]
                steps += calls[t] * e.copies if lnull[t] else calls[t]
        own = 1
        if kind[u] == _CHAIN and g.chain_k[u] and all(
                a[0] == _REF and lnull[a[1]] for a in all_alts[u][0]):
            own = g.chain_k[u]      # R_k -> R_k-1 -> ... -> R_1, each also into S
        depth[u] = own + deepest
        calls[u] = min(cap, own * steps)
        if depth[u] > depth_limit:
            raise _Fail(g.node_pos[u], (
                f"{_node_words(g, text, u)} starts a chain of more than {depth_limit} rules, each "
                "referenced at the start of the one before; llama.cpp follows such chains "
                f"recursively (the limit is {_CHAIN_DEPTH_FACTOR} x max_depth)"))
        if calls[u] > max_stacks:
            raise _Fail(g.node_pos[u], (
                f"llama.cpp's left-recursion check would follow more than {max_stacks} paths "
                f"from {_node_words(g, text, u)}: its alternatives start with the same rules "
                "over and over (max_stacks)"))

    _check_stacks(g, root_node, reachable, nullable, self_loop, tcomp, tcomps, max_stacks)


def _left_edges(g: _Grammar, nullable: list[bool],
                lnull: list[bool]) -> tuple[list[list[_Edge]], list[list[int]], list[bool]]:
    """For each node, the references its alternatives can start with; their targets; and
    whether the node references itself so."""
    edges_of: list[list[_Edge]] = []
    targets_of: list[list[int]] = []
    self_loop = [False] * len(g.kind)
    kind = g.kind
    chain_k = g.chain_k
    no_edges: list[_Edge] = []
    no_targets: list[int] = []
    for u, alts in enumerate(g.alts):
        edges: list[_Edge] = no_edges
        targets: list[int] = no_targets
        chain = kind[u] == _CHAIN
        # a chain's rules follow what they repeat with a reference, except R_1 ::= S | ε
        tail_ok = not chain or chain_k[u] == 1
        for alt in alts:
            if not alt or alt[0][0] != _REF:
                continue
            if edges is no_edges:
                edges = []
                targets = []
            llama = True
            via = -1
            last = len(alt) - 1
            for i, (atom_kind, t, copies, pos) in enumerate(alt):
                if atom_kind != _REF:
                    break
                edges.append(_Edge(t, copies, pos, tail_ok and i == last and copies == 1, llama,
                                   via))
                targets.append(t)
                if t == u:
                    self_loop[u] = True
                if not lnull[t]:
                    llama = False
                if not nullable[t]:
                    break
                if via < 0:
                    via = t
            else:
                if chain and chain_k[u] == 0:
                    # R ::= S R | ε with S able to match nothing: R reaches itself
                    edges.append(_Edge(u, 1, g.node_pos[u], True, llama, via))
                    targets.append(u)
                    self_loop[u] = True
        edges_of.append(edges)
        targets_of.append(targets)
    return edges_of, targets_of, self_loop


def _check_stacks(g: _Grammar, root_node: int, reachable: list[bool], nullable: list[bool],
                  self_loop: list[bool], tcomp: list[int], tcomps: list[list[int]],
                  max_stacks: int) -> None:
    """Count the parse stacks llama.cpp builds when it expands each point of the grammar.

    Expanding a reference pushes one stack per alternative of the rule, again for the rule each
    alternative starts with, and past that rule when it can match empty text: the count is the
    number of such paths (a cycle of tail references adds nothing: its stacks repeat). Every
    point reachable from the root is expanded during generation, the root at the start.
    """
    cap = max_stacks + 1
    ways = [0] * len(g.kind)       # stacks from expanding a reference to the node
    kind = g.kind
    for comp_id, members in enumerate(tcomps):
        if not reachable[members[0]]:
            continue
        cyclic = len(members) > 1 or self_loop[members[0]]
        for phase in (0, 1) if cyclic else (1,):
            # phase 0 (a cycle): its own references count nothing; phase 1: check every point
            total = 0
            for u in members:
                chain = kind[u] == _CHAIN
                own = 1 if not chain else 2
                for alt in g.alts[u]:
                    acc = 0 if chain else 1
                    for atom_kind, t, copies, pos in reversed(alt):
                        if atom_kind != _REF:
                            acc = 1
                            continue
                        w = 0 if phase == 0 and tcomp[t] == comp_id else ways[t]
                        if nullable[t]:
                            acc += w * copies
                            if acc > cap:
                                acc = cap
                        else:
                            acc = w
                        if phase and acc > max_stacks:
                            raise _Fail(pos, _too_many_stacks(max_stacks))
                    own += acc
                if chain and g.chain_k[u] and all(
                        a[0] == _REF and nullable[a[1]] for a in g.alts[u][0]):
                    own *= g.chain_k[u]
                total = min(cap, total + own)
            if phase == 0 or not cyclic:
                for u in members:
                    ways[u] = total
    if ways[root_node] > max_stacks:
        raise _Fail(g.node_pos[root_node], _too_many_stacks(max_stacks))


def _too_many_stacks(max_stacks: int) -> str:
    return (f"the grammar can begin here in more than {max_stacks} ways (counting every "
            "alternative of every rule it can start with, and past those that can match empty "
            "text); llama.cpp builds a parse stack for each at once, and its work grows with the "
            "square of their number (max_stacks)")
