"""llama_cython.grammar_check: GBNF text checked in Python, the way llama.cpp's parser reads it,
before llama.cpp sees it (no model needed)."""

from __future__ import annotations

import dataclasses
import doctest
import re
import time
from pathlib import Path

import pytest

import llama_cython.grammar_check as grammar_check
from llama_cython.errors import LlamaError
from llama_cython.grammar_check import GrammarError, GrammarInfo, check_gbnf

ROOT = Path(__file__).resolve().parent.parent
LLAMA_CPP = ROOT / "vendor" / "llama.cpp"
VENDORED_GRAMMARS = sorted((LLAMA_CPP / "grammars").glob("*.gbnf"))


def _error(text: str, **kw: object) -> GrammarError:
    with pytest.raises(GrammarError) as info:
        check_gbnf(text, **kw)  # type: ignore[arg-type]
    return info.value


# --- what llama.cpp accepts passes ---------------------------------------------------------------


@pytest.mark.skipif(not VENDORED_GRAMMARS, reason="no vendored llama.cpp grammars")
@pytest.mark.parametrize("path", VENDORED_GRAMMARS, ids=lambda p: p.name)
def test_vendored_grammars_pass(path: Path) -> None:
    info = check_gbnf(path.read_text(encoding="utf-8"))
    assert info.root == "root"
    assert "root" in info.rules


def _converter_outputs() -> list[tuple[str, str]]:
    """The grammars llama.cpp's JSON-schema converter is tested to produce (its test file holds
    each schema and the exact grammar text expected for it)."""
    path = LLAMA_CPP / "tests" / "test-json-schema-to-grammar.cpp"
    if not path.is_file():
        return []
    source = path.read_text(encoding="utf-8")
    cases = re.findall(r'SUCCESS,\s*"((?:[^"\\]|\\.)*)",\s*R"""\((.*?)\)""",\s*R"""\((.*?)\)"""',
                       source, flags=re.S)
    # the test compares after trimming the text and the indentation of each line
    return [(name, re.sub(r"(^|\n)[ \t]+", r"\1", grammar.strip())) for name, _, grammar in cases]


CONVERTER_OUTPUTS = _converter_outputs()


@pytest.mark.skipif(not CONVERTER_OUTPUTS, reason="no vendored llama.cpp tests")
def test_json_schema_converter_outputs_pass() -> None:
    assert len(CONVERTER_OUTPUTS) > 30
    for name, grammar in CONVERTER_OUTPUTS:
        try:
            check_gbnf(grammar)
        except GrammarError as exc:  # pragma: no cover - the failure message names the case
            pytest.fail(f"converter output for {name!r} rejected: {exc}\n{grammar}")


def test_json_schema_converter_live() -> None:
    """Grammars the compiled converter makes now pass too (when the extension has it)."""
    from llama_cython import _core

    convert = getattr(_core, "json_schema_to_gbnf", None)
    if convert is None:
        pytest.skip("the compiled extension has no json_schema_to_gbnf")
    schemas = [
        '{"type": "object", "properties": {"x": {"type": "integer"}, "tags": {"type": "array", '
        '"items": {"type": "string"}, "maxItems": 5}}, "required": ["x"]}',
        '{"type": "string", "pattern": "^[a-z]{2,8}-[0-9]+$"}',
        '{"oneOf": [{"type": "number", "minimum": -3.5}, {"enum": ["a", "b", null]}]}',
        '{"$ref": "#/$defs/node", "$defs": {"node": {"type": "object", "properties": '
        '{"next": {"$ref": "#/$defs/node"}}, "additionalProperties": false}}}',
    ]
    for schema in schemas:
        check_gbnf(convert(schema))


@pytest.mark.parametrize("text", [
    'root ::= "a"',
    'root::="a"',
    'root ::= "a" | "b"\n',
    'root ::=\n  "a"',                                       # a newline after '::='
    'root ::= "a" |\n  "b"',                                 # and after '|'
    'root ::= ("a"\n  "b"\n  | "c")',                        # anywhere inside parentheses
    'root ::= "a" # a comment\n# another\n',
    'root ::= "a"\r\nitem ::= "b"\r\n',
    'root ::= "a"\ritem ::= "b"',
    'root ::= "\\x41\\u00e9\\U0001F600\\t\\n\\r\\"\\\\\\[\\]\\-"',
    'root ::= [a-z0-9_\\-\\]] [^"\\\\] [-a] [a-] ["\\]]',
    'root ::= . .* .+ .? .{2} .{2,} .{2,5} . { 1 , 3 }',
    'root ::= "a"{0,5000}',                                  # llama.cpp reads {m,n>2000} as {m,}
    'root ::= "a"{0} "b"',
    'root ::= <[12]> !<[13]> <think> !</think> <|im_end|>',
    'root ::= | "a"',
    'root ::=',
    'a-b ::= "x"\nroot ::= a-b\n-1 ::= "y"',
    'root ::= ("a"?)*',                                      # llama.cpp copes: its stacks repeat
    'root ::= opt root | "y"\nopt ::= "a"?',                  # a tail cycle: the same
    'root ::= "é" [à-ÿ] "日本"',
])
def test_accepted(text: str) -> None:
    check_gbnf(text)


def test_rules_in_order_and_duplicates_replace() -> None:
    # llama.cpp keeps the last definition of a rule (add_rule overwrites it): no error, and the
    # earlier left-recursive one is gone
    info = check_gbnf('root ::= root "a"\nroot ::= item\nitem ::= "x"\nitem ::= "y" | item2\n'
                      'item2 ::= "z"\n')
    assert info == GrammarInfo(rules=("root", "item", "item2"), root="root")
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.root = "item"  # type: ignore[misc]


def test_other_root() -> None:
    assert check_gbnf('expr ::= "a"', root="expr").root == "expr"
    exc = _error('expr ::= "a"\nterm ::= "b"')
    assert (exc.line, exc.column) == (None, None)
    assert "no rule 'root'" in exc.message and "'expr', 'term'" in exc.message
    assert str(exc) == exc.message
    assert "no rule 'start'" in str(_error('root ::= "a"', root="start"))


def test_error_type_and_text() -> None:
    exc = _error('root ::= "a"\n\nfoo = "b"\n')
    assert isinstance(exc, ValueError) and isinstance(exc, LlamaError)
    assert (exc.line, exc.column) == (3, 5)
    assert exc.message == "expected '::=' after rule name 'foo', found '='"
    assert str(exc) == "line 3, column 5: expected '::=' after rule name 'foo', found '='"


def test_module_doctest() -> None:
    assert doctest.testmod(grammar_check, optionflags=doctest.ELLIPSIS).failed == 0


# --- malformed text: line and column -----------------------------------------------------------


MALFORMED = [
    ('root ::= "abc', 1, 10, "unterminated string literal"),
    ('root ::= "a"\nnext ::= "b', 2, 10, "unterminated string literal"),
    ('root ::= [a-z', 1, 10, "unterminated character class"),
    ('root ::= "a\\qb"', 1, 12, "unknown escape '\\q'"),
    ('root ::= "\\x4g"', 1, 11, "escape '\\x' needs 2 hex digits"),
    ('root ::= [\\u12]', 1, 11, "escape '\\u' needs 4 hex digits"),
    ('root ::= "\\uD800"', 1, 11, "lone surrogate"),
    ('root ::= "\\U00110000"', 1, 11, "beyond U+10FFFF"),
    ('root "a"', 1, 6, "expected '::=' after rule name 'root'"),
    ('root\n::= "a"', 1, 5, "expected '::=' after rule name 'root', found end of line"),
    ('root_x ::= "a"', 1, 5, "'_' cannot appear in a rule name"),
    (' ::= "a"', 1, 2, "expected a rule name, found ':'"),
    ('root ::= "a"\n  "b"', 2, 3, "a rule continues on the next line only after '|'"),
    ('root ::= "a"\n| "b"', 2, 1, "expected a rule name, found '|'"),
    ('root ::= "a" @', 1, 14, "unexpected '@' in rule 'root'"),
    ('root ::= "été" @', 1, 16, "unexpected '@'"),                    # columns count characters
    ('root ::=\t"a"\t@', 1, 14, "unexpected '@'"),
    ('root ::= "a"\r\nfoo ::= "b" ;', 2, 13, "unexpected ';' in rule 'foo'"),
    ('root ::= "a"\rfoo ::= @', 2, 9, "unexpected '@'"),
    ('root ::= ("a"', 1, 10, "'(' is never closed"),
    ('root ::= (("a")', 1, 10, "'(' is never closed"),
    ('root ::= ("a" "b"\nfoo ::= "c")', 2, 5, "expected ')' or '|' inside parentheses, found ':'"),
    ('root ::= "a")', 1, 13, "unmatched ')'"),
    ('root ::= "a"{3,1}', 1, 13, "the maximum is less than the minimum"),
    ('root ::= "a"{,2}', 1, 14, "expected a number after '{'"),
    ('root ::= "a"{2', 1, 15, "expected ',' or '}' in the repetition, found end of input"),
    ('root ::= "a"{2,3', 1, 17, "expected '}' to end the repetition"),
    ('root ::= "a"{2001}', 1, 13, "more than llama.cpp accepts (2000)"),
    ('root ::= *"a"', 1, 10, "'*' has nothing before it to repeat"),
    ('root ::= "a" | +', 1, 16, "'+' has nothing before it to repeat"),
    ('root ::= ""+', 1, 12, "'+' follows an empty item"),
    ('root ::= "a"{0}?', 1, 16, "'?' follows an empty item"),
    ('root ::= [z-a]', 1, 11, "reversed character range 'z-a'"),
    ('root ::= []', 1, 10, "empty character class '[]'"),
    ('root ::= [^]', 1, 10, "empty character class '[^]'"),
    ('root ::= !"a"', 1, 11, "expected '<' after '!'"),
    ('root ::= <[12>', 1, 14, "expected ']' after the token id"),
    ('root ::= <[x]>', 1, 12, "expected a token id after '<['"),
    ('root ::= <[4294967296]>', 1, 12, "does not fit in 32 bits"),
    ('root ::= <think\n', 1, 10, "not closed by '>' on the same line"),
    ('root ::= "a"\x00', 1, 13, "NUL character"),
    ('root ::= "\ud800"', 1, 11, "lone surrogate U+D800"),
    ('\ufeffroot ::= "a"', 1, 1, "byte order mark"),
]


@pytest.mark.parametrize(("text", "line", "column", "message"), MALFORMED,
                         ids=[f"{i}-{m[:24]}" for i, (_, _, _, m) in enumerate(MALFORMED)])
def test_malformed(text: str, line: int, column: int, message: str) -> None:
    exc = _error(text)
    assert (exc.line, exc.column) == (line, column), str(exc)
    assert message in exc.message, str(exc)
    assert str(exc).startswith(f"line {line}, column {column}: ")


def test_empty_grammar() -> None:
    for text in ("", "  \n", "# only a comment\n"):
        exc = _error(text)
        assert exc.message == "the grammar defines no rules" and exc.line is None


# --- rules: undefined, left-recursive, matching nothing ---------------------------------------


def test_undefined_rule() -> None:
    exc = _error('root ::= "a" | b\nc ::= d')
    assert (exc.line, exc.column, exc.message) == (1, 16, "undefined rule 'b'")
    # also when only a definition that a later one replaced used it (llama.cpp's check may
    # or may not notice, depending on the order of its rule ids)
    exc = _error('root ::= "a"\nroot ::= missing\nroot ::= "b"')
    assert (exc.line, exc.column, exc.message) == (2, 10, "undefined rule 'missing'")


def test_left_recursion_direct() -> None:
    exc = _error('root ::= expr\nexpr ::= expr "+" term | term\nterm ::= [0-9]+')
    assert (exc.line, exc.column) == (2, 10)
    assert exc.message == "rule 'expr' is left-recursive (expr -> expr)"
    exc = _error('root ::= "a" | root "a"')
    assert (exc.line, exc.column, exc.message) == (1, 16, "rule 'root' is left-recursive (root -> root)")
    # through a group of the rule itself
    assert "(root -> root)" in _error('root ::= ("x" | root) "y"').message


def test_left_recursion_indirect() -> None:
    exc = _error('root ::= expr\nexpr ::= term "+" expr | term\nterm ::= expr "*" | [0-9]')
    assert (exc.line, exc.column) == (2, 10)
    assert exc.message == "rule 'expr' is left-recursive (expr -> term -> expr)"
    exc = _error('root ::= asdf\nasdf ::= "a" | foo "b"\nfoo ::= "c" | asdf "d" | "e"')
    assert "rule 'asdf' is left-recursive (asdf -> foo -> asdf)" == exc.message


def test_left_recursion_through_empty_prefix() -> None:
    # llama.cpp's own check: it skips a rule with an empty alternative
    exc = _error('root ::= asdf\nasdf ::= "a" | foo "b"\nfoo ::= "c" | empty asdf "d" | "e"\n'
                 'empty ::= "blah" | ')
    assert exc.message == ("rule 'asdf' is left-recursive (asdf -> foo -> asdf); rule 'empty' can "
                           "match the empty string")
    exc = _error('root ::= ws root "x" | "y"\nws ::= | " "')
    assert (exc.line, exc.column) == (1, 13)
    assert "rule 'ws' can match the empty string" in exc.message
    # llama.cpp misses this one ('opt' has no empty alternative, it only derives one) and then
    # grows its parse stack forever
    exc = _error('root ::= opt root "x" | "y"\nopt ::= "a"?')
    assert (exc.line, exc.column) == (1, 14)
    assert exc.message.startswith("rule 'root' is left-recursive (root -> root); rule 'opt' can")
    assert "would loop forever" in exc.message
    # ... but only where generation can get to
    check_gbnf('root ::= "y"\nunused ::= opt unused "x" | "y"\nopt ::= "a"?')


def test_left_recursion_in_unused_rule_is_still_llama_cpps() -> None:
    exc = _error('root ::= "y"\nunused ::= unused "x" | "y"')
    assert exc.message == "rule 'unused' is left-recursive (unused -> unused)"


def test_repetition_of_empty() -> None:
    """llama.cpp rejects x* when x has an empty alternative (its R ::= x R | ε recurses on the
    left); x = "a"? is fine there."""
    exc = _error('root ::= ("a" | )*')
    assert (exc.line, exc.column) == (1, 18)
    assert "'*' in rule 'root' repeats what can match the empty string" in exc.message
    assert "the group at line 1, column 10" in exc.message
    assert "rule 'x' can" in _error('root ::= x+\nx ::= "a" |').message


def test_root_matching_nothing() -> None:
    exc = _error('root ::= a\na ::= "x" a')
    assert (exc.line, exc.column) == (1, 1)
    assert exc.message == ("rule 'root' matches no text: every alternative needs a rule that "
                           "never finishes (root -> a -> a -> ...)")
    exc = _error('start ::= "x" | item\nroot ::= item item\nitem ::= [^\\x00-\\U0010FFFF]')
    assert (exc.line, exc.column) == (2, 1)
    assert "root -> item needs the character class at line 3, column 10, which matches no " \
           "character" in exc.message
    # a class that excludes everything in several pieces
    assert "matches no text" in _error('root ::= [^\\x00-\\x7F\\x80-\\uFFFF\\U00010000-\\U0010FFFF]').message
    # a rule that matches nothing is fine where root does not need it
    check_gbnf('root ::= "a" | b\nb ::= "x" b')
    check_gbnf('root ::= "a" | [^\\x00-\\U0010FFFF]')
    check_gbnf('root ::= [^\\x01-\\U0010FFFF]')          # NUL is still outside


# --- what would crash or hang llama.cpp --------------------------------------------------------


def test_deep_nesting_is_fast() -> None:
    text = "root ::= " + "(" * 100_000 + '"x"' + ")" * 100_000
    start = time.process_time()
    exc = _error(text)
    assert time.process_time() - start < 1.0
    assert (exc.line, exc.column) == (1, 10 + 256)
    assert exc.message == "parentheses nested more than 256 deep (max_depth)"
    check_gbnf("root ::= " + "(" * 256 + '"x"' + ")" * 256)
    assert "more than 8 deep" in _error("root ::= " + "(" * 9 + '"x"' + ")" * 9, max_depth=8).message


def test_huge_repetitions() -> None:
    exc = _error('root ::= x{1000000}\nx ::= "x"')
    assert (exc.line, exc.column) == (1, 11)
    assert "repetition count 1000000 is more than llama.cpp accepts" in exc.message
    assert "does not fit in 64 bits" in _error('root ::= "x"{0,99999999999999999999999}').message
    exc = _error('root ::= (x{1000}){1000}\nx ::= "x"')
    assert (exc.line, exc.column) == (1, 19)
    assert exc.message.startswith("'{1000}' expands the grammar to more than 1000000 elements")
    exc = _error('root ::= "' + "a" * 1000 + '"{1500}')
    assert exc.column == 1012 and "max_expanded" in exc.message
    exc = _error('root ::= "x"' + "+" * 100)        # each '+' doubles what it repeats
    assert exc.message.startswith("'+' expands the grammar")
    assert check_gbnf('root ::= (x{100}){10}\nx ::= "x"')
    assert "'{10}' expands" in _error('root ::= (x{100}){10}\nx ::= "x"', max_expanded=500).message


def test_llama_cpp_repetition_threshold() -> None:
    """llama.cpp refuses to copy more than 2000 rules: a group counts itself, the groups and
    repetitions in it, and the rule names it uses for the first time."""
    exc = _error('root ::= (a b c){1000}\na ::= "a"\nb ::= "b"\nc ::= "c"')
    assert (exc.line, exc.column) == (1, 17)
    assert "copy 4 rules 1000 times" in exc.message
    check_gbnf('a ::= "a"\nb ::= "b"\nc ::= "c"\nroot ::= (a b c){1000}')
    assert "copy 102 rules 99 times" in _error(
        "root ::= (((((([^x]*){0,99}){0,99}){0,99}){0,99}){0,99}){0,99}").message


def test_exponential_alternatives() -> None:
    """Each level doubles the ways to start: llama.cpp would build 2^20 stacks (and walk as many
    paths in its left-recursion check)."""
    lines = ["root ::= a0"] + [f'a{i} ::= a{i + 1} | a{i + 1} "x"' for i in range(20)] + ['a20 ::= "y"']
    exc = _error("\n".join(lines))
    assert "more than 20000 paths" in exc.message and exc.line is not None
    # behind a rule that only derives the empty string, which llama.cpp's check does not look
    # past (but its parse stacks do), after a terminal (generation gets there after "q")
    def doubling(levels: int) -> str:
        return "\n".join(['root ::= "q" b0', 'opt ::= "a"?']
                         + [f'b{i} ::= opt b{i + 1} "x" | opt b{i + 1} "y"' for i in range(levels)]
                         + [f'b{levels} ::= "y"'])

    exc = _error(doubling(12))
    assert (exc.line, exc.column) == (3, 12)
    assert exc.message.startswith("the grammar can begin here in more than 20000 ways")
    check_gbnf(doubling(6))
    assert "more than 100 ways" in _error(doubling(6), max_stacks=100).message


def test_many_alternatives() -> None:
    words = " | ".join(f'"w{i}"' for i in range(30_000))
    exc = _error(f"root ::= {words}")
    assert (exc.line, exc.column) == (1, 1) and "more than 20000 ways" in exc.message
    check_gbnf(f"root ::= {words}", max_stacks=40_000)
    check_gbnf("root ::= item\nitem ::= " + " | ".join(f'"w{i}"' for i in range(10_000)))


def test_nullable_repetitions_multiply() -> None:
    exc = _error('root ::= a{0,1999}\na ::= b{0,1999}\nb ::= "x"?')
    assert "ways" in exc.message or "paths" in exc.message


def test_long_leftmost_chain() -> None:
    lines = [f'r{i} ::= r{i + 1} "x"' for i in range(300)] + ['r300 ::= "y"', "root ::= r0"]
    check_gbnf("\n".join(lines))
    exc = _error("\n".join(lines), max_depth=4)
    assert "starts a chain of more than 256 rules" in exc.message


def test_large_grammar_is_fast() -> None:
    """About 100 KB in the shape of the JSON-schema converter's output."""
    parts = ['root ::= obj0\nspace ::= | " " | "\\n"{1,2} [ \\t]{0,20}\n'
             'char ::= [^"\\\\\\x7F\\x00-\\x1F] | [\\\\] (["\\\\bfnrt] | "u" [0-9a-fA-F]{4})\n'
             'string ::= "\\"" char* "\\"" space\n'
             'integer ::= ("-"? ([0] | [1-9] [0-9]{0,15})) space\n']
    i = 0
    while sum(map(len, parts)) < 100_000:
        parts.append(f'obj{i} ::= "{{" space ("\\"name-{i}\\"" space ":" space string ("," space '
                     f'"\\"count\\"" space ":" space integer)? ("," space "\\"child\\"" space ":" '
                     f'space obj{i + 1})? | "\\"tags\\"" space ":" space "[" space (string ("," space '
                     f'string)*)? "]" space) "}}" space  # object {i}\n')
        i += 1
    parts.append(f'obj{i} ::= "{{}}" space\n')
    text = "".join(parts)
    check_gbnf(text)
    best = min(_cpu_seconds(text) for _ in range(3))
    # tens of milliseconds on a quiet machine; the bound only catches a quadratic slip
    assert best < 1.0, best


def _cpu_seconds(text: str) -> float:
    start = time.process_time()
    check_gbnf(text)
    return time.process_time() - start


def test_arguments() -> None:
    with pytest.raises(TypeError):
        check_gbnf(b'root ::= "a"')  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        check_gbnf('root ::= "a"', None)  # type: ignore[arg-type]
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ValueError):
            check_gbnf('root ::= "a"', max_depth=bad)  # type: ignore[arg-type]
