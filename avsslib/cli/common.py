"""What every ``avss`` model command shares, defined once.

* :func:`add_model_options`: ``--model``, ``--out``, ``--device``, ``--dtype``, ``--seed``,
  ``--quiet`` and ``--trust-remote-code``, with one meaning and one default for every command
  that loads a model (``score``, ``prune``, ``eval``, ``study``, ``hallucination``,
  ``mitigate``). ``tests/test_cli_options.py`` walks every parser and holds them to this.
* :func:`add_calibration_options`: the calibration set of the commands that compute layer
  statistics (``score``, ``prune``, ``study``): ``--calib``, ``--calib-split``, ``--n``,
  ``--seq-len``, ``--batch-size``, ``--calib-seed``.
* helpers: loading the model (:func:`load_cli_model`), parsing lists, checking numbers before
  anything is loaded, the device, the options a run record keeps (:func:`run_options`) and the
  command line that repeats a run, a pipeline configuration from the options of its fields
  (:func:`options_config`) and the options of its fields (:func:`config_options`), the layer
  scores of the calibration set (:func:`score_layers`).

Options set on the command line are remembered in ``args._given`` (a set of destinations), so
that a preset such as ``avss study --quick`` changes only the options the user left alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from avsslib.errors import ConfigError
from avsslib.options import named_values
from avsslib.study import DTYPES

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_Config = TypeVar("_Config", bound="DataclassInstance")

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_SEED = 0
CALIBRATION_DEFAULTS: dict[str, Any] = {
    "calib": "wikitext2",
    "calib_split": "validation",
    "n": 64,
    "seq_len": 128,
    "batch_size": 8,
    "calib_seed": 0,
}
MODEL_OPTIONS = (
    "--model",
    "--out",
    "--device",
    "--dtype",
    "--seed",
    "--quiet",
    "--trust-remote-code",
)
CALIBRATION_OPTIONS = (
    "--calib",
    "--calib-split",
    "--n",
    "--seq-len",
    "--batch-size",
    "--calib-seed",
)


class _Given(argparse.Action):
    """``store`` that also records the destination in ``namespace._given`` (with ``nargs=0``:
    stores ``const``)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)
        given = set(getattr(namespace, "_given", set()))
        namespace._given = given | {self.dest}


class _GivenFlag(_Given):
    """``store_true`` that also records the destination in ``namespace._given``."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, const=True, default=False, **kwargs)


def given(args: argparse.Namespace, dest: str) -> bool:
    """Whether the option ``dest`` was set on the command line (not left at its default)."""
    return dest in getattr(args, "_given", set())


def add_model_options(
    parser: argparse.ArgumentParser, *, out_help: str = "output directory (created)"
) -> None:
    """The options of every model command (see the module docstring)."""
    group = parser.add_argument_group("common options (every model command)")
    group.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        action=_Given,
        help=f"zoo name, local directory or hub id (default {DEFAULT_MODEL})",
    )
    group.add_argument("--out", required=True, type=Path, action=_Given, help=out_help)
    add_device_options(group)
    group.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        action=_Given,
        help=f"global seed: sampling, random layers, training (default {DEFAULT_SEED})",
    )
    group.add_argument("--quiet", action=_GivenFlag, help="no progress bars")
    group.add_argument(
        "--trust-remote-code",
        action=_GivenFlag,
        help="allow running the Python code of a model that ships its own "
        "(auto_map in config.json); only for models you trust",
    )


def add_device_options(parser: Any) -> None:
    """``--device`` and ``--dtype`` (of every model command, and of ``avss reproduce``)."""
    parser.add_argument(
        "--device",
        default=None,
        action=_Given,
        help="torch device (default: cuda if available, else cpu)",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        action=_Given,
        help="model dtype (default float32; faithful statistics need float32)",
    )


def add_calibration_options(parser: argparse.ArgumentParser) -> None:
    """The calibration set of the commands that compute layer statistics."""
    d = CALIBRATION_DEFAULTS
    group = parser.add_argument_group("calibration set (layer statistics)")
    group.add_argument(
        "--calib",
        default=d["calib"],
        action=_Given,
        help=f"calibration dataset (wikitext2, sst2, nq_open, triviaqa, ...; default {d['calib']})",
    )
    group.add_argument(
        "--calib-split",
        default=d["calib_split"],
        action=_Given,
        help=f"its split (default {d['calib_split']})",
    )
    group.add_argument("--split", dest="calib_split", action=_Given, help=argparse.SUPPRESS)
    for key, what in (
        ("n", "calibration texts"),
        ("seq_len", "tokens per text"),
        ("batch_size", "texts per batch"),
        ("calib_seed", "seed of the text sample"),
    ):
        group.add_argument(
            "--" + key.replace("_", "-"),
            type=int,
            default=d[key],
            action=_Given,
            help=f"{what} (default {d[key]})",
        )


def add_eps_option(parser: argparse.ArgumentParser, what: str = "near-zero threshold") -> None:
    """``--eps``, the near-zero threshold of the sparsity statistics (default 1e-5, the official
    code's); ``what`` opens its help."""
    parser.add_argument("--eps", type=float, default=1e-5, help=f"{what} (default 1e-5)")


def load_cli_model(
    args: argparse.Namespace, device: str, *, causal_for: str | None = None
) -> tuple[Any, Any, float]:
    """Seed everything (``--seed``), then load ``--model`` in ``--dtype`` on ``device``, honouring
    ``--trust-remote-code`` (:func:`avsslib.models.load_seeded`); returns ``(model, tokenizer,
    load seconds)``. ``causal_for``: the command's name when it needs a causal language model
    (encoders are refused by name)."""
    from avsslib.models import load_seeded

    return load_seeded(
        args.model,
        dtype=args.dtype,
        device=device,
        seed=args.seed,
        trust_remote_code=getattr(args, "trust_remote_code", False),
        causal_for=None if causal_for is None else f"avss {causal_for}",
    )


def parse_list(value: str | None, option: str, kind: type = str) -> list[Any]:
    """A comma-separated option value as a list of ``kind``; ``ConfigError`` names the option."""
    if value is None:
        return []
    try:
        return [kind(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(
            f"{option} {value!r}: expected a comma-separated list of {kind.__name__} values."
        ) from None


def check_numbers(args: argparse.Namespace) -> None:
    """Refuse impossible option values before any model or data is loaded; ``ConfigError``
    names the option. Checks the options this namespace has: ``--fraction`` in (0, 1),
    ``--eps`` > 0, ``--n``, ``--seq-len`` and ``--batch-size`` >= 1, ``--seed`` and
    ``--calib-seed`` >= 0."""

    def bad(option: str, value: Any, rule: str) -> ConfigError:
        return ConfigError(f"{option} {value}: {rule}.")

    fraction = getattr(args, "fraction", None)
    if fraction is not None and not 0.0 < fraction < 1.0:
        raise bad(
            "--fraction", fraction, "the pruned share must lie strictly between 0 and 1, e.g. 0.25"
        )
    eps = getattr(args, "eps", None)
    if eps is not None and not (math.isfinite(eps) and eps > 0):
        raise bad("--eps", eps, "the near-zero threshold must be a positive number, e.g. 1e-5")
    for name in ("n", "seq_len", "batch_size"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise bad(f"--{name.replace('_', '-')}", value, "must be a positive integer")
    for name in ("seed", "calib_seed"):
        value = getattr(args, name, None)
        if value is not None and not 0 <= value < 2**32:
            raise bad(
                f"--{name.replace('_', '-')}",
                value,
                "a seed must be an integer from 0 to 2**32 - 1",
            )


def resolve_device(device: str | None) -> str:
    """``device``, or ``cuda`` when a GPU is available, else ``cpu``."""
    from avsslib.models import default_device

    return default_device(device)


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The command's options as parsed (the dispatcher's own entries left out), paths as text:
    the configuration a run record keeps."""
    return {
        key: str(value) if isinstance(value, Path) else value
        for key, value in vars(args).items()
        if not key.startswith("_") and key not in ("command", "debug")
    }


def command_line(name: str, args: argparse.Namespace) -> str:
    """The command line that repeats this run, every option explicit (for run records)."""
    from avsslib.options import option_argv

    return shlex.join(["avss", name, *option_argv(run_options(args))])


def options_config(
    command: str, cls: type[_Config], args: argparse.Namespace, **values: Any
) -> _Config:
    """The configuration of ``avss <command>``'s run: the numbers checked
    (:func:`check_numbers`), then the dataclass ``cls`` (a pipeline configuration, one field per
    option) with each field set to the option of its name, but the fields given in ``values``,
    and ``command`` the command line as given."""
    check_numbers(args)
    given = {**values, "command": command_line(command, args)}
    fields = [f.name for f in dataclasses.fields(cls) if f.name not in given]
    return cls(**named_values(args, *fields), **given)


def config_options(parser: Any, cls: type) -> Callable[..., None]:
    """The option maker of a pipeline configuration ``cls`` (a dataclass): ``add(flag, help,
    **kw)`` adds ``flag`` to ``parser`` for the field of the same name (``--n-eval``: ``n_eval``;
    ``field=`` names another) with the field's default, so that each default is stated once, in
    the configuration; ``%(default)s`` in ``help`` shows it. The field's type gives the rest: a
    ``bool`` is a ``store_true`` flag, a ``Literal`` gives ``choices``, a tuple is taken as a
    comma-separated list (its default comma-joined), ``int``, ``float`` and ``Path`` convert.
    ``to=`` adds to a group of ``parser`` instead; other keywords go to ``add_argument``.
    A configuration that extends :class:`~avsslib.models.ModelOptions` has the model options'
    fields: those options (:func:`add_model_options`) are added first."""
    from avsslib.models import ModelOptions

    if issubclass(cls, ModelOptions):
        add_model_options(parser)
    hints = typing.get_type_hints(cls)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}

    def add(flag: str, help: str, *, field: str | None = None, to: Any = None, **kw: Any) -> None:
        name = field or kw.get("dest") or flag.lstrip("-").replace("-", "_")
        (to or parser).add_argument(
            flag, help=help, **{**_field_option(hints[name], defaults[name]), **kw}
        )

    return add


def _field_option(hint: Any, default: Any) -> dict[str, Any]:
    """``add_argument`` keywords of a configuration field of type ``hint`` (``X | None`` as
    ``X``) and default ``default``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    if hint is bool:
        if default is not False:
            raise TypeError(f"a flag's field must default to False, not {default!r}")
        return {"action": "store_true"}
    if typing.get_origin(hint) is Literal:
        return {"choices": typing.get_args(hint), "default": default}
    if typing.get_origin(hint) is tuple:
        return {"default": ",".join(map(str, default)) or None}
    if hint in (int, float, Path):
        return {"type": hint, "default": default}
    return {"default": default}


def calibration_from_args(tokenizer: Any, args: argparse.Namespace, *, faithful: bool):
    """``calibration_set`` from the calibration options (padded to ``--seq-len`` when faithful)."""
    from avsslib.calibration import calibration_set

    sizes = named_values(args, "n", "seq_len", "batch_size")
    return calibration_set(
        tokenizer,
        args.calib,
        args.calib_split,
        **sizes,
        seed=args.calib_seed,
        pad_to_max_length=faithful,
    )


def score_layers(model: Any, batches: Any, args: argparse.Namespace, scores: list[str]) -> Any:
    """:func:`avsslib.study.layer_scores` of ``scores`` on the calibration ``batches``, in the
    mode of ``--faithful``, with ``--seed``, ``--eps`` and progress bars unless ``--quiet``;
    returns ``(stats, table)``."""
    from avsslib.study import layer_scores

    return layer_scores(
        model,
        batches,
        scores=scores,
        faithful=args.faithful,
        seed=args.seed,
        eps=args.eps,
        progress=not args.quiet,
    )
