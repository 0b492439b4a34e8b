"""Bring the finished stages of a pipeline run made elsewhere (a GPU node's ``results/``) into
this ``results/`` directory: each finished stage's folder replaces the one of the same path, its
entry replaces the one in ``reproduce.json``, and the mitigation summaries are written anew.

A stage folder is one that holds ``reproduce_stage.json`` (written when a stage finishes, with
the stage's name and the settings it ran with); folders of unfinished stages are left out, so an
interrupted run on the node cannot overwrite a finished one here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from avsslib.errors import ConfigError
from avsslib.reproduce_plan import STAGE_SETTINGS

__all__ = ["merge_finished_stages"]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not readable as JSON ({exc}).") from exc


def _stage_folders(model_root: Path) -> list[Path]:
    """The finished stage folders under ``model_root``; a stage folder inside another one, or
    one of our own temporary names, is refused (it would be copied with its parent)."""
    folders = sorted(p.parent for p in model_root.rglob(STAGE_SETTINGS))
    for folder in folders:
        if folder.name.startswith("."):
            raise ConfigError(
                f"{folder}: a hidden folder (a leftover copy?) holds a finished stage."
            )
        outer = [f for f in folders if f != folder and f in folder.parents]
        if outer:
            raise ConfigError(
                f"{folder}: a stage folder inside the stage folder {outer[0]}; not merged."
            )
    return folders


def _plan(source: Path, results: Path) -> list[tuple[Path, dict[str, Any], Path, list[Path]]]:
    """``(node model folder, its reproduce.json, our model folder, its finished stage folders)``
    per model, all checked before anything is written."""
    logs = sorted(source.glob("*/reproduce.json"))
    if not logs:
        raise ConfigError(
            f"{source}: no <model>/reproduce.json under it; point at the results directory "
            "the pipeline wrote (e.g. the node's results/ after `tools/gpu_node.sh pack`)."
        )
    out = []
    for log_path in logs:
        there = _read_json(log_path)
        root = results / log_path.parent.name
        here_path = root / "reproduce.json"
        ours = _read_json(here_path).get("model") if here_path.exists() else there.get("model")
        if ours != there.get("model"):
            raise ConfigError(
                f"{here_path} is of model {ours!r}, {log_path} of {there.get('model')!r}: "
                "nothing merged."
            )
        out.append((log_path.parent, there, root, _stage_folders(log_path.parent)))
    return out


def _copy_in(folder: Path, target: Path) -> None:
    """``target`` becomes a copy of ``folder``, swapped in whole once copied; refused while a
    run holds ``target``'s results lock."""
    from avsslib.fs import replace_directory, results_lock

    if target.is_dir():
        with results_lock(target):  # refuses (ConfigError) while a run writes there
            pass
    fresh = target.parent / f".{target.name}.merging"
    shutil.rmtree(fresh, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copytree(folder, fresh)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    replace_directory(fresh, target)


def merge_finished_stages(source: Path, results: Path) -> list[Path]:
    """Merge every model folder of ``source`` (a ``results/`` directory written by ``avss
    reproduce`` elsewhere) into ``results``; returns the stage folders replaced or added, as
    paths under ``results``.

    Per model: the folders holding ``reproduce_stage.json`` replace their namesakes; for each of
    them the node's ``reproduce.json`` entry of that stage (named in ``reproduce_stage.json``)
    replaces ours where it records a run (its ``argv``), and the devices are joined;
    ``mitigation/summary*.csv`` and each ``mitigation-<K>fold`` summary are written again from
    the merged folders. Every model is checked before anything is written: a model folder of
    another model (a different ``model`` in ``reproduce.json``) refuses the whole merge."""
    from avsslib.folds import folds_of
    from avsslib.fs import file_lock, write_json_atomic
    from avsslib.reproduce_summary import summarise, summarise_folds

    source, results = Path(source), Path(results)
    if not results.is_dir():
        raise ConfigError(f"{results}: no such results directory to merge into.")
    if source.resolve() == results.resolve():
        raise ConfigError(f"{source} is the results directory itself: nothing to merge.")
    merged: list[Path] = []
    for node_root, there, root, folders in _plan(source, results):
        entries = there.get("stages", {})
        taken: dict[str, Any] = {}
        targets = []
        for folder in folders:
            target = root / folder.relative_to(node_root)
            _copy_in(folder, target)
            targets.append(target)
            name = str(_read_json(folder / STAGE_SETTINGS).get("stage"))
            entry = entries.get(name, {})
            if entry.get("status") == "done" and "argv" in entry:
                taken[name] = entry
        with file_lock(root / ".reproduce.lock"):
            here_path = root / "reproduce.json"
            here = _read_json(here_path) if here_path.exists() else {}
            log = {**there, **here}
            log["devices"] = sorted({*here.get("devices", []), *there.get("devices", [])})
            log["stages"] = {**here.get("stages", {}), **taken}
            write_json_atomic(here_path, log)
        tops = {t.relative_to(root).parts[0] for t in targets}
        if "mitigation" in tops:
            summarise(root)
        for folds in sorted({k for k in map(folds_of, tops) if k is not None}):
            summarise_folds(root, folds)
        merged += targets
    return merged
