"""Grammars that constrain generation: GBNF text, or a JSON schema turned into GBNF.

A :class:`Grammar` is checked when it is made (a syntax error raises
:class:`~llama_cython.errors.GrammarError` with its line and column), compiled for a model the
first time a generation uses it, and reused: make it once, pass it to many calls.

>>> from llama_cython import Grammar
>>> yes_no = Grammar('root ::= "yes" | "no"')
>>> yes_no.rules
('root',)
>>> Grammar('root ::= "yes" | no')
Traceback (most recent call last):
...
llama_cython.errors.GrammarError: line 1, column 18: undefined rule 'no'

A JSON schema (a dict, a pydantic model class or a dataclass) becomes a grammar through
llama.cpp's own converter; :meth:`Grammar.parse` reads a generated text back into the type it
came from:

>>> point = Grammar.from_json_schema({"type": "object", "properties": {"x": {"type": "integer"}},
...                                   "required": ["x"], "additionalProperties": False})
>>> point.parse('{"x": 3}')
{'x': 3}
"""

from __future__ import annotations

import json
from typing import Any

from llama_cython.grammar_check import check_gbnf

__all__ = ["Grammar"]


class Grammar:
    """A checked GBNF grammar, reusable across calls and models.

    ``Grammar(gbnf, root="root")`` checks the text (syntax, undefined rules, left recursion, an
    empty language, nesting and size limits) without a model. Pass it as ``grammar=`` to
    :meth:`Context.generate` and the other generation methods; a plain string there is checked
    the same way on each call.
    """

    __slots__ = ("_rules", "_target", "root", "schema", "text")

    text: str
    root: str
    schema: dict[str, Any] | None
    _rules: tuple[str, ...]
    _target: object

    def __init__(self, gbnf: str, root: str = "root") -> None:
        if not isinstance(gbnf, str):
            raise TypeError(f"grammar must be a str (GBNF), got {type(gbnf).__name__}")
        if not isinstance(root, str):
            raise TypeError(f"root must be a str, got {type(root).__name__}")
        info = check_gbnf(gbnf, root)
        self.text = gbnf
        self.root = root
        self.schema = None
        self._rules = tuple(info.rules)
        self._target = None

    @classmethod
    def from_json_schema(cls, schema: object) -> Grammar:
        """The grammar of the JSON texts that validate against ``schema``.

        ``schema`` is a JSON-schema dict, a pydantic model class or a dataclass. Keywords the
        converter cannot enforce raise :class:`~llama_cython.errors.SchemaError` naming them
        (rather than being ignored). The grammar allows JSON whitespace between tokens.
        """
        from llama_cython import _core
        from llama_cython.json_schema import check_schema, schema_of

        as_dict = schema_of(schema)
        check_schema(as_dict)
        gbnf = _core.json_schema_to_gbnf(json.dumps(as_dict, ensure_ascii=False))
        grammar = cls(gbnf)
        grammar.schema = as_dict
        grammar._target = schema
        return grammar

    @property
    def rules(self) -> tuple[str, ...]:
        """The names of the rules the grammar defines, in order."""
        return self._rules

    def parse(self, text: str) -> Any:
        """A generated text read back: for a grammar made from a JSON schema, the JSON value
        (an instance of the pydantic model or dataclass it was made from, if it was); for
        another grammar, the text itself."""
        if self.schema is None:
            return text
        from llama_cython.json_schema import parse_output

        return parse_output(text, self._target if self._target is not None else self.schema)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Grammar):
            return NotImplemented
        return (self.text, self.root) == (other.text, other.root)

    def __hash__(self) -> int:
        return hash((self.text, self.root))

    def __reduce__(self) -> tuple[Any, ...]:
        if self._target is not None:
            return (Grammar.from_json_schema, (self._target,))
        return (Grammar, (self.text, self.root))

    def __repr__(self) -> str:
        kind = "JSON schema" if self.schema is not None else "GBNF"
        return f"<llama_cython.Grammar ({kind}) {len(self._rules)} rules, root={self.root!r}>"
