"""Public names that moved to another module: a module ``__getattr__`` that still finds them
at their old address, with a ``DeprecationWarning`` that names the new one.

>>> __getattr__ = moved_names(__name__, {"removal_losses": "avsslib.removal"})  # doctest: +SKIP

Imports nothing of avsslib and writes no file.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["moved_names"]


def moved_names(old: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for module ``old``: a name in ``homes`` (name -> the module it
    moved to) is imported from its new module with a ``DeprecationWarning``; any other name
    raises ``AttributeError`` as a module without ``__getattr__`` would."""

    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        warnings.warn(
            f"{old}.{name} moved to {homes[name]}.{name}; import it from there.",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(homes[name]), name)

    return __getattr__
