"""Hardening (issue 7): bad input, interrupted runs, concurrent writers, determinism, safety.

1. Every bad input of :data:`CASES` (command lines and API calls) gives one paragraph naming the
   input, a non-zero exit status (``2``) and no traceback unless ``--debug``; the loaders of every
   dataset refuse empty, non-UTF-8, malformed and truncated files.
2. Result files are never half-written: ``avss score``, ``avss prune`` and ``avss mitigate`` are
   killed (SIGKILL, a real subprocess) in the middle of a write and the files checked; the next
   run tidies up and finishes or resumes. Two runs on one results directory: the second is
   refused with the holder's PID.
3. The same ``avss score`` command twice gives byte-identical result files (timings aside).
4. Loading a model directory never runs its code without ``--trust-remote-code``; data files
   that resolve outside the data folder are refused.

``python tests/test_hardening.py --table OUT.md`` runs :data:`CASES` and writes the table of
inputs and the first line of each message.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hardening_fixtures import (  # noqa: E402
    CONTEXT,
    KILL_HOOK,
    VARIANTS,
    Case,
    build_fixtures,
    default_files,
    run_cli,
    shared_data,
    subprocess_env,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # an unknown model name must fail fast, offline

from avsslib.errors import AvssError, DataError, ModelError  # noqa: E402

# ---------------------------------------------------------------- API helpers

_LOADED: dict[str, tuple] = {}


def _tiny(fx):
    """The tiny model and tokenizer (loaded once per fixture folder)."""
    from avsslib.models import load_model

    key = str(fx["tiny"])
    if key not in _LOADED:
        _LOADED[key] = load_model(fx["tiny"])
    return _LOADED[key]


def _load(name):
    from avsslib.models import load_model

    return lambda fx: load_model(fx[name] if name in fx else name)


def _fit(batch_of):
    def call(fx):
        from avsslib.stats import LayerStats

        model, _ = _tiny(fx)
        return LayerStats().fit(model, [batch_of()], progress=False)

    return call


def _ids(rows, cols, value=5):
    import torch

    return torch.full((rows, cols), value, dtype=torch.long)


def _fp16_overflow(fx):
    """A float16 copy of the tiny model whose block 2 overflows, then AVSS from its statistics."""
    import copy

    import torch

    from avsslib.arch import blocks
    from avsslib.calibration import calibration_batches
    from avsslib.scores import score
    from avsslib.stats import LayerStats

    model, tok = _tiny(fx)
    half = copy.deepcopy(model).half()
    with torch.no_grad():  # block 2's MLP output exceeds 65504: inf there, NaN after it
        blocks(half)[2].post_attention_layernorm.weight.fill_(1e3)
        blocks(half)[2].mlp.down_proj.weight.fill_(6e4)
    batches = calibration_batches(tok, ["some text to score", "and another one"], seq_len=16)
    stats = LayerStats().fit(half, batches, progress=False)
    return score("avss", stats)


def _api(id_, topic, status, expect, shown, call):
    return Case(id_, topic, status, tuple(expect), api=call, shown=shown)


def _cli(id_, topic, argv, expect, env=None, status="exit 2", locked=None):
    return Case(id_, topic, status, tuple(expect), argv=tuple(argv), env=env or {}, locked=locked)


T = "{tiny}"
C = ("--n", "4", "--seq-len", "16", "--batch-size", "2", "--quiet")  # tiny calibration


def _score(out, *extra, model=T):
    """``avss score`` argv; ``out`` is a folder under ``{out}`` unless it is a placeholder path."""
    return ("score", "--model", model, *extra, "--out", out if "{" in out else "{out}/" + out)


CASES: list[Case] = [
    # ------------------------------------------------ paths, models and architectures
    _cli(
        "model-missing-dir",
        "model",
        _score("m1", model="{nowhere}"),
        ["{nowhere}", "does not exist"],
    ),
    _cli(
        "model-unknown-name",
        "model",
        _score("m2", model="no-such-model-xyz"),
        ["no-such-model-xyz", "not a zoo name"],
    ),
    _cli(
        "model-empty-dir",
        "model",
        _score("m3", model="{empty_dir}"),
        ["{empty_dir}", "no config.json"],
    ),
    _cli(
        "model-no-weights",
        "model",
        _score("m4", model="{no_weights}"),
        ["{no_weights}", "no weights"],
    ),
    _cli(
        "model-truncated-weights",
        "model",
        _score("m5", model="{truncated_weights}"),
        ["model.safetensors", "truncated or corrupt"],
    ),
    _cli(
        "model-garbage-weights",
        "model",
        _score("m6", model="{garbage_weights}"),
        ["model.safetensors", "truncated or corrupt"],
    ),
    _cli(
        "model-corrupt-config",
        "model",
        _score("m7", model="{bad_config}"),
        ["{bad_config}", "config"],
    ),
    _cli("model-unknown-arch", "model", _score("m8", model="{unknown_arch}"), ["nosucharch"]),
    _cli(
        "model-unsupported-arch",
        "model",
        _score("m9", *C, model="{foreign_arch}"),
        ["gpt_bigcode", "ARCHITECTURES"],
    ),
    _cli(
        "model-remote-code",
        "safety",
        _score("m10", model="{remote_code}"),
        ["{remote_code}", "--trust-remote-code"],
    ),
    _api(
        "api-model-missing-dir",
        "model",
        "ModelError",
        ["{nowhere}", "does not exist"],
        "load_model('$TMP/no/such/model')",
        _load("nowhere"),
    ),
    _api(
        "api-model-no-weights",
        "model",
        "ModelError",
        ["no weights"],
        "load_model(dir without model.safetensors)",
        _load("no_weights"),
    ),
    _api(
        "api-model-truncated-weights",
        "model",
        "ModelError",
        ["truncated or corrupt"],
        "load_model(dir with half a model.safetensors)",
        _load("truncated_weights"),
    ),
    _api(
        "api-model-unknown-arch",
        "model",
        "ModelError",
        ["nosucharch"],
        "load_model(dir with model_type 'nosucharch')",
        _load("unknown_arch"),
    ),
    _api(
        "api-model-unsupported-arch",
        "model",
        "ModelError",
        ["gpt_bigcode", "ARCHITECTURES"],
        "blocks(load_model(tiny GPT-BigCode dir)[0])",
        lambda fx: __import__("avsslib.arch").arch.blocks(_load("foreign_arch")(fx)[0]),
    ),
    _api(
        "api-model-remote-code",
        "safety",
        "ModelError",
        ["--trust-remote-code"],
        "load_model(dir whose config has auto_map -> evil.py)",
        _load("remote_code"),
    ),
    # ------------------------------------------------ impossible parameters
    _cli(
        "score-fraction-above-1",
        "parameters",
        _score("p1", *C, "--fraction", "1.5"),
        ["--fraction 1.5"],
    ),
    _cli("score-fraction-0", "parameters", _score("p2", *C, "--fraction", "0"), ["--fraction 0.0"]),
    _cli("score-n-0", "parameters", _score("p3", "--n", "0"), ["--n 0"]),
    _cli("score-negative-seed", "parameters", _score("p4", *C, "--seed", "-1"), ["--seed -1"]),
    _cli(
        "score-negative-calib-seed",
        "parameters",
        _score("p5", *C, "--calib-seed", "-3"),
        ["--calib-seed -3"],
    ),
    _cli("score-eps-0", "parameters", _score("p6", *C, "--eps", "0"), ["--eps 0.0"]),
    _cli("score-eps-negative", "parameters", _score("p7", *C, "--eps=-1e-5"), ["--eps -1e-05"]),
    _cli("score-batch-size-0", "parameters", _score("p8", "--batch-size", "0"), ["--batch-size 0"]),
    _cli(
        "score-unknown-score", "parameters", _score("p9", *C, "--scores", "avss,nope"), ["'nope'"]
    ),
    _cli(
        "score-unknown-calib",
        "parameters",
        _score("p10", *C, "--calib", "nope"),
        ["'nope'", "known datasets"],
    ),
    _cli(
        "score-unknown-split",
        "parameters",
        _score("p11", *C, "--split", "nope"),
        ["'nope'", "valid splits"],
    ),
    _cli(
        "score-longer-than-context",
        "parameters",
        _score("p12", "--n", "4", "--seq-len", "1000", "--quiet"),
        [f"context of {CONTEXT} tokens", "--seq-len"],
    ),
    _cli(
        "prune-layer-out-of-range",
        "parameters",
        ("prune", "--model", T, "--layers", "99", "--out", "{out}/p13"),
        ["[99]", "4 blocks"],
    ),
    _cli(
        "prune-every-layer",
        "parameters",
        ("prune", "--model", T, "--layers", "0,1,2,3", "--out", "{out}/p14"),
        ["all 4 blocks"],
    ),
    _cli(
        "prune-layers-not-integers",
        "parameters",
        ("prune", "--model", T, "--layers", "a,b", "--out", "{out}/p15"),
        ["--layers 'a,b'"],
    ),
    _cli(
        "prune-fraction-1",
        "parameters",
        ("prune", "--model", T, "--fraction", "1", "--out", "{out}/p16"),
        ["--fraction 1.0"],
    ),
    _cli(
        "prune-unknown-rule",
        "parameters",
        ("prune", "--model", T, "--rule", "nope", "--out", "{out}/p17"),
        ["--rule", "'nope'"],
    ),
    _cli(
        "prune-scores-is-a-directory",
        "paths",
        ("prune", "--model", T, "--from-scores", "{a_directory}", "--out", "{out}/p18"),
        ["{a_directory}", "no such file"],
    ),
    _cli(
        "eval-unknown-task",
        "parameters",
        ("eval", "--model", T, "--tasks", "nope", "--out", "{out}/p19"),
        ["'nope'", "known tasks"],
    ),
    _cli(
        "eval-n-0",
        "parameters",
        ("eval", "--model", T, "--tasks", "sciq_mc", "--n", "0", "--out", "{out}/p20"),
        ["n = 0"],
    ),
    _cli(
        "mitigate-layer-out-of-range",
        "parameters",
        ("mitigate", "--model", T, "--layers", "9", "--n-eval", "2", "--out", "{out}/p21"),
        ["[9]", "0..3"],
    ),
    _cli(
        "mitigate-layers-file-not-json",
        "data",
        ("mitigate", "--model", T, "--layers-from", "{bad_json}", "--out", "{out}/p22"),
        ["{bad_json}", "not readable JSON"],
    ),
    _cli(
        "mitigate-n-eval-0",
        "parameters",
        ("mitigate", "--model", T, "--layers", "1", "--n-eval", "0", "--out", "{out}/p23"),
        ["--n-eval"],
    ),
    _cli(
        "hallucination-n-0",
        "parameters",
        ("hallucination", "--model", T, "--n", "0", "--out", "{out}/p24"),
        ["--n 0"],
    ),
    _cli(
        "hallucination-unknown-dataset",
        "parameters",
        ("hallucination", "--model", T, "--datasets", "nope", "--out", "{out}/p25"),
        ["'nope'"],
    ),
    _cli(
        "study-fraction-2",
        "parameters",
        ("study", "--model", T, "--quick", "--fraction", "2", "--out", "{out}/p26"),
        ["--fraction 2.0"],
    ),
    _cli(
        "study-negative-seed",
        "parameters",
        ("study", "--model", T, "--quick", "--seed", "-5", "--out", "{out}/p27"),
        ["--seed -5"],
    ),
    _cli(
        "prune-out-exists",
        "parameters",
        ("prune", "--model", T, "--layers", "1", "--out", "{empty_dir}"),
        ["{empty_dir}", "--overwrite"],
    ),
    # ------------------------------------------------ interrupted runs and concurrent writers
    _cli(
        "mitigate-interrupted-run",
        "interrupted",
        ("mitigate", "--model", T, "--layers", "1", "--out", "{interrupted}"),
        ["{interrupted}", "checkpoint.pt", "--resume"],
    ),
    _cli("out-is-a-file", "paths", _score("{bad_json}", *C), ["{bad_json} is a file"]),
    _cli(
        "out-under-a-file",
        "paths",
        _score("{bad_json}/results", *C),
        ["{bad_json}/results", "writable"],
    ),
    _cli(
        "results-dir-in-use",
        "concurrency",
        _score("{busy}", *C),
        ["results directory {busy} is in use", "PID"],
        locked="busy",
    ),
    _api(
        "api-fraction-outside",
        "parameters",
        "ConfigError",
        ["1.5"],
        "select_layers(np.ones(4), 1.5)",
        lambda fx: __import__("avsslib.selection").selection.select_layers(np.ones(4), 1.5),
    ),
    _api(
        "api-n-0",
        "parameters",
        "ConfigError",
        ["n = 0"],
        "load_dataset('nq_open', n=0)",
        lambda fx: __import__("avsslib.data").data.load_dataset("nq_open", n=0),
    ),
    _api(
        "api-negative-sample-seed",
        "parameters",
        "ConfigError",
        ["seed = -1"],
        "load_dataset('nq_open', n=5, seed=-1)",
        lambda fx: __import__("avsslib.data").data.load_dataset("nq_open", n=5, seed=-1),
    ),
    _api(
        "api-negative-seed",
        "parameters",
        "ConfigError",
        ["seed = -1"],
        "set_seed(-1)",
        lambda fx: __import__("avsslib.seeding").seeding.set_seed(-1),
    ),
    _api(
        "api-eps-0",
        "parameters",
        "ConfigError",
        ["eps"],
        "LayerStats(eps=0.0)",
        lambda fx: __import__("avsslib.stats").stats.LayerStats(eps=0.0),
    ),
    _api(
        "api-prune-too-many",
        "parameters",
        "ConfigError",
        ["out of range"],
        "prune_layers_(tiny model, [7])",
        lambda fx: __import__("avsslib.prune").prune.prune_layers_(_tiny(fx)[0], [7]),
    ),
    _api(
        "api-train-layers",
        "parameters",
        "ConfigError",
        ["0..3"],
        "TrainConfig(layers=(1, 9)).validate(4)",
        lambda fx: __import__("avsslib.mitigate").mitigate.TrainConfig(layers=(1, 9)).validate(4),
    ),
    # ------------------------------------------------ sequences, batches, statistics
    _api(
        "api-longer-than-context",
        "statistics",
        "ConfigError",
        [f"context of {CONTEXT} tokens"],
        f"LayerStats().fit(tiny model, [1 x {CONTEXT + 36} tokens])",
        _fit(lambda: {"input_ids": _ids(1, CONTEXT + 36)}),
    ),
    _api(
        "api-all-padding-batch",
        "statistics",
        "ConfigError",
        ["all-padding"],
        "LayerStats().fit(tiny model, [batch with attention_mask all 0])",
        _fit(lambda: {"input_ids": _ids(2, 8), "attention_mask": _ids(2, 8, 0)}),
    ),
    _api(
        "api-stats-nan",
        "statistics",
        "AvssError",
        ["NaN at layers [0]"],
        "avss_values([nan, 1], [0.1, 0.1])",
        lambda fx: __import__("avsslib.scores").scores.avss_values([math.nan, 1.0], [0.1, 0.1]),
    ),
    _api(
        "api-stats-inf",
        "statistics",
        "AvssError",
        ["infinite at layers [1]", "float32"],
        "avss_values([1, inf], [0.1, 0.1])",
        lambda fx: __import__("avsslib.scores").scores.avss_values([1.0, math.inf], [0.1, 0.1]),
    ),
    _api(
        "api-stats-zero",
        "statistics",
        "AvssError",
        ["positive sum"],
        "avss_values([0, 0], [0.1, 0.1])",
        lambda fx: __import__("avsslib.scores").scores.avss_values([0.0, 0.0], [0.1, 0.1]),
    ),
    _api(
        "api-fp16-overflow",
        "statistics",
        "AvssError",
        ["NaN at layers [2, 3]", "float16"],
        "score('avss', LayerStats().fit(float16 tiny model whose block 2 overflows, ...))",
        _fp16_overflow,
    ),
    _api(
        "api-importance-nan",
        "statistics",
        "ConfigError",
        ["NaN at layers [2]"],
        "select_layers([1, 2, nan, 4], 0.25)",
        lambda fx: __import__("avsslib.selection").selection.select_layers(
            [1, 2, math.nan, 4], 0.25
        ),
    ),
    # ------------------------------------------------ data
    _cli(
        "data-missing-dir",
        "data",
        _score("d1", *C),
        ["{nowhere}", "does not exist"],
        env={"AVSS_DATA_DIR": "{nowhere}"},
    ),
    _cli(
        "data-empty-calibration-file",
        "data",
        _score("d2", *C),
        ["wiki.valid.tokens", "empty"],
        env={"AVSS_DATA_DIR": "{empty_wikitext}"},
    ),
    _cli(
        "data-malformed",
        "data",
        ("data", "nq_open", "--data-dir", "{bad_nq}"),
        ["NQ-open.dev.jsonl, line 1", "invalid JSON"],
    ),
    _cli(
        "data-escape-symlink",
        "safety",
        ("data", "nq_open", "--data-dir", "{escape}"),
        ["outside the data directory"],
    ),
    _cli("data-show-negative", "parameters", ("data", "nq_open", "--show", "-1"), ["--show -1"]),
    _api(
        "api-data-unreadable",
        "data",
        "DataError",
        ["{a_directory}", "cannot be read"],
        "avsslib.data._io.read_text(Path('$TMP/a_directory.csv'))  # a directory",
        lambda fx: __import__("avsslib.data._io").data._io.read_text(fx["a_directory"]),
    ),
    _api(
        "api-data-unknown",
        "data",
        "DataError",
        ["'nope'", "known datasets"],
        "load_dataset('nope')",
        lambda fx: __import__("avsslib.data").data.load_dataset("nope"),
    ),
    _api(
        "api-data-escape-dotdot",
        "safety",
        "DataError",
        ["outside the data directory"],
        "safe_path(data_dir, '../outside.jsonl')",
        lambda fx: __import__("avsslib.data._io").data._io.safe_path(
            fx["escape"], "../outside.jsonl"
        ),
    ),
    _api(
        "api-data-escape-symlink",
        "safety",
        "DataError",
        ["outside the data directory"],
        "load_dataset('nq_open', data_dir=dir whose NQ file links outside)",
        lambda fx: __import__("avsslib.data").data.load_dataset("nq_open", data_dir=fx["escape"]),
    ),
]
"""The bad inputs; ``test_bad_input`` runs each, the ``--table`` script writes their messages."""

LOADERS = ("nq_open", "triviaqa", "sciq", "sciq_mc", "truthfulqa", "wikiqa", "wikitext2", "sst2")
"""Every dataset loader (``test_every_loader_refuses_broken_files`` checks the list is complete)."""


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def fx(tmp_path_factory, data_dir):
    return build_fixtures(tmp_path_factory.mktemp("hardening"))


def _fmt(text: str, fx) -> str:
    return text.format(**{k: str(v) for k, v in fx.items()})


# ---------------------------------------------------------------- 1. bad input


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, fx):
    outcome = case.run(fx)
    assert outcome.status == case.status, (outcome.status, outcome.message)
    for part in case.expect:
        assert _fmt(part, fx) in outcome.message, (part, outcome.message)
    if case.argv is not None:
        assert outcome.code not in (0, None)
        assert "Traceback" not in outcome.message
        command = case.argv[0]
        errors = [line for line in outcome.message.splitlines() if "error:" in line]
        assert len(errors) == 1 and errors[0].startswith(f"avss {command}: error: "), (
            outcome.message
        )
    else:
        assert isinstance(outcome.error, AvssError)


def test_debug_shows_the_traceback(fx):
    import torch

    from avsslib.cli import main

    try:
        with pytest.raises(ModelError, match="does not exist"):
            main(
                ["--debug", "score", "--model", str(fx["nowhere"]), "--out", str(fx["out"] / "dbg")]
            )
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", LOADERS)
def test_every_loader_refuses_broken_files(name, variant, tmp_path, data_dir):
    from avsslib.data import DATASETS

    assert set(LOADERS) == set(DATASETS)
    outcome = _broken_file(tmp_path, name, variant)
    assert isinstance(outcome.error, DataError), outcome
    message = outcome.message
    assert default_files(name)[0].split("/")[-1] in message  # names the file
    assert "\n" not in message.strip() and "Traceback" not in message


def _broken_file(base: Path, name: str, variant: str):
    """``load_dataset(name, data_dir=...)`` on a folder whose first file is broken."""
    from hardening_fixtures import broken_data_dir, run_api

    from avsslib.data import load_dataset

    root = broken_data_dir(base, name, variant)
    return run_api(lambda: load_dataset(name, data_dir=root))


def test_remote_code_is_not_run_without_the_flag(fx, monkeypatch):
    """The fixture's code is live (importing it leaves a marker), yet neither load_model nor the
    CLI runs it; ``--trust-remote-code`` reaches load_model."""
    import importlib.util

    import avsslib.models
    from avsslib.models import load_model

    marker = fx["remote_code"] / "REMOTE_CODE_RAN"
    for call in (
        lambda: load_model(fx["remote_code"]),
        lambda: run_cli(
            ["score", "--model", str(fx["remote_code"]), "--out", str(fx["out"] / "rc")]
        ),
    ):
        try:
            call()
        except ModelError:
            pass
        assert not marker.exists()
    spec = importlib.util.spec_from_file_location("evil_probe", fx["remote_code"] / "evil.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    assert marker.exists()  # so the refusal above is what kept it from running
    marker.unlink()

    seen = {}

    def fake_load_model(name, **kwargs):
        seen.update(kwargs)
        raise ModelError("stop here")

    monkeypatch.setattr(avsslib.models, "load_model", fake_load_model)
    for argv in (
        ["score"],
        ["prune"],
        ["eval", "--tasks", "sciq_mc"],
        ["hallucination"],
        ["mitigate", "--layers", "1"],
    ):
        for flag, expected in ((["--trust-remote-code"], True), ([], False)):
            seen.clear()
            outcome = run_cli([*argv, "--model", "x", "--out", str(fx["out"] / "trc"), *flag])
            assert seen.get("trust_remote_code") is expected, (argv, outcome.message)
            assert not (fx["out"] / "trc").exists()  # the failed run left no empty folder


# ---------------------------------------------------------------- 2. concurrent writers


ALL_WRITERS = {
    "score": ["score", "--model", "x"],
    "prune": ["prune", "--model", "x", "--layers", "1"],
    "eval": ["eval", "--model", "x", "--tasks", "sciq_mc"],
    "study": ["study", "--model", "x", "--quick"],
    "hallucination": ["hallucination", "--model", "x"],
    "mitigate": ["mitigate", "--model", "x", "--layers", "1"],
}


@pytest.mark.parametrize("command", list(ALL_WRITERS))
def test_second_writer_is_refused(command, tmp_path):
    from avsslib.report import results_lock

    out = tmp_path / "results"
    lock = tmp_path / ".results.avss.lock" if command == "prune" else None
    with results_lock(out, lock_file=lock):
        outcome = run_cli([*ALL_WRITERS[command], "--out", str(out)])
    assert outcome.code == 2
    assert f"results directory {out} is in use" in outcome.message
    assert f"PID {os.getpid()}" in outcome.message and "--out" in outcome.message
    assert not (out / ".avss.lock").exists() and not (lock and lock.exists())  # released


def test_lock_held_by_another_process(tmp_path):
    """A real second process holds the lock: refused with its PID; once it is killed (no clean
    exit) the directory is free again."""
    out = tmp_path / "results"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\nfrom avsslib.report import results_lock\n"
            f"with results_lock({str(out)!r}):\n    print('locked', flush=True)\n    sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        outcome = run_cli(["score", "--model", "x", "--out", str(out)])
        assert outcome.code == 2 and f"PID {holder.pid}" in outcome.message
    finally:
        holder.kill()
        holder.wait()
    from avsslib.report import results_lock

    (out / ".layer_stats.csv.abcd1234.tmp").write_text("half")  # left by a killed writer
    (out / "figures").mkdir()
    (out / "figures" / ".layer_profile.abcd_123.png").write_bytes(b"half")
    (out / "keep.tmp").write_text("not ours")
    with results_lock(out):
        assert sorted(p.name for p in out.rglob("*")) == [".avss.lock", "figures", "keep.tmp"]


# ---------------------------------------------------------------- 2. interrupted runs


def _avss(argv, *, kill_at=None, nth=1, after=False, timeout=300):
    env = subprocess_env()
    if kill_at:
        env.update(AVSS_KILL_AT=kill_at, AVSS_KILL_NTH=str(nth))
        if after:
            env["AVSS_KILL_AFTER"] = "1"
    return subprocess.run(
        [sys.executable, "-c", KILL_HOOK, *map(str, argv)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_score_killed_mid_write_keeps_the_previous_files(fx, tmp_path):
    import pandas as pd

    out = tmp_path / "score"
    base = [
        "score",
        "--model",
        fx["tiny"],
        "--seq-len",
        "16",
        "--batch-size",
        "2",
        "--quiet",
        "--out",
        out,
    ]
    first = run_cli([*map(str, base), "--n", "4"])  # in this process: only the kill needs one
    assert first.code == 0, first.message
    before = _files(out)
    killed = _avss([*base, "--n", "6"], kill_at="layer_stats.json")
    assert killed.returncode == -signal.SIGKILL
    after = _files(out)
    tmp = [name for name in after if name.startswith(".layer_stats.json.")]
    assert len(tmp) == 1  # killed with the new file not yet in place
    for name in ("layer_stats.json", "record.json", "record.md", "figures/layer_profile.png"):
        assert after[name] == before[name], name  # the previous complete files
    for name in ("layer_stats.csv", "batch_stats.csv"):  # already replaced, but whole
        assert len(pd.read_csv(out / name)) > 0
    assert json.loads(after["record.json"])["config"]["n"] == 4

    again = run_cli([*map(str, base), "--n", "6"])
    assert again.code == 0, again.message
    final = _files(out)
    assert not [n for n in final if n.split("/")[-1].startswith(".")]  # temporaries and lock gone
    assert json.loads(final["record.json"])["config"]["n"] == 6
    assert json.loads(final["layer_stats.json"])["calibration"]["n_texts"] == 6


@pytest.mark.slow
def test_prune_killed_between_the_renames_restores_the_previous_model(fx, tmp_path):
    from avsslib.arch import blocks
    from avsslib.models import load_model

    out = tmp_path / "pruned"
    base = ["prune", "--model", str(fx["tiny"]), "--out", str(out)]
    assert run_cli([*base, "--layers", "1"]).code == 0
    killed = _avss([*base, "--layers", "2", "--overwrite"], kill_at=".stale-", after=True)
    assert killed.returncode == -signal.SIGKILL
    assert not out.exists() and len(list(tmp_path.glob(".pruned.stale-*"))) == 1
    assert len(list(tmp_path.glob(".pruned.tmp-*"))) == 1  # the new model, never swapped in

    refused = run_cli([*base, "--layers", "99", "--overwrite"])  # fails, after tidying up
    assert refused.code == 2 and "out of range" in refused.message
    assert json.loads((out / "selection.json").read_text())["pruned_layers"] == [1]
    assert len(blocks(load_model(out)[0])) == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    assert run_cli([*base, "--layers", "2", "--overwrite"]).code == 0
    assert json.loads((out / "selection.json").read_text())["pruned_layers"] == [2]


@pytest.mark.slow
def test_mitigate_killed_mid_checkpoint_resumes(fx, tmp_path):
    out = tmp_path / "mit"
    argv = [
        "mitigate",
        "--model",
        fx["tiny"],
        "--dataset",
        "truthfulqa",
        "--layers",
        "1,2",
        "--n-train",
        "4",
        "--batch-size",
        "2",
        "--grad-accum",
        "1",
        "--epochs",
        "2",
        "--eval-tasks",
        "truthfulqa_mc1",
        "--n-eval",
        "2",
        "--kl-texts",
        "0",
        "--ppl-windows",
        "0",
        "--n-boot",
        "10",
        "--checkpoint-every",
        "1",
        "--out",
        out,
    ]
    killed = _avss(argv, kill_at="checkpoint.pt", nth=3)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    import torch

    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 2 and len(state["history"]) == 2  # the last complete checkpoint
    assert (out / "before.json").exists() and not (out / "metrics.json").exists()

    argv = list(map(str, argv))
    refused = run_cli(argv)
    assert (
        refused.code == 2 and "--resume" in refused.message and "Traceback" not in refused.message
    )
    resumed = run_cli([*argv, "--resume"])
    assert resumed.code == 0, resumed.message
    training = json.loads((out / "metrics.json").read_text())["training"]
    assert training["resumed_from"] == 2 and training["steps"] == 4 and training["steps_run"] == 2
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------- 3. determinism


@pytest.mark.slow
def test_same_score_command_gives_identical_files(tmp_path, data_dir):
    """``avss score`` twice, in two processes, on the embedded model (4 texts of 32 tokens; the
    scores computed from the statistics): every result file is byte-identical; record.json
    differs only under "timing" and in the output path, record.md only in those."""
    runs = []
    for name in ("a", "b"):
        done = _avss(
            [
                "score",
                "--model",
                "smollm2-135m",
                "--n",
                "4",
                "--seq-len",
                "32",
                "--batch-size",
                "2",
                "--scores",
                "avss,block_influence",
                "--seed",
                "3",
                "--quiet",
                "--out",
                tmp_path / name,
            ]
        )
        assert done.returncode == 0, done.stderr
        runs.append(_files(tmp_path / name))
    a, b = runs
    assert a.keys() == b.keys() and {"layer_stats.csv", "record.json"} <= a.keys()
    for name in a:
        if name == "record.json":
            ra, rb = json.loads(a[name]), json.loads(b[name])
            assert ra.pop("timing") != rb.pop("timing")  # the timings are there, and differ
            ra["config"].pop("out"), rb["config"].pop("out")
            ra["command"] = ra["command"].replace(str(tmp_path / "a"), "OUT")
            rb["command"] = rb["command"].replace(str(tmp_path / "b"), "OUT")
            assert ra == rb
        elif name == "record.md":

            def strip(text):
                return [
                    line.replace(str(tmp_path / "a"), "OUT").replace(str(tmp_path / "b"), "OUT")
                    for line in text.decode().splitlines()
                    if "**Started:**" not in line
                ]

            assert strip(a[name]) == strip(b[name])
        else:
            assert a[name] == b[name], name


# ---------------------------------------------------------------- the table


def write_table(path: Path) -> None:
    """Run :data:`CASES` on fresh fixtures and write the markdown table of inputs and messages."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp).resolve()
        fx = build_fixtures(base)
        lines = [
            "| # | topic | bad input | result | first line of the message |",
            "|---|---|---|---|---|",
        ]
        for i, case in enumerate(CASES, 1):
            t0 = time.perf_counter()
            outcome = case.run(fx)
            ok = outcome.status == case.status and all(
                _fmt(p, fx) in outcome.message for p in case.expect
            )
            first = outcome.first_line
            if case.argv is not None:
                first = next((x for x in outcome.message.splitlines() if "error:" in x), first)
            first = first.replace(str(base), "$TMP").replace("|", "\\|")
            shown = case.describe(fx, base).replace("|", "\\|")
            flag = "" if ok else " **(unexpected)**"
            lines.append(f"| {i} | {case.topic} | `{shown}` | {outcome.status}{flag} | {first} |")
            print(
                f"{case.id}: {outcome.status} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr
            )
        i = len(CASES)
        for name in LOADERS:
            for variant in VARIANTS:
                i += 1
                outcome = _broken_file(base / "loaders", name, variant)
                flag = "" if isinstance(outcome.error, DataError) else " **(unexpected)**"
                first = outcome.first_line.replace(str(base), "$TMP").replace("|", "\\|")
                shown = f"load_dataset({name!r}, data_dir=<{default_files(name)[0]}: {variant}>)"
                lines.append(
                    f"| {i} | data ({variant}) | `{shown}` | {outcome.status}{flag} | {first} |"
                )
        path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--table":
        sys.exit("usage: python tests/test_hardening.py --table OUT.md")
    os.environ.setdefault("AVSS_DATA_DIR", str(shared_data()))
    write_table(Path(sys.argv[2]))
