"""How a pipeline configuration is spelled as ``avss`` options, defined once.

A configuration (:class:`avsslib.models.ModelOptions` and the pipeline configurations that
extend it) has one field per option of its command, with the option's name. These helpers turn
field values into the options that repeat them, so that a run started from the library records
the same command line as one started from ``avss``:

* :func:`option_argv`: ``{"n_eval": 500, "quick": True}`` -> ``["--n-eval", "500", "--quick"]``
  (``None`` and ``False`` are left out, ``True`` is a bare flag, a tuple is comma-joined);
* :func:`named_values`: some settings of a configuration (or of parsed options) as keyword
  arguments of the same names;
* :func:`command_line`: ``avss <command>`` with every option of a configuration explicit, the
  model options first in the order every command's parser declares them (``--model``,
  ``--out``, ``--device``, ...).

Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: the options every model command declares first, in this order (``avsslib.cli.common``)
MODEL_OPTION_ORDER: tuple[str, ...] = (
    "model",
    "out",
    "device",
    "dtype",
    "seed",
    "quiet",
    "trust_remote_code",
)


def named_values(obj: Any, *names: str) -> dict[str, Any]:
    """``{name: obj.<name>}`` for ``names``: settings of a configuration or parsed options,
    passed on as keyword arguments of the same names."""
    return {name: getattr(obj, name) for name in names}


def option_value(value: Any) -> str:
    """One option value as the command line writes it (a tuple comma-joined, a path as text)."""
    if isinstance(value, tuple | list):
        return ",".join(option_value(v) for v in value)
    if isinstance(value, Path):
        return str(value)
    return str(value)


def option_argv(values: Mapping[str, Any]) -> list[str]:
    """The ``--option value`` arguments of ``values`` (field name -> value), in their order:
    ``None`` and ``False`` are left out, ``True`` is a bare flag, an empty tuple is left out."""
    argv: list[str] = []
    for name, value in values.items():
        if value is None or value is False or (isinstance(value, tuple | list) and not value):
            continue
        flag = f"--{name.replace('_', '-')}"
        argv += [flag] if value is True else [flag, option_value(value)]
    return argv


def command_line(command: str, config: Any, values: Mapping[str, Any] | None = None) -> str:
    """``avss <command>`` with every option of the dataclass ``config`` explicit (its field
    ``command`` aside), the model options first (:data:`MODEL_OPTION_ORDER`), then the other
    fields in declaration order. ``values`` replaces some fields' values (e.g. presets resolved)."""
    fields = [f.name for f in dataclasses.fields(config) if f.name != "command"]
    order = [n for n in MODEL_OPTION_ORDER if n in fields]
    order += [n for n in fields if n not in MODEL_OPTION_ORDER]
    given = {n: getattr(config, n) for n in order}
    given.update(values or {})
    return shlex.join(["avss", command, *option_argv(given)])


__all__ = ["MODEL_OPTION_ORDER", "command_line", "option_argv", "option_value"]
