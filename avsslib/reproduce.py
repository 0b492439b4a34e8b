"""The paper-scale pipeline of one model, resumable: AVSS study, hallucination-prone layers,
contrastive mitigation with its ablations over seeds, and the summary tables the book reads.

Every stage is one library pipeline (:func:`avsslib.study.pruning_study`,
:func:`avsslib.hallucination.run_hallucination`, :func:`avsslib.mitigation.run_mitigation`)
run by :func:`execute`, the same code an ``avss`` command runs; ``reproduce.json`` records each
stage's equivalent ``avss`` command line. Stages and scales are planned in
:mod:`avsslib.reproduce_plan`, the summaries written by :mod:`avsslib.reproduce_summary`. Files
under ``results/<model>/``::

    avss/                              avss study (scores, selections, evaluation, retention)
    eavss/                             avss hallucination (labels, HSAV/HSS/EAVSS, prone layers)
    mitigation/<dataset>/<mode>-seed<k>/   avss mitigate (one run per dataset, mode and seed)
    mitigation/summary.csv             one row per dataset, mode, seed, task and metric
    mitigation/summary_modes.csv       the same averaged over seeds (mean, sd, min, max)
    probe/                             avss hallucination --probe on eavss/'s labels (mode probe)
    eavss-<K>fold/                     avss hallucination --folds K --probe on every question
    mitigation-<K>fold/<dataset>/<mode>-seed<s>-fold<k>/   the k-fold protocol (--folds K)
    mitigation-<K>fold/<dataset>/pooled_scores.csv, modes_vs_random.csv   its pooled comparison
    <stage folder>/reproduce_stage.json   the settings a finished stage ran with
    reproduce.json                     what ran, what was skipped, wall times, the device, and
                                       each stage's ``avss`` command line (argv)

With ``folds`` (``avss reproduce --folds 2``) the mitigation stage runs the k-fold protocol of
:mod:`avsslib.folds` instead: every question of the evaluation task is evaluated once, by runs
trained on the other folds with layers chosen from the answers outside the evaluated fold.

A stage whose finished marker exists (``record.json``; ``metrics.json`` for mitigation runs) is
skipped, so an interrupted run continues where it stopped (the study also resumes inside
itself, and a mitigation run with a checkpoint continues from it). Stages run in an order that
gives whole comparisons early: all modes of seed 0, then seed 1, ...

Scales (:data:`SCALES`): ``ci`` is a smoke run of minutes on a CPU; ``book`` the sizes of the
committed CPU runs; ``full`` the GPU sizes (evaluation sets capped at ``n_eval`` examples).
"""

from __future__ import annotations

import gc
import json
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from avsslib.errors import AvssError, ConfigError
from avsslib.protocol import MODES
from avsslib.reproduce_plan import (
    FOLD_DATASETS,
    PRONE_SOURCE,
    SCALES,
    STAGE_SETTINGS,
    STUDY_SEED,
    TRAIN_SPLIT,
    Scale,
    Stage,
    mitigation_stages,
    model_slug,
    plan,
)
from avsslib.reproduce_summary import RELATIVE_BASE_FLOOR, summarise, summarise_folds

__all__ = [
    "FOLD_DATASETS",
    "MODES",
    "PRONE_SOURCE",
    "RELATIVE_BASE_FLOOR",
    "SCALES",
    "STAGE_SETTINGS",
    "STUDY_SEED",
    "TRAIN_SPLIT",
    "Scale",
    "Stage",
    "execute",
    "mitigation_stages",
    "model_slug",
    "plan",
    "replace",
    "reproduce",
    "summarise",
    "summarise_folds",
]

STAGES: tuple[str, ...] = ("study", "hallucination", "mitigation")
"""The stages :func:`reproduce` can run, in order."""


def execute(stage: Stage) -> None:
    """Run one stage in this process through its library pipeline, holding the lock of its
    output folder (a second run into it is refused, as ``avss`` does) and, for a quiet stage,
    with every progress bar off. Errors propagate (:func:`reproduce` records them)."""
    from avsslib.fs import results_lock
    from avsslib.hallucination import HallucinationConfig, run_hallucination
    from avsslib.mitigation import MitigationConfig, run_mitigation
    from avsslib.models import ModelOptions
    from avsslib.progress import no_progress_bars
    from avsslib.study import pruning_study
    from avsslib.study_config import StudyConfig

    config = stage.config
    pipelines: list[tuple[type, Any]] = [
        (StudyConfig, pruning_study),
        (HallucinationConfig, run_hallucination),
        (MitigationConfig, run_mitigation),
    ]
    for kind, pipeline in pipelines:
        if isinstance(config, kind):
            assert isinstance(config, ModelOptions)
            with no_progress_bars(config.quiet), results_lock(config.out):
                pipeline(config)
            return
    raise TypeError(f"stage {stage.name!r}: no pipeline runs a {type(config).__name__}")


def _device_name(device: str | None) -> str:
    import torch

    if (device or "").startswith("cuda") or (device is None and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            return str(device)  # the stage itself will say that CUDA is missing
        return torch.cuda.get_device_name(torch.device(device or "cuda").index or 0)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


class _Log:
    """``results/<model>/reproduce.json``: the model, scale and devices, and one entry per stage
    (status, wall time, argv, where it ran), merged under a (waiting) lock because several
    processes may share it (e.g. the study and the mitigation of one model side by side)."""

    def __init__(self, root: Path, model: str, scale_name: str, meta: dict[str, Any]) -> None:
        self.root, self.model, self.scale_name, self.meta = root, model, scale_name, meta
        self.path = root / "reproduce.json"
        self.log: dict[str, Any] = {**meta, "stages": {}}

    def note(self, stage: str, entry: dict[str, Any], *, keep: bool = False) -> None:
        """Merge ``entry`` into the stage's entry (``keep``: only if it has none yet)."""
        from avsslib.fs import file_lock

        with file_lock(self.root / ".reproduce.lock"):
            self._note(stage, entry, keep)

    def _note(self, stage: str, entry: dict[str, Any], keep: bool) -> None:
        from avsslib.fs import write_json_atomic

        path, meta = self.path, self.meta
        current = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        if current.get("model", self.model) != self.model:
            raise ConfigError(
                f"{self.root} holds the results of {current['model']!r}, not of "
                f"{self.model!r} (both map to the folder {self.root.name!r}); choose "
                "another --results directory."
            )
        for key, value in meta.items():  # the first run's values stay; each stage has its own
            current.setdefault(key, value)
        current["devices"] = sorted({*current.get("devices", [current["device"]]), meta["device"]})
        stages_log = current.setdefault("stages", {})
        if keep and stage in stages_log:
            return
        ran_here = {} if keep else {"device": meta["device"], "scale": self.scale_name}
        stages_log[stage] = {**stages_log.get(stage, {}), **entry, **ran_here}
        write_json_atomic(path, current)
        self.log["stages"][stage] = stages_log[stage]


def _run_stage(stage: Stage, i: int, n: int, log: _Log, scale: Scale, progress: bool) -> None:
    """Skip a finished stage, else :func:`execute` it, recording its status, wall time and
    argv; a failure is recorded and raised as a ``ConfigError`` naming the stage."""
    if stage.is_done():
        log.note(stage.name, {"status": "done"}, keep=True)
        if progress:
            print(f"[{i}/{n}] {stage.name}: already done", flush=True)
        return
    if stage.command == "mitigate":
        _share_baseline(stage.done.parent)
    if progress:
        print(f"[{i}/{n}] {stage.name}: avss {' '.join(stage.argv)}", flush=True)
    t0 = time.perf_counter()
    status = "failed (interrupted)"
    try:
        execute(stage)
        status = "done"
    except AvssError as exc:
        status = f"failed ({type(exc).__name__})"
        raise ConfigError(
            f"stage {stage.name!r} failed: {exc} Rerun the same command to resume after fixing it."
        ) from exc
    except Exception as exc:
        status = f"failed ({type(exc).__name__})"
        raise
    finally:
        wall = time.perf_counter() - t0
        log.note(stage.name, {"status": status, "wall_s": round(wall, 1), "argv": stage.argv})
        _free_memory()
    stage.mark_done()
    if not scale.keep_weights and stage.command == "mitigate":
        out = stage.done.parent  # metrics.json written: the weights are not needed
        for name in ("trained_layers.safetensors", "checkpoint.pt"):
            (out / name).unlink(missing_ok=True)
        log.note(stage.name, {"weights": "deleted (--drop-weights)"})
    if progress:
        print(f"[{i}/{n}] {stage.name}: done in {wall:.0f} s", flush=True)


def reproduce(
    model: str,
    results: Path,
    scale: str | Scale = "full",
    *,
    device: str | None = None,
    dtype: str = "float32",
    stages: tuple[str, ...] = STAGES,
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the pipeline of ``model`` into ``results/<model>``; returns the log.

    ``scale``: a name of :data:`SCALES` or a :class:`Scale`; ``overrides``: fields of the
    scale to replace (``{"seeds": (0,), "study": {"n_eval": 300}}``); ``stages``: which of
    :data:`STAGES` to run."""
    if isinstance(scale, str):
        if scale not in SCALES:
            raise ConfigError(f"scale {scale!r}: choose among {', '.join(SCALES)}.")
        name, scale = scale, SCALES[scale]
    else:
        name = "custom"
    if overrides:
        scale = replace(scale, **overrides)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"stages {unknown}: choose among {', '.join(STAGES)}.")
    root = results / model_slug(model)
    root.mkdir(parents=True, exist_ok=True)
    meta = {"model": str(model), "scale": name, "device": _device_name(device), "dtype": dtype}
    log = _Log(root, str(model), name, meta)
    first = [
        s
        for s in plan(model, results, scale, device=device, dtype=dtype)
        if s.name.split()[0] in stages
    ]
    for i, stage in enumerate(first, 1):
        _run_stage(stage, i, len(first), log, scale, progress)
    if "mitigation" in stages:
        later = mitigation_stages(model, results, scale, device=device, dtype=dtype)
        for i, stage in enumerate(later, 1):
            _run_stage(stage, i, len(later), log, scale, progress)
            _summarise(root, scale)
    _summarise(root, scale)
    return log.log


def _summarise(root: Path, scale: Scale) -> None:
    if scale.folds is None:
        summarise(root)
    else:
        summarise_folds(root, scale.folds)


def _share_baseline(out: Path) -> None:
    """Give a mitigation run the base model's evaluation of a sibling run (same dataset), so it
    is computed once per dataset, not once per mode and seed. ``run_mitigation`` reuses it only
    when its key (model hash, tasks, n, evaluation seed, batch size) matches, else recomputes."""
    from avsslib.fs import write_bytes_atomic

    if (out / "before.json").exists():
        return
    for sibling in sorted(out.parent.glob("*-seed*/before.json")):
        write_bytes_atomic(out / "before.json", sibling.read_bytes())
        return


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
