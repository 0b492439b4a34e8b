"""The reproduction driver: stage planning, resume (skip finished stages), summaries.

The stages themselves are the library pipelines tested elsewhere; here the driver's one step that
runs them, ``avsslib.reproduce.execute``, is replaced by a recorder that sees each stage's
recorded ``avss`` command line and writes its finished marker, so the driver's own logic is
tested in milliseconds. Each stage's configuration is held to the one ``avss`` would build from
that command line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from avsslib import reproduce as rp
from avsslib import reproduce_plan
from avsslib.errors import ConfigError
from avsslib.reproduce_plan import STAGE_SETTINGS as STAGE


def _executor(main):
    """An ``execute(stage)`` that hands the stage's argv to ``main`` (an ``avss``-like callable
    returning an exit status) and raises for a nonzero one, as a failing pipeline would."""

    def execute(stage):
        code = main(stage.argv)
        if code:
            raise ConfigError(f"exit status {code}")

    return execute


def _use(monkeypatch, main):
    monkeypatch.setattr(rp, "execute", _executor(main))


def _eavss_dir(root: Path) -> None:
    (root / "eavss" / "labels").mkdir(parents=True)
    (root / "eavss" / "prone_layers.json").write_text(
        json.dumps({"prone": {"truthfulqa": {"P": {"layers": [3, 7]}, "C": {"layers": [1, 2]}}}})
    )
    rows = [
        {"id": "a", "question": "Q1?", "answer": "wrong", "label": "hallucinated"},
        {"id": "b", "question": "Q2?", "answer": "right", "label": "truthful"},
    ]
    (root / "eavss" / "labels" / "truthfulqa.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows)
    )


class Recorder:
    """Stands in for the pipelines: records argv, writes the stage's finished marker."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail_on = fail_on

    def __call__(self, argv: list[str]) -> int:
        self.calls.append(list(argv))
        if self.fail_on and self.fail_on in argv:
            return 2
        out = Path(argv[argv.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        if argv[0] == "hallucination":
            _eavss_dir(out.parent) if not (out / "prone_layers.json").exists() else None
        if argv[0] == "mitigate":
            seed = int(argv[argv.index("--seed") + 1])
            before = 0.5
            after = before + 0.01 * (seed + 1) * (argv[argv.index("--mode") + 1] == "eavss")
            (out / "metrics.json").write_text(
                json.dumps(
                    {
                        "change": [
                            {
                                "task": "truthfulqa_mc2",
                                "metric": "acc",
                                "before": before,
                                "after": after,
                                "delta_abs": after - before,
                                "delta_rel": (after - before) / before,
                                "abs_ci_low": -0.1,
                                "abs_ci_high": 0.1,
                                "rel_ci_low": -0.2,
                                "rel_ci_high": 0.2,
                                "n": 12,
                            }
                        ],
                        "side_effects": {"kl_to_base": {"value": 0.01}},
                        "training": {"layers": [3, 7]},
                    }
                )
            )
        else:
            (out / "record.json").write_text("{}")
        return 0


def _label_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    import avsslib.labels as labels

    def read(path):
        return [SimpleNamespace(**json.loads(line)) for line in Path(path).read_text().splitlines()]

    monkeypatch.setattr(labels, "read_labels", read)


def test_full_pipeline_order_resume_and_summary(tmp_path, monkeypatch):
    _label_reader(monkeypatch)
    rec = Recorder()
    _use(monkeypatch, rec)
    scale = rp.SCALES["ci"]
    log = rp.reproduce(
        "smollm2-135m",
        tmp_path,
        scale,
        device="cpu",
        progress=False,
        overrides={"seeds": (0, 1), "modes": ("eavss", "random", "avss")},
    )
    names = [c[0] for c in rec.calls]
    assert names == ["study", "hallucination"] + ["mitigate"] * 6
    # seed-major order: every mode of seed 0 before seed 1
    seeds = [c[c.index("--seed") + 1] for c in rec.calls[2:]]
    assert seeds == ["0", "0", "0", "1", "1", "1"]
    eavss = rec.calls[2]
    assert eavss[eavss.index("--layers") + 1] == "3,7"  # family P by default
    random_call = rec.calls[3]
    assert random_call[random_call.index("--k") + 1] == "2"  # same k as the prone set
    avss_call = rec.calls[4]
    assert avss_call[avss_call.index("--layers-from") + 1].endswith("avss/layer_stats.csv")
    negatives = json.loads(
        (tmp_path / "smollm2-135m" / "mitigation" / "truthfulqa" / "own_negatives.json").read_text()
    )
    assert negatives == [["Q1?", "wrong"]]  # hallucinated answers only
    assert all(v["status"] == "done" for v in log["stages"].values())
    on_disk = json.loads((tmp_path / "smollm2-135m" / "reproduce.json").read_text())
    assert all(
        v["device"].startswith("cpu") and v["scale"] == "custom" for v in on_disk["stages"].values()
    )
    assert on_disk["devices"] == [on_disk["device"]]

    summary = pd.read_csv(tmp_path / "smollm2-135m" / "mitigation" / "summary.csv")
    assert len(summary) == 6 and set(summary["mode"]) == {"eavss", "random", "avss"}
    modes = pd.read_csv(tmp_path / "smollm2-135m" / "mitigation" / "summary_modes.csv").set_index(
        "mode"
    )
    assert modes.loc["eavss", "seeds"] == 2
    assert modes.loc["eavss", "delta_abs_mean"] == pytest.approx(0.015)
    assert modes.loc["random", "delta_abs_mean"] == pytest.approx(0.0)

    # a second run finds everything finished and runs nothing
    rec2 = Recorder()
    _use(monkeypatch, rec2)
    rp.reproduce(
        "smollm2-135m",
        tmp_path,
        scale,
        device="cpu",
        progress=False,
        overrides={"seeds": (0, 1), "modes": ("eavss", "random", "avss")},
    )
    assert rec2.calls == []


def test_interrupted_run_resumes_the_missing_stages(tmp_path, monkeypatch):
    _label_reader(monkeypatch)
    rec = Recorder(fail_on="random")
    _use(monkeypatch, rec)
    with pytest.raises(ConfigError, match="mitigate truthfulqa random seed 0"):
        rp.reproduce("m", tmp_path, "ci", device="cpu", progress=False)
    log = json.loads((tmp_path / "m" / "reproduce.json").read_text())
    assert log["stages"]["mitigate truthfulqa random seed 0"]["status"].startswith("failed")
    rec2 = Recorder()
    _use(monkeypatch, rec2)
    rp.reproduce("m", tmp_path, "ci", device="cpu", progress=False)
    assert [(c[0], c[c.index("--mode") + 1] if "--mode" in c else None) for c in rec2.calls] == [
        ("mitigate", "random")
    ]


def test_drop_weights_and_checkpoint_resume_flag(tmp_path, monkeypatch):
    _label_reader(monkeypatch)
    out = tmp_path / "m" / "mitigation" / "truthfulqa" / "eavss-seed0"
    out.mkdir(parents=True)
    (out / "checkpoint.pt").write_bytes(b"x")
    rec = Recorder()

    def main(argv):
        code = rec(argv)
        if argv[0] == "mitigate":
            (Path(argv[argv.index("--out") + 1]) / "trained_layers.safetensors").write_bytes(b"w")
        return code

    _use(monkeypatch, main)
    rp.reproduce(
        "m", tmp_path, "ci", device="cpu", progress=False, overrides={"keep_weights": False}
    )
    eavss = [c for c in rec.calls if c[0] == "mitigate" and "eavss" in c][0]
    assert "--resume" in eavss  # a checkpoint was there: continue from it
    assert (
        not (out / "checkpoint.pt").exists() and not (out / "trained_layers.safetensors").exists()
    )
    assert (out / "metrics.json").exists()


def test_missing_prone_layers_and_bad_scale_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="scale 'huge'"):
        rp.reproduce("m", tmp_path, "huge", progress=False)
    with pytest.raises(ConfigError, match="stages"):
        rp.reproduce("m", tmp_path, "ci", stages=("train",), progress=False)
    (tmp_path / "eavss").mkdir()
    (tmp_path / "eavss" / "prone_layers.json").write_text(json.dumps({"prone": {"sciq": {}}}))
    with pytest.raises(ConfigError, match="no prone layers for dataset 'truthfulqa'"):
        reproduce_plan._prone_layers(tmp_path / "eavss", "truthfulqa", "P", None)


def test_wikiqa_mitigation_trains_on_its_train_split(tmp_path, monkeypatch):
    _label_reader(monkeypatch)
    root = tmp_path / "smollm2-135m"
    _eavss_dir(root)
    prone = json.loads((root / "eavss" / "prone_layers.json").read_text())
    prone["prone"]["wikiqa"] = {"P": {"layers": [2]}}
    labels = root / "eavss" / "labels"
    (labels / "wikiqa.jsonl").write_text((labels / "truthfulqa.jsonl").read_text())
    (root / "eavss" / "prone_layers.json").write_text(json.dumps(prone))
    scale = rp.replace(rp.SCALES["ci"], mitigation_datasets=("truthfulqa", "wikiqa"), seeds=(0,))
    stages = rp.mitigation_stages("smollm2-135m", tmp_path, scale, device="cpu", dtype="float32")
    split = {
        s.name.split()[1]: (s.argv[s.argv.index("--split") + 1] if "--split" in s.argv else None)
        for s in stages
    }
    assert split == {"truthfulqa": None, "wikiqa": "train"}
    own = {s.name.split()[1]: "--own-negatives" in s.argv for s in stages}
    assert own == {"truthfulqa": True, "wikiqa": False}  # labels are of WikiQA's test split


def test_model_slug():
    assert rp.model_slug("smollm2-135m") == "smollm2-135m"
    assert rp.model_slug("Qwen/Qwen2.5-7B/") == "Qwen2.5-7B"
    assert rp.model_slug("/models/my model") == "my_model"


def test_finished_stage_with_other_settings_is_refused(tmp_path, monkeypatch):
    _label_reader(monkeypatch)
    _use(monkeypatch, Recorder())
    rp.reproduce("m", tmp_path, "ci", device="cpu", progress=False, stages=("study",))
    assert (
        json.loads((tmp_path / "m" / "avss" / rp.STAGE_SETTINGS).read_text())["argv"][0] == "study"
    )
    # the same settings on another device: still finished, nothing runs
    rec = Recorder()
    _use(monkeypatch, rec)
    rp.reproduce("m", tmp_path, "ci", device="cuda", progress=False, stages=("study",))
    assert rec.calls == []
    with pytest.raises(ConfigError, match=r"other settings .*--sweep-fractions"):
        rp.reproduce(
            "m",
            tmp_path,
            "ci",
            device="cpu",
            progress=False,
            stages=("study",),
            overrides={"study": {"quick": True, "sweep_fractions": (0.5,)}},
        )
    with pytest.raises(ConfigError, match="-> other/m"):  # a second model, same folder
        rp.reproduce("other/m", tmp_path, "ci", device="cpu", progress=False, stages=("study",))


def test_summary_skips_folders_that_are_not_runs(tmp_path):
    stray = tmp_path / "mitigation" / "truthfulqa" / "eavss-seed0-old"
    stray.mkdir(parents=True)
    (stray / "metrics.json").write_text("{}")
    assert rp.summarise(tmp_path) is None


def test_results_tables_read_the_committed_runs(capsys, monkeypatch):
    """tools/results_tables.py (closing-note tables) reads every committed result file kind."""
    import runpy
    import sys

    root = Path(__file__).resolve().parent.parent
    monkeypatch.setattr(sys, "argv", ["results_tables.py", "--results", str(root / "results")])
    runpy.run_path(str(root / "tools" / "results_tables.py"), run_name="__main__")
    out = capsys.readouterr().out
    from avsslib.plots import fmt_ci

    assert out.startswith("Verdicts:")
    for model in ("smollm2-135m", "qwen2.5-coder-1.5b"):
        assert f"| {model} | AVSS (count rule) |" in out
        assert f"| {model} | TruthfulQA MC1 accuracy | eavss |" in out
    retention = pd.read_csv(root / "results" / "smollm2-135m" / "avss" / "retention.csv")
    row = retention[
        (retention["config"] == "avss-count")
        & (retention["task"] == "sciq_mc")
        & (retention["metric"] == "acc")
    ].iloc[0]
    assert fmt_ci(row.retention, row.ci_low, row.ci_high) in out
    assert "speed-up" in out and "Hallucination rates" in out and "Prone minus random" in out


class FoldRecorder(Recorder):
    """A recorder for the k-fold protocol: the hallucination stage writes per-fold prone layers
    and probes; a mitigation run scores its fold's questions (eavss +0.1 over the others)."""

    FOLD_IDS = (["a", "b"], ["c", "d"])

    def __call__(self, argv: list[str]) -> int:
        self.calls.append(list(argv))
        out = Path(argv[argv.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        if argv[0] == "hallucination" and "--folds" in argv:
            (out / "prone_layers.json").write_text(
                json.dumps(
                    {
                        "prone": {},
                        "folds": {
                            "prone": {"truthfulqa": {"P": [{"layers": [1, 2]}, {"layers": [3, 4]}]}}
                        },
                    }
                )
            )
            (out / "probe_layers.json").write_text("{}")
        if argv[0] != "mitigate":
            (out / "record.json").write_text("{}")
            return 0
        fold, mode = int(argv[argv.index("--fold") + 1]), argv[argv.index("--mode") + 1]
        ids = self.FOLD_IDS[fold]
        before = [0.25, 0.5]

        def result(values):
            return {
                "tasks": {
                    "truthfulqa_mc2": {
                        "ids": ids,
                        "protocol": {},
                        "metrics": {
                            "acc": {
                                "value": sum(values) / 2,
                                "kind": "mean",
                                "higher_is_better": True,
                                "per_example": values,
                            }
                        },
                    }
                }
            }

        after = [v + (0.1 if mode == "eavss" else 0.0) for v in before]
        (out / "metrics.json").write_text(
            json.dumps({"before": result(before), "after": result(after)})
        )
        return 0


def test_fold_protocol_stages_and_pooled_comparison(tmp_path, monkeypatch, data_dir):
    _label_reader(monkeypatch)
    rec = FoldRecorder()
    _use(monkeypatch, rec)
    scale = rp.replace(rp.SCALES["ci"], folds=2, modes=("eavss", "probe", "random"), seeds=(0, 1))
    rp.reproduce("smollm2-135m", tmp_path, scale, device="cpu", progress=False)
    names = [c[0] for c in rec.calls]
    assert names == ["study", "hallucination", "hallucination"] + ["mitigate"] * 12
    folds_call = rec.calls[2]
    assert folds_call[folds_call.index("--n") + 1] == "817" and "--probe" in folds_call
    assert folds_call[folds_call.index("--out") + 1].endswith("eavss-2fold")
    runs = {
        (c[c.index("--mode") + 1], c[c.index("--seed") + 1], c[c.index("--fold") + 1]): c
        for c in rec.calls[3:]
    }
    assert len(runs) == 12 and all(c[c.index("--folds") + 1] == "2" for c in runs.values())
    eavss = runs[("eavss", "0", "1")]
    assert eavss[eavss.index("--layers-from") + 1].endswith("eavss-2fold/prone_layers.json")
    assert runs[("random", "1", "1")][runs[("random", "1", "1")].index("--k") + 1] == "2"
    probe = runs[("probe", "0", "0")]
    assert probe[probe.index("--layers-from") + 1].endswith("eavss-2fold/probe_layers.json")
    assert all("--n-eval" not in c for c in runs.values())  # the fold decides
    folder = tmp_path / "smollm2-135m" / "mitigation-2fold" / "truthfulqa"
    pooled = pd.read_csv(folder / "pooled_scores.csv")
    assert set(pooled["n"]) == {4} and len(pooled) == 6  # 3 modes x 2 seeds, 4 questions each
    table = pd.read_csv(folder / "modes_vs_random.csv").set_index("mode")
    assert table.loc["eavss", "diff"] == pytest.approx(0.1) and table.loc[
        "probe", "diff"
    ] == pytest.approx(0.0)
    assert table.loc["eavss", "n"] == 4 and table.loc["eavss", "seeds"] == 2

    with pytest.raises(ConfigError, match="k-fold protocol supports"):
        rp.plan(
            "smollm2-135m",
            tmp_path,
            rp.replace(scale, mitigation_datasets=("wikiqa",)),
            device="cpu",
            dtype="float32",
        )


def _cli_config(argv):
    """The configuration ``avss`` builds from a stage's argv, its command line aside."""
    import dataclasses
    import importlib

    from avsslib.cli import build_parser

    module = importlib.import_module(f"avsslib.cli.{argv[0]}")
    config = module.config_from_args(build_parser().parse_args(argv))
    return dataclasses.replace(config, command=None), config.command


@pytest.mark.parametrize("name", ["ci", "book", "full", "folds"])
def test_each_stage_runs_the_configuration_of_its_recorded_command_line(
    tmp_path, monkeypatch, data_dir, name
):
    """What runs (the stage's configuration) is what ``reproduce.json`` says ran: the config
    ``avss`` builds from the recorded argv, and the run record's command line the same."""
    _label_reader(monkeypatch)
    if name == "folds":
        scale = rp.replace(rp.SCALES["ci"], folds=2, modes=("eavss", "probe", "random", "avss"))
        rec = FoldRecorder()
    else:
        scale = rp.replace(rp.SCALES[name], modes=rp.MODES, mitigation_datasets=("truthfulqa",))
        rec = Recorder()
    for device in ("cpu", None):
        results = tmp_path / str(device)
        stages = rp.plan("smollm2-135m", results, scale, device=device, dtype="bfloat16")
        for stage in stages:  # writes what the mitigation planning reads
            if stage.name in ("hallucination", "hallucination folds"):
                rec(stage.argv)
        stages += rp.mitigation_stages(
            "smollm2-135m", results, scale, device=device, dtype="bfloat16"
        )
        assert {s.command for s in stages} == {"study", "hallucination", "mitigate"}
        for stage in stages:
            config, command = _cli_config(stage.argv)
            assert stage.config == config, stage.name
            assert stage.config.describe() == command, stage.name


def test_study_args_become_study_options():
    from avsslib.cli.reproduce import study_options

    assert study_options("--n-eval 300 --quick --sweep-fractions 0.1,0.5") == {
        "n_eval": 300,
        "quick": True,
        "sweep_fractions": (0.1, 0.5),
    }
    with pytest.raises(ConfigError, match="--out"):
        study_options("--out elsewhere")
    with pytest.raises(ConfigError, match="--bogus"):
        study_options("--bogus 1")
    scale = rp.replace(rp.SCALES["full"], study={**rp.SCALES["full"].study, "n_eval": 300})
    assert scale.study_argv() == ["--n-eval", "300"]


def test_execute_runs_the_library_pipeline_under_the_results_lock(tmp_path, monkeypatch):
    import avsslib.study as study
    from avsslib.fs import results_lock

    seen = []

    def fake(config):
        seen.append(config)
        with pytest.raises(ConfigError):  # the stage's folder is locked while it runs
            with results_lock(config.out):
                pass

    monkeypatch.setattr(study, "pruning_study", fake)
    stage = rp.plan("m", tmp_path, rp.SCALES["ci"], device="cpu", dtype="float32")[0]
    rp.execute(stage)
    assert seen == [stage.config] and seen[0].out == tmp_path / "m" / "avss"
    with pytest.raises(TypeError, match="no pipeline"):
        rp.execute(rp.Stage("odd", ["odd"], tmp_path / "x", config=rp.replace(rp.SCALES["ci"])))


def _node_run(folder: Path, after: float | None = None) -> None:
    """A copy of a committed mitigation run in ``folder`` (its first ``after`` changed)."""
    import shutil

    run = (
        Path(__file__).resolve().parents[1] / "results/smollm2-135m/mitigation/triviaqa/avss-seed0"
    )
    shutil.copytree(run, folder)
    if after is not None:
        metrics = json.loads((folder / "metrics.json").read_text())
        metrics["change"][0]["after"] = after
        (folder / "metrics.json").write_text(json.dumps(metrics))


def test_merge_brings_finished_node_stages_in(tmp_path):
    """reproduce_merge: a finished stage folder from elsewhere replaces its namesake, its
    reproduce.json entry replaces ours (not a bare "done" of a skipped stage), the summary is
    written anew; an unfinished folder stays out; merging twice changes nothing more."""
    from avsslib.reproduce_merge import merge_finished_stages

    here = tmp_path / "here" / "smollm2-135m"
    _node_run(here / "mitigation" / "triviaqa" / "avss-seed0")
    (here / "mitigation" / "triviaqa" / "avss-seed0" / "stale.txt").write_text("old")
    name = "mitigate triviaqa avss seed 0"
    old_entry = {"status": "done", "wall_s": 1.0, "argv": ["mitigate", "--n-eval", "300"]}
    kept = {"status": "done", "wall_s": 2.0, "argv": ["study"], "device": "cpu"}
    log = {"model": "smollm2-135m", "devices": ["cpu"], "stages": {name: old_entry, "study": kept}}
    (here / "reproduce.json").write_text(json.dumps(log))
    (here / "avss").mkdir()
    (here / "avss" / STAGE).write_text(json.dumps({"stage": "study", "argv": ["study"]}))

    node = tmp_path / "node" / "smollm2-135m"
    _node_run(node / "mitigation" / "triviaqa" / "avss-seed0", after=0.987654)
    _node_run(node / "mitigation" / "triviaqa" / "eavss-seed0")
    (node / "mitigation" / "triviaqa" / "eavss-seed0" / STAGE).unlink()  # unfinished
    (node / "avss").mkdir()  # the study, skipped there as finished: a bare "done" entry
    (node / "avss" / STAGE).write_text(json.dumps({"stage": "study", "argv": ["study"]}))
    new_entry = {"status": "done", "wall_s": 50.0, "argv": ["mitigate", "--n-eval", "600"]}
    failed = {"status": "failed (ConfigError)", "wall_s": 3.0}
    node_log = {
        "model": "smollm2-135m",
        "devices": ["NVIDIA H100 80GB HBM3"],
        "stages": {
            name: new_entry,
            "study": {"status": "done"},
            "mitigate triviaqa eavss seed 0": failed,
        },
    }
    (node / "reproduce.json").write_text(json.dumps(node_log))

    for _ in range(2):
        merged = merge_finished_stages(tmp_path / "node", tmp_path / "here")
        assert merged == [here / "avss", here / "mitigation" / "triviaqa" / "avss-seed0"]
        assert not (merged[1] / "stale.txt").exists()  # replaced, not overlaid
        assert not (here / "mitigation" / "triviaqa" / "eavss-seed0").exists()
        log = json.loads((here / "reproduce.json").read_text())
        assert log["stages"] == {name: new_entry, "study": kept}
        assert log["devices"] == ["NVIDIA H100 80GB HBM3", "cpu"]
        summary = pd.read_csv(here / "mitigation" / "summary.csv")
        assert summary["after"].iloc[0] == pytest.approx(0.987654)
        assert not [p for p in here.rglob(".*") if ".merging" in p.name or ".stale-" in p.name]


def test_merge_refuses_before_writing(tmp_path):
    """Another model's folder, a stage folder inside another, the results directory itself and a
    missing target: each refused with nothing written."""
    from avsslib.reproduce_merge import merge_finished_stages

    here = tmp_path / "here"
    (here / "smollm2-135m").mkdir(parents=True)
    (here / "smollm2-135m" / "reproduce.json").write_text('{"model": "smollm2-135m"}')
    node = tmp_path / "node"
    for model, name in (("a-first", "a-first"), ("smollm2-135m", "gpt2")):
        (node / model).mkdir(parents=True)
        (node / model / "reproduce.json").write_text(json.dumps({"model": name, "stages": {}}))
    _node_run(node / "a-first" / "mitigation" / "triviaqa" / "avss-seed0")
    with pytest.raises(ConfigError, match="gpt2"):
        merge_finished_stages(node, here)
    assert not (here / "a-first").exists()  # the first model was not merged either

    (node / "smollm2-135m" / "reproduce.json").write_text('{"model": "smollm2-135m"}')
    _node_run(node / "a-first" / "mitigation" / "triviaqa" / "avss-seed0" / "inner")
    with pytest.raises(ConfigError, match="inside the stage folder"):
        merge_finished_stages(node, here)
    assert not (here / "a-first").exists()
    with pytest.raises(ConfigError, match="itself"):
        merge_finished_stages(here, here)
    with pytest.raises(ConfigError, match="no such results directory"):
        merge_finished_stages(node, tmp_path / "missing")
    with pytest.raises(ConfigError, match="no <model>/reproduce.json"):
        merge_finished_stages(tmp_path / "empty", here)
