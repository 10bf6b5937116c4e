"""Constrained generation: GBNF grammars and JSON schemas, checked by things we did not write.

* every output of ``json_schema=`` generation on the schema corpus (tests/_json_schemas.py)
  parses with :mod:`json` and validates with the ``jsonschema`` package;
* the grammars of llama.cpp's ``grammars/`` folder (the vendored copy) each constrain
  generation: the output is checked with a parser or a check independent of the grammar
  engine (json for the JSON grammars; checks written from each grammar's description for
  the others: alphabet, balanced parentheses and operator placement for arithmetic, regular
  expressions for the line-based ones);
* hostile grammars fail cleanly, and a grammar that allows nothing more ends generation.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import llama_cython as llama
from llama_cython import Grammar

sys.path.insert(0, str(Path(__file__).parent))
from _json_schemas import HOSTILE_SCHEMAS, SCHEMAS

jsonschema = pytest.importorskip("jsonschema")


@dataclasses.dataclass
class Pet:
    name: str
    legs: int
    indoor: bool


@pytest.fixture(scope="module")
def chat_ctx(smol):
    ctx = smol.new_context(n_ctx=2048)
    yield ctx
    ctx.close()


def _chat(ctx, prompt: str, **kw):
    # Greedy decoding of a 135M model falls into loops inside free-form strings (a key
    # repeated until max_tokens); a mild repetition penalty keeps the answers finite.
    messages = [{"role": "system", "content": "You answer with JSON only."},
                {"role": "user", "content": prompt}]
    return ctx.chat(messages, temperature=0, repetition_penalty=1.1, **kw)


@pytest.mark.parametrize("case", SCHEMAS, ids=[c.name for c in SCHEMAS])
def test_json_schema_output_validates(chat_ctx, case):
    reply = _chat(chat_ctx, case.prompt, json_schema=case.schema, max_tokens=384)
    assert reply.finish_reason == "stop", (reply.finish_reason, reply.content[-200:])
    value = json.loads(reply.content)
    validator = jsonschema.validators.validator_for(case.schema)
    # the checker of the schema's own draft: FormatChecker() would take draft 3's "time" (no offset)
    validator(case.schema, format_checker=validator.FORMAT_CHECKER).validate(value)
    assert reply.parsed == value


def test_pydantic_and_dataclass_schemas(chat_ctx):
    pydantic = pytest.importorskip("pydantic")

    class City(pydantic.BaseModel):
        name: str
        country: str
        population: int

    reply = _chat(chat_ctx, "Describe the city of Paris as JSON.", json_schema=City, max_tokens=128)
    assert isinstance(reply.parsed, City)

    grammar = Grammar.from_json_schema(Pet)
    reply = _chat(chat_ctx, "Describe a pet cat as JSON.", grammar=grammar, max_tokens=96)
    assert isinstance(reply.parsed, Pet)
    text = chat_ctx.generate("A pet as JSON: ", grammar=grammar, max_tokens=96, temperature=0)
    assert isinstance(grammar.parse(text), Pet)
    # a Grammar pickles (Ray/Dask workers) and compares by its text
    assert pickle.loads(pickle.dumps(grammar)) == grammar


def test_grammar_reused_across_calls_streams_and_batches(smol):
    yes_no = Grammar('root ::= ("yes" | "no") "."')
    ctx = smol.new_context(n_ctx=1024, n_parallel=4)
    try:
        for q in ("Is water wet?", "Is fire cold?"):
            out = ctx.generate(f"Question: {q} Answer:", grammar=yes_no, max_tokens=8, temperature=0)
            assert out in ("yes.", "no.")
        with ctx.generate_stream("Answer:", grammar=yes_no, max_tokens=8, temperature=0.7, seed=3) as s:
            assert "".join(s) in ("yes.", "no.")
        outs = ctx.generate_batch([f"Q{i}: Answer:" for i in range(6)], grammar=yes_no,
                                  max_tokens=8, temperature=0.8, seed=1)
        assert all(o in ("yes.", "no.") for o in outs)
        # GBNF text directly, and a grammar string per call
        assert ctx.generate("Pick:", grammar='root ::= [0-9]', max_tokens=4, temperature=0).isdigit()
        with pytest.raises(llama.OptionError, match="not both"):
            ctx.generate("x", grammar=yes_no, json_schema={"type": "integer"})
        with pytest.raises(TypeError):
            ctx.generate("x", grammar=42)
        with pytest.raises(llama.OptionError):
            ctx.generate_with_draft("x", "prompt", grammar=yes_no)
    finally:
        ctx.close()


def test_grammar_that_allows_nothing_more_ends_generation(smol):
    """Once the grammar is complete only end-of-generation fits; with ignore_eos nothing does:
    generation must end (finish_reason "stop"), not spin or pick a forbidden token."""
    ctx = smol.new_context(n_ctx=512)
    try:
        out = ctx.generate("Say yes:", grammar='root ::= "yes"', ignore_eos=True, max_tokens=50,
                           temperature=0)
        assert out == "yes" and ctx.last_stats.finish_reason == "stop"
        out = ctx.generate("Say yes:", grammar='root ::= "yes"', ignore_eos=True, max_tokens=50,
                           temperature=1.0, seed=5)
        assert out == "yes"
        outs = ctx.generate_batch(["a", "b"], grammar='root ::= "ok"', ignore_eos=True, max_tokens=20)
        assert outs == ["ok", "ok"]
    finally:
        ctx.close()


@pytest.mark.parametrize("gbnf, line, column, match", [
    ('root ::= "a" | b', 1, 16, "undefined rule 'b'"),
    ('root ::= "unterminated', 1, 10, ""),
    ('root ::= ("a"', 1, None, ""),
    ('root ::= [a-', 1, None, ""),
    ('root = "a"', 1, None, "::="),
    ('expr ::= expr "+" "1" | "1"\nroot ::= expr', None, None, "left-recursive"),
    ('root ::= "a"{3,1}', 1, None, ""),
    ('root ::= other\nother ::= "x" other', None, None, ""),
])
def test_malformed_grammars_raise_with_position(smol, gbnf, line, column, match):
    ctx = smol.new_context(n_ctx=256)
    try:
        with pytest.raises(llama.GrammarError, match=match) as info:
            ctx.generate("x", grammar=gbnf, max_tokens=2)
        if line is not None:
            assert info.value.line == line
        if column is not None:
            assert info.value.column == column
        assert ctx.generate("Hi", max_tokens=2, temperature=0) is not None   # still usable
    finally:
        ctx.close()


def test_hostile_grammars_fail_fast():
    with pytest.raises(llama.GrammarError):
        Grammar("root ::= " + "(" * 100_000 + '"a"' + ")" * 100_000)
    with pytest.raises(llama.GrammarError):
        Grammar('root ::= ("x"{1000}){1000}')
    with pytest.raises(llama.GrammarError):
        Grammar('root ::= [^\\x00-\\U0010FFFF]')        # matches nothing
    with pytest.raises(llama.GrammarError, match="root"):
        Grammar('start ::= "a"')


@pytest.mark.parametrize("case", HOSTILE_SCHEMAS, ids=[c.name for c in HOSTILE_SCHEMAS])
def test_hostile_schemas_raise(smol, case):
    with pytest.raises(llama.SchemaError, match=re.escape(case.error)):
        Grammar.from_json_schema(case.schema)


# -- llama.cpp's grammars/ folder ---------------------------------------------------------------

def _check_json(text: str) -> None:
    json.loads(text)


def _check_arithmetic(text: str) -> None:
    """Lines of ``expression = term``: every character in the grammar's alphabet, parentheses
    balanced, binary operators between operands, one '=' per equation (outside parentheses)."""
    items = re.findall(r"[a-z][a-z0-9_]*|[0-9]+|[-+*/()=]|[ \t\n]+|.", text)
    depth, prev = 0, "="
    for t in items:
        assert re.fullmatch(r"[a-z][a-z0-9_]*|[0-9]+|[-+*/()=]|[ \t\n]+", t), (t, text)
        if t.isspace():
            continue
        if t in "-+*/=":
            assert prev in ("operand", ")"), text           # an operator follows an operand
            assert t != "=" or depth == 0, text
        elif t == "(":
            depth += 1
        elif t == ")":
            depth -= 1
            assert depth >= 0 and prev in ("operand", ")"), text
        prev = "operand" if t[0].isalnum() else t


def _lines_match(pattern: str, text: str, partial_last: bool) -> None:
    lines = text.split("\n")
    last = lines.pop()
    for line in lines:
        assert re.fullmatch(pattern, line), line
    if last and not partial_last:
        assert re.fullmatch(pattern, last), last


_MOVE = r"(?:[a-h](?:x[a-h])?[1-8](?:=[NBRQ])?|[NBKQR][a-h]?[1-8]?x?[a-h][1-8]|O-O(?:-O)?)[+#]?"
_EN = r"[A-Za-z0-9!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]"

def _json_if_done(text: str, done: bool) -> None:
    if done:
        _check_json(text)


def _arithmetic(text: str, done: bool) -> None:
    _check_arithmetic(text)


def _list(text: str, done: bool) -> None:
    _lines_match(r"- [^\r\n\x0b\x0c\x85\u2028\u2029]+", text, True)


def _chess(text: str, done: bool) -> None:
    _lines_match(rf"[1-9][0-9]?\. {_MOVE} {_MOVE}", text, True)


def _english(text: str, done: bool) -> None:
    assert re.fullmatch(rf"(?:{_EN}|[ \t\n])*", text), text


def _japanese(text: str, done: bool) -> None:
    assert re.fullmatch(r"[\u3041-\u309f\u30a1-\u30ff\u3001-\u303e\u4e00-\u9fff \t\n]*", text), text


def _c(text: str, done: bool) -> None:
    # declarations start with a type and a name; a function body follows its parameters
    # (a text cut by max_tokens may end inside the first name)
    assert re.match(r"(?:int|float|char)\s*[A-Za-z_]\w*(?:\(|$)", text), text


GRAMMAR_CASES = {
    "json.gbnf": ("A JSON object describing a cat: ", _json_if_done),
    "json_arr.gbnf": ("A JSON array of three fruit names: ", _json_if_done),
    "arithmetic.gbnf": ("Simple sums:\n", _arithmetic),
    "list.gbnf": ("A shopping list:\n", _list),
    "chess.gbnf": ("The moves of a chess game:\n", _chess),
    "english.gbnf": ("An English sentence: ", _english),
    "japanese.gbnf": ("日本語の文: ", _japanese),
    "c.gbnf": ("int main() {", _c),
}


@pytest.mark.parametrize("name", sorted(GRAMMAR_CASES))
def test_vendored_grammars_constrain_generation(smol, vendor_dir, name):
    path = vendor_dir / "grammars" / name
    if not path.exists():
        pytest.skip(f"{name} is not in this llama.cpp")
    prompt, check = GRAMMAR_CASES[name]
    grammar = Grammar(path.read_text(encoding="utf-8"))
    ctx = smol.new_context(n_ctx=512)
    try:
        text = ctx.generate(prompt, grammar=grammar, max_tokens=64, temperature=0.7, seed=7)
        done = ctx.last_stats.finish_reason == "stop"
        assert text
        check(text, done)
    finally:
        ctx.close()


def test_every_vendored_grammar_checks(vendor_dir):
    files = sorted((vendor_dir / "grammars").glob("*.gbnf"))
    assert files
    for f in files:
        Grammar(f.read_text(encoding="utf-8"))


def test_greedy_text_the_grammar_allows_is_unchanged(smol):
    """A grammar that allows exactly the unconstrained greedy text gives that text: the
    grammar only removes tokens, it does not move the model's choice among the allowed."""
    ctx = smol.new_context(n_ctx=512)
    try:
        free = ctx.generate("Count: 1, 2, 3,", max_tokens=6, temperature=0)
        # a JSON string literal is a GBNF literal (same escapes)
        assert ctx.generate("Count: 1, 2, 3,", max_tokens=6, temperature=0,
                            grammar=f"root ::= {json.dumps(free)}") == free
        text = ctx.generate("Count: 1, 2, 3,", max_tokens=6, temperature=0, logprobs=3,
                            json_schema={"type": "integer"})
        lp = ctx.last_stats.logprobs
        assert lp is not None and len(lp) == ctx.last_stats.completion_tokens
        assert np.all(lp.logprobs <= 0)
        assert text.strip().lstrip("-").isdigit()
    finally:
        ctx.close()
