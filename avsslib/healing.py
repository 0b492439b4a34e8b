"""Healing a pruned model: a short LoRA fine-tune (``peft``) on text disjoint from the evaluation.

After layers are removed, a light causal-LM fine-tune usually gives back part of the lost
quality (most of the perplexity, less of the QA accuracy). This module does it with one fixed
budget for every pruned model so that the scores' selections are compared fairly:

* :class:`HealConfig`: the budget, ``steps`` optimizer steps of ``batch_size`` packed chunks of
  ``seq_len`` tokens (``tokens = steps * batch_size * seq_len``), learning rate ``lr`` (AdamW,
  linear warm-up then linear decay), LoRA rank ``rank`` and ``alpha`` on every linear
  projection of every remaining block, and the training text (``text``: dataset and split).
* :func:`healing_batches`: the training text, packed: every passage of the split is tokenised,
  the token stream (passages separated by EOS) is cut into chunks of ``seq_len`` tokens,
  shuffled with ``seed`` and cycled as needed.
* :func:`heal`: LoRA-train a model in place and merge the adapters (a plain model comes back).
* :func:`recovered_share`: the share of the lost score that healing gives back,
  ``(after - before) / (original - before)`` on the retention scale, with a paired bootstrap
  interval (one resample of example indices applied to all three runs).
* :func:`healing_study`: for each named selection of pruned layers (from a pruning study's
  ``selections.json``): prune, evaluate, heal, evaluate again; retention before and after with
  the paired bootstrap of :func:`avsslib.evaluate.retention`; ``healing.csv``, per-run
  evaluation files and a run record. Resumable: a finished configuration is read back.

The default text is WikiText-2 *validation*: the evaluation tasks use WikiText-2 test, SciQ
test, SST-2 validation (the GLUE dev set, a different corpus) and TriviaQA, so it is disjoint
from every evaluation set. It is also the default calibration text of the layer scores: healing
trains on the text the scores were measured on, never on the text they are judged on.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch

from avsslib.errors import ConfigError, DataError
from avsslib.fs import cached, content_hash, read_cached

__all__ = [
    "HEALING_FORMAT",
    "HealConfig",
    "HealResult",
    "heal",
    "healing_batches",
    "healing_study",
    "recovered_share",
]

HEALING_FORMAT = "avsslib.healing/1"


@dataclasses.dataclass(frozen=True)
class HealConfig:
    """The healing budget, the same for every pruned model (see the module docstring)."""

    steps: int = 200
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 2e-4
    rank: int = 8
    alpha: int = 16
    warmup: int = 10
    weight_decay: float = 0.0
    text_name: str = "wikitext2"
    text_split: str = "validation"
    seed: int = 0

    @property
    def tokens(self) -> int:
        """Training tokens (positions) of the whole budget."""
        return self.steps * self.batch_size * self.seq_len

    def validate(self) -> None:
        """``ConfigError`` naming the field for an impossible value."""
        for name in ("steps", "batch_size", "seq_len", "rank", "alpha"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"healing {name} = {value!r}: must be an integer >= 1.")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"healing lr = {self.lr!r}: must be a positive number.")
        if self.warmup < 0 or self.weight_decay < 0:
            raise ConfigError("healing warmup and weight_decay must be >= 0.")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "tokens": self.tokens}


@dataclasses.dataclass
class HealResult:
    """What :func:`heal` did: per-step training loss (nats/token), trained LoRA parameters,
    the healing text's description and the wall time."""

    losses: list[float]
    trainable_parameters: int
    text: dict[str, Any]
    seconds: float


def healing_batches(
    tokenizer: Any, config: HealConfig, *, data_dir: str | Path | None = None
) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """``config.steps`` batches of token ids, each ``(batch_size, seq_len)`` int64, packed from
    the passages of ``config.text_name`` / ``config.text_split`` (module docstring), and a
    description for the run record (dataset, split, passages, tokens available, chunks,
    times the text is cycled, data file hashes)."""
    from avsslib.data import calibration_texts, data_file_hashes

    config.validate()
    texts = calibration_texts(config.text_name, config.text_split, n=None, data_dir=data_dir)
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream += list(ids) + ([eos] if eos is not None else [])
    n_chunks = len(stream) // config.seq_len
    if n_chunks < 1:
        raise DataError(
            f"{config.text_name} {config.text_split}: {len(stream)} tokens, fewer than "
            f"one chunk of seq_len = {config.seq_len}; use a shorter seq_len."
        )
    chunks = torch.tensor(stream[: n_chunks * config.seq_len], dtype=torch.long).view(n_chunks, -1)
    need = config.steps * config.batch_size
    rng = np.random.default_rng(config.seed)
    order = np.concatenate([rng.permutation(n_chunks) for _ in range(-(-need // n_chunks))])[:need]
    batches = [
        chunks[torch.as_tensor(order[i : i + config.batch_size])]
        for i in range(0, need, config.batch_size)
    ]
    description = {
        "dataset": config.text_name,
        "split": config.text_split,
        "passages": len(texts),
        "tokens_available": len(stream),
        "chunks": n_chunks,
        "epochs": need / n_chunks,
        "data_files": data_file_hashes(config.text_name, config.text_split, data_dir=data_dir),
    }
    return batches, description


def heal(
    model: torch.nn.Module,
    tokenizer: Any,
    config: HealConfig,
    *,
    batches: Sequence[torch.Tensor] | None = None,
    text: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> tuple[torch.nn.Module, HealResult]:
    """LoRA-train ``model`` (a causal LM) on the healing text and merge the adapters.

    Every ``nn.Linear`` of every block (attention and MLP projections) gets a LoRA adapter of
    rank ``config.rank`` (``peft``); the base weights stay frozen; AdamW with linear warm-up
    and decay; the loss is the mean next-token cross-entropy. ``batches`` (default:
    :func:`healing_batches`) are ``(B, T)`` token ids on any device. The model is changed in
    place (its blocks' linear weights get the merged update); the returned model is the plain
    (unwrapped) one. Seeds torch from ``config.seed`` first.
    """
    from tqdm.auto import tqdm

    from avsslib.arch import blocks
    from avsslib.mitigate.store import _add_lora, lora_targets
    from avsslib.mitigate.train import _schedule
    from avsslib.seeding import set_seed

    config.validate()
    if batches is None:
        batches, text = healing_batches(tokenizer, config)
    set_seed(config.seed)
    device = next(model.parameters()).device
    targets = lora_targets(model, range(len(blocks(model))))
    net = _add_lora(model, targets, config.rank, config.alpha)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config.steps, config.warmup))
    losses: list[float] = []
    t0 = time.perf_counter()
    net.train()
    for ids in tqdm(batches[: config.steps], desc="healing (LoRA)", disable=not progress):
        ids = ids.to(device)
        loss = net(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    merged = cast(Any, net).merge_and_unload()
    merged.eval()
    return merged, HealResult(
        losses=losses,
        trainable_parameters=sum(p.numel() for p in params),
        text=dict(text or {}),
        seconds=time.perf_counter() - t0,
    )


def recovered_share(
    original: Any,
    before: Any,
    after: Any,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Share of the lost score that healing recovers, per task and metric.

    With ``R_b`` and ``R_a`` the retentions before and after healing (pruned / original, or
    original / pruned for lower-is-better metrics such as perplexity), the share is
    ``(R_a - R_b) / (1 - R_b)``: 0 = nothing recovered, 1 = back to the original, negative =
    healing made it worse. The interval is a paired percentile bootstrap: each resample draws
    one set of example indices and applies it to all three runs (as
    :func:`avsslib.evaluate.retention` does for two). NaN where nothing was lost; stricter than
    the NaN policy of :mod:`avsslib.bootstrap`, the interval is NaN as soon as one resample lost
    nothing (an infinite recovery has no meaning to order).
    Columns: task, metric, retention_before, retention_after, recovered, ci_low, ci_high, n.

    A little over 80 lines: the pairing of three runs and the bootstrap are one computation.
    """
    from avsslib.bootstrap import percentile_interval, resample_indices
    from avsslib.evaluate import statistic

    rows = []
    for name, o in original.tasks.items():
        if name not in before.tasks or name not in after.tasks:
            continue
        b, a = before.tasks[name], after.tasks[name]
        if not (set(o.ids) == set(b.ids) == set(a.ids)):
            raise ConfigError(
                f"task {name}: the three runs scored different examples; evaluate "
                "them with the same n and seed."
            )
        ob = np.array([{i: k for k, i in enumerate(b.ids)}[i] for i in o.ids])
        oa = np.array([{i: k for k, i in enumerate(a.ids)}[i] for i in o.ids])
        idx = resample_indices(len(o.ids), n_boot, seed)
        for metric, mo in o.metrics.items():
            if metric not in b.metrics or metric not in a.metrics:
                continue
            stat = statistic(mo.kind)
            x = mo.per_example
            y = b.metrics[metric].per_example[ob]
            z = a.metrics[metric].per_example[oa]
            inverted = not mo.higher_is_better

            def share(
                xo: float, xb: float, xa: float, inverted: bool = inverted
            ) -> tuple[float, float, float]:
                with np.errstate(divide="ignore", invalid="ignore"):
                    rb = np.float64(xo) / xb if inverted else np.float64(xb) / xo
                    ra = np.float64(xo) / xa if inverted else np.float64(xa) / xo
                    return float(rb), float(ra), float((ra - rb) / (1.0 - rb))

            rb, ra, rec = share(stat(x), stat(y), stat(z))
            boot = np.array([share(stat(x[i]), stat(y[i]), stat(z[i]))[2] for i in idx])
            low, high = (
                percentile_interval(boot, alpha)
                if np.isfinite(boot).all()
                else (math.nan, math.nan)
            )
            rows.append(
                dict(
                    task=name,
                    metric=metric,
                    retention_before=rb,
                    retention_after=ra,
                    recovered=rec,
                    ci_low=low,
                    ci_high=high,
                    n=len(o.ids),
                )
            )
    return pd.DataFrame(
        rows,
        columns=[
            "task",
            "metric",
            "retention_before",
            "retention_after",
            "recovered",
            "ci_low",
            "ci_high",
            "n",
        ],
    )


def _hash(obj: Any) -> str:
    """The cache key of a healing step (ASCII JSON: the hashes of earlier runs stay valid)."""
    return content_hash(obj, ensure_ascii=True)


def healing_study(
    model_name: str,
    *,
    out_dir: str | Path,
    selections: Mapping[str, Sequence[int]],
    config: HealConfig = HealConfig(),
    tasks: Sequence[str] = ("sciq_mc", "wikitext2_ppl"),
    n_eval: int | None = 200,
    seed: int = 42,
    device: str = "cpu",
    dtype: str = "float32",
    batch_size: int = 8,
    ppl_window: int = 512,
    n_boot: int = 1000,
    progress: bool = True,
    command: str | None = None,
    loaded: tuple[Any, Any] | None = None,
) -> dict[str, Any]:
    """Prune, evaluate, heal and evaluate again, for each selection of pruned layers.

    ``selections``: name -> layers to prune (e.g. ``{"avss-count": [0, 1, ...]}``, from a
    pruning study's ``selections.json``). Writes under ``out_dir``: ``eval/original.json``,
    ``eval/<name>-before.json``, ``eval/<name>-after.json`` (results, pruned layers, the
    healing losses), ``healing.csv`` (per selection x task x metric: retention before and
    after with paired 95% intervals, the recovered share with its interval) and
    ``record.json`` / ``record.md``. A selection whose ``-after.json`` holds the same hash
    (model, layers, budget, tasks, n, seed) is read back, not run again.
    Returns ``{"table": healing.csv as a DataFrame, "status": name -> "run" | "cached"}``.

    It stays long (about 180 lines) because every selection runs the same resumable sequence
    (prune a copy, evaluate, heal, evaluate, write) on one loaded model and one run record; the
    steps are calls into :mod:`avsslib.prune`, :mod:`avsslib.evaluate` and :func:`heal`.
    """
    import avsslib.evaluate as ev
    from avsslib.arch import blocks
    from avsslib.fs import write_csv_atomic
    from avsslib.models import load_model
    from avsslib.prune import prune_layers_
    from avsslib.report import RunRecord, save_record
    from avsslib.seeding import set_seed

    config.validate()
    if not selections:
        raise ConfigError("healing_study: no selection of layers given (selections is empty).")
    out = Path(out_dir)
    set_seed(seed)
    if loaded is not None:
        model, tokenizer = loaded
    else:
        model, tokenizer = load_model(model_name, dtype=getattr(torch, dtype), device=device)
    n_layers = len(blocks(model))
    for name, layers in selections.items():
        bad = [x for x in layers if not 0 <= int(x) < n_layers]
        if bad or len(set(layers)) >= n_layers or not layers:
            raise ConfigError(
                f"selection {name!r}: layers {list(layers)} are not a proper subset "
                f"of the model's {n_layers} blocks."
            )
    batches, text = healing_batches(tokenizer, config)
    eval_kwargs: dict[str, Any] = dict(
        n=n_eval, seed=seed, batch_size=batch_size, ppl_window=ppl_window, ppl_stride=ppl_window
    )
    run_config = {
        "model": model_name,
        "selections": {k: list(v) for k, v in selections.items()},
        "heal": config.to_dict(),
        "tasks": list(tasks),
        "eval": eval_kwargs,
        "n_boot": n_boot,
        "format": HEALING_FORMAT,
    }
    if command is None:
        command = f"healing_study({model_name!r}, out_dir={str(out)!r}, ...)"
    data_files = {**text["data_files"], **ev.task_data_files(list(tasks))}
    record = RunRecord.start(command, run_config, seed, model=model, data_files=data_files)
    identity = record.model.get("state_sha256")
    base_key = {
        "model": identity,
        "tasks": list(tasks),
        "eval": eval_kwargs,
        "format": HEALING_FORMAT,
    }

    def evaluate(m: torch.nn.Module, path: Path, key: dict[str, Any], extra: dict[str, Any]) -> Any:
        result, hit = cached(
            path,
            _hash(key),
            lambda: ev.evaluate(m, tokenizer, list(tasks), **eval_kwargs),
            encode=lambda r: r.to_dict(),
            decode=ev.EvalResult.from_dict,
            extra=lambda _: extra,
            key_field="hash",
        )
        return result, "cached" if hit else "run"

    original, _ = evaluate(model, out / "eval" / "original.json", base_key, {"layers": []})
    tables, status, losses = [], {}, {}
    for name, layers in selections.items():
        layers = sorted(int(x) for x in layers)
        key = {**base_key, "layers": layers}
        after_path = out / "eval" / f"{name}-after.json"
        heal_key = {
            **key,
            "heal": config.to_dict(),
            "text": {k: text[k] for k in ("dataset", "split", "data_files")},
        }
        pruned = prune_layers_(copy.deepcopy(model), layers)
        before, _ = evaluate(pruned, out / "eval" / f"{name}-before.json", key, {"layers": layers})
        saved = read_cached(after_path, _hash(heal_key), key_field="hash")
        if saved is not None:
            after = ev.EvalResult.from_dict(saved["result"])
            losses[name] = saved.get("losses", [])
            status[name] = "cached"
        else:
            healed, result = heal(
                pruned, tokenizer, config, batches=batches, text=text, progress=progress
            )
            after, _ = evaluate(
                healed,
                after_path,
                heal_key,
                {
                    "layers": layers,
                    "losses": result.losses,
                    "heal_s": result.seconds,
                    "trainable_parameters": result.trainable_parameters,
                },
            )
            losses[name] = result.losses
            status[name] = "run"
            del healed
        del pruned
        r_before = ev.retention(original, before, n_boot=n_boot, seed=seed)
        r_after = ev.retention(original, after, n_boot=n_boot, seed=seed)
        share = recovered_share(original, before, after, n_boot=n_boot, seed=seed)
        merged = r_before.merge(
            r_after,
            on=["task", "metric", "original", "n", "inverted"],
            suffixes=("_before", "_after"),
        )
        merged = merged.merge(
            share[["task", "metric", "recovered", "ci_low", "ci_high"]].rename(
                columns={"ci_low": "recovered_ci_low", "ci_high": "recovered_ci_high"}
            ),
            on=["task", "metric"],
        )
        merged.insert(0, "config", name)
        merged.insert(1, "n_pruned", len(layers))
        merged.insert(2, "layers", " ".join(map(str, layers)))
        tables.append(merged)
    table = pd.concat(tables, ignore_index=True)
    write_csv_atomic(out / "healing.csv", table)
    from avsslib.study import primary_metric_rows

    rows = []
    for row in primary_metric_rows(table).itertuples():
        for when in ("before", "after"):
            rows.append(
                dict(
                    task=f"{row.task} [{row.config}, {when}]",
                    metric=f"{row.metric} retention",
                    value=getattr(row, f"retention_{when}"),
                    ci_low=getattr(row, f"ci_low_{when}"),
                    ci_high=getattr(row, f"ci_high_{when}"),
                    n=row.n,
                )
            )
        rows.append(
            dict(
                task=f"{row.task} [{row.config}]",
                metric="recovered share",
                value=row.recovered,
                ci_low=row.recovered_ci_low,
                ci_high=row.recovered_ci_high,
                n=row.n,
            )
        )
    record.finish(
        {
            "table": rows,
            "text": {k: v for k, v in text.items() if k != "data_files"},
            "status": status,
            "final_loss": {k: (v[-1] if v else None) for k, v in losses.items()},
        }
    )
    save_record(record, out / "record.json")
    return {"table": table, "status": status, "record": record.to_dict()}
