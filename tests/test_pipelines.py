"""The library pipelines behind ``avss study``, ``avss hallucination`` and ``avss mitigate``: their
configurations carry exactly the command's options, and the command only maps arguments to a
configuration (the runs themselves are compared with the committed digest in
test_reproduce_digest.py)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from avsslib.errors import ConfigError
from avsslib.hallucination import HallucinationConfig
from avsslib.mitigation import MitigationConfig
from avsslib.study_config import StudyConfig


def _dests(module) -> set[str]:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return {a.dest for a in parser._actions if a.dest != "help"}


@pytest.mark.parametrize(
    ("command", "config"),
    [
        ("hallucination", HallucinationConfig),
        ("mitigate", MitigationConfig),
        ("study", StudyConfig),
    ],
)
def test_config_fields_are_the_command_options(command, config):
    import importlib

    module = importlib.import_module(f"avsslib.cli.{command}")
    fields = {f.name for f in dataclasses.fields(config)} - {"command"}
    assert fields == _dests(module)
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    args = parser.parse_args(["--out", "runs/x"])
    built = module.config_from_args(args)
    defaults = config(out=Path("runs/x"))
    assert dataclasses.replace(built, command=None) == dataclasses.replace(defaults, command=None)
    assert built.command.startswith(f"avss {command} ")
    # the library spells a configuration as the command records it: same options, same order
    assert built.describe() == built.command


@pytest.mark.parametrize(
    "argv",
    [
        ["study", "--quick", "--n", "32", "--sweep-fractions", "0.25", "--no-faithful-eval"],
        ["study", "--device", "cpu", "--tasks", "sciq_mc", "--ppl-stride", "64", "--seed", "42"],
        ["hallucination", "--datasets", "truthfulqa", "--probe", "--folds", "2", "--k", "3"],
        ["mitigate", "--layers", "3,7", "--mode", "avss", "--full-params", "--lr", "0.001"],
    ],
)
def test_library_command_line_is_the_commands(argv):
    """A run started from the library records the command line ``avss`` would record."""
    import importlib

    from avsslib.cli import build_parser

    args = build_parser().parse_args([*argv, "--out", "runs/x"])
    module = importlib.import_module(f"avsslib.cli.{argv[0]}")
    config = module.config_from_args(args)
    assert dataclasses.replace(config, command=None).describe() == config.command


def test_config_validation_names_the_option():
    with pytest.raises(ConfigError, match="--datasets"):
        HallucinationConfig(out=Path("x"), datasets=("nope",)).validate()
    with pytest.raises(ConfigError, match="--family"):
        HallucinationConfig(out=Path("x"), family=("Q",)).validate()
    with pytest.raises(ConfigError, match="--calib-fraction"):
        HallucinationConfig(out=Path("x"), calib_fraction=0.0).validate()
    assert HallucinationConfig(out=Path("x"), family=("p",)).validate()[1] == ["P"]
    with pytest.raises(ConfigError, match="--mode"):
        MitigationConfig(out=Path("x"), mode="all").validate()


def test_mitigation_record_keeps_the_option_spelling():
    cfg = MitigationConfig(out=Path("o"), layers=(3, 7), eval_tasks=("sciq_mc",))
    rec = cfg.record_config()
    assert rec["layers"] == "3,7" and rec["eval_tasks"] == "sciq_mc" and rec["out"] == "o"
    assert MitigationConfig(out=Path("o")).record_config()["layers"] is None
    assert "--layers 3,7" in cfg.describe()


def test_mitigate_defaults_are_the_training_defaults():
    """``avss mitigate`` with no training options trains as ``TrainConfig()`` does: the two
    dataclasses spell the shared defaults (learning rate, lambda, tau, batch, LoRA rank...)
    separately, so this holds them together. Two differ on purpose: a command run checkpoints
    (every 50 optimizer steps, so that it can resume) and trains with the run's ``--seed``."""
    from avsslib.mitigate import TrainConfig
    from avsslib.mitigation_steps import train_config

    built = train_config(MitigationConfig(out=Path("o")), [3, 7])
    library = TrainConfig(layers=(3, 7))
    assert (built.checkpoint_every, library.checkpoint_every) == (50, 0)
    assert built == dataclasses.replace(library, seed=built.seed, checkpoint_every=50)


def test_train_config_carries_every_training_option():
    """Each training option of ``avss mitigate`` reaches the ``TrainConfig`` it trains with."""
    from avsslib.mitigation_steps import train_config

    changed = dict(lora=True, lora_r=3, lora_alpha=5, epochs=2, lr=0.002, lam=0.25, tau=0.5)
    changed |= dict(loss="supcon", projection=True, batch_size=3, grad_accum=2, bf16=True)
    changed |= dict(seed=9, checkpoint_every=7, no_in_batch=True, mode="full")
    built = train_config(MitigationConfig(out=Path("o"), layers=(1,), **changed), [3, 7])
    expected = {k: v for k, v in changed.items() if k not in ("no_in_batch", "mode")}
    assert {k: getattr(built, k) for k in expected} == expected
    assert (built.layers, built.full_model, built.in_batch_negatives) == ((3, 7), True, False)
