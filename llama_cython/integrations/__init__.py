"""Scale-out on existing engines: :mod:`llama_cython.integrations.ray` (Ray Data) and
:mod:`llama_cython.integrations.dask` (Dask DataFrames).

Neither engine is a dependency of llama_cython: they are the extras ``llama_cython[ray]`` and
``llama_cython[dask]``. Importing this package imports neither; each submodule imports its
engine only when a function needs it, and says which extra to install when it is missing.

What travels to the workers is the model's *spec* (its file, identity and load options; see
the pipelines guide, "Pickling models to worker processes"), never a loaded model: each worker
process loads the model once, on its first task, and reuses its contexts from task to task.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["dask", "ray"]


def __getattr__(name: str) -> ModuleType:
    # `llama_cython.integrations.ray` imports the submodule, which imports Ray only when used.
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
