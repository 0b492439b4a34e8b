"""What every reader of committed runs shares: the claims and thresholds of the verdicts, names
in words (tasks, metrics, scores, modes, models), the rule that makes a metric uninformative,
the primary metric of each task, the model folders under a results root and their inventory,
and the percentile interval of the readers' bootstraps. Reads ``results/<model>/`` folder
names and markers only; writes nothing."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from avsslib.errors import DataError
from avsslib.protocol import MODES as PROTOCOL_MODES

STAGES = {
    "avss": "AVSS pruning study",
    "eavss": "hallucination labels and prone layers",
    "mitigation": "contrastive mitigation",
}
"""Stage folder -> what it holds."""

FRACTION = 0.25
"""The pruned fraction of the AVSS claim ("approximately the lowest 25% of layers")."""

THRESHOLD = 0.9
"""The AVSS claim's retention ("over 90%")."""

PAPER_MAX_GAIN = 0.12
"""The EAVSS abstract's "maximum performance improvement" of 12% (read as relative)."""

CHANCE = {("sciq_mc", "acc"): 0.25, ("sciq_mc", "acc_norm"): 0.25, ("sst2", "acc"): 0.5}
"""Score of a uniform guess for tasks with a fixed number of options (SciQ: 4, SST-2: 2)."""

CHANCE_MARGIN = 0.05
"""A metric whose original score is within this of chance (absolute) says nothing."""

NEAR_ZERO = 0.05
"""A metric whose original score is below this (e.g. exact match 1%) says nothing: one or two
right answers more or less make any relative change."""

PRIMARY = {
    "sciq_mc": "acc",
    "sst2": "acc",
    "triviaqa_em": "exact_match",
    "wikitext2_ppl": "token_perplexity",
    "truthfulqa_mc1": "acc",
    "truthfulqa_mc2": "acc",
    "nq_open_em": "exact_match",
    "wikiqa": "map",
}
"""The metric each task is read by in the verdicts and short tables."""

MODES = tuple(m for m in PROTOCOL_MODES if m != "probe")
"""The mitigation modes of the committed runs' tables, in :data:`avsslib.protocol.MODES` order
(probe runs are read separately)."""

MODE_NAMES = {
    "eavss": "prone layers (EAVSS)",
    "random": "random layers",
    "avss": "lowest-AVSS layers",
    "full": "full fine-tuning (LM loss only)",
    "probe": "probe-selected layers",
}
"""What each mitigation mode trains, in words."""

TASK_NAMES = {
    "sciq_mc": "SciQ",
    "sst2": "SST-2",
    "triviaqa_em": "TriviaQA",
    "wikitext2_ppl": "WikiText-2",
    "truthfulqa_mc1": "TruthfulQA MC1",
    "truthfulqa_mc2": "TruthfulQA MC2",
    "nq_open_em": "NQ-Open",
    "wikiqa": "WikiQA",
}
METRIC_NAMES = {
    "acc": "accuracy",
    "acc_norm": "normalised accuracy",
    "exact_match": "exact match",
    "token_perplexity": "perplexity",
    "map": "MAP",
    "mrr": "MRR",
    "map_norm": "normalised MAP",
    "mrr_norm": "normalised MRR",
}
SCORE_NAMES = {
    "avss": "AVSS",
    "block_influence": "block influence",
    "angular": "angular distance",
    "ppl_removal": "perplexity on removal",
    "random": "random layers",
    "tail": "last layers",
}
MODEL_NAMES = {
    "smollm2-135m": "SmolLM2-135M",
    "qwen2.5-coder-0.5b": "Qwen2.5-Coder-0.5B",
    "qwen2.5-coder-1.5b": "Qwen2.5-Coder-1.5B",
}

AVSS_CLAIM = "Pruning the 25% lowest-AVSS layers keeps over 90%"
PRONE_CLAIM = "Training the prone layers beats training random ones"
GAIN_CLAIM = "Training the prone layers improves up to 12%"
REPAIR_CLAIM = (
    "A scale-aware variance/sparsity score prunes as well as block influence or angular distance"
)
HEAL_CLAIM = "LoRA healing brings the AVSS-pruned model back over 90%"
LAYER_CLAIM = "Some layer choice (EAVSS, probe, lowest AVSS) trains better than random layers"

CHAPTER_TITLES = {
    "06_mitigation": "Contrastive mitigation (chapter 6)",
    "10_why_avss_fails": "Why AVSS fails, and what works instead (chapter 10)",
    "07_paper_scale": "Paper-scale results (chapter 7)",
}
"""Chapter notebook -> its title and number in the book's sidebar."""

BOOT = 1000
SEED = 0


def task_name(task: str, metric: str | None = None) -> str:
    """``"SciQ accuracy"``: a task and metric in words."""
    name = TASK_NAMES.get(task, task)
    return name if metric is None else f"{name} {METRIC_NAMES.get(metric, metric)}"


def model_name(model: str) -> str:
    return MODEL_NAMES.get(model, model)


def config_name(config: str) -> str:
    """``"avss-count"`` -> ``"AVSS (count rule)"``; sweeps and faithful mode in words."""
    if config == "original":
        return "original model"
    faithful = config.startswith("faithful-")
    core = config.removeprefix("faithful-")
    score, _, rule = core.rpartition("-")
    text = f"{SCORE_NAMES.get(score, score)} ({rule.replace('_', ' ')} rule)"
    return text + (", official-code statistics" if faithful else "")


def uninformative(task: str, metric: str, original: float) -> str | None:
    """Why a metric cannot count as evidence (its original score is at chance or near zero),
    else ``None``."""
    if original is None or not np.isfinite(original):
        return "original score undefined"
    chance = CHANCE.get((task, metric))
    if chance is not None and original <= chance + CHANCE_MARGIN:
        return f"original {original:.1%} is at chance ({chance:.0%})"
    if metric not in ("token_perplexity",) and original < NEAR_ZERO:
        return f"original {original:.1%} is near zero"
    return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(
            f"{path}: cannot read it as JSON ({err}); restore it from git or rerun "
            "the stage that writes it."
        ) from err


def models(root: str | Path) -> list[str]:
    """Model folders under ``root`` that hold at least one stage folder, sorted."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir() if p.is_dir() and any((p / s).is_dir() for s in STAGES)
    )


def _state(folder: Path, marker: str = "record.json") -> str:
    if (folder / marker).is_file():
        return "finished"
    if folder.is_dir() and any(folder.iterdir()):
        return "partial"
    return "missing"


def inventory(root: str | Path) -> pd.DataFrame:
    """One row per model: the state (finished / partial / missing) of each stage and the number
    of finished mitigation runs."""
    root = Path(root)
    rows = []
    for m in models(root):
        runs = list((root / m / "mitigation").glob("*/*-seed*/metrics.json"))
        rows.append(
            {
                "model": m,
                "AVSS study": _state(root / m / "avss"),
                "hallucination": _state(root / m / "eavss"),
                "mitigation": (
                    "finished"
                    if (root / m / "mitigation" / "summary.csv").is_file()
                    else _state(root / m / "mitigation", "summary.csv")
                ),
                "mitigation runs": len(runs),
            }
        )
    return pd.DataFrame(
        rows, columns=["model", "AVSS study", "hallucination", "mitigation", "mitigation runs"]
    )


def primary_mask(frame: pd.DataFrame) -> pd.Series:
    """True on the rows whose metric is their task's :data:`PRIMARY` metric (tasks not listed
    there keep every metric)."""
    return pd.Series(
        [PRIMARY.get(t, m) == m for t, m in zip(frame["task"], frame["metric"], strict=True)],
        index=frame.index,
        dtype=bool,
    )


def _primary(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[primary_mask(frame)]


def _boot_idx(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _interval(boot: np.ndarray) -> tuple[float, float]:
    boot = boot[np.isfinite(boot)]
    if not len(boot):
        return math.nan, math.nan
    low, high = np.quantile(boot, [0.025, 0.975])
    return float(low), float(high)
