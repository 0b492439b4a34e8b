"""The configurations of a pruning study and their resumable evaluation.

A :class:`PrunedConfig` is one model the study evaluates: the unpruned ``original``, a ``main``
selection (a score and rule at the study's fraction) or a ``sweep`` point (a score at one of
the sweep fractions, count rule). Its kind is data (:attr:`PrunedConfig.kind`); its name is the
file name of its evaluation (:func:`avsslib.protocol.sweep_config` names the sweep points).

:func:`evaluate_configs` writes ``eval/<name>.json`` for each configuration (pruned layers, the
``EvalResult``, the config hash) and reads back those whose hash is unchanged.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from avsslib.arch import blocks
from avsslib.fs import content_hash, read_cached
from avsslib.protocol import ConfigKind, sweep_config
from avsslib.prune import pruned_view
from avsslib.selection import MASS_SCORES


@dataclass
class PrunedConfig:
    """One configuration of the study: its name, kind (``original``, ``main`` or ``sweep``),
    statistics mode (``fixed``, ``faithful``; ``None`` for the original), score, rule, pruned
    fraction and pruned layers (ascending)."""

    name: str
    kind: ConfigKind
    stats: str | None
    score: str | None
    rule: str | None
    fraction: float
    layers: list[int]

    def head(self) -> dict[str, Any]:
        """The fields ``eval/<name>.json`` records beside the result."""
        return {
            "stats": self.stats,
            "score": self.score,
            "rule": self.rule,
            "fraction": self.fraction,
        }


def configurations(
    chosen: Mapping[str, Mapping[str, list[int]]],
    sweep_layers: Mapping[str, Mapping[float, list[int]]],
    fraction: float,
    evaluate_faithful: bool,
) -> dict[str, PrunedConfig]:
    """Every configuration to evaluate, by name: ``original``; ``<score>-<rule>`` for the
    fixed-mode selections ``chosen["fixed"]`` (``"<score>/<rule>"`` -> layers);
    ``faithful-<score>-<rule>`` for the faithful-mode selections of the mass scores (AVSS) when
    ``evaluate_faithful``; :func:`~avsslib.protocol.sweep_config` names for ``sweep_layers``
    (score -> fraction -> layers)."""
    configs = {"original": PrunedConfig("original", "original", None, None, None, 0.0, [])}
    for mode, prefix in (("fixed", ""), ("faithful", "faithful-")):
        if mode == "faithful" and not evaluate_faithful:
            continue
        for key, layers in chosen[mode].items():
            score, rule = key.split("/")
            if mode == "faithful" and score not in MASS_SCORES:
                continue
            name = f"{prefix}{score}-{rule}"
            configs[name] = PrunedConfig(name, "main", mode, score, rule, fraction, layers)
    for s, by_fraction in sweep_layers.items():
        for f, layers in by_fraction.items():
            name = sweep_config(s, f)
            configs[name] = PrunedConfig(name, "sweep", "fixed", s, "count", f, layers)
    return configs


def free_memory(device: torch.device) -> None:
    """Collect garbage and, on a GPU, return its cached memory."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def evaluate_configs(
    model: torch.nn.Module,
    tokenizer: Any,
    configs: Mapping[str, PrunedConfig],
    tasks: Sequence[str],
    folder: Path,
    protocol: Mapping[str, Any],
    eval_kwargs: Mapping[str, Any],
    progress: bool,
    evaluate_missing: bool = True,
) -> tuple[dict[str, Any], dict[str, str], dict[str, float]]:
    """Evaluate every configuration, resumably: a configuration whose ``folder/<name>.json``
    holds the same config hash (``protocol`` + pruned layers) is read back (``cached``), one
    that prunes the same layers as an earlier one shares its result (``reused``), the others
    are evaluated on a :func:`pruned_view` (``evaluated``) and written at once; without
    ``evaluate_missing`` they are left out (``missing``).

    Returns ``(results, status, eval_s)``: name -> ``EvalResult``, name -> status, and the
    seconds each evaluated configuration took."""
    from tqdm.auto import tqdm

    import avsslib.evaluate as ev

    n_layers = len(blocks(model))
    device = next(model.parameters()).device
    results: dict[str, Any] = {}
    by_hash: dict[str, tuple[str, dict[str, Any]]] = {}
    status: dict[str, str] = {}
    eval_s: dict[str, float] = {}
    bar = tqdm(configs.items(), desc="configurations", unit="config", disable=not progress)
    for name, cfg in bar:
        bar.set_postfix_str(name)
        config_hash = content_hash({**protocol, "layers": cfg.layers})
        path = folder / f"{name}.json"
        saved = read_cached(path, config_hash, key_field="config_hash")
        if saved is not None:
            result_dict, status[name] = saved["result"], "cached"
        elif config_hash not in by_hash and not evaluate_missing:
            status[name] = "missing"  # left out of the tables (evaluate_missing=False)
            continue
        elif config_hash in by_hash:
            same_as, result_dict = by_hash[config_hash]
            status[name] = "reused"
            _write_eval(path, cfg, config_hash, protocol, n_layers, result_dict, same_as, None)
        else:
            t0 = time.perf_counter()
            pruned = pruned_view(model, cfg.layers) if cfg.layers else model
            result = ev.evaluate(pruned, tokenizer, list(tasks), **eval_kwargs)
            del pruned
            free_memory(device)
            eval_s[name] = time.perf_counter() - t0
            result_dict, status[name] = result.to_dict(), "evaluated"
            _write_eval(path, cfg, config_hash, protocol, n_layers, result_dict, None, eval_s[name])
        by_hash.setdefault(config_hash, (name, result_dict))
        results[name] = ev.EvalResult.from_dict(result_dict)
    return results, status, eval_s


def _write_eval(
    path: Path,
    cfg: PrunedConfig,
    config_hash: str,
    protocol: Mapping[str, Any],
    n_layers: int,
    result: Mapping[str, Any],
    same_as: str | None,
    eval_s: float | None,
) -> None:
    from avsslib.fs import write_json_atomic

    write_json_atomic(
        path,
        {
            "config": cfg.name,
            "config_hash": config_hash,
            **cfg.head(),
            "pruned_layers": list(cfg.layers),
            "n_layers_before": n_layers,
            "n_layers_after": n_layers - len(cfg.layers),
            "protocol": dict(protocol),
            "same_as": same_as,
            "result": dict(result),
            "timing": {"eval_s": eval_s},
        },
    )


__all__ = ["PrunedConfig", "configurations", "evaluate_configs", "free_memory"]
