"""The training loop of the contrastive mitigation: configuration, LoRA, schedule, seeded and
deterministic micro-batches, atomic checkpoints and resume to the same final weights."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from avsslib.arch import blocks
from avsslib.errors import ConfigError
from avsslib.fs import atomic_path
from avsslib.mitigate.data import Batch, EncodedTriple, _check_layers, collate
from avsslib.mitigate.losses import ProjectionHead, capture_blocks, info_nce, masked_mean, supcon
from avsslib.mitigate.store import CHECKPOINT, _add_lora, lora_targets, save_trained_layers
from avsslib.report import model_fingerprint

# ---------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainConfig:
    """Everything that shapes a training run (and must match to resume one).

    ``layers``: the blocks that train (the prone set); ``full_model=True`` instead trains every
    parameter with ``L_LM`` only (the "full" ablation). ``lora``: LoRA (rank ``lora_r``, scale
    ``lora_alpha / lora_r``, no dropout) on every linear projection of those blocks instead of
    their full parameters. ``lr``: ``None`` = 1e-5 full / 1e-4 LoRA. AdamW with
    ``weight_decay`` on matrices (not on norms and biases), ``warmup_ratio`` of the optimizer
    steps of linear warm-up, then linear decay to zero; gradients clipped to ``max_grad_norm``.
    ``batch_size`` questions per micro-batch, ``grad_accum`` micro-batches per optimizer step
    (effective batch = their product). Loss ``L_LM + lam * L_CL`` with ``loss`` = ``infonce``
    (temperature ``tau``, plus other questions' positives when ``in_batch_negatives``) or
    ``supcon``; ``projection`` adds the MLP head ``g_l`` (``projection_dim`` outputs).
    ``bf16``: autocast the forward pass to bfloat16. ``checkpoint_every``: optimizer steps
    between checkpoints (0 = none).
    """

    layers: tuple[int, ...] = ()
    full_model: bool = False
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lr: float | None = None
    weight_decay: float = 0.01
    warmup_ratio: float = 0.03
    epochs: int = 1
    batch_size: int = 4
    grad_accum: int = 4
    max_grad_norm: float | None = 1.0
    lam: float = 0.5
    tau: float = 0.07
    loss: Literal["infonce", "supcon"] = "infonce"
    in_batch_negatives: bool = True
    projection: bool = False
    projection_dim: int = 256
    bf16: bool = False
    seed: int = 42
    checkpoint_every: int = 0

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1e-4 if self.lora else 1e-5)

    @property
    def contrastive(self) -> bool:
        """Whether ``L_CL`` is on (not for ``full_model``, nor with ``lam == 0``)."""
        return not self.full_model and self.lam > 0

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["layers"] = list(self.layers)
        out["learning_rate"] = self.learning_rate
        return out

    def validate(self, n_layers: int) -> None:
        """Raise ``ConfigError`` naming the first impossible value."""
        checks = [
            (self.epochs >= 1, f"epochs = {self.epochs}: must be >= 1"),
            (self.batch_size >= 1, f"batch_size = {self.batch_size}: must be >= 1"),
            (self.grad_accum >= 1, f"grad_accum = {self.grad_accum}: must be >= 1"),
            (self.learning_rate > 0, f"lr = {self.lr}: must be > 0"),
            (self.tau > 0, f"tau = {self.tau}: must be > 0"),
            (self.lam >= 0, f"lambda = {self.lam}: must be >= 0"),
            (0 <= self.warmup_ratio < 1, f"warmup_ratio = {self.warmup_ratio}: must lie in [0, 1)"),
            (self.weight_decay >= 0, f"weight_decay = {self.weight_decay}: must be >= 0"),
            (
                self.checkpoint_every >= 0,
                f"checkpoint_every = {self.checkpoint_every}: must be >= 0",
            ),
            (
                self.loss in ("infonce", "supcon"),
                f"loss {self.loss!r}: expected 'infonce' or 'supcon'",
            ),
            (self.lora_r >= 1, f"lora_r = {self.lora_r}: must be >= 1"),
            (
                not (self.full_model and self.lora),
                "full_model and lora: full fine-tuning trains every parameter; drop one of them",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message + ".")
        if not self.full_model:
            if list(self.layers) != _check_layers(self.layers, n_layers):
                raise ConfigError(
                    f"layers {list(self.layers)}: pass them sorted, e.g. {sorted(self.layers)}."
                )


@dataclass
class TrainResult:
    """What :func:`train` did.

    ``state``: the trained tensors by parameter name (CPU; block parameters, every parameter
    for ``full_model``, or the LoRA adapters), what :func:`save_trained_layers` writes.
    ``meta``: kind (``blocks``/``full``/``lora``), layers, config, base-model fingerprint, LoRA
    settings. ``history``: one row per optimizer step (step, epoch, loss, lm, cl, lr,
    grad_norm). ``resumed_from``: the checkpoint step this process started at (0 = fresh).
    ``wall_s``/``steps_run``: training time and optimizer steps of this process.
    """

    state: dict[str, torch.Tensor]
    meta: dict[str, Any]
    history: list[dict[str, float]]
    resumed_from: int
    steps_run: int
    wall_s: float

    @property
    def s_per_step(self) -> float:
        return self.wall_s / self.steps_run if self.steps_run else math.nan


def _schedule(total: int, warmup: int) -> Callable[[int], float]:
    """LR factor of optimizer step s (0-based): (s+1)/warmup during warm-up, then linear decay
    from 1 to 1/(total - warmup) at the last step."""

    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        return max(0.0, (total - s) / max(1, total - warmup))

    return factor


def _examples_sha256(examples: Sequence[EncodedTriple]) -> str:
    return hashlib.sha256(repr([dataclasses.astuple(e) for e in examples]).encode()).hexdigest()


def _rng_state() -> dict[str, Any]:
    np_state = cast(tuple[Any, ...], np.random.get_state())
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_atomic(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _micro_batches(n: int, config: TrainConfig) -> list[list[list[int]]]:
    """Per optimizer step (all epochs), its micro-batches of example indices. Epoch ``e``
    shuffles with ``numpy.random.default_rng([seed, e])``; the last step of an epoch may hold
    fewer micro-batches."""
    steps = []
    for epoch in range(config.epochs):
        order = np.random.default_rng([config.seed, epoch]).permutation(n).tolist()
        micro = [order[i : i + config.batch_size] for i in range(0, n, config.batch_size)]
        steps += [micro[i : i + config.grad_accum] for i in range(0, len(micro), config.grad_accum)]
    return steps


def _losses(
    net: torch.nn.Module,
    model: torch.nn.Module,
    heads: torch.nn.ModuleDict | None,
    batch: Batch,
    config: TrainConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, L_LM, L_CL) of one micro-batch; L_CL is 0 when contrastive learning is off."""
    device = next(model.parameters()).device
    b = batch.size
    layers = config.layers if config.contrastive else ()
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=config.bf16)
    with capture_blocks(model, layers) as hidden, autocast:
        logits = net(
            input_ids=batch.input_ids.to(device),
            attention_mask=batch.attention_mask.to(device),
            use_cache=False,
        ).logits
    target = batch.input_ids[:b, 1:].to(device)
    scored = batch.answer_mask[:b, 1:].to(device)  # position t predicts token t+1
    lm = F.cross_entropy(logits[:b, :-1][scored].float(), target[scored])
    if not layers:
        return lm, lm, torch.zeros((), device=device)
    answer_mask = batch.answer_mask.to(device)
    cl = []
    for layer in layers:
        h = hidden[layer]
        reps = masked_mean(h, answer_mask)  # (N, D)
        anchors = h[torch.arange(b, device=device), batch.anchor_index.to(device)].float()  # (B, D)
        if heads is not None:
            reps, anchors = heads[str(layer)](reps), heads[str(layer)](anchors)
        if config.loss == "supcon":
            labels = (torch.arange(len(reps), device=device) < b).long()
            cl.append(supcon(reps, labels, tau=config.tau))
        else:
            cl.append(
                info_nce(
                    anchors,
                    reps[:b],
                    reps[batch.negative_rows.to(device)],
                    batch.negative_mask.to(device),
                    tau=config.tau,
                    in_batch=config.in_batch_negatives,
                )
            )
    l_cl = torch.stack(cl).mean()
    return lm + config.lam * l_cl, lm, l_cl


def train(
    model: torch.nn.Module,
    examples: Sequence[EncodedTriple],
    config: TrainConfig,
    *,
    pad_id: int,
    out_dir: str | Path | None = None,
    resume: bool = False,
    callback: Callable[[dict[str, float]], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Fine-tune ``model`` in place on ``examples`` (see :class:`TrainConfig`).

    Only the chosen blocks (or their LoRA adapters; or, for ``full_model``, everything) get
    gradients: every other parameter is frozen and comes out bit-identical. With LoRA the
    adapters are merged into the base weights at the end, so ``model`` is a plain model again.
    The model is in eval mode and its ``requires_grad`` flags are restored on return.

    ``pad_id``: the padding token id (``tokenizer.pad_token_id``). ``out_dir``: where the
    checkpoint (``checkpoint.pt``: trainable tensors, heads, optimizer, scheduler, RNG states,
    step, history; written atomically every ``config.checkpoint_every`` steps and after the
    last one, when ``checkpoint_every > 0``) and, at the end, the trained layers
    (:func:`save_trained_layers`) go. ``resume=True``
    continues from that checkpoint when it exists (same config, data and base weights, else
    ``ConfigError``) and ends with the same weights as an uninterrupted run. ``callback`` gets
    each step's history row after the step (and its checkpoint). Seeded by ``config.seed``
    (:func:`avsslib.seeding.set_seed`): two runs give the same weights on CPU.

    It stays long (about 200 lines) on purpose: the optimizer, scheduler, RNG streams and
    checkpoint are advanced together in one loop, in the order the resume test holds
    bit-identical; the loss and batch steps are calls into :mod:`avsslib.mitigate.losses` and
    :mod:`avsslib.mitigate.data`.
    """
    from avsslib.seeding import set_seed

    n_layers = len(blocks(model))
    config.validate(n_layers)
    if not examples:
        raise ConfigError("no training examples: build triples from a non-empty dataset sample.")
    if resume and out_dir is None:
        raise ConfigError("resume=True needs out_dir, the folder holding checkpoint.pt.")
    out = Path(out_dir) if out_dir is not None else None
    base = model_fingerprint(model)
    data_sha = _examples_sha256(examples)
    set_seed(config.seed)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    layers = list(range(n_layers)) if config.full_model else list(config.layers)

    model.requires_grad_(config.full_model)
    net: torch.nn.Module = model
    targets: list[str] = []
    if config.lora:
        targets = lora_targets(model, layers)
        net = _add_lora(model, targets, config.lora_r, config.lora_alpha)
        model.requires_grad_(False)
        for name, p in model.named_parameters():
            p.requires_grad_(".lora_" in name)
    elif not config.full_model:
        for layer in layers:
            blocks(model)[layer].requires_grad_(True)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    device = next(model.parameters()).device
    heads = None
    if config.projection and config.contrastive:
        d = cast(Any, model).config.hidden_size
        heads = torch.nn.ModuleDict(
            {str(layer): ProjectionHead(d, config.projection_dim) for layer in config.layers}
        ).to(device)
    head_params = list(heads.parameters()) if heads is not None else []
    params = [p for _, p in trainable] + head_params
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.learning_rate,
    )
    steps = _micro_batches(len(examples), config)
    warmup = math.ceil(config.warmup_ratio * len(steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(len(steps), warmup))

    config_dict = config.to_dict()
    history: list[dict[str, float]] = []
    start = 0
    ckpt = out / CHECKPOINT if out is not None else None
    if resume and ckpt is not None and ckpt.exists():
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
            raise ConfigError(
                f"{ckpt} cannot be read as a checkpoint ({type(exc).__name__}: "
                f"{str(exc)[:200]}); delete it to train from the start, or use "
                "another out_dir."
            ) from None
        same = {k: v for k, v in state["config"].items() if k != "checkpoint_every"} == {
            k: v for k, v in config_dict.items() if k != "checkpoint_every"
        }
        if (
            not same
            or state["data_sha256"] != data_sha
            or state["base_sha256"] != base["state_sha256"]
        ):
            raise ConfigError(
                f"{ckpt} belongs to another run (config, training data or base model "
                "differ); resume with the same settings or use another out_dir."
            )
        with torch.no_grad():
            for name, p in trainable:
                p.copy_(state["params"][name])
        if heads is not None:
            heads.load_state_dict(state["heads"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        history, start = list(state["history"]), int(state["step"])

    def checkpoint(step: int) -> None:
        assert ckpt is not None
        _save_atomic(
            {
                "format": 1,
                "step": step,
                "config": config_dict,
                "data_sha256": data_sha,
                "base_sha256": base["state_sha256"],
                "params": {n: p.detach().clone() for n, p in trainable},
                "heads": heads.state_dict() if heads is not None else {},
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": _rng_state(),
                "history": history,
            },
            ckpt,
        )

    model.eval()
    for module in [model] if config.full_model else [blocks(model)[layer] for layer in layers]:
        module.train()
    if heads is not None:
        heads.train()
    steps_per_epoch = len(steps) // config.epochs
    t0 = time.perf_counter()
    bar = tqdm(total=len(steps), initial=start, desc="train", unit="step", disable=not progress)
    try:
        for step in range(start, len(steps)):
            optimizer.zero_grad(set_to_none=True)
            group = steps[step]
            sums = np.zeros(3)
            for micro in group:
                batch = collate([examples[i] for i in micro], pad_id, negatives=config.contrastive)
                total, lm, cl = _losses(net, model, heads, batch, config)
                (total / len(group)).backward()
                sums += [total.item(), lm.item(), cl.item()]
            norm = (
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm).item()
                if config.max_grad_norm
                else math.nan
            )
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            loss, lm_mean, cl_mean = (sums / len(group)).tolist()
            row = {
                "step": step + 1,
                "epoch": step // steps_per_epoch,
                "loss": loss,
                "lm": lm_mean,
                "cl": cl_mean,
                "lr": lr,
                "grad_norm": norm,
            }
            history.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if (
                ckpt is not None
                and config.checkpoint_every
                and ((step + 1) % config.checkpoint_every == 0 or step + 1 == len(steps))
            ):
                checkpoint(step + 1)
            if callback is not None:
                callback(row)
    finally:
        bar.close()
        model.eval()
    wall = time.perf_counter() - t0

    state_out = {n: p.detach().to("cpu", copy=True).contiguous() for n, p in trainable}
    if config.lora:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            cast(Any, net).merge_and_unload()
    for name, p in model.named_parameters():
        p.requires_grad_(flags.get(name, False))
    kind = "full" if config.full_model else ("lora" if config.lora else "blocks")
    meta = {
        "format": 1,
        "kind": kind,
        "layers": layers,
        "config": config_dict,
        "base_model": base,
        "lora": {"r": config.lora_r, "alpha": config.lora_alpha, "target_modules": targets}
        if config.lora
        else None,
        "parameters": sorted(state_out),
        "steps": len(steps),
        "data_sha256": data_sha,
    }
    result = TrainResult(state_out, meta, history, start, len(steps) - start, wall)
    if out is not None:
        save_trained_layers(result, out)
    return result


__all__ = [
    "TrainConfig",
    "TrainResult",
    "train",
]
