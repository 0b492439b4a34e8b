"""What shapes a pruning study, and what it returns: :class:`StudyConfig` (one field per option
of ``avss study``, same names, same defaults) (the result, :class:`avsslib.study_report.StudyResult`); the study's default
scores, calibration set, tasks and the ``--quick`` preset. Writes no file.

``StudyConfig(out=DIR, model="smollm2-135m", n_eval=100)`` is ``avss study --out DIR --n-eval
100``. A field left at ``None`` takes the value of the preset: the full study, or with
``quick=True`` a smoke run of minutes on a CPU (:data:`PRESETS`); :meth:`StudyConfig.resolved`
fills them in, :meth:`StudyConfig.validate` refuses an impossible value with a
:class:`~avsslib.errors.ConfigError` that names the option and what to do.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avsslib.errors import ConfigError
from avsslib.models import ModelOptions

STUDY_FORMAT = "avsslib.study/1"
"""Version of the study's file layout and hashing; part of every cache key."""

DEFAULT_SCORES: tuple[str, ...] = (
    "avss",
    "block_influence",
    "angular",
    "ppl_removal",
    "random",
    "tail",
)
"""The scores of the pruning study."""
FAST_SCORES: tuple[str, ...] = tuple(s for s in DEFAULT_SCORES if s != "ppl_removal")
"""The study's scores that come from the one statistics pass (``avss score``'s default):
``ppl_removal`` runs the model again for every layer."""
DEFAULT_TASKS: tuple[str, ...] = ("wikitext2_ppl", "sst2", "sciq_mc", "triviaqa_em")
"""The evaluation tasks of the full study."""
DEFAULT_CALIB: dict[str, Any] = {
    "name": "wikitext2",
    "split": "validation",
    "n": 64,
    "seq_len": 128,
}
DEFAULT_AGREEMENT_CALIBS: tuple[dict[str, str], ...] = (
    {"name": "wikitext2", "split": "validation"},
    {"name": "sst2", "split": "validation"},  # the official SST2.py calibration set
)
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16", "float64")

PRESETS: dict[str, dict[str, Any]] = {
    "full": {
        "tasks": DEFAULT_TASKS,
        "n_eval": 200,
        "n": DEFAULT_CALIB["n"],
        "seq_len": DEFAULT_CALIB["seq_len"],
        "scores": DEFAULT_SCORES,
        "sweep_fractions": (0.1, 0.2, 0.25, 0.3, 0.4, 0.5),
        "ppl_window": 512,
        "n_boot": 1000,
    },
    "quick": {
        "tasks": ("sciq_mc", "wikitext2_ppl"),
        "n_eval": 20,
        "n": 16,
        "seq_len": 64,
        "scores": FAST_SCORES,
        "sweep_fractions": (0.25, 0.5),
        "ppl_window": 128,
        "n_boot": 200,
    },
}
"""The values of the fields left at ``None``: the full study, and ``quick`` (``--quick``)."""


@dataclass
class StudyConfig(ModelOptions):
    """Everything that shapes a pruning study; the fields are the options of ``avss study``
    (same names, same defaults, same order) and the run record keeps all of them.

    ``calib``, ``calib_split``, ``n``, ``seq_len``, ``batch_size``, ``calib_seed``: the
    calibration set (``batch_size`` is also the evaluation batch). ``tasks``, ``n_eval``: the
    evaluation tasks and examples per task (windows for ``wikitext2_ppl``), sampled with
    ``seed``. ``fraction``: the pruned share of the main comparison; ``sweep_fractions`` and
    ``sweep_scores`` the retention-against-fraction sweep (count rule). ``agreement_calibs``
    (``NAME:SPLIT``) and ``agreement_seeds``: AVSS refitted on each, for the stability rows of
    ``agreement.csv``. ``no_new_evals``: evaluate nothing new, tabulate what was evaluated;
    ``no_faithful_eval``: skip the faithful-mode AVSS selections. ``ppl_stride`` defaults to
    the window. ``command`` is the command line recorded for the run (``None``: built from the
    fields, :meth:`describe`)."""

    calib: str = DEFAULT_CALIB["name"]
    calib_split: str = DEFAULT_CALIB["split"]
    n: int | None = None
    seq_len: int | None = None
    batch_size: int = 8
    calib_seed: int = 0
    quick: bool = False
    tasks: tuple[str, ...] | None = None
    n_eval: int | None = None
    fraction: float = 0.25
    scores: tuple[str, ...] | None = None
    sweep_fractions: tuple[float, ...] | None = None
    sweep_scores: tuple[str, ...] = ("avss", "block_influence", "random")
    agreement_calibs: tuple[str, ...] = tuple(
        f"{c['name']}:{c['split']}" for c in DEFAULT_AGREEMENT_CALIBS
    )
    agreement_seeds: tuple[int, ...] = (0, 1)
    no_new_evals: bool = False
    no_faithful_eval: bool = False
    eps: float = 1e-5
    max_length: int = 2048
    ppl_window: int | None = None
    ppl_stride: int | None = None
    num_fewshot: int | None = None
    n_boot: int | None = None
    command: str | None = field(default=None, compare=False)

    def resolved(self) -> StudyConfig:
        """A copy with every field left at ``None`` set from the preset (:data:`PRESETS`:
        ``quick`` or ``full``); ``ppl_stride`` stays ``None`` (the window)."""
        preset = PRESETS["quick" if self.quick else "full"]
        values = {k: v for k, v in preset.items() if getattr(self, k) is None}
        return dataclasses.replace(self, **values)

    def validate(self) -> StudyConfig:
        """``ConfigError`` naming the option and the fix for an impossible value, before any
        model or data is loaded; returns :meth:`resolved`."""
        import math

        from avsslib.evaluate import TASKS
        from avsslib.scores import REGISTRY

        cfg = self.resolved()
        assert cfg.tasks is not None and cfg.scores is not None
        assert cfg.sweep_fractions is not None
        unknown = [t for t in cfg.tasks if t not in TASKS]
        if unknown or not cfg.tasks:
            raise ConfigError(
                f"--tasks: unknown task(s) {unknown or '(none given)'}; "
                f"choose among {', '.join(TASKS)}."
            )
        if cfg.dtype not in DTYPES:
            raise ConfigError(f"--dtype {cfg.dtype!r}: choose one of {', '.join(DTYPES)}.")
        bad = [s for s in cfg.scores if s not in REGISTRY]
        if bad or not cfg.scores:
            raise ConfigError(
                f"--scores: unknown score(s) {bad or '(none given)'}; "
                f"registered scores: {', '.join(sorted(REGISTRY))}."
            )
        missing = [s for s in cfg.sweep_scores if s not in cfg.scores]
        if missing:
            raise ConfigError(
                f"--sweep-scores {','.join(missing)}: not among the computed --scores "
                f"{','.join(cfg.scores)}; add them to --scores or drop them from --sweep-scores."
            )
        for option, values in (
            ("--fraction", [cfg.fraction]),
            ("--sweep-fractions", cfg.sweep_fractions),
        ):
            for f in values:
                if not 0.0 < f < 1.0:
                    raise ConfigError(
                        f"{option} {f}: a pruned share must lie strictly between 0 and 1, "
                        "e.g. 0.25."
                    )
        for item in cfg.agreement_calibs:
            name, sep, split = item.partition(":")
            if not sep or not name or not split:
                raise ConfigError(
                    f"--agreement-calibs item {item!r}: write NAME:SPLIT, e.g. sst2:validation."
                )
        if not (math.isfinite(cfg.eps) and cfg.eps > 0):
            raise ConfigError(
                f"--eps {cfg.eps}: the near-zero threshold must be a positive number, e.g. 1e-5."
            )
        for name in ("n", "seq_len", "batch_size", "n_eval", "max_length", "ppl_window", "n_boot"):
            value = getattr(cfg, name)
            if value < 1:
                raise ConfigError(
                    f"--{name.replace('_', '-')} {value}: must be a positive integer."
                )
        if cfg.ppl_stride is not None and cfg.ppl_stride < 1:
            raise ConfigError(f"--ppl-stride {cfg.ppl_stride}: must be a positive integer.")
        seeds = [("--seed", cfg.seed), ("--calib-seed", cfg.calib_seed)]
        seeds += [("--agreement-seeds", s) for s in cfg.agreement_seeds]
        for option, value in seeds:
            if not 0 <= value < 2**32:
                raise ConfigError(
                    f"{option} {value}: a seed must be an integer from 0 to 2**32 - 1."
                )
        return cfg

    def calib_spec(self) -> dict[str, Any]:
        """The calibration set as :func:`avsslib.calibration.calibration_set` takes it (and
        the run record stores it): name, split, n, seq_len, batch_size, seed."""
        cfg = self.resolved()
        return {
            "name": cfg.calib,
            "split": cfg.calib_split,
            "n": cfg.n,
            "seq_len": cfg.seq_len,
            "batch_size": cfg.batch_size,
            "seed": cfg.calib_seed,
        }

    def agreement_specs(self) -> list[dict[str, str]]:
        """``agreement_calibs`` as ``[{"name": ..., "split": ...}, ...]``."""
        out = []
        for item in self.agreement_calibs:
            name, _, split = item.partition(":")
            out.append({"name": name, "split": split})
        return out

    def describe(self) -> str:
        """The ``avss study`` command line of these settings, every option explicit (as the
        command records it): the preset's values resolved, ``--quick`` kept."""
        from avsslib.options import command_line

        return command_line("study", self.resolved())


def config_from_keywords(model_name: str | None = None, **kwargs: Any) -> StudyConfig:
    """The :class:`StudyConfig` of the former keyword arguments of :func:`pruning_study`
    (``out_dir``, ``tasks``, ``calib`` as a dict, ``evaluate_faithful``, ``progress``, ...),
    with their former defaults (seed 42, CPU)."""
    kwargs = dict(kwargs)
    if "out_dir" not in kwargs:
        raise ConfigError("pruning_study: give a StudyConfig (or, deprecated, out_dir=...).")
    calib = dict(kwargs.pop("calib", None) or {})
    unknown = sorted(set(calib) - {"name", "split", "n", "seq_len", "batch_size", "seed"})
    if unknown:
        raise ConfigError(
            f"calib: key(s) {unknown} are not options of the study; "
            "allowed: name, split, n, seq_len, batch_size, seed."
        )
    window = kwargs.pop("ppl_window", 512)
    values: dict[str, Any] = {
        "out": Path(kwargs.pop("out_dir")),
        "model": model_name if model_name is not None else StudyConfig.model,
        "device": kwargs.pop("device", "cpu"),
        "seed": kwargs.pop("seed", 42),
        "quiet": not kwargs.pop("progress", True),
        "calib": calib.get("name", DEFAULT_CALIB["name"]),
        "calib_split": calib.get("split", DEFAULT_CALIB["split"]),
        "n": calib.get("n", DEFAULT_CALIB["n"]),
        "seq_len": calib.get("seq_len", DEFAULT_CALIB["seq_len"]),
        "calib_seed": calib.get("seed", 0),
        "no_new_evals": not kwargs.pop("evaluate_missing", True),
        "no_faithful_eval": not kwargs.pop("evaluate_faithful", True),
        "ppl_window": window,
        "ppl_stride": kwargs.pop("ppl_stride", window),
        "n_boot": kwargs.pop("n_boot", 1000),
        "n_eval": kwargs.pop("n_eval", 200),
        "agreement_calibs": tuple(
            f"{c['name']}:{c['split']}"
            for c in kwargs.pop("agreement_calibs", DEFAULT_AGREEMENT_CALIBS)
        ),
    }
    if "batch_size" in calib:
        values["batch_size"] = calib["batch_size"]
    for name in ("tasks", "scores", "sweep_fractions", "sweep_scores", "agreement_seeds"):
        if name in kwargs:
            values[name] = tuple(kwargs.pop(name))
    values.setdefault("scores", DEFAULT_SCORES)
    values.setdefault("tasks", DEFAULT_TASKS)
    fields = set(StudyConfig.__dataclass_fields__)
    unknown = sorted(k for k in kwargs if k not in fields)
    if unknown:
        raise ConfigError(f"pruning_study: unknown keyword(s) {unknown}.")
    return StudyConfig(**values, **kwargs)


__all__ = [
    "DEFAULT_AGREEMENT_CALIBS",
    "DEFAULT_CALIB",
    "DEFAULT_SCORES",
    "DEFAULT_TASKS",
    "DTYPES",
    "FAST_SCORES",
    "PRESETS",
    "STUDY_FORMAT",
    "StudyConfig",
    "config_from_keywords",
]
