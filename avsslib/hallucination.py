"""The hallucination pipeline: label the model's answers, then find hallucination-prone layers.

``run_hallucination(HallucinationConfig(model="smollm2-135m", datasets=("nq_open", "triviaqa"),
n=40, out=DIR))`` (the command ``avss hallucination``, whose options are the fields of
:class:`HallucinationConfig`) labels ``--n`` answers per dataset (:mod:`avsslib.labels`), splits each dataset's questions
into disjoint calibration and evaluation parts (``--calib-fraction``, stratified by label),
measures HSAV/HSS on the calibration part (:mod:`avsslib.eavss`) and writes into ``--out``:

* ``labels/<dataset>.jsonl``: one labelled answer per line (prompt, answer, label, rule,
  evidence);
* ``splits.json``: the calibration and evaluation ids of every dataset;
* ``label_summary.csv`` / ``.json``: counts and the hallucination rate with a 95% bootstrap CI,
  and how many hallucinated / truthful answers the statistics used;
* ``profiles/<dataset>_<family>.csv``: per-layer V/S of both sets, HSAV, HSS, EAVSS, AVSS_T,
  delta, prone rank and flag;
* ``prone_layers.json``: the prone layers per dataset and family (``prone[dataset][family]``:
  ``--k`` and the sweep ``{1, 2, 4, ceil(M/4)}``), the datasets skipped for too few answers of
  one class, and per dataset how real the sparsities are (``sparsity``: near-zero counts and
  the layers clamped for having none; at ``eps = 1e-5`` on answer tokens of a small model most
  layers have none, and EAVSS then ranks clamp artefacts);
* ``figures/profile_<dataset>_<family>.png`` and ``figures/prone_heatmap_<family>.png``;
* ``record.json`` and ``record.md``: the run record and its result card.

``--labels-from DIR`` reuses ``DIR/labels/<dataset>.jsonl`` instead of generating answers.

``--probe`` adds the probe control (:mod:`avsslib.probe`): every answer's mean answer-token
activation per layer (float16, ``features/<dataset>.safetensors``, not committed; reused when
the model and answers are the same), one logistic-regression probe per layer with 2-fold
cross-validated accuracy over all labelled answers (``probe/<dataset>.csv``) and
``probe_layers.json`` (``probe[dataset]``: accuracy per layer, its 95% interval, the ranking).

``--folds K`` (the k-fold protocol of :mod:`avsslib.folds`; ``--fold-seed`` as in ``avss
mitigate``): the questions of each dataset split are cut into ``K`` folds, and for each fold
``k`` the prone layers (``prone_layers.json`` ``folds.prone[dataset][family][k]``) and, with
``--probe``, the probes (``probe_layers.json`` ``probe[dataset].folds[k]``) are computed from
the labelled answers *outside* fold ``k`` only, so that a mitigation run evaluated on fold ``k``
never chose its layers with its own questions. Label every question (``--n`` = the split's
size) for the full protocol.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from avsslib.errors import ConfigError
from avsslib.hallucination_controls import Family, fold_parts
from avsslib.hallucination_steps import (
    Findings,
    dataset_step,
    label_answers,
    prone_heatmaps,
    run_table,
    write_summary_files,
)
from avsslib.models import ModelOptions, default_device
from avsslib.protocol import ANSWER_PROMPT

DATASETS: tuple[str, ...] = ("nq_open", "triviaqa", "sciq", "truthfulqa", "wikiqa")
"""The hallucination datasets, and the default of :attr:`HallucinationConfig.datasets`."""


@dataclass
class HallucinationConfig(ModelOptions):
    """Everything that shapes a hallucination run; the fields are the options of ``avss
    hallucination`` (same names, same defaults), and every one of them enters the run record.

    ``command`` is the command line recorded for the run (``None``: built from the fields)."""

    datasets: tuple[str, ...] = DATASETS
    n: int = 40
    family: tuple[str, ...] = ("P", "C")
    prone_by: Literal["default", "eavss"] = "default"
    positions: Literal["answer", "all"] = "answer"
    k: int | None = None
    calib_fraction: float = 0.5
    min_per_class: int = 2
    template: str = ANSWER_PROMPT
    chat_template: Literal["auto", "on", "off"] = "auto"
    question_guard: bool = False
    max_new_tokens: int = 32
    batch_size: int = 8
    eps: float = 1e-5
    labels_from: Path | None = None
    probe: bool = False
    folds: int | None = None
    fold_seed: int = 0
    command: str | None = field(default=None, compare=False)

    def validate(self) -> tuple[list[str], list[str]]:
        """``ConfigError`` naming the option for an impossible value; returns the datasets and
        the (upper-case) families."""
        from avsslib.eavss import FAMILIES
        from avsslib.labels import RULES

        datasets = list(self.datasets)
        families = [f.upper() for f in self.family]
        unknown = [d for d in datasets if d not in RULES]
        if not datasets or unknown:
            raise ConfigError(
                f"--datasets {','.join(self.datasets)!r}: choose among {sorted(RULES)}."
            )
        if not families or any(f not in FAMILIES for f in families):
            raise ConfigError(f"--family {','.join(self.family)!r}: choose among {FAMILIES}.")
        if not 0.0 < self.calib_fraction <= 1.0:
            raise ConfigError(f"--calib-fraction {self.calib_fraction}: must lie in (0, 1].")
        if self.min_per_class < 1:
            raise ConfigError(f"--min-per-class {self.min_per_class}: must be >= 1.")
        if self.folds is not None and self.folds < 2:
            raise ConfigError(f"--folds {self.folds}: the k-fold protocol needs at least 2 folds.")
        for name in ("n", "batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"--{name.replace('_', '-')} {getattr(self, name)}: must be a positive integer."
                )
        if not self.eps > 0:
            raise ConfigError(
                f"--eps {self.eps}: the near-zero threshold must be a positive number, e.g. 1e-5."
            )
        if self.prone_by not in ("default", "eavss"):
            raise ConfigError(f"--prone-by {self.prone_by!r}: choose default or eavss.")
        if self.positions not in ("answer", "all"):
            raise ConfigError(f"--positions {self.positions!r}: choose answer or all.")
        if self.chat_template not in ("auto", "on", "off"):
            raise ConfigError(f"--chat-template {self.chat_template!r}: choose auto, on or off.")
        return datasets, families

    def describe(self) -> str:
        """An ``avss hallucination`` command line with these settings, every option explicit in the
        order the command records it (for the run record; :func:`avsslib.options.command_line`)."""
        from avsslib.options import command_line

        return command_line("hallucination", self)


@dataclass
class HallucinationResult:
    """What :func:`run_hallucination` found (everything is also in the files under ``out``).

    ``summary``: one row per dataset (counts, hallucination rate and interval); ``prone``:
    ``{dataset: {family: {"by", "k", "layers", "sweep"}}}``; ``skipped``: ``{dataset: why}``;
    ``sparsity``: per dataset, how real its sparsities are; ``probes`` and ``fold_prone``:
    with ``probe`` / ``folds``; ``record``: the run record written to ``record.json``."""

    out: Path
    summary: Any
    prone: dict[str, Any]
    skipped: dict[str, str]
    sparsity: dict[str, Any]
    probes: dict[str, Any]
    fold_prone: dict[str, Any]
    record: Any


def run_hallucination(
    config: HallucinationConfig, *, model: Any = None, tokenizer: Any = None, load_s: float = 0.0
) -> HallucinationResult:
    """Label answers, measure HSAV/HSS and find the prone layers of every dataset of ``config``,
    writing the files of the module docstring into ``config.out``; returns what it found.

    ``model``/``tokenizer``: an already loaded model (else ``config.model`` is loaded, seeded by
    ``config.seed``). The calibration part of each dataset is a seeded, label-stratified share
    (``calib_fraction``) of its labelled answers; a dataset with fewer than ``min_per_class``
    answers of either class there is skipped (``result.skipped``). Steps, each a helper of
    :mod:`avsslib.hallucination_steps`: per dataset labelling (resumed from ``labels/`` when the
    key file matches), statistics and prone layers per family, probes and folds when asked,
    figures; then the heatmaps, the summary files and the run record.
    """
    from avsslib.data import data_file_hashes, get_spec
    from avsslib.report import RunRecord, save_record

    cfg = config
    datasets, families = cfg.validate()
    out = Path(cfg.out)
    device = default_device(cfg.device)
    if model is None or tokenizer is None:
        model, tokenizer, load_s = cfg.load(device, causal_for="avss hallucination")
    splits = {d: get_spec(d).split_name(None) for d in datasets}
    hashes = {k: v for d in datasets for k, v in data_file_hashes(d, splits[d]).items()}
    config_dict = {
        f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "command"
    }
    config_dict.update(
        out=str(out),
        device=device,
        datasets=datasets,
        family=families,
        splits=splits,
        labels_from=str(cfg.labels_from) if cfg.labels_from else None,
    )
    record = RunRecord.start(
        cfg.command or cfg.describe(), config_dict, cfg.seed, model=model, data_files=hashes
    )
    fractions = (cfg.calib_fraction, 1.0 - cfg.calib_fraction)
    found = Findings()
    if cfg.folds is not None:
        found.fold_parts = fold_parts(datasets, splits, cfg.folds, cfg.fold_seed)
    for dataset in datasets:
        dataset_step(found, model, tokenizer, cfg, dataset, splits[dataset], record, families, out)
    prone_heatmaps(found, families, out)
    summary_df = write_summary_files(out, cfg, fractions, found)
    record.finish(
        {
            "table": run_table(found),
            "labels": found.summaries,
            "prone": found.prone,
            "skipped": found.skipped,
            "sparsity": found.sparsity,
            "probe": {
                d: {k: v for k, v in e.items() if k != "folds"} for d, e in found.probes.items()
            },
            "fold_prone": found.fold_prone,
        },
        load_model_s=load_s,
        **found.timings,
    )
    save_record(record, out / "record.json")
    return HallucinationResult(
        out=out,
        summary=summary_df,
        prone=found.prone,
        skipped=found.skipped,
        sparsity=found.sparsity,
        probes=found.probes,
        fold_prone=found.fold_prone,
        record=record,
    )


__all__ = [
    "DATASETS",
    "Family",
    "HallucinationConfig",
    "HallucinationResult",
    "label_answers",
    "run_hallucination",
]
