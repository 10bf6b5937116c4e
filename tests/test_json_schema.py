"""llama_cython.json_schema without a model: schemas from dicts, pydantic models and dataclasses;
the check of what llama.cpp's converter supports (tests/_json_schemas.py: a corpus it must
accept, and hostile schemas it must refuse); reading generated texts back."""

from __future__ import annotations

import dataclasses
import datetime
import doctest
import enum
import json
import pickle
import uuid
from pathlib import Path
from typing import Any, Literal, Optional, Union

import pytest
from _json_schemas import HOSTILE_SCHEMAS, SCHEMAS, Case, Hostile

from llama_cython import json_schema as js
from llama_cython.errors import LlamaError, OptionError, SchemaError
from llama_cython.json_schema import OutputParseError, check_schema, parse_output, schema_of

ROOT = Path(__file__).resolve().parent.parent


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


needs_pydantic = pytest.mark.skipif(not _has("pydantic"), reason="pydantic is not installed")
needs_jsonschema = pytest.mark.skipif(not _has("jsonschema"), reason="jsonschema is not installed")


@pytest.fixture
def no_pydantic(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dataclasses go through our own schema and conversion, as without pydantic."""
    monkeypatch.setattr(js, "_pydantic", lambda: None)


# dataclasses for the tests (module level, so that their annotations resolve)


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclasses.dataclass
class Point:
    x: int
    y: int = 0


@dataclasses.dataclass
class Everything:
    name: str
    score: float
    count: int
    flag: bool
    color: Color
    level: Level
    where: Point
    tags: list[str]
    pair: tuple[int, str]
    many: tuple[int, ...]
    counts: dict[str, int]
    mode: Literal["a", "b"]
    when: datetime.date
    at: datetime.datetime
    opens: datetime.time
    ident: uuid.UUID
    maybe: Optional[int] = None      # noqa: UP045 (the typing spelling is tested on purpose)
    either: Union[int, str] = 0      # noqa: UP007
    newer: int | None = None
    anything: Any = None
    points: list[Point] = dataclasses.field(default_factory=list)


EVERYTHING_JSON = {
    "name": "n", "score": 1, "count": 2, "flag": True, "color": "green", "level": 2,
    "where": {"x": 1}, "tags": ["t"], "pair": [1, "a"], "many": [1, 2, 3], "counts": {"k": 3},
    "mode": "b", "when": "2024-02-29", "at": "2024-02-29T10:20:30Z", "opens": "09:00:00Z",
    "ident": "123e4567-e89b-12d3-a456-426614174000", "maybe": None, "either": "s",
    "points": [{"x": 5, "y": 6}],
}


@dataclasses.dataclass
class Tree:
    label: str
    children: list[Tree] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class WithSet:
    items: set[int]


@dataclasses.dataclass
class WithBytes:
    data: bytes


# schema_of


def test_schema_of_dict_is_a_deep_json_copy() -> None:
    original = {"type": "object", "properties": {"a": {"enum": ("x", "y")}}}
    copied = schema_of(original)
    assert copied == {"type": "object", "properties": {"a": {"enum": ["x", "y"]}}}
    copied["properties"]["a"]["enum"].append("z")
    assert original["properties"]["a"]["enum"] == ("x", "y")
    assert list(schema_of({"b": 1, "a": 2})) == ["b", "a"]      # key order kept


@pytest.mark.parametrize(("schema", "message"), [
    ({"properties": {"a": {"default": {1, 2}}}}, "the value at #/properties/a/default is a set"),
    ({"enum": [1, float("nan")]}, "the value at #/enum/1 is nan"),
    ({"properties": {1: {}}}, "the key 1 at #/properties is not a string"),
    ({"a/b": {"c~d": [object()]}}, "the value at #/a~1b/c~0d/0 is an object"),
    ({"examples": [b"bytes"]}, "the value at #/examples/0 is a bytes"),
])
def test_schema_of_dict_names_the_first_value_that_is_not_json(schema: dict[str, Any], message: str) -> None:
    with pytest.raises(SchemaError, match="not JSON") as info:
        schema_of(schema)
    assert message in str(info.value)


def test_schema_of_a_dict_that_contains_itself() -> None:
    loop: dict[str, Any] = {"type": "object"}
    loop["properties"] = {"self": loop}
    with pytest.raises(SchemaError, match="nested too deeply"):
        schema_of(loop)
    with pytest.raises(SchemaError, match="nested too deeply"):
        check_schema(loop)


@pytest.mark.parametrize("obj", ["{}", 3, None, [{}], Point(1), Point.__init__, int])
def test_schema_of_refuses_other_things(obj: object) -> None:
    with pytest.raises(TypeError, match="JSON-schema dict, a pydantic model class or a dataclass"):
        schema_of(obj)


def test_own_dataclass_schema(no_pydantic: None) -> None:
    schema = schema_of(Everything)
    props = schema["properties"]
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert schema["required"] == [f.name for f in dataclasses.fields(Everything)][:16]
    assert props["name"] == {"type": "string"}
    assert props["score"] == {"type": "number"}
    assert props["color"] == {"title": "Color", "enum": ["red", "green"], "type": "string"}
    assert props["level"] == {"title": "Level", "enum": [1, 2], "type": "integer"}
    assert props["where"] == {"$ref": "#/$defs/Point"}
    assert props["pair"] == {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}],
                             "minItems": 2, "maxItems": 2}
    assert props["many"] == {"type": "array", "items": {"type": "integer"}}
    assert props["counts"] == {"type": "object", "additionalProperties": {"type": "integer"}}
    assert props["mode"] == {"enum": ["a", "b"]}
    assert props["at"] == {"type": "string", "format": "date-time"}
    assert props["maybe"] == {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None}
    assert props["newer"] == props["maybe"]
    assert props["anything"] == {"default": None}
    assert props["points"] == {"type": "array", "items": {"$ref": "#/$defs/Point"}}
    assert schema["$defs"]["Point"]["required"] == ["x"]
    assert schema["$defs"]["Point"]["properties"]["y"] == {"type": "integer", "default": 0}
    check_schema(schema)


def test_own_schema_of_a_recursive_dataclass(no_pydantic: None) -> None:
    schema = schema_of(Tree)
    assert schema["$ref"] == "#/$defs/Tree"
    assert schema["$defs"]["Tree"]["properties"]["children"]["items"] == {"$ref": "#/$defs/Tree"}
    check_schema(schema)


@pytest.mark.parametrize(("cls", "message"), [(WithSet, "WithSet.items: sets"),
                                              (WithBytes, "WithBytes.data: the type")])
def test_own_dataclass_schema_refuses_unsupported_field_types(no_pydantic: None, cls: type,
                                                              message: str) -> None:
    with pytest.raises(TypeError, match=message):
        schema_of(cls)


@needs_jsonschema
def test_own_dataclass_schema_describes_what_the_conversion_reads(no_pydantic: None) -> None:
    import jsonschema

    schema = schema_of(Everything)
    jsonschema.validators.validator_for(schema).check_schema(schema)
    jsonschema.validate(EVERYTHING_JSON, schema)
    value = parse_output(json.dumps(EVERYTHING_JSON), Everything)
    assert value.where == Point(1, 0) and value.points == [Point(5, 6)]
    assert value.color is Color.GREEN and value.level is Level.HIGH
    assert value.pair == (1, "a") and value.many == (1, 2, 3)
    assert value.score == 1.0 and isinstance(value.score, float)
    assert value.at == datetime.datetime(2024, 2, 29, 10, 20, 30, tzinfo=datetime.timezone.utc)
    assert value.opens == datetime.time(9, tzinfo=datetime.timezone.utc)
    assert value.ident == uuid.UUID("123e4567-e89b-12d3-a456-426614174000")
    assert value.either == "s" and value.newer is None and value.anything is None


@needs_pydantic
def test_schema_of_dataclass_with_pydantic() -> None:
    import pydantic

    assert schema_of(Everything) == pydantic.TypeAdapter(Everything).json_schema()
    check_schema(schema_of(Everything))
    check_schema(schema_of(Tree))
    value = parse_output(json.dumps(EVERYTHING_JSON), Everything)
    assert value.where == Point(1, 0) and value.color is Color.GREEN


@needs_pydantic
def test_schema_of_pydantic_model() -> None:
    import pydantic

    class Pet(pydantic.BaseModel):
        kind: Literal["cat"]
        name: str = pydantic.Field(min_length=1, max_length=20)

    class Dog(pydantic.BaseModel):
        kind: Literal["dog"]
        good: bool = True

    class Owner(pydantic.BaseModel):
        """Someone with pets."""
        name: str
        age: int = pydantic.Field(ge=0, le=150)
        color: Color = Color.RED
        pets: list[Pet | Dog] = []
        best: Pet | Dog = pydantic.Field(discriminator="kind")
        since: datetime.date | None = None
        pair: tuple[int, int] = (0, 0)

    schema = schema_of(Owner)
    assert schema == Owner.model_json_schema()
    check_schema(schema)
    owner = parse_output('{"name": "Jo", "age": 30, "best": {"kind": "dog"}}', Owner)
    assert isinstance(owner, Owner) and owner.best == Dog(kind="dog")

    class Priced(pydantic.BaseModel):
        price: float = pydantic.Field(ge=0)

    with pytest.raises(SchemaError, match=r"'minimum' at #/properties/price: llama\.cpp bounds integers"):
        check_schema(schema_of(Priced))


# check_schema: the corpus


def test_the_corpus_is_big_and_varied() -> None:
    assert len(SCHEMAS) >= 30 and len({c.name for c in SCHEMAS}) == len(SCHEMAS)
    assert len({h.name for h in HOSTILE_SCHEMAS}) == len(HOSTILE_SCHEMAS)
    text = json.dumps([c.schema for c in SCHEMAS])
    for keyword in ("$ref", "$defs", "definitions", "anyOf", "oneOf", "allOf", "enum", "const",
                    "additionalProperties", "prefixItems", "minItems", "maxItems", "pattern", "minLength",
                    "exclusiveMinimum", '"date"', '"time"', '"date-time"', '"uuid"', '"null"', '"boolean"'):
        assert keyword in text, keyword


@pytest.mark.parametrize("case", SCHEMAS, ids=[c.name for c in SCHEMAS])
def test_corpus_schema_is_supported(case: Case) -> None:
    check_schema(case.schema)
    assert case.prompt and case.example is not None


@needs_jsonschema
@pytest.mark.parametrize("case", SCHEMAS, ids=[c.name for c in SCHEMAS])
def test_corpus_schema_is_valid_json_schema(case: Case) -> None:
    import jsonschema

    validator = jsonschema.validators.validator_for(case.schema)
    validator.check_schema(case.schema)
    validator(case.schema).validate(case.example)


@pytest.mark.parametrize("case", HOSTILE_SCHEMAS, ids=[h.name for h in HOSTILE_SCHEMAS])
def test_hostile_schema_is_refused(case: Hostile) -> None:
    with pytest.raises(SchemaError) as info:
        check_schema(case.schema)
    assert case.error in str(info.value)


def test_schema_error_is_an_option_error() -> None:
    with pytest.raises(ValueError) as info:
        check_schema({"type": "object", "properties": {"a": {"type": "object", "patternProperties": {}}}})
    assert isinstance(info.value, SchemaError) and isinstance(info.value, OptionError)
    assert str(info.value) == "unsupported JSON Schema keyword 'patternProperties' at #/properties/a"


def test_check_schema_takes_a_dict() -> None:
    with pytest.raises(TypeError, match="a JSON schema is a dict"):
        check_schema(True)  # type: ignore[arg-type]


def test_check_schema_leaves_its_argument_alone() -> None:
    schema = {"type": "array", "items": ({"type": "string"},)}
    before = repr(schema)
    check_schema(schema)
    assert repr(schema) == before


@pytest.mark.parametrize("levels", [65, 200, 5000])
def test_deep_schemas_are_refused_without_recursion(levels: int) -> None:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(levels):
        schema = {"type": "array", "items": schema}
    with pytest.raises(SchemaError, match="nested too deeply"):
        check_schema(schema)


def test_depth_counts_ref_hops() -> None:
    defs = {f"d{i}": {"type": "array", "items": {"$ref": f"#/$defs/d{i + 1}"}} for i in range(40)}
    defs["d40"] = {"type": "integer"}
    with pytest.raises(SchemaError, match="nested too deeply"):
        check_schema({"$defs": defs, "$ref": "#/$defs/d0"})
    short = {f"d{i}": defs[f"d{i}"] for i in range(10)}
    short["d10"] = {"type": "integer"}
    check_schema({"$defs": short, "$ref": "#/$defs/d0"})


def test_limits_are_inclusive() -> None:
    check_schema({"type": "array", "items": {"type": "integer"}, "maxItems": js.MAX_ITEMS})
    check_schema({"type": "string", "minLength": js.MAX_LENGTH, "maxLength": js.MAX_LENGTH})
    check_schema({"type": "string", "pattern": f"^a{{{js.MAX_LENGTH}}}$"})
    check_schema({"type": "integer", "minimum": -js.MAX_INTEGER, "maximum": js.MAX_INTEGER})
    check_schema({"enum": list(range(js.MAX_ALTERNATIVES))})
    check_schema({"type": "object", "properties": {f"p{i}": {} for i in range(js.MAX_OPTIONAL)}})
    nested: dict[str, Any] = {"type": "integer"}
    for _ in range(js.MAX_DEPTH - 1):
        nested = {"type": "array", "items": nested}
    check_schema(nested)


@pytest.mark.parametrize("schema", [
    {},                                                          # anything
    {"description": "anything at all", "default": 3},
    {"type": "string", "minimum": 3, "items": {"not": {}}},      # keywords of other types: no-ops
    {"type": ["integer", "null"], "minimum": 0, "maximum": 9},   # each alternative keeps its keywords
    {"type": ["string", "null"], "pattern": "^[a-z]+$"},
    {"type": ["string", "null"], "enum": ["a", None]},
    {"type": "array", "items": {"type": "string"}, "uniqueItems": False},
    {"type": "string", "minLength": 0, "pattern": "^x$"},       # minLength 0 is no constraint
    {"const": "a", "enum": ["a", "b"], "type": "string"},
    {"type": "integer", "minimum": 0.5, "exclusiveMaximum": 10.5},
    {"allOf": [{"enum": ["a", "b"]}, {"enum": ["b", "c"]}]},
    {"allOf": [{"type": "object", "properties": {"a": {}}}, {}, {"type": "object"}]},
    {"oneOf": [{"type": "string"}], "discriminator": {"propertyName": "x"}},
    {"type": "object", "properties": {"a b": {}, "ä": {}}, "additionalProperties": True},
    {"type": "string", "pattern": "^(?:ab|c)+?[^\"\\\\]*\\.\\x41\\u00e9.$"},
    {"type": "string", "pattern": "^$"},
    {"$defs": {"t": {"type": "object",
                     "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/t"}}}}},
     "$ref": "#/$defs/t"},
    {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"type": "string"}}, "$ref": "#/$defs/a"},   # a chain
    {"type": "object", "properties": {"a": {"type": "string"}, "b": {"$ref": "#/properties/a"}}},
    {"$defs": {"unused": {"not": "checked: never referenced"}}, "type": "null"},
    {"oneOf": [{"type": "string"}, {"type": "integer"}, {"type": "array"}, {"enum": [True, None]}]},
    {"oneOf": [{"type": "object", "properties": {"a": {}}, "required": ["a"]},
               {"type": "object", "properties": {"b": {}}, "required": ["b"],
                "additionalProperties": False}]},                   # the second allows no "a"
    {"oneOf": [{"anyOf": [{"type": "string"}, {"type": "null"}]}, {"type": "integer", "minimum": 0}]},
    {"type": "integer", "minimum": 110},                # no inner zero: the digit ranges are right
    {"type": "integer", "minimum": 10, "maximum": 100000},
    {"type": "integer", "minimum": -100},
    {"type": "integer", "maximum": 1000},
])
def test_more_accepted_schemas(schema: dict[str, Any]) -> None:
    check_schema(schema)


def test_first_problem_in_document_order() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string", "format": "email"},
                                               "b": {"type": "number", "minimum": 0}}}
    with pytest.raises(SchemaError, match="'format' at #/properties/a"):
        check_schema(schema)
    with pytest.raises(SchemaError, match="'minimum' at #/properties/b"):
        check_schema({"type": "object", "properties": {"b": schema["properties"]["b"]}})


@pytest.mark.parametrize("case", SCHEMAS, ids=[c.name for c in SCHEMAS])
def test_llama_cpp_converter_takes_the_corpus(case: Case) -> None:
    """llama.cpp's own converter (compiled into the extension) turns every corpus schema into
    a grammar with no error and no "accepting any string" warning, and the grammar passes the
    GBNF check."""
    from llama_cython import Grammar

    grammar = Grammar.from_json_schema(case.schema)
    assert "root" in grammar.rules
    assert grammar.parse(json.dumps(case.example)) == case.example


# parse_output


def test_parse_output_for_a_schema_dict_is_the_json_value() -> None:
    assert parse_output(' {"a": [1, 2.5, null]} ', {"type": "object"}) == {"a": [1, 2.5, None]}


def test_parse_output_syntax_error_has_the_position() -> None:
    text = '{"a": 1,\n "b": tru}'
    with pytest.raises(OutputParseError) as info:
        parse_output(text, {})
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, LlamaError)
    assert (err.pos, err.lineno, err.colno, err.path) == (15, 2, 7, ())
    assert "not valid JSON" in str(err) and "line 2, column 7" in str(err)
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is OutputParseError and str(again) == str(err) and again.pos == 15


def test_parse_output_of_a_deep_text_does_not_recurse_out() -> None:
    with pytest.raises(OutputParseError, match="too deeply"):
        parse_output("[" * 100_000 + "]" * 100_000, {})


def test_parse_output_own_conversion_errors(no_pydantic: None) -> None:
    text = '{"x": 1,\n "y": "two"}'
    with pytest.raises(OutputParseError) as info:
        parse_output(text, Point)
    assert info.value.path == ("y",) and info.value.pos == text.index('"two"')
    assert "does not fit Point at y: expected an integer" in str(info.value)
    with pytest.raises(OutputParseError, match="needs the field 'x'"):
        parse_output('{"y": 1}', Point)
    with pytest.raises(OutputParseError, match="has no field 'z'") as info:
        parse_output('{"x": 1, "z": 2}', Point)
    assert info.value.pos == len('{"x": 1, "z": ')
    bad = dict(EVERYTHING_JSON, points=[{"x": 5}, {"x": True}])
    text = json.dumps(bad)
    with pytest.raises(OutputParseError) as info:
        parse_output(text, Everything)
    assert info.value.path == ("points", 1, "x")
    assert text[info.value.pos:].startswith("true}]")
    with pytest.raises(OutputParseError, match="expected one of"):
        parse_output(json.dumps(dict(EVERYTHING_JSON, color="blue")), Everything)
    with pytest.raises(OutputParseError, match="expected a date string"):
        parse_output(json.dumps(dict(EVERYTHING_JSON, when="2024-02-30")), Everything)
    with pytest.raises(OutputParseError, match="an array of 2 items"):
        parse_output(json.dumps(dict(EVERYTHING_JSON, pair=[1])), Everything)


def test_parse_output_own_conversion_of_a_tree(no_pydantic: None) -> None:
    tree = parse_output('{"label": "a", "children": [{"label": "b"}]}', Tree)
    assert tree == Tree("a", [Tree("b")])


@needs_pydantic
def test_parse_output_pydantic_errors_have_the_position() -> None:
    import pydantic

    class Item(pydantic.BaseModel):
        name: str
        qty: int

    class Order(pydantic.BaseModel):
        items: list[Item]

    text = '{"items": [{"name": "a", "qty": 1}, {"name": "b", "qty": "many"}]}'
    with pytest.raises(OutputParseError) as info:
        parse_output(text, Order)
    assert info.value.path == ("items", 1, "qty")
    assert text[info.value.pos:].startswith('"many"')
    assert "does not fit" in str(info.value) and "items.1.qty" in str(info.value)
    with pytest.raises(OutputParseError) as info:
        parse_output('{"x": "no"}', Point)            # a dataclass, through pydantic
    assert info.value.path == ("x",) and info.value.pos == len('{"x": ')


@pytest.mark.parametrize(("text", "target"), [(b"{}", {}), ("{}", "schema"), ("{}", Point(1))])
def test_parse_output_argument_types(text: Any, target: Any) -> None:
    with pytest.raises(TypeError):
        parse_output(text, target)


def test_module_doctest() -> None:
    result = doctest.testmod(js, optionflags=doctest.ELLIPSIS)
    assert result.attempted and not result.failed
