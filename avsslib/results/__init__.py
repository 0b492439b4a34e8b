"""The one reader of committed runs: every table, verdict and summary that the book, the README
and ``tools/`` show about the files under ``results/`` comes from here.

A result folder holds one folder per model (``results/<model>/``) with up to three stages:

* ``avss/``: the pruning study (``retention.csv``, ``sweep.csv``, ``agreement.csv``,
  ``layer_stats.csv``, ``eval/<config>.json``; ``record.json`` when it finished);
* ``eavss/``: hallucination labels and prone layers (``label_summary.csv``, ``prone_layers.json``,
  ``profiles/<dataset>_<family>.csv``);
* ``mitigation/<dataset>/<mode>-seed<k>/``: one contrastive-training run each (``metrics.json``
  with the per-question scores before and after, ``record.json``), summarised in
  ``mitigation/summary.csv`` (one row per run and metric) and ``summary_modes.csv`` (per mode).

The studies beyond the papers (``scale_scores/``, ``healing/``, ``mitigation-<K>fold/``) are
read through :mod:`avsslib.beyond` and turned into verdict rows here. Benchmarks sit in
``results/bench/``. Functions here only read; none runs a model.

The readers live in one module per concern, and every public name is imported here, so
``from avsslib.results import X`` is the way to use them:

* :mod:`~avsslib.results.base`: claims, thresholds, names in words, the uninformative-metric
  rule, the model folders and their inventory;
* :mod:`~avsslib.results.pruning`: the AVSS pruning study;
* :mod:`~avsslib.results.mitigation`: hallucination labels, mitigation runs and the k-fold
  layer-choice controls;
* :mod:`~avsslib.results.claims`: the verdict rules and table;
* :mod:`~avsslib.results.sentences`: the verdicts and findings in words;
* :mod:`~avsslib.results.records`: run records, costs and benchmarks.

Conventions of every frame returned: fractions stay fractions (0.81, not 81), retention is
``pruned / original`` (perplexity inverted, so 1 = no loss), changes are ``after - before``;
formatting for the page is :mod:`avsslib.plots`'s job.
"""

from avsslib.results.base import (
    AVSS_CLAIM,
    BOOT,
    CHANCE,
    CHANCE_MARGIN,
    CHAPTER_TITLES,
    FRACTION,
    GAIN_CLAIM,
    HEAL_CLAIM,
    LAYER_CLAIM,
    METRIC_NAMES,
    MODE_NAMES,
    MODEL_NAMES,
    MODES,
    NEAR_ZERO,
    PAPER_MAX_GAIN,
    PRIMARY,
    PRONE_CLAIM,
    REPAIR_CLAIM,
    SCORE_NAMES,
    SEED,
    STAGES,
    TASK_NAMES,
    THRESHOLD,
    config_name,
    inventory,
    model_name,
    models,
    primary_mask,
    task_name,
    uninformative,
)
from avsslib.results.claims import (
    VERDICT_COLUMNS,
    Verdict,
    verdicts,
)
from avsslib.results.mitigation import (
    fold_table,
    label_summaries,
    layer_choice_sentence,
    layer_choice_table,
    layer_choices,
    mitigation_changes,
    mitigation_modes,
    mitigation_runs,
    prone_layers,
    prone_minus_random,
    question_scores,
)
from avsslib.results.pruning import (
    avss_against_random,
    layer_profiles,
    paired_retention_difference,
    retention,
    study_retention,
    study_sizes,
)
from avsslib.results.records import (
    bench_distributed,
    bench_eval,
    bench_plumbing,
    bench_stats,
    bench_sweep,
    run_records,
    stage_costs,
)
from avsslib.results.sentences import (
    bench_eval_sentence,
    findings,
    mitigation_sentence,
    verdict_markdown,
    verdict_table,
)

__all__ = [
    "AVSS_CLAIM",
    "BOOT",
    "CHANCE",
    "CHANCE_MARGIN",
    "CHAPTER_TITLES",
    "FRACTION",
    "GAIN_CLAIM",
    "HEAL_CLAIM",
    "LAYER_CLAIM",
    "METRIC_NAMES",
    "MODEL_NAMES",
    "MODES",
    "MODE_NAMES",
    "NEAR_ZERO",
    "PAPER_MAX_GAIN",
    "PRIMARY",
    "PRONE_CLAIM",
    "REPAIR_CLAIM",
    "SCORE_NAMES",
    "SEED",
    "STAGES",
    "TASK_NAMES",
    "THRESHOLD",
    "VERDICT_COLUMNS",
    "Verdict",
    "avss_against_random",
    "bench_distributed",
    "bench_eval",
    "bench_plumbing",
    "bench_stats",
    "bench_sweep",
    "config_name",
    "bench_eval_sentence",
    "findings",
    "fold_table",
    "inventory",
    "label_summaries",
    "layer_choice_sentence",
    "layer_choice_table",
    "layer_choices",
    "layer_profiles",
    "mitigation_changes",
    "mitigation_modes",
    "mitigation_runs",
    "mitigation_sentence",
    "model_name",
    "models",
    "paired_retention_difference",
    "primary_mask",
    "prone_layers",
    "prone_minus_random",
    "question_scores",
    "retention",
    "run_records",
    "stage_costs",
    "study_retention",
    "study_sizes",
    "task_name",
    "uninformative",
    "verdict_markdown",
    "verdict_table",
    "verdicts",
]
