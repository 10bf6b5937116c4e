"""Option checks of the pure-Python layers (jobs, integrations), split as the core splits them
(``_options.pxi``): a value of the wrong type is a TypeError, a value out of range an
:class:`~llama_cython.errors.OptionError` (a ValueError)."""

from __future__ import annotations

import operator
from collections.abc import Sequence

import numpy as np

from llama_cython.errors import OptionError

__all__ = ["choice", "positive_int"]


def positive_int(value: object, name: str) -> int:
    """``value`` as an int >= 1: ints and numpy integers (anything with ``__index__``), not bools."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if number < 1:
        raise OptionError(f"{name} must be a positive int, got {value!r}")
    return number


def choice(value: object, name: str, choices: Sequence[str], why: str = "") -> str:
    """``value`` if it is one of ``choices`` (strings); ``why`` is added to the message."""
    listed = ", ".join(map(repr, choices[:-1])) + f" or {choices[-1]!r}"
    if not isinstance(value, str):
        raise TypeError(f"{name} must be {listed}{why}, got {type(value).__name__}")
    if value not in choices:
        raise OptionError(f"{name} must be {listed}{why}, got {value!r}")
    return value
