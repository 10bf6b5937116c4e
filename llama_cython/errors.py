"""The exceptions of llama_cython: one hierarchy, each class also a matching builtin.

Everything the package raises on purpose is a :class:`LlamaError`, so ``except LlamaError``
catches it all; each class also inherits the builtin a Python user would reach for
(``except FileNotFoundError`` works for a missing model file, ``except ValueError`` for a
prompt that does not fit).

>>> import llama_cython as llama
>>> try:
...     llama.load_model("/no/such/model.gguf")
... except FileNotFoundError as exc:
...     print(type(exc).__name__, "-", exc)
ModelNotFoundError - model file not found: /no/such/model.gguf
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "AllocationError",
    "ClosedError",
    "ContextBusyError",
    "ContextError",
    "ContextSizeError",
    "DecodeError",
    "GrammarError",
    "JobResumeError",
    "LlamaError",
    "ModelChecksumError",
    "ModelFetchError",
    "ModelLoadError",
    "ModelNotFoundError",
    "OptionError",
    "SchemaError",
    "StateError",
    "TemplateError",
    "TokenizeError",
]


class LlamaError(Exception):
    """Base class of every error raised by llama_cython."""


class ModelNotFoundError(LlamaError, FileNotFoundError):
    """The model path does not exist ("model file not found")."""


class ModelLoadError(LlamaError, OSError):
    """The file exists but llama.cpp could not load it (not GGUF, truncated, unsupported, cancelled)."""


class ContextError(LlamaError):
    """A context could not be created or an operation on it failed."""


class ContextSizeError(ContextError, ValueError):
    """A prompt or a requested size does not fit the context or the model's maximum."""


class ClosedError(LlamaError, ValueError):
    """The model or context was closed ("context is closed" / "model is closed")."""


class ContextBusyError(ContextError, RuntimeError):
    """Another thread is using this context right now; a Context serves one thread at a time."""


class DecodeError(ContextError, RuntimeError):
    """llama.cpp's decode returned an error; ``code`` holds its return value."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class AllocationError(LlamaError, MemoryError):
    """llama.cpp failed to allocate memory ("failed to allocate")."""


class TokenizeError(LlamaError, ValueError):
    """Text could not be tokenized, or a token id is not in the vocabulary."""


class OptionError(LlamaError, ValueError):
    """An option has a value llama.cpp does not accept (checked before any C call)."""


class GrammarError(OptionError):
    """A GBNF grammar that cannot be used: a syntax error (``line`` and ``column`` say where,
    1-based), an undefined or left-recursive rule, a language that is empty, or a grammar too
    deep or too large to compile safely."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        where = f"line {line}, column {column}: " if line is not None and column is not None else ""
        super().__init__(where + message)
        self.message = message
        self.line = line
        self.column = column

    def __reduce__(self) -> tuple[type[GrammarError], tuple[str, int | None, int | None]]:
        return (type(self), (self.message, self.line, self.column))


class SchemaError(OptionError):
    """A JSON schema that cannot become a grammar: a keyword the converter does not support
    (named, with its JSON-pointer path), a ``$ref`` that does not resolve, a cycle of
    references that no object or array breaks, a pattern no grammar can express."""


class StateError(LlamaError, ValueError):
    """A saved context state that cannot be loaded: not a state file, truncated or corrupt,
    or saved from another model or with context options this context does not have."""


class JobResumeError(LlamaError, ValueError):
    """A file job (:mod:`llama_cython.jobs`) cannot run: the unfinished job in its working
    folder is another one (other options, input or model, or it read stdin), or another
    process is running it now. Delete the folder or pass ``resume=False`` to start over."""


class TemplateError(LlamaError, ValueError):
    """A chat template failed to render or tried to leave its sandbox."""


class ModelFetchError(LlamaError, OSError):
    """Fetching a model of :mod:`llama_cython.models` failed (pip, unpacking or conversion).

    When a program failed (pip, the converter), the message ends with the tail of its output.
    """


class ModelChecksumError(ModelFetchError):
    """A model file's sha256 (or the digest of a folder to convert) is not the pinned one."""

    def __init__(self, name: str, path: Path, expected: str, got: str) -> None:
        super().__init__(
            f"sha256 mismatch for model {name!r} ({path}): "
            f"expected {expected}, got {got}"
        )
        self.name = name
        self.path = path
        self.expected = expected
        self.got = got

    def __reduce__(self) -> tuple[type[ModelChecksumError], tuple[str, Path, str, str]]:
        return (type(self), (self.name, self.path, self.expected, self.got))
