"""The first steps of a pruning study (:mod:`avsslib.study`): the state one run shares
(``StudyRun``), the calibration batches and the run record, the per-layer statistics of both
modes (read back when ``layer_stats.json`` holds the run's key, else computed) and the stability
of AVSS over calibration sets and seeds.

It writes, under the study's folder, ``layer_stats.csv``, ``layer_stats_faithful.csv``,
``batch_stats.csv`` and ``layer_stats.json`` (see :mod:`avsslib.study`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from avsslib.fs import content_hash, read_cached
from avsslib.scores import avss_values
from avsslib.stats import LayerStats
from avsslib.study_config import STUDY_FORMAT, StudyConfig
from avsslib.study_report import calib_label
from avsslib.study_tables import batch_table, layer_scores, read_layer_table, save_layer_table

__all__ = ["StudyRun", "calibration_and_record", "statistics"]


def _keyed(description: Mapping[str, Any]) -> dict[str, Any]:
    """A calibration description without machine-specific fields (the tokenizer's path)."""
    return {k: v for k, v in description.items() if k != "tokenizer"}


@dataclass
class StudyRun:
    """What the steps of one study share: the resolved configuration, the output folder, the
    model, the calibration set (``spec``) and its batches, and the run record."""

    cfg: StudyConfig
    out: Path
    model: Any
    tokenizer: Any
    spec: dict[str, Any]
    agreement: list[dict[str, Any]]
    n_layers: int
    load_s: float
    record: Any = None
    calib_desc: Any = None
    faithful_desc: Any = None
    batches: Any = None
    faithful_batches: Any = None

    @property
    def progress(self) -> bool:
        return not self.cfg.quiet

    @property
    def scores(self) -> list[str]:
        assert self.cfg.scores is not None
        return list(dict.fromkeys(self.cfg.scores))

    @property
    def faithful_scores(self) -> list[str]:
        return [s for s in self.scores if s != "ppl_removal"]

    def identity(self) -> dict[str, Any]:
        return {
            "id": self.record.model.get("id"),
            "state_sha256": self.record.model.get("state_sha256"),
            "dtype": self.record.model.get("dtype"),
            "device": next(self.model.parameters()).device.type,
        }

    def versions(self) -> dict[str, Any]:
        keys = ("torch", "transformers", "lm_eval", "avsslib")
        return {k: self.record.versions.get(k) for k in keys}


def calibration_and_record(run: StudyRun) -> None:
    """The calibration batches of both modes, the data files the run reads, and the run record
    with the study's configuration."""
    import avsslib.evaluate as ev
    from avsslib.calibration import calibration_set
    from avsslib.data import data_file_hashes
    from avsslib.models import default_device
    from avsslib.report import RunRecord

    cfg, spec = run.cfg, run.spec
    assert cfg.tasks is not None and cfg.sweep_fractions is not None
    run.batches, run.calib_desc = calibration_set(run.tokenizer, **spec)
    run.faithful_batches, run.faithful_desc = calibration_set(
        run.tokenizer, **spec, pad_to_max_length=True
    )
    data_files = dict(run.calib_desc["data_files"])
    for c in run.agreement:
        data_files.update(data_file_hashes(c["name"], c["split"]))
    data_files.update(ev.task_data_files(list(cfg.tasks)))
    config = {
        "model": cfg.model,
        "tasks": list(cfg.tasks),
        "n_eval": cfg.n_eval,
        "calib": spec,
        "fraction": cfg.fraction,
        "scores": run.scores,
        "sweep_fractions": list(cfg.sweep_fractions),
        "sweep_scores": list(cfg.sweep_scores),
        "agreement_calibs": cfg.agreement_specs(),
        "agreement_seeds": list(cfg.agreement_seeds),
        "evaluate_faithful": not cfg.no_faithful_eval,
        "seed": cfg.seed,
        "eps": cfg.eps,
        "device": default_device(cfg.device),
        "dtype": cfg.dtype,
        "batch_size": cfg.batch_size,
        "max_length": cfg.max_length,
        "ppl_window": cfg.ppl_window,
        "ppl_stride": cfg.ppl_stride if cfg.ppl_stride is not None else cfg.ppl_window,
        "num_fewshot": cfg.num_fewshot,
        "n_boot": cfg.n_boot,
    }
    command = cfg.command or cfg.describe()
    run.record = RunRecord.start(command, config, cfg.seed, model=run.model, data_files=data_files)


def statistics(
    run: StudyRun,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, np.ndarray], str, float]:
    """Fixed and faithful layer tables and the AVSS stability vectors: read back when
    ``layer_stats.json`` holds this run's key, else computed and written. Returns ``(fixed,
    faithful, stability, "cached" | "computed", seconds)``."""
    t0 = time.perf_counter()
    cfg, out = run.cfg, run.out
    stats_key = content_hash(
        {
            "format": STUDY_FORMAT,
            "model": run.identity(),
            "versions": run.versions(),
            "scores": run.scores,
            "eps": cfg.eps,
            "seed": cfg.seed,
            "calibration": _keyed(run.calib_desc),
            "faithful_calibration": _keyed(run.faithful_desc),
            "agreement": run.agreement,
            "agreement_seeds": list(cfg.agreement_seeds),
        }
    )
    files = [out / n for n in ("layer_stats.csv", "layer_stats_faithful.csv", "batch_stats.csv")]
    meta = read_cached(out / "layer_stats.json", stats_key, requires=files)
    if meta is not None:
        stability = {k: np.asarray(v, dtype=np.float64) for k, v in meta["stability"].items()}
        fixed, faithful = read_layer_table(files[0]), read_layer_table(files[1])
        return fixed, faithful, stability, "cached", time.perf_counter() - t0
    fixed, faithful, stability = _compute_statistics(run, files, stats_key)
    return fixed, faithful, stability, "computed", time.perf_counter() - t0


def _compute_statistics(
    run: StudyRun, files: list[Path], stats_key: str
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, np.ndarray]]:
    """Fit both modes and the stability grid, write the three tables and ``layer_stats.json``."""
    from avsslib.fs import write_csv_atomic, write_json_atomic
    from avsslib.seeding import set_seed

    cfg, progress = run.cfg, run.progress
    set_seed(cfg.seed)
    fixed_stats, fixed = layer_scores(
        run.model, run.batches, scores=run.scores, seed=cfg.seed, eps=cfg.eps, progress=progress
    )
    set_seed(cfg.seed)
    faithful_stats, faithful = layer_scores(
        run.model,
        run.faithful_batches,
        scores=run.faithful_scores,
        faithful=True,
        seed=cfg.seed,
        eps=cfg.eps,
        progress=progress,
    )
    known = {calib_label(run.spec): fixed["avss"].to_numpy()} if "avss" in run.scores else {}
    stability = _stability(run, known)
    fixed = save_layer_table(files[0], fixed)
    faithful = save_layer_table(files[1], faithful)
    write_csv_atomic(
        files[2],
        pd.concat([batch_table(fixed_stats, "fixed"), batch_table(faithful_stats, "faithful")]),
    )
    write_json_atomic(
        run.out / "layer_stats.json",
        {
            "format": STUDY_FORMAT,
            "key": stats_key,
            "model": run.identity(),
            "calibration": run.calib_desc,
            "faithful_calibration": run.faithful_desc,
            "scores": run.scores,
            "faithful_scores": run.faithful_scores,
            "eps": cfg.eps,
            "seed": cfg.seed,
            "clamped_layers": {
                "fixed": fixed.index[fixed["clamped"]].tolist(),
                "faithful": faithful.index[faithful["clamped"]].tolist(),
            },
            "stability": stability,
        },
    )
    return fixed, faithful, stability


def _stability(run: StudyRun, known: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """AVSS (fixed mode) on every agreement calibration set x sample seed; label -> (n_layers,)."""
    from tqdm.auto import tqdm

    from avsslib.calibration import calibration_set

    out: dict[str, np.ndarray] = {}
    grid = [{**c, "seed": s} for c in run.agreement for s in run.cfg.agreement_seeds]
    for c in tqdm(grid, desc="AVSS stability", disable=not run.progress or not grid):
        label = calib_label(c)
        if label in known and all(c[k] == run.spec[k] for k in run.spec):
            out[label] = np.asarray(known[label])
            continue
        batches, _ = calibration_set(run.tokenizer, **c)
        stats = LayerStats(eps=run.cfg.eps, similarity=False).fit(
            run.model, batches, progress=False
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # clamping is logged in layer_stats.json
            out[label] = avss_values(stats.variance_, stats.sparsity_)
    return out
