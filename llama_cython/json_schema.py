"""JSON schemas for constrained generation: where they come from, what llama.cpp can enforce, and
reading the generated text back.

``generate(..., json_schema=...)`` takes a JSON-schema dict, a pydantic (v2) model class or a
dataclass. :func:`schema_of` turns any of them into a plain schema dict, :func:`check_schema`
refuses what llama.cpp's converter (``common/json-schema-to-grammar.cpp``) would get wrong (it
ignores what it does not understand, so the grammar would allow texts the schema forbids, or
never let generation end), and :func:`parse_output` turns a generated text into the value the
caller asked for.

>>> from dataclasses import dataclass
>>> @dataclass
... class Point:
...     x: int
...     y: int = 0
>>> schema = schema_of(Point)
>>> schema["required"], sorted(schema["properties"])
(['x'], ['x', 'y'])
>>> check_schema(schema)
>>> parse_output('{"x": 3}', Point)
Point(x=3, y=0)
>>> check_schema({"type": "object", "patternProperties": {"^a": {"type": "string"}}})
Traceback (most recent call last):
...
llama_cython.errors.SchemaError: unsupported JSON Schema keyword 'patternProperties' at #

What :func:`check_schema` accepts is what the converter enforces: ``type`` (one, or a list),
``properties``/``required``/``additionalProperties``, ``items`` (a schema, or a list: a tuple),
``prefixItems``, ``minItems``/``maxItems``, ``enum``, ``const``, ``anyOf``, ``oneOf`` (whose
branches provably exclude each other: the grammar cannot), ``allOf`` of object schemas (their
properties are merged, all required) or of enums, ``$ref`` into the same document, string
``format`` date, time, date-time and uuid, ``pattern`` (a regex subset, anchored ``^...$``),
``minLength``/``maxLength``, and integer ``minimum``/``maximum``/``exclusive*``. Annotations
(title, description, default, examples, ...) are allowed and ignored. It also refuses what the
converter or llama.cpp's grammar would mishandle: cycles of ``$ref`` that no ``{`` or ``[``
breaks, recursions with no finite value, sizes the grammar cannot unroll, and the integer bounds
the converter gets wrong.

A pattern's ``.`` and negated classes (``[^,]``) can still let a raw ``"`` or control character
into a string (the converter does not exclude them), so a text may still fail to parse:
:func:`parse_output` then says where.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import functools
import importlib
import json
import math
import re
import string
import types
import typing
import uuid
from types import ModuleType
from typing import Any, NoReturn

from llama_cython.errors import LlamaError, SchemaError

__all__ = [
    "MAX_ALTERNATIVES",
    "MAX_DEPTH",
    "MAX_INTEGER",
    "MAX_ITEMS",
    "MAX_LENGTH",
    "MAX_NODES",
    "MAX_OPTIONAL",
    "OutputParseError",
    "SchemaError",
    "check_schema",
    "parse_output",
    "schema_of",
]

# Limits on what check_schema passes. A schema may come from anywhere; these keep the converter
# (which recurses) and llama.cpp's grammar (which unrolls repetitions) within safe sizes.
MAX_DEPTH = 64            # schemas nested in schemas, $ref hops included
MAX_NODES = 10_000        # schemas in all (each $ref target counted once)
MAX_ALTERNATIVES = 1_000  # values of one enum, branches of one anyOf/oneOf/allOf
# llama.cpp's grammar parser refuses a repetition above 2000 (MAX_REPETITION_THRESHOLD) and
# silently drops a larger upper bound; an array's repetition can cost it up to 3 rules per item
MAX_LENGTH = 2_000        # minLength, maxLength, and {n,m} in a pattern
MAX_ITEMS = 500           # minItems, maxItems
MAX_INTEGER = 10**15 - 1  # integer bounds: the converter's digit ranges break beyond 15 digits
MAX_OPTIONAL = 256        # optional properties of one object: the converter's time grows as their cube
_MAX_ONE_OF_PAIRWISE = 200  # oneOf branches compared two by two (past the linear-time cases)
_MAX_PATTERN_GROUPS = 100  # the converter's own limit on nested groups in a pattern
_MAX_JSON_DEPTH = 256      # nesting of JSON values anywhere in a schema (annotations included)
_MAX_JSON_VALUES = 1_000_000

_JSON_TYPES = frozenset({"null", "boolean", "object", "array", "number", "integer", "string"})
_ALL = _JSON_TYPES
_OBJECT = frozenset({"object"})
_ARRAY = frozenset({"array"})
_STRING = frozenset({"string"})
_NUMERIC = frozenset({"number", "integer"})

# Allowed anywhere, and ignored: they describe, they do not constrain. ($id only at the root: a
# nested one would change what "#/..." means in the $refs below it; discriminator is the
# OpenAPI/pydantic hint next to oneOf, which still constrains on its own.)
_ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "example", "$schema", "$id", "$comment",
    "deprecated", "readOnly", "writeOnly", "contentEncoding", "contentMediaType", "contentSchema",
    "discriminator",
})
_CONTAINERS = frozenset({"$defs", "definitions"})   # hold schemas for $ref, read only through it

# The keywords that constrain values of some types only; elsewhere they are no-ops.
_KEYWORD_TYPES: dict[str, frozenset[str]] = {
    **dict.fromkeys(("properties", "required", "additionalProperties", "patternProperties",
                     "propertyNames", "minProperties", "maxProperties", "dependentRequired",
                     "dependentSchemas", "dependencies", "unevaluatedProperties"), _OBJECT),
    **dict.fromkeys(("items", "prefixItems", "minItems", "maxItems", "additionalItems", "contains",
                     "minContains", "maxContains", "uniqueItems", "unevaluatedItems"), _ARRAY),
    **dict.fromkeys(("pattern", "format", "minLength", "maxLength"), _STRING),
    **dict.fromkeys(("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"),
                    _NUMERIC),
}
# What the converter reads somewhere (elsewhere: unsupported, whatever the type).
_SUPPORTED = frozenset({
    "type", "enum", "const", "$ref", "anyOf", "oneOf", "allOf", "properties", "required",
    "additionalProperties", "items", "prefixItems", "minItems", "maxItems", "pattern", "format",
    "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
})
_FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"})

_BOUND_SIDE = {"minimum": "min", "exclusiveMinimum": "min", "maximum": "max", "exclusiveMaximum": "max"}
_KIND_TYPES = {"object": _OBJECT, "allOf": _OBJECT, "array": _ARRAY, "tuple": _ARRAY, "string": _STRING,
               "integer": frozenset({"integer"}), "number": _NUMERIC, "boolean": frozenset({"boolean"}),
               "null": frozenset({"null"})}
_RULE_CHARS = re.compile(r"[^a-zA-Z0-9-]+")   # how the converter turns a name into a rule name


class OutputParseError(LlamaError, ValueError):
    """A generated text that does not read back: not JSON, or JSON that does not fit the target.

    ``pos`` is the character offset in ``text`` (``lineno``/``colno`` 1-based), of the syntax
    error or of the value that does not validate; ``path`` is that value's place in the data
    (keys and indices; empty for a syntax error).
    """

    def __init__(self, message: str, text: str, pos: int,
                 path: tuple[str | int, ...] = ()) -> None:
        self.message = message
        self.text = text
        self.pos = pos
        self.lineno = text.count("\n", 0, pos) + 1
        self.colno = pos - text.rfind("\n", 0, pos)
        self.path = path
        super().__init__(f"{message} (line {self.lineno}, column {self.colno}, char {pos})")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.text, self.pos, self.path))


# --------------------------------------------------------------------------------------------
# JSON values and paths


def _pointer(path: str, key: str | int) -> str:
    """``path`` (a JSON pointer such as ``#/properties``) extended by one key, escaped."""
    return f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}"


def _kind_of(value: object) -> str:
    name = "boolean" if isinstance(value, bool) else type(value).__name__
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def _json_copy(value: object) -> Any:
    """A deep copy of ``value`` that is a plain JSON tree (dicts with str keys, lists, str, int,
    float, bool, None; tuples become lists), built without recursion; SchemaError naming the
    path of the first value that is not JSON (or of a nesting too deep, such as a cycle)."""
    holder: list[Any] = [None]
    stack: list[tuple[object, Any, Any, str, int]] = [(value, holder, 0, "#", 0)]
    count = 0
    while stack:
        src, dest, key, path, depth = stack.pop()
        count += 1
        if count > _MAX_JSON_VALUES:
            raise SchemaError(f"schema is too large (more than {_MAX_JSON_VALUES} JSON values)")
        if depth > _MAX_JSON_DEPTH:
            raise SchemaError(f"schema is nested too deeply at {path} (more than {_MAX_JSON_DEPTH} "
                              "levels; does it contain itself?)")
        if src is None or isinstance(src, bool):
            dest[key] = src
        elif isinstance(src, str):
            dest[key] = str.__str__(src)
        elif isinstance(src, int):
            dest[key] = int(src)
        elif isinstance(src, float):
            if not math.isfinite(src):
                raise SchemaError(f"schema is not JSON: the value at {path} is {src!r}")
            dest[key] = float(src)
        elif isinstance(src, dict):
            new: dict[str, Any] = {}
            dest[key] = new
            children = []
            for k, v in src.items():
                if not isinstance(k, str):
                    raise SchemaError(f"schema is not JSON: the key {k!r} at {path} is not a string")
                new[k] = None        # keeps the key order
                children.append((v, new, k, _pointer(path, k), depth + 1))
            stack.extend(reversed(children))
        elif isinstance(src, (list, tuple)):
            items: list[Any] = [None] * len(src)
            dest[key] = items
            stack.extend(reversed([(v, items, i, _pointer(path, i), depth + 1)
                                   for i, v in enumerate(src)]))
        else:
            raise SchemaError(f"schema is not JSON: the value at {path} is {_kind_of(src)}")
    return holder[0]


def _value_types(value: object) -> frozenset[str]:
    """The JSON Schema types ``value`` is an instance of."""
    if value is None:
        return frozenset({"null"})
    if isinstance(value, bool):
        return frozenset({"boolean"})
    if isinstance(value, int):
        return _NUMERIC
    if isinstance(value, float):
        return _NUMERIC if value.is_integer() else frozenset({"number"})
    if isinstance(value, str):
        return _STRING
    if isinstance(value, list):
        return _ARRAY
    return _OBJECT


def _canonical(value: object) -> str:
    """Equal JSON values (in JSON Schema's sense: 1 == 1.0), equal texts."""
    def norm(v: Any) -> Any:
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, list):
            return [norm(x) for x in v]
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        return v
    return _dump(norm(value))


def _literal(value: object) -> str:
    """A JSON value as the converter writes it into the grammar (compact, key order kept)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _dump(value: object) -> str:
    """A canonical text of a JSON value: equal values, equal texts (1 and 1.0 aside)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


# --------------------------------------------------------------------------------------------
# schema_of


def _pydantic() -> ModuleType | None:
    """pydantic, if it can be imported (an optional integration, never a dependency)."""
    try:
        return importlib.import_module("pydantic")
    except ImportError:
        return None


def _is_model_class(obj: object) -> bool:
    """A pydantic v2 model class (told by its methods: no pydantic import needed)."""
    return (isinstance(obj, type) and callable(getattr(obj, "model_json_schema", None))
            and callable(getattr(obj, "model_validate", None)))


def _is_dataclass_class(obj: object) -> bool:
    return isinstance(obj, type) and dataclasses.is_dataclass(obj)


_ACCEPTED = "a JSON-schema dict, a pydantic model class or a dataclass (the class, not an instance)"


def schema_of(obj: object) -> dict[str, Any]:
    """The JSON schema of ``obj``: a dict (returned as a deep copy, which must be JSON), a
    pydantic v2 model class (its ``model_json_schema()``) or a dataclass (pydantic's schema of
    it if pydantic is installed, else our own from its annotated fields).

    Raises :class:`SchemaError` for a dict that is not JSON (naming the path of the first value
    that is not), TypeError for anything else or a dataclass field type with no schema here.
    """
    if isinstance(obj, dict):
        copied: dict[str, Any] = _json_copy(obj)
        return copied
    if _is_model_class(obj):
        schema = _json_copy(typing.cast(Any, obj).model_json_schema())
        if not isinstance(schema, dict):
            raise TypeError(f"{obj!r}.model_json_schema() did not return a dict")
        return schema
    if _is_dataclass_class(obj):
        pyd = _pydantic()
        if pyd is not None:
            result: dict[str, Any] = _json_copy(_type_adapter(typing.cast(type, obj)).json_schema())
            return result
        return _dataclass_schema(typing.cast(type, obj))
    if dataclasses.is_dataclass(obj) or _is_model_class(type(obj)):
        raise TypeError(f"json_schema takes {_ACCEPTED}; got an instance of {type(obj).__name__}")
    raise TypeError(f"json_schema takes {_ACCEPTED}; got {_kind_of(obj)}")


@functools.lru_cache(maxsize=64)
def _type_adapter(cls: type) -> Any:
    pyd = _pydantic()
    assert pyd is not None
    return pyd.TypeAdapter(cls)


# Our own schemas of dataclasses (when pydantic is not installed).

_SUPPORTED_TYPES = ("str, int, float, bool, None, list[T], tuple[T, ...], tuple[A, B], dict[str, T], "
                    "Optional/Union, Literal, Enum subclasses, datetime.date/time/datetime, "
                    "uuid.UUID, Any, dataclasses")


class _DataclassSchemas:
    """The schemas of a dataclass and of the dataclasses it uses (into ``$defs``)."""

    def __init__(self) -> None:
        self.names: dict[type, str] = {}
        self.rule_names: set[str] = set()
        self.pending: list[type] = []

    def ref(self, cls: type) -> dict[str, Any]:
        if cls not in self.names:
            base = cls.__name__
            name, n = base, 1
            # names the converter would turn into one rule name are kept apart
            while name in self.names.values() or _RULE_CHARS.sub("-", name) in self.rule_names:
                n += 1
                name = f"{base}{n}"
            self.names[cls] = name
            self.rule_names.add(_RULE_CHARS.sub("-", name))
            self.pending.append(cls)
        return {"$ref": f"#/$defs/{self.names[cls]}"}

    def object(self, cls: type) -> dict[str, Any]:
        hints = _hints(cls)
        props: dict[str, Any] = {}
        required: list[str] = []
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            where = f"{cls.__qualname__}.{f.name}"
            schema = self.of(hints.get(f.name, Any), where)
            if f.default is not dataclasses.MISSING:
                if f.default is None or isinstance(f.default, (str, bool, int)) or (
                        isinstance(f.default, float) and math.isfinite(f.default)):
                    schema = {**schema, "default": f.default}
            elif f.default_factory is dataclasses.MISSING:
                required.append(f.name)
            props[f.name] = schema
        out: dict[str, Any] = {"type": "object", "title": cls.__name__, "properties": props}
        if required:
            out["required"] = required
        out["additionalProperties"] = False
        return out

    def of(self, tp: Any, where: str) -> dict[str, Any]:
        """The schema of the annotation ``tp`` (of the field ``where``)."""
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is typing.Annotated:
            return self.of(args[0], where)
        if tp is Any or tp is object:
            return {}
        if tp is None or tp is type(None):
            return {"type": "null"}
        simple = _SIMPLE_SCHEMAS.get(tp) if isinstance(tp, type) else None
        if simple is not None:
            return dict(simple)
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            values = [m.value for m in tp]
            if not values or not all(v is None or isinstance(v, (str, int, float, bool)) for v in values):
                raise TypeError(f"{where}: the values of enum {tp.__name__} must be str, int, float, "
                                "bool or None")
            out: dict[str, Any] = {"title": tp.__name__, "enum": values}
            kinds = {frozenset(_value_types(v)) for v in values}
            if kinds == {_STRING}:
                out["type"] = "string"
            elif kinds == {_NUMERIC}:
                out["type"] = "integer"
            return out
        if _is_dataclass_class(tp):
            return self.ref(tp)
        if tp is list or origin is list:
            return {"type": "array", **({"items": self.of(args[0], where)} if args else {})}
        if tp is tuple or origin is tuple:
            if not args:
                return {"type": "array"}
            if len(args) == 2 and args[1] is Ellipsis:
                return {"type": "array", "items": self.of(args[0], where)}
            if args == ((),):
                return {"type": "array", "maxItems": 0}
            return {"type": "array", "prefixItems": [self.of(a, where) for a in args],
                    "minItems": len(args), "maxItems": len(args)}
        if tp is dict or origin is dict:
            if not args:
                return {"type": "object"}
            if args[0] is not str:
                raise TypeError(f"{where}: a JSON object's keys are str, not {args[0]!r}")
            return {"type": "object", "additionalProperties": self.of(args[1], where)}
        if origin is typing.Union or origin is types.UnionType:
            return {"anyOf": [self.of(a, where) for a in args]}
        if origin is typing.Literal:
            if not all(v is None or isinstance(v, (str, int, bool)) for v in args):
                raise TypeError(f"{where}: Literal values must be str, int, bool or None")
            return {"const": args[0]} if len(args) == 1 else {"enum": list(args)}
        if tp in (set, frozenset) or origin in (set, frozenset):
            raise TypeError(f"{where}: sets have no JSON schema llama.cpp can enforce (uniqueItems); "
                            "use list[T]")
        raise TypeError(f"{where}: the type {tp!r} has no JSON schema here (supported: {_SUPPORTED_TYPES})")


_SIMPLE_SCHEMAS: dict[Any, dict[str, str]] = {
    str: {"type": "string"},
    bool: {"type": "boolean"},
    int: {"type": "integer"},
    float: {"type": "number"},
    datetime.datetime: {"type": "string", "format": "date-time"},
    datetime.date: {"type": "string", "format": "date"},
    datetime.time: {"type": "string", "format": "time"},
    uuid.UUID: {"type": "string", "format": "uuid"},
}


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls, include_extras=True)
    except Exception as exc:    # a forward reference that does not resolve, ...
        raise TypeError(f"cannot read the field types of {cls.__qualname__}: {exc}") from exc


def _dataclass_schema(cls: type) -> dict[str, Any]:
    """Our own JSON schema of a dataclass: nested dataclasses in ``$defs``, a recursive root too."""
    schemas = _DataclassSchemas()
    root = schemas.object(cls)
    defs: dict[str, Any] = {}
    while schemas.pending:
        c = schemas.pending.pop(0)
        defs[schemas.names[c]] = root if c is cls else schemas.object(c)
    if cls in schemas.names:     # the root refers to itself: it lives in $defs too
        root = {"$ref": f"#/$defs/{schemas.names[cls]}", "$defs": defs}
    elif defs:
        root["$defs"] = defs
    result: dict[str, Any] = _json_copy(root)    # (str and int enum members become plain values)
    return result


# --------------------------------------------------------------------------------------------
# check_schema


def _unsupported(keyword: str, path: str, why: str = "") -> SchemaError:
    return SchemaError(f"unsupported JSON Schema keyword {keyword!r} at {path}" + (f": {why}" if why else ""))


class _Node:
    """One schema as the converter sees it: a place in the grammar, with the schemas it uses."""

    __slots__ = ("any_of", "closed", "components", "edges", "enum", "guarded", "kind", "needs", "one_of",
                 "path", "props", "required", "rule")

    def __init__(self, path: str, rule: str) -> None:
        self.path = path
        self.rule = rule            # the converter's rule name for it
        self.kind = "any"
        self.edges: list[int] = []  # schemas it uses
        self.guarded = False        # are they behind a '{' or a '[' in the grammar?
        self.needs: list[int] = []  # schemas a finite value of it needs (all, or one if any_of)
        self.any_of = False
        self.one_of = False                      # anyOf made from oneOf: its branches must exclude each other
        self.components: list[int] = []          # allOf
        self.props: list[tuple[str, int]] = []   # object
        self.required: set[str] = set()          # object
        self.closed = False                      # object: additionalProperties false
        self.enum: list[Any] | None = None       # enum, const (its one value)


# a schema to visit: (schema, path, depth, node id, its type if a type list split it, that list)
_Task = tuple[Any, str, int, int, str | None, list[str] | None]


class _Checker:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.nodes: list[_Node] = []
        self.ref_ids: dict[str, int] = {}
        self.ref_rules: dict[str, str] = {}   # rule name -> the $ref it comes from
        self.rules: set[str] = set()          # rule names the converter makes for other schemas
        self.stack: list[_Task] = []
        self.unnamed: set[int] = set()        # $ref targets, allOf parts: no rule of their own
        self.type_cache: dict[int, frozenset[str]] = {}
        self.value_cache: dict[int, frozenset[str]] = {}

    def new(self, path: str, rule: str) -> int:
        if len(self.nodes) >= MAX_NODES:
            raise SchemaError(f"schema is too large: more than {MAX_NODES} schemas (at {path})")
        self.nodes.append(_Node(path, rule))
        return len(self.nodes) - 1

    def run(self) -> None:
        self.stack.append((self.root, "#", 1, self.new("#", ""), None, None))
        while self.stack:
            task = self.stack.pop()
            children: list[_Task] = []
            self.visit(task, children)
            self.stack.extend(reversed(children))   # in document order
        for rule, ref in self.ref_rules.items():
            if rule in self.rules:
                raise SchemaError(f"$ref {ref!r} would reuse the grammar rule {rule!r} that llama.cpp "
                                  "also makes for a property or item: rename the definition")
        self.check_cycles()
        self.merge_all_of()
        self.check_one_of()
        self.check_finite()

    # one schema

    def child(self, out: list[_Task], node: _Node, schema: object, path: str, depth: int,
              rule: str, needed: bool) -> int:
        if not isinstance(schema, dict):
            hint = (" (llama.cpp accepts true/false only as 'additionalProperties')"
                    if isinstance(schema, bool) else "")
            raise SchemaError(f"the schema at {path} must be an object, not {_kind_of(schema)}{hint}")
        cid = self.new(path, rule)
        out.append((schema, path, depth + 1, cid, None, None))
        node.edges.append(cid)
        if needed:
            node.needs.append(cid)
        return cid

    def visit(self, task: _Task, out: list[_Task]) -> None:
        schema, path, depth, nid, forced, types_ = task
        node = self.nodes[nid]
        if forced is None:
            if not isinstance(schema, dict):
                raise SchemaError(f"the schema at {path} must be an object, not {_kind_of(schema)}")
            if depth > MAX_DEPTH:
                raise SchemaError(f"schema is nested too deeply at {path} (more than {MAX_DEPTH} "
                                  "levels, $ref hops included)")
            if "$id" in schema and path != "#":
                raise _unsupported("$id", path, "a nested '$id' changes what the '$ref's below it "
                                   "mean, and llama.cpp ignores it")
            if nid not in self.unnamed:
                self.rules.add(_RULE_CHARS.sub("-", node.rule or "root"))
            if "$ref" in schema:
                return self.ref(schema, path, depth, node, out)
            if "oneOf" in schema or "anyOf" in schema:
                return self.alternatives(schema, path, depth, node, out)
            t = schema.get("type")
            if isinstance(t, list):
                if not t:
                    raise SchemaError(f"'type' at {path} must not be empty")
                for v in t:
                    if not isinstance(v, str) or v not in _JSON_TYPES:
                        raise SchemaError(f"unknown type {v!r} in 'type' at {path}")
                if len(set(t)) != len(t):
                    raise SchemaError(f"'type' at {path} names a type twice")
                node.kind, node.any_of = "anyOf", True
                for i, v in enumerate(t):
                    cid = self.new(path, f"{node.rule}-{i}" if node.rule else f"alternative-{i}")
                    out.append((schema, path, depth, cid, v, t))
                    node.edges.append(cid)
                    node.needs.append(cid)
                return None
            if "type" in schema and not isinstance(t, str):
                raise SchemaError(f"'type' at {path} must be a string or a list of strings")
            if t is not None and t not in _JSON_TYPES:
                raise SchemaError(f"unknown type {t!r} at {path}")
            forced, types_ = t, ([t] if t is not None else None)
        self.typed(schema, path, depth, node, forced, types_, out)
        return None

    def leftover(self, schema: dict[str, Any], path: str, handled: frozenset[str] | set[str],
                 produced: frozenset[str], why: str) -> None:
        """Refuse the keywords of ``schema`` that constrain the values the grammar makes here
        (``produced``) but that the converter does not read here (``handled``)."""
        for key, value in schema.items():
            if key in handled or key in _ANNOTATIONS or key in _CONTAINERS:
                continue
            types_ = _KEYWORD_TYPES.get(key)
            if types_ is not None and not types_ & produced:
                continue    # constrains other types only: a no-op for these values
            if key == "uniqueItems" and value is False:
                continue
            raise _unsupported(key, path, why if key in _SUPPORTED else "")

    def ref(self, schema: dict[str, Any], path: str, depth: int, node: _Node, out: list[_Task]) -> None:
        ref = schema["$ref"]
        if not isinstance(ref, str):
            raise SchemaError(f"'$ref' at {path} must be a string")
        self.leftover(schema, path, {"$ref"}, _ALL, "llama.cpp ignores it next to '$ref'")
        if not ref.startswith("#/"):
            raise SchemaError(f"unsupported $ref {ref!r} at {path}: only references into the same "
                              "document ('#/...') are supported")
        if "~" in ref or "%" in ref:
            raise SchemaError(f"unsupported $ref {ref!r} at {path}: llama.cpp does not decode "
                              "JSON-pointer escapes (~0, ~1, %xx)")
        node.kind = "ref"
        if ref not in self.ref_ids:
            target: Any = self.root
            for token in ref[2:].split("/"):
                if isinstance(target, dict) and token in target:
                    target = target[token]
                elif isinstance(target, list) and token.isascii() and token.isdigit() \
                        and int(token) < len(target):
                    target = target[int(token)]
                else:
                    raise SchemaError(f"$ref {ref!r} at {path} does not resolve: {token!r} not found")
            rule = "ref" + _RULE_CHARS.sub("-", ref[1:])
            other = self.ref_rules.setdefault(rule, ref)
            if other != ref:
                raise SchemaError(f"$ref {ref!r} and $ref {other!r} would share one grammar rule "
                                  f"({rule!r}) in llama.cpp: rename one of the definitions")
            self.ref_ids[ref] = self.child(out, node, target, ref, depth, rule, True)
            self.unnamed.add(self.ref_ids[ref])
        else:
            tid = self.ref_ids[ref]
            node.edges.append(tid)
            node.needs.append(tid)

    def alternatives(self, schema: dict[str, Any], path: str, depth: int, node: _Node,
                     out: list[_Task]) -> None:
        key = "oneOf" if "oneOf" in schema else "anyOf"
        if key == "oneOf" and "anyOf" in schema:
            raise _unsupported("anyOf", path, "llama.cpp ignores it next to 'oneOf'")
        self.leftover(schema, path, {key}, _ALL, f"llama.cpp ignores it next to {key!r}")
        alts = self.schema_list(schema, key, path)
        node.kind, node.any_of, node.one_of = "anyOf", True, key == "oneOf"
        for i, alt in enumerate(alts):
            self.child(out, node, alt, _pointer(f"{path}/{key}", i), depth,
                       f"{node.rule}-{i}" if node.rule else f"alternative-{i}", True)

    @staticmethod
    def schema_list(schema: dict[str, Any], key: str, path: str) -> list[Any]:
        alts = schema[key]
        if not isinstance(alts, list) or not alts:
            raise SchemaError(f"{key!r} at {path} must be a non-empty array of schemas")
        if len(alts) > MAX_ALTERNATIVES:
            raise SchemaError(f"{key!r} at {path} has {len(alts)} schemas, more than {MAX_ALTERNATIVES}")
        return alts

    def typed(self, schema: dict[str, Any], path: str, depth: int, node: _Node, t: str | None,
              types_: list[str] | None, out: list[_Task]) -> None:
        """A schema without $ref/anyOf/oneOf, of the one type ``t`` (None: no "type")."""
        if "const" in schema or "enum" in schema:
            return self.constant(schema, path, node, types_)
        has_props = "properties" in schema or (
            "additionalProperties" in schema and schema["additionalProperties"] is not True)
        if t is None:
            # without a type, the converter goes by the structural keywords, in this order
            if has_props:
                t = "object"
            elif "allOf" in schema:
                return self.all_of(schema, path, depth, node, out)
            elif "items" in schema or "prefixItems" in schema:
                t = "array"
            elif "pattern" in schema or "minLength" in schema or "maxLength" in schema or (
                    self.format_of(schema, path) in _FORMATS):
                t = "string"
            else:
                node.kind = "any"
                self.leftover(schema, path, set(), _ALL, "without a 'type', llama.cpp ignores it")
                return None
        if t == "object":
            if not has_props and "allOf" in schema:
                return self.all_of(schema, path, depth, node, out)
            return self.object(schema, path, depth, node, out)
        if t == "array":
            return self.array(schema, path, depth, node, out)
        if t == "string":
            if "allOf" in schema:
                raise _unsupported("allOf", path, "llama.cpp would make an object of a string schema "
                                   "with 'allOf'")
            return self.string(schema, path, node)
        if t == "integer":
            return self.integer(schema, path, node)
        node.kind = t
        produced = _NUMERIC if t == "number" else frozenset({t})
        why = "llama.cpp bounds integers only, not numbers" if t == "number" else \
            f"llama.cpp ignores it for type {t!r}"
        self.leftover(schema, path, {"type"}, produced, why)
        return None

    def constant(self, schema: dict[str, Any], path: str, node: _Node, types_: list[str] | None) -> None:
        handled = {"type"}
        if "const" in schema:
            values = [schema["const"]]
            handled.add("const")
            node.kind, node.enum, where = "const", values, "'const'"
            if "enum" in schema:
                enum_values = schema["enum"]
                if not isinstance(enum_values, list) or _dump(values[0]) not in map(_dump, enum_values):
                    raise _unsupported("enum", path, "llama.cpp ignores it next to 'const'")
                handled.add("enum")
        else:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise SchemaError(f"'enum' at {path} must be a non-empty array")
            if len(values) > MAX_ALTERNATIVES:
                raise SchemaError(f"'enum' at {path} has {len(values)} values, more than {MAX_ALTERNATIVES}")
            handled.add("enum")
            node.kind, node.enum, where = "enum", values, "'enum'"
        produced: frozenset[str] = frozenset()
        for value in values:
            kinds = _value_types(value)
            if types_ is not None and not kinds & set(types_):
                raise SchemaError(f"the value {value!r} of {where} at {path} is not of its 'type' "
                                  f"{types_ if len(types_) > 1 else types_[0]!r}")
            produced |= kinds
        self.leftover(schema, path, handled, produced, f"llama.cpp ignores it next to {where}")

    def object(self, schema: dict[str, Any], path: str, depth: int, node: _Node, out: list[_Task]) -> None:
        node.kind, node.guarded = "object", True
        self.leftover(schema, path, {"type", "properties", "required", "additionalProperties"}, _OBJECT,
                      "llama.cpp ignores it next to 'properties' or 'additionalProperties'")
        props = schema.get("properties", {})
        if not isinstance(props, dict):
            raise SchemaError(f"'properties' at {path} must be an object")
        required = schema.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise SchemaError(f"'required' at {path} must be an array of strings")
        if len(set(required)) != len(required):
            raise SchemaError(f"'required' at {path} names a property twice")
        for name in required:
            if name not in props:
                raise SchemaError(f"required property {name!r} at {path} is not in 'properties': "
                                  "llama.cpp would not make it appear")
        additional = schema.get("additionalProperties", "properties" not in schema)
        if not isinstance(additional, (bool, dict)):
            raise SchemaError(f"'additionalProperties' at {path} must be a boolean or a schema")
        node.closed = schema.get("additionalProperties") is False
        node.required = set(required)
        optional = sum(name not in node.required for name in props) + (additional is not False)
        if optional > MAX_OPTIONAL:
            raise SchemaError(f"the object at {path} has {optional} optional properties, more than "
                              f"{MAX_OPTIONAL}: llama.cpp's converter takes time as their cube "
                              "(make some required)")
        prefix = f"{node.rule}-" if node.rule else ""
        for name, prop in props.items():
            if not name:
                raise SchemaError(f"an empty property name at {path}: llama.cpp names grammar rules "
                                  "after properties")
            if additional is not False and re.search(r'[\]\[\\^"\-\x00-\x1f]', name):
                raise SchemaError(f"property {name!r} at {path}: with additionalProperties, llama.cpp "
                                  "cannot exclude a name with ] [ \\ ^ \" - or a control character "
                                  "from the other keys")
            rule = prefix + name
            self.rules.update({_RULE_CHARS.sub("-", rule + "-kv"), _RULE_CHARS.sub("-", rule + "-rest")})
            cid = self.child(out, node, prop, _pointer(f"{path}/properties", name), depth, rule,
                             name in node.required)
            node.props.append((name, cid))
        if isinstance(additional, dict):
            self.child(out, node, additional, f"{path}/additionalProperties", depth,
                       f"{prefix}additional-value", False)

    def array(self, schema: dict[str, Any], path: str, depth: int, node: _Node, out: list[_Task]) -> None:
        node.kind, node.guarded = "array", True
        handled = {"type", "items", "prefixItems", "minItems", "maxItems"}
        if "items" in schema and "prefixItems" in schema:
            raise _unsupported("prefixItems", path, "llama.cpp ignores it next to 'items'")
        low = self.count(schema, "minItems", path, MAX_ITEMS)
        high = self.count(schema, "maxItems", path, MAX_ITEMS)
        if low is not None and high is not None and low > high:
            raise SchemaError(f"minItems {low} > maxItems {high} at {path}: no array fits")
        key = "items" if "items" in schema else "prefixItems" if "prefixItems" in schema else None
        prefix = f"{node.rule}-" if node.rule else ""
        if key is not None and isinstance(schema[key], list):
            items = schema[key]
            n = len(items)
            if (low or 0) > n or (high is not None and high < n):
                raise SchemaError(f"the tuple at {path} has {n} items, which minItems/maxItems forbid "
                                  f"(llama.cpp makes exactly {n})")
            if key == "items" and isinstance(schema.get("additionalItems"), bool):
                handled.add("additionalItems")   # the grammar makes no more items anyway
            node.kind = "tuple"
            for i, item in enumerate(items):
                self.child(out, node, item, _pointer(f"{path}/{key}", i), depth, f"{prefix}tuple-{i}", True)
        elif key == "prefixItems":
            raise SchemaError(f"'prefixItems' at {path} must be an array of schemas")
        elif key is not None:
            self.child(out, node, schema[key], f"{path}/items", depth, f"{prefix}item", bool(low))
        self.leftover(schema, path, handled, _ARRAY, "llama.cpp ignores it for arrays")

    @staticmethod
    def count(schema: dict[str, Any], key: str, path: str, limit: int) -> int | None:
        if key not in schema:
            return None
        value = schema[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SchemaError(f"{key!r} at {path} must be a non-negative integer")
        if value > limit:
            raise SchemaError(f"{key} {value} at {path} is more than llama.cpp's grammar can "
                              f"unroll (at most {limit})")
        return value

    @staticmethod
    def format_of(schema: dict[str, Any], path: str) -> str | None:
        if "format" not in schema:
            return None
        value = schema["format"]
        if not isinstance(value, str):
            raise SchemaError(f"'format' at {path} must be a string")
        return value

    def string(self, schema: dict[str, Any], path: str, node: _Node) -> None:
        node.kind = "string"
        low = self.count(schema, "minLength", path, MAX_LENGTH)
        high = self.count(schema, "maxLength", path, MAX_LENGTH)
        # (minLength 0 is no constraint at all)
        lengths = [k for k in ("minLength", "maxLength")
                   if k in schema and (k, schema[k]) != ("minLength", 0)]
        fmt = self.format_of(schema, path)
        if "pattern" in schema:
            pattern = schema["pattern"]
            if not isinstance(pattern, str):
                raise SchemaError(f"'pattern' at {path} must be a string")
            if fmt is not None:
                raise _unsupported("format", path, "llama.cpp ignores it next to 'pattern'")
            if lengths:
                raise _unsupported(lengths[0], path, "llama.cpp ignores it next to 'pattern'")
            _check_pattern(pattern, path)
        elif fmt is not None:
            if fmt not in _FORMATS:
                raise _unsupported("format", path, f"llama.cpp knows only the formats date, time, "
                                   f"date-time and uuid, and would accept any string as {fmt!r}")
            if lengths:
                raise _unsupported(lengths[0], path, "llama.cpp ignores it next to 'format'")
        elif low is not None and high is not None and low > high:
            raise SchemaError(f"minLength {low} > maxLength {high} at {path}: no string fits")
        self.leftover(schema, path, {"type", "pattern", "format", "minLength", "maxLength"}, _STRING, "")

    def integer(self, schema: dict[str, Any], path: str, node: _Node) -> None:
        node.kind = "integer"
        for inclusive, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
            if inclusive in schema and exclusive in schema:
                raise _unsupported(exclusive, path, f"llama.cpp ignores it next to {inclusive!r}")
        bounds: dict[str, int] = {}
        for key in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
            if key not in schema:
                continue
            value = schema[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SchemaError(f"{key!r} at {path} must be a number (a boolean is draft-04 style, "
                                  "which llama.cpp does not read)")
            # fractional bounds round inwards, exclusive ones step past the bound, as llama.cpp does
            if key == "minimum":
                bound = math.ceil(value)
            elif key == "maximum":
                bound = math.floor(value)
            elif key == "exclusiveMinimum":
                bound = math.floor(value) + 1
            else:
                bound = math.ceil(value) - 1
            if abs(bound) > MAX_INTEGER:
                raise SchemaError(f"{key} {value} at {path} is out of the range llama.cpp's integer "
                                  f"grammar handles (at most {len(str(MAX_INTEGER))} digits)")
            bounds[_BOUND_SIDE[key]] = bound
        if "min" in bounds and "max" in bounds and bounds["min"] > bounds["max"]:
            raise SchemaError(f"no integer lies between the bounds at {path}")
        # Two cases of one bound alone where the converter's digit ranges are wrong: a negative
        # upper bound (it allows leading zeros, "-007", and numbers above the bound), and a lower
        # bound with a 0 inside its digits (the 0s are lost: "minimum": 100 lets 15 through).
        if "min" not in bounds and bounds.get("max", 0) < 0:
            raise SchemaError(f"a negative maximum with no minimum at {path}: llama.cpp's integer "
                              "grammar would allow leading zeros and numbers above it; add a minimum")
        low = str(bounds.get("min", -1))
        if "max" not in bounds and not low.startswith("-") and "0" in low[1:-1]:
            raise SchemaError(f"minimum {low} with no maximum at {path}: llama.cpp's integer grammar "
                              "loses the inner zeros and would allow smaller numbers; add a maximum")
        self.leftover(schema, path, {"type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
                      frozenset({"integer"}), "")

    def all_of(self, schema: dict[str, Any], path: str, depth: int, node: _Node, out: list[_Task]) -> None:
        node.kind = "allOf"
        self.leftover(schema, path, {"allOf", "type"}, _ALL, "llama.cpp ignores it next to 'allOf'")
        for i, comp in enumerate(self.schema_list(schema, "allOf", path)):
            # the converter names the merged properties after the allOf schema itself
            cid = self.child(out, node, comp, _pointer(f"{path}/allOf", i), depth, node.rule, False)
            node.components.append(cid)
            self.unnamed.add(cid)
        node.needs = []

    # the whole schema

    def resolve(self, nid: int) -> int:
        seen = set()
        while self.nodes[nid].kind == "ref" and nid not in seen:
            seen.add(nid)
            nid = self.nodes[nid].edges[0]
        return nid

    def check_cycles(self) -> None:
        """A cycle of schemas that reaches itself before any '{' or '[' (through $ref, anyOf,
        oneOf, allOf, a type list) is a left-recursive grammar (or, for allOf, a converter that
        recurses until it crashes): refused."""
        state = [0] * len(self.nodes)    # 0 new, 1 on the path, 2 done
        for start in range(len(self.nodes)):
            if state[start]:
                continue
            trail: list[int] = [start]
            iters = [iter(self.unguarded(start))]
            state[start] = 1
            while trail:
                nxt = next(iters[-1], None)
                if nxt is None:
                    state[trail.pop()] = 2
                    iters.pop()
                elif state[nxt] == 1:
                    cycle = [*trail[trail.index(nxt):], nxt]
                    shown = " -> ".join(self.nodes[i].path for i in cycle)
                    raise SchemaError(f"$ref cycle with no object property or array item in between: "
                                      f"{shown} (llama.cpp would make an endless, left-recursive grammar)")
                elif state[nxt] == 0:
                    state[nxt] = 1
                    trail.append(nxt)
                    iters.append(iter(self.unguarded(nxt)))

    def unguarded(self, nid: int) -> list[int]:
        node = self.nodes[nid]
        return [] if node.guarded else node.edges

    def merge_all_of(self) -> None:
        """What the converter makes of allOf: one object with the properties of all the object
        schemas in it (every one required), or the values common to enums. Whatever else it
        would drop, it is refused here."""
        for node in self.nodes:
            if node.kind != "allOf":
                continue
            parts = [self.nodes[self.resolve(c)] for c in node.components]
            enums = [p for p in parts if p.kind == "enum"]
            if enums:
                if len(enums) != len(parts):
                    raise SchemaError(f"allOf at {node.path} mixes enums with other schemas: llama.cpp "
                                      "would keep only one of them")
                # the converter compares the values as it writes them (key order kept)
                common = set(map(_literal, enums[0].enum or []))
                for p in enums[1:]:
                    common &= set(map(_literal, p.enum or []))
                if not common:
                    raise SchemaError(f"the enums of allOf at {node.path} have no value in common")
                node.enum = [v for v in enums[0].enum or [] if _literal(v) in common]
                continue
            names: dict[str, str] = {}
            closed = [p for p in parts if p.kind == "object" and p.closed]
            for part, comp in zip(parts, node.components):
                if part.kind in ("anyOf",):
                    raise SchemaError(f"allOf at {node.path}: llama.cpp would make the properties of "
                                      f"the alternatives at {self.nodes[comp].path} all optional, "
                                      "losing which one must match")
                if part.kind not in ("object", "any"):
                    raise SchemaError(f"allOf at {node.path}: llama.cpp merges only object schemas "
                                      f"(or enums), and would drop the {part.kind} at {part.path}")
                for name, cid in part.props:
                    if name in names:
                        raise SchemaError(f"allOf at {node.path}: property {name!r} is in both "
                                          f"{names[name]} and {part.path}, and llama.cpp would "
                                          "write it twice")
                    names[name] = part.path
                    node.needs.append(cid)
            if closed and len(names) > len(closed[0].props):
                raise SchemaError(f"allOf at {node.path}: {closed[0].path} allows no other "
                                  "properties, but the others add some")

    def types(self, nid: int) -> frozenset[str]:
        """The JSON types of the values the grammar makes for a schema (no unguarded cycles left)."""
        cached = self.type_cache.get(nid)
        if cached is not None:
            return cached
        node = self.nodes[self.resolve(nid)]
        out: frozenset[str] = frozenset()
        if node.kind in ("const", "enum") or (node.kind == "allOf" and node.enum is not None):
            for value in node.enum or []:
                out |= _value_types(value)
        elif node.kind == "anyOf":
            for c in node.edges:
                out |= self.types(c)
        else:
            out = _KIND_TYPES.get(node.kind, _ALL)
        self.type_cache[nid] = out
        return out

    def values(self, nid: int) -> frozenset[str]:
        """The values of an enum or const (canonical texts), cached."""
        cached = self.value_cache.get(nid)
        if cached is None:
            cached = self.value_cache[nid] = frozenset(map(_canonical, self.nodes[nid].enum or []))
        return cached

    def disjoint(self, a: int, b: int, depth: int = 0) -> bool:
        """Provably, no value fits both schemas (as the grammar makes them)."""
        if depth > 4:
            return False
        if not self.types(a) & self.types(b):
            return True
        a, b = self.resolve(a), self.resolve(b)
        x, y = self.nodes[a], self.nodes[b]
        if x.kind == "anyOf" or y.kind == "anyOf":
            one, other = (x, b) if x.kind == "anyOf" else (y, a)
            return all(self.disjoint(c, other, depth + 1) for c in one.edges)
        if x.enum is not None and y.enum is not None:
            return not self.values(a) & self.values(b)
        if x.kind == "object" and y.kind == "object":
            xp, yp = dict(x.props), dict(y.props)
            if (y.closed and not x.required <= yp.keys()) or (x.closed and not y.required <= xp.keys()):
                return True            # one requires a property the other does not allow
            return any(self.disjoint(xp[name], yp[name], depth + 1) for name in x.required & y.required)
        return False

    def check_one_of(self) -> None:
        """oneOf becomes anyOf in the grammar: refused unless its branches exclude each other."""
        for node in self.nodes:
            if not node.one_of:
                continue
            if self.one_of_by_types(node.edges):
                continue
            if len(node.edges) > _MAX_ONE_OF_PAIRWISE:
                raise SchemaError(f"oneOf at {node.path}: llama.cpp treats it as anyOf; with more than "
                                  f"{_MAX_ONE_OF_PAIRWISE} branches they must differ by type, by const "
                                  "values, or by the const values of one required property")
            for i, a in enumerate(node.edges):
                for b in node.edges[i + 1:]:
                    if not self.disjoint(a, b):
                        raise SchemaError(
                            f"oneOf at {node.path}: llama.cpp treats it as anyOf, and a value may fit "
                            f"both {self.nodes[a].path} and {self.nodes[b].path} (tell them apart, "
                            "e.g. by a required property with different const values, or use anyOf)")

    def one_of_by_types(self, alts: list[int]) -> bool:
        """The common cases in linear time: no type in two branches, or branches that are all
        enums, or all objects tagged by one required property, with no value twice."""
        seen: set[str] = set()
        for alt in alts:
            kinds = self.types(alt)
            if kinds & seen:
                break
            seen |= kinds
        else:
            return True
        nodes = [self.nodes[self.resolve(a)] for a in alts]
        if all(n.enum is not None for n in nodes):
            values = [v for a in alts for v in self.values(self.resolve(a))]
            return len(values) == len(set(values))
        if not all(n.kind == "object" for n in nodes):
            return False
        for tag in set.intersection(*(n.required for n in nodes)):
            tags = [self.resolve(dict(n.props)[tag]) for n in nodes]
            if all(self.nodes[t].enum is not None for t in tags):
                values = [v for t in tags for v in self.values(t)]
                if len(values) == len(set(values)):
                    return True
        return False

    def check_finite(self) -> None:
        """Refuse a schema whose every value is infinite (a required property or a non-empty
        array that leads back to it, with no way out): generation could never end."""
        n = len(self.nodes)
        missing = [0] * n
        users: list[list[int]] = [[] for _ in range(n)]
        for i, node in enumerate(self.nodes):
            needs = set(node.needs)
            missing[i] = (1 if needs else 0) if node.any_of else len(needs)
            for c in needs:
                users[c].append(i)
        done = [False] * n
        queue = [i for i in range(n) if missing[i] == 0]
        while queue:
            i = queue.pop()
            if done[i]:
                continue
            done[i] = True
            for u in users[i]:
                if not done[u]:
                    missing[u] -= 1
                    if missing[u] == 0:
                        queue.append(u)
        for i, ok in enumerate(done):
            if not ok:
                raise SchemaError(f"the schema at {self.nodes[i].path} has no finite value: it "
                                  "requires itself again (through required properties or non-empty "
                                  "arrays) with no way out, so generation could never end")


def check_schema(schema: dict[str, Any]) -> None:
    """Refuse (with :class:`SchemaError`) a JSON schema that llama.cpp's converter would not
    turn into a grammar for exactly the JSON it describes.

    The message names the first problem and its JSON-pointer path: a keyword the converter
    does not support or ignores in that place ("unsupported JSON Schema keyword
    'patternProperties' at #/properties/a"), a ``$ref`` that is remote or does not resolve, a
    cycle of ``$ref``/``anyOf``/``allOf`` that no object property or array item breaks, a
    recursion with no finite value, a ``pattern`` outside the regex subset, a schema nested or
    sized past the limits (``MAX_DEPTH``, ``MAX_NODES``, ...). The walk is iterative: a hostile
    schema cannot exhaust the stack.
    """
    if not isinstance(schema, dict):
        raise TypeError(f"a JSON schema is a dict, not {_kind_of(schema)}")
    _Checker(_json_copy(schema)).run()


# Patterns: the regex subset the converter's _pattern_to_rule turns into a grammar (elsewhere it
# warns and accepts any string, or fails).

_REGEX_SPECIAL = frozenset("^$.[]()|{}*+?")     # an escaped one is a literal character
_NON_LITERAL = _REGEX_SPECIAL
_SIMPLE_ESCAPES = {"t": "\t", "r": "\r", "n": "\n", "\\": "\\", '"': '"', "[": "[", "]": "]", "-": "-"}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}


def _escape_at(s: str, i: int) -> tuple[int, str] | None:
    """The length and character of the grammar escape at ``s[i]`` (a backslash), if it is one."""
    if i + 1 >= len(s):
        return None
    c = s[i + 1]
    if c in _SIMPLE_ESCAPES:
        return 2, _SIMPLE_ESCAPES[c]
    n = _HEX_ESCAPES.get(c)
    digits = s[i + 2:i + 2 + n] if n else ""
    if not n or len(digits) != n or not all(d in string.hexdigits for d in digits):
        return None
    code = int(digits, 16)
    return (2 + n, chr(code)) if code <= 0x10FFFF else None


def _breaks_json(c: str) -> bool:
    """A character the grammar would put raw into a JSON string, where it is not allowed."""
    return c in '"\\' or ord(c) < 0x20


def _check_pattern(pattern: str, path: str) -> None:
    def fail(why: str) -> NoReturn:
        raise SchemaError(f"pattern {pattern!r} at {path} cannot become a grammar: {why}")

    if len(pattern) < 2 or pattern[0] != "^" or pattern[-1] != "$":
        fail("llama.cpp needs it anchored as '^...$' (it would accept any string)")
    s = pattern[1:-1]
    n = len(s)
    i = 0
    # Whether each item of the current alternative can match "" (a repetition without an upper
    # bound of such an item is a left-recursive grammar), per open group.
    outer: list[tuple[bool, list[bool]]] = []
    alt_empty = False            # a finished alternative of the current group can match ""
    items: list[bool] = []
    last = "start"               # start, alt, atom, quant, lazy
    run = 0                      # characters in the converter's current literal run
    while i < n:
        c = s[i]
        if c == ".":
            items.append(False)
            last, run, i = "atom", 0, i + 1
        elif c == "(":
            if s.startswith("(?", i):
                if not s.startswith("(?:", i):
                    fail("only the group syntax '(?:' is supported (no lookaround, named group or flag)")
                i += 3
            else:
                i += 1
            if len(outer) >= _MAX_PATTERN_GROUPS:
                fail(f"groups nested more than {_MAX_PATTERN_GROUPS} deep")
            outer.append((alt_empty, items))
            alt_empty, items, last, run = False, [], "start", 0
        elif c == ")":
            if not outer:
                fail("unbalanced parentheses")
            group_empty = alt_empty or all(items)
            alt_empty, items = outer.pop()
            items.append(group_empty)
            last, run, i = "atom", 0, i + 1
        elif c in "^$":
            fail("an anchor inside the pattern is not supported")
        elif c == "[":
            j = i + 1
            chars: list[tuple[str, bool]] = []     # (character, written as an escape)
            while j < n and s[j] != "]":
                if s[j] == "\\":
                    esc = _escape_at(s, j)
                    if esc is None:
                        fail(f"the escape {s[j:j + 2]!r} is not supported in a character class")
                    chars.append((esc[1], True))
                    j += esc[0]
                else:
                    chars.append((s[j], False))
                    j += 1
            if j >= n:
                fail("unterminated character class")
            body = s[i + 1:j]
            if body in ("", "^"):
                fail("an empty character class")
            if not body.startswith("^"):
                _check_class(chars, fail)
            items.append(False)
            last, run, i = "atom", 0, j + 1
        elif c == "|":
            alt_empty = alt_empty or all(items)
            items, last, run, i = [], "alt", 0, i + 1
        elif c in "*+?{":
            if last in ("start", "alt"):
                fail(f"nothing to repeat before {c!r}")
            if c == "{":
                close = s.find("}", i)
                if close < 0:
                    fail("unterminated '{'")
                m = re.fullmatch(r"([0-9]+)(,([0-9]*))?", s[i + 1:close])
                if m is None:
                    fail(f"{s[i:close + 1]!r} is not a repetition llama.cpp reads as a regex does")
                low = int(m[1])
                high = low if m[2] is None else int(m[3]) if m[3] else None
                if high is not None and low > high:
                    fail(f"{s[i:close + 1]!r} repeats more times at least than at most")
                if max(low, high or 0) > MAX_LENGTH:
                    fail(f"{s[i:close + 1]!r} repeats more than llama.cpp's grammar can unroll "
                         f"(at most {MAX_LENGTH})")
                i = close + 1
            else:
                low, high = (1, None) if c == "+" else (0, None) if c == "*" else (0, 1)
                i += 1
            if last == "quant" and c == "?":
                last = "lazy"         # x*? x+? x??: a lazy quantifier, the same language
                continue
            if last in ("quant", "lazy"):
                fail("a quantifier cannot follow another one")
            if high is None and items[-1]:
                fail("repeating without bound something that can match the empty string makes a "
                     "left-recursive grammar")
            items[-1] = items[-1] or low == 0
            last, run = "quant", 0
        elif c in "]}":
            fail(f"a stray {c!r}")
        else:
            if c == "\\":
                if i == n - 1:
                    fail("a trailing backslash")
                if s[i + 1] in _REGEX_SPECIAL:
                    length, char = 2, s[i + 1]
                else:
                    esc = _escape_at(s, i)
                    if esc is None:
                        fail(f"the escape {s[i:i + 2]!r} is not supported")
                    length, char = esc
                run += 1
                if run > 1 and i + length < n and s[i + length] in "*+?{":
                    fail(f"llama.cpp would repeat the whole literal before {s[i + length]!r}, not "
                         f"just {s[i:i + length]!r}: put it in a group, (?:{s[i:i + length]})")
            else:
                length, char = 1, c
                if run and i + 1 < n and s[i + 1] in _NON_LITERAL and s[i + 1] != ".":
                    run = 0           # the converter starts a new literal here
                run += 1
            if _breaks_json(char):
                fail(f"it makes the character {char!r} appear raw inside a JSON string")
            items.append(False)
            last = "atom"
            i += length
    if outer:
        fail("unbalanced parentheses")


def _check_class(chars: list[tuple[str, bool]], fail: typing.Callable[[str], NoReturn]) -> None:
    """A character class (not negated; its members, and whether each was an escape) that lists a
    character that would break the JSON string is refused; ranges are read as llama.cpp's grammar
    reads them (a '-' between two members, unless escaped)."""
    k = 0
    while k < len(chars):
        low = high = chars[k][0]
        if k + 2 < len(chars) and chars[k + 1] == ("-", False):
            high = chars[k + 2][0]
            k += 3
        else:
            k += 1
        if low > high:
            fail(f"the range {low}-{high} is out of order")
        if low <= '"' <= high or low <= "\\" <= high or low < " ":
            fail("its character class lets a raw '\"', '\\' or control character into a JSON string")


# --------------------------------------------------------------------------------------------
# parse_output


def _locate(text: str, path: tuple[str | int, ...]) -> int:
    """The offset in ``text`` (JSON) of the value at ``path``, or of the deepest part of the path
    that is there. No recursion: only the values along the path are entered."""
    ws = " \t\n\r"

    def skip_ws(i: int) -> int:
        while i < len(text) and text[i] in ws:
            i += 1
        return i

    def skip_string(i: int) -> int:      # text[i] is the opening quote; the offset past the closing one
        i += 1
        while i < len(text):
            c = text[i]
            if c == '"':
                return i + 1
            i += 2 if c == "\\" else 1
        raise ValueError("unterminated string")

    def skip_value(i: int) -> int:
        if text.startswith('"', i):
            return skip_string(i)
        depth = 0
        while i < len(text):
            c = text[i]
            if c == '"':
                i = skip_string(i)
                continue
            if c in "[{":
                depth += 1
            elif c in "]}":
                if depth == 0:
                    return i
                depth -= 1
                if depth == 0:
                    return i + 1
            elif c == "," and depth == 0:
                return i
            i += 1
        return i

    pos = skip_ws(0)
    try:
        for step in path:
            if isinstance(step, str) and text.startswith("{", pos):
                i, found = skip_ws(pos + 1), None
                while text.startswith('"', i):
                    end = skip_string(i)
                    key, i = json.loads(text[i:end]), end
                    i = skip_ws(skip_ws(i) + 1)        # past ':'
                    if key == step:
                        found = i                      # the last one wins, as in json.loads
                    i = skip_ws(skip_value(i))
                    if not text.startswith(",", i):
                        break
                    i = skip_ws(i + 1)
                if found is None:
                    return pos
                pos = found
            elif isinstance(step, int) and text.startswith("[", pos):
                i = skip_ws(pos + 1)
                for _ in range(step):
                    i = skip_ws(skip_value(i))
                    if not text.startswith(",", i):
                        return pos
                    i = skip_ws(i + 1)
                pos = i
            else:
                return pos
    except (ValueError, StopIteration):
        pass
    return pos


class _Mismatch(Exception):
    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


_PARSERS: dict[Any, typing.Callable[[str], Any]] = {
    datetime.date: datetime.date.fromisoformat,
    uuid.UUID: uuid.UUID,
}


def _parse_datetime(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)


def _parse_time(text: str) -> datetime.time:
    return datetime.time.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)


_PARSERS[datetime.datetime] = _parse_datetime
_PARSERS[datetime.time] = _parse_time


def _convert(tp: Any, value: Any, path: tuple[str | int, ...]) -> Any:
    """``value`` (parsed JSON) as the annotation ``tp`` says, for our own dataclass support."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)

    def wrong(what: str) -> NoReturn:
        raise _Mismatch(path, f"expected {what}, got {_dump(value)[:60]}")

    if origin is typing.Annotated:
        return _convert(args[0], value, path)
    if tp is Any or tp is object:
        return value
    if tp is None or tp is type(None):
        return None if value is None else wrong("null")
    if tp is bool:
        return value if isinstance(value, bool) else wrong("a boolean")
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else wrong("an integer")
    if tp is float:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
            else wrong("a number")
    if tp is str:
        return value if isinstance(value, str) else wrong("a string")
    if tp in _PARSERS:
        if not isinstance(value, str):
            wrong(f"a {tp.__name__} string")
        try:
            return _PARSERS[tp](value)
        except ValueError:
            wrong(f"a {tp.__name__} string")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        for member in tp:
            if _dump(member.value) == _dump(value):
                return member
        wrong(f"one of {[m.value for m in tp]}")
    if _is_dataclass_class(tp):
        if not isinstance(value, dict):
            wrong(f"an object ({tp.__name__})")
        hints = _hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp) if f.init}
        for key in value:
            if key not in fields:
                raise _Mismatch((*path, key), f"{tp.__name__} has no field {key!r}")
        kwargs = {}
        for name, f in fields.items():
            if name in value:
                kwargs[name] = _convert(hints.get(name, Any), value[name], (*path, name))
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _Mismatch(path, f"{tp.__name__} needs the field {name!r}")
        return tp(**kwargs)
    if tp in (list, tuple) or origin in (list, tuple):
        if not isinstance(value, list):
            wrong("an array")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            fixed = () if args == ((),) else args
            if len(value) != len(fixed):
                wrong(f"an array of {len(fixed)} items")
            return tuple(_convert(a, v, (*path, i)) for i, (a, v) in enumerate(zip(fixed, value)))
        item = args[0] if args else Any
        converted = [_convert(item, v, (*path, i)) for i, v in enumerate(value)]
        return tuple(converted) if (tp is tuple or origin is tuple) else converted
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            wrong("an object")
        item = args[1] if args else Any
        return {k: _convert(item, v, (*path, k)) for k, v in value.items()}
    if origin is typing.Union or origin is types.UnionType:
        first: _Mismatch | None = None
        for member in args:
            try:
                return _convert(member, value, path)
            except _Mismatch as exc:
                first = first or exc
        assert first is not None
        raise first
    if origin is typing.Literal:
        for choice in args:
            if _dump(choice) == _dump(value) and type(choice) is type(value):
                return value
        wrong(f"one of {list(args)}")
    raise _Mismatch(path, f"the type {tp!r} is not supported here")


def _name_of(target: object) -> str:
    return getattr(target, "__qualname__", None) or type(target).__name__


def parse_output(text: str, target: object) -> Any:
    """The value of a generated ``text`` (JSON): an instance of ``target`` when it is a pydantic
    model class (``model_validate``) or a dataclass (pydantic's ``TypeAdapter`` if installed,
    else our own conversion of its fields), the parsed JSON when it is a schema dict.

    Raises :class:`OutputParseError` (a ValueError) with the position in ``text``: of the JSON
    syntax error, or of the value that does not fit ``target``.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if not (isinstance(target, dict) or _is_model_class(target) or _is_dataclass_class(target)):
        raise TypeError(f"target is {_ACCEPTED}; got {_kind_of(target)}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OutputParseError(f"generated text is not valid JSON: {exc.msg}", text, exc.pos) from None
    except RecursionError:
        raise OutputParseError("generated JSON is nested too deeply to read", text, 0) from None
    if isinstance(target, dict):
        return data
    # a model class means pydantic is there; for a dataclass it is optional
    pyd = importlib.import_module("pydantic") if _is_model_class(target) else _pydantic()
    if pyd is not None:
        try:
            if _is_model_class(target):
                return typing.cast(Any, target).model_validate(data)
            return _type_adapter(typing.cast(type, target)).validate_python(data)
        except pyd.ValidationError as exc:
            errors = exc.errors()
            first = errors[0]
            loc = tuple(first.get("loc", ()))
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            where = ".".join(map(str, loc)) or "the top level"
            raise OutputParseError(f"generated JSON does not fit {_name_of(target)} at {where}: "
                                   f"{first.get('msg', exc)}{more}", text, _locate(text, loc), loc) from None
    try:
        return _convert(target, data, ())
    except _Mismatch as exc:
        where = ".".join(map(str, exc.path)) or "the top level"
        raise OutputParseError(f"generated JSON does not fit {_name_of(target)} at {where}: {exc.message}",
                               text, _locate(text, exc.path), exc.path) from None
