"""Optional integrations, imported only when a feature needs them.

Each is an extra of the package (``pip install 'llama_cython[pandas]'``); the error a user
gets without it names the feature, the module and the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "require"]

# module -> the extra that installs it (pyproject.toml's [project.optional-dependencies])
EXTRAS = {"pandas": "pandas", "pyarrow": "arrow", "tqdm": "progress", "ray": "ray", "dask": "dask"}


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` (e.g. ``"tqdm.auto"``) for ``feature``, or raise an ImportError that
    says which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = EXTRAS[top]
        raise ImportError(
            f"{feature} needs {top}, which is not installed: "
            f"pip install 'llama_cython[{extra}]' (or pip install {top})"
        ) from exc
