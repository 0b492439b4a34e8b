"""The command line's shared options: every model command has the common options with one
meaning and one default, the statistics commands have the calibration options, and every
``avss`` example in the README parses (and, in the slow tier, runs with tiny sizes)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
from pathlib import Path
from typing import Literal

import pytest
import torch

from avsslib.cli import COMMANDS, build_parser, main
from avsslib.cli.common import CALIBRATION_DEFAULTS, CALIBRATION_OPTIONS, MODEL_OPTIONS

REPO = Path(__file__).resolve().parents[1]
MODEL_COMMANDS = ("score", "prune", "eval", "study", "hallucination", "mitigate", "heal")
STATISTICS_COMMANDS = ("score", "prune", "study")


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings}


def test_every_command_is_registered_and_classified():
    subs = _subparsers()
    assert set(subs) == set(COMMANDS)
    assert set(MODEL_COMMANDS) | {"models", "data", "reproduce", "diagnose"} == set(COMMANDS)


@pytest.mark.parametrize("name", MODEL_COMMANDS)
def test_model_command_has_the_common_options(name):
    subs = _subparsers()
    reference = _options(subs["score"])
    options = _options(subs[name])
    for flag in MODEL_OPTIONS:
        assert flag in options, f"avss {name} lacks {flag}"
        mine, ref = options[flag], reference[flag]
        assert (mine.dest, mine.default, mine.type, mine.choices, mine.nargs) == (
            ref.dest,
            ref.default,
            ref.type,
            ref.choices,
            ref.nargs,
        ), (name, flag)
        if flag != "--out":  # the output's help says what is written there
            assert mine.help == ref.help, (name, flag)
    assert options["--out"].required
    assert options["--seed"].default == 0 and options["--quiet"].default is False
    assert options["--model"].default == "smollm2-135m" and options["--dtype"].default == "float32"


@pytest.mark.parametrize("name", STATISTICS_COMMANDS)
def test_statistics_command_has_the_calibration_options(name):
    options = _options(_subparsers()[name])
    for flag in CALIBRATION_OPTIONS:
        assert flag in options, f"avss {name} lacks {flag}"
        dest = flag.lstrip("-").replace("-", "_")
        assert options[flag].dest == dest and options[flag].default == CALIBRATION_DEFAULTS[dest]


@pytest.mark.parametrize("name", MODEL_COMMANDS)
def test_quiet_and_given_are_recorded(name):
    parser = build_parser()
    argv = [name, "--out", "x", "--quiet", "--seed", "3"]
    if name == "eval":
        argv += ["--tasks", "sciq_mc"]
    if name == "heal":
        argv += ["--study", "x"]
    args = parser.parse_args(argv)
    assert args.quiet is True and args.seed == 3
    assert {"out", "quiet", "seed"} <= args._given and "model" not in args._given


def test_quiet_disables_every_progress_bar_for_the_command_only(monkeypatch):
    import avsslib.cli.data as data_cmd

    seen = {}

    def run(args):
        from tqdm.auto import tqdm

        seen["disabled"] = tqdm(range(2)).disable
        return 0

    monkeypatch.setattr(data_cmd, "run", run)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    parser = build_parser()  # `data` has no --quiet: bars stay on
    assert "--quiet" not in _options(
        next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[
            "data"
        ]
    )
    import avsslib.cli.score as score_cmd

    monkeypatch.setattr(score_cmd, "run", run)
    assert main(["score", "--out", "unused", "--quiet"]) == 0
    assert seen["disabled"] is True and "TQDM_DISABLE" not in os.environ
    assert main(["score", "--out", "unused"]) == 0
    assert seen["disabled"] is False


def test_study_quick_keeps_explicit_calibration_sizes():
    from avsslib.cli.study import config_from_args

    def sizes(*extra):
        config = config_from_args(build_parser().parse_args(["study", "--out", "x", *extra]))
        resolved = config.resolved()
        return resolved.n, resolved.seq_len

    assert sizes("--quick") == (16, 64)
    assert sizes("--quick", "--n", "64") == (64, 64)
    assert sizes() == (64, 128)


def test_score_default_is_one_statistics_pass():
    from avsslib.scores import REGISTRY

    args = build_parser().parse_args(["score", "--out", "x"])
    names = args.scores.split(",")
    assert "avss" in names and "block_influence" in names and "angular" in names
    assert not any(REGISTRY[s].needs_model for s in names)


# ------------------------------------------------------------------ the README's examples


def readme_examples() -> list[str]:
    """Every ``avss ...`` line of the README's bash blocks (comments stripped)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("avss "):
                lines.append(line)
    return lines


def test_readme_has_examples_and_they_parse():
    examples = readme_examples()
    assert len(examples) >= 8
    parser = build_parser()
    for line in examples:
        argv = shlex.split(line)[1:]
        if argv == ["--version"]:
            continue
        parser.parse_args(argv)  # SystemExit (a test error) on an unknown option


# Sizes appended to each example (argparse: a later option wins), so that it runs in seconds.
TINY = {
    "score": ["--n", "4", "--seq-len", "16", "--batch-size", "2", "--quiet"],
    "prune": ["--n", "4", "--seq-len", "16", "--batch-size", "2", "--quiet"],
    "eval": ["--n", "2", "--ppl-window", "64", "--ppl-stride", "64", "--n-boot", "20", "--quiet"],
    "study": [
        "--quick",
        "--n-eval",
        "3",
        "--tasks",
        "sciq_mc",
        "--scores",
        "avss,random",
        "--sweep-fractions",
        "0.25",
        "--sweep-scores",
        "avss",
        "--agreement-seeds",
        "0",
        "--agreement-calibs",
        "wikitext2:validation",
        "--n",
        "4",
        "--seq-len",
        "16",
        "--no-faithful-eval",
        "--n-boot",
        "20",
        "--quiet",
    ],
    "hallucination": [
        "--datasets",
        "truthfulqa",
        "--n",
        "8",
        "--max-new-tokens",
        "8",
        "--min-per-class",
        "1",
        "--quiet",
    ],
    "mitigate": [
        "--n-train",
        "1",
        "--n-eval",
        "1",
        "--eval-tasks",
        "truthfulqa_mc1",
        "--batch-size",
        "1",
        "--grad-accum",
        "1",
        "--kl-texts",
        "1",
        "--ppl-windows",
        "1",
        "--n-boot",
        "10",
        "--quiet",
    ],
}
# Not run: a model that needs the network, and the paper-scale pipeline (it has its own CI-scale
# test in test_reproduce.py).
NOT_RUN = ("meta-llama/", "/path/to/", "avss reproduce")


@pytest.mark.slow
def test_readme_examples_run(smol, data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples write runs/... relative to the cwd
    ran = []
    for line in readme_examples():
        if any(s in line for s in NOT_RUN):
            continue
        argv = shlex.split(line)[1:]
        if argv == ["--version"]:
            with pytest.raises(SystemExit) as info:
                main(argv)
            assert info.value.code == 0
            continue
        argv += TINY.get(argv[0], [])
        try:
            code = main(argv)
        finally:  # the commands call set_seed, whose deterministic switch is process-wide
            torch.use_deterministic_algorithms(False)
        assert code == 0, line
        ran.append(argv[0])
    assert {"score", "prune", "eval", "study", "hallucination", "mitigate"} <= set(ran)


def test_config_options_take_type_default_and_choices_from_the_field():
    """``config_options``: a field's default, type and ``Literal`` choices make its option."""
    from avsslib.cli.common import config_options

    @dataclasses.dataclass
    class Config:
        n_eval: int = 7
        rate: float | None = None
        kind: Literal["a", "b"] = "b"
        tags: tuple[str, ...] = ("x", "y")
        path: Path | None = None
        flag: bool = False
        on: bool = True

    parser = argparse.ArgumentParser()
    add = config_options(parser, Config)
    for flag in ("--n-eval", "--rate", "--kind", "--tags", "--path", "--flag"):
        add(flag, "help (default %(default)s)")
    with pytest.raises(TypeError, match="default to False"):
        add("--on", "a flag on by default cannot be store_true")
    assert vars(parser.parse_args([])) == {
        "n_eval": 7,
        "rate": None,
        "kind": "b",
        "tags": "x,y",
        "path": None,
        "flag": False,
    }
    args = parser.parse_args(["--n-eval", "3", "--rate", "0.5", "--path", "p", "--flag"])
    assert (args.n_eval, args.rate, args.path, args.flag) == (3, 0.5, Path("p"), True)
    with pytest.raises(SystemExit):
        parser.parse_args(["--kind", "c"])
    assert "help (default 7)" in parser.format_help()
