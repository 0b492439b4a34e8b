"""Bring the finished stages of a pipeline run made elsewhere (a GPU node's ``results/``) into
this ``results/`` directory: each finished stage's folder replaces the one of the same path, its
entry replaces the one in ``reproduce.json``, and the mitigation summaries are written anew.

A stage folder is one that holds ``reproduce_stage.json`` (written when a stage finishes, with
the settings it ran with); folders of unfinished stages are left out, so an interrupted run on
the node cannot overwrite a finished one here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from avsslib.errors import ConfigError
from avsslib.reproduce_plan import STAGE_SETTINGS

__all__ = ["merge_finished_stages"]


def _replace_folder(source: Path, target: Path) -> None:
    """``target`` becomes a copy of ``source``: copied beside it first, then swapped in."""
    fresh = target.with_name(target.name + ".merging")
    old = target.with_name(target.name + ".replaced")
    shutil.rmtree(fresh, ignore_errors=True)
    shutil.copytree(source, fresh)
    if target.exists():
        target.rename(old)
    fresh.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _read_log(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable reproduce.json ({exc}).") from exc


def merge_finished_stages(source: Path, results: Path) -> list[Path]:
    """Merge every model folder of ``source`` (a ``results/`` directory written by ``avss
    reproduce`` elsewhere) into ``results``; returns the stage folders replaced or added, as
    paths under ``results``.

    Per model: the folders holding ``reproduce_stage.json`` replace their namesakes; the entries
    of ``source``'s ``reproduce.json`` whose status is ``done`` replace this one's (the devices
    are joined); ``mitigation/summary*.csv`` and each ``mitigation-<K>fold`` summary are
    written again from the merged folders. A model folder of another model (a different
    ``model`` in ``reproduce.json``) is refused."""
    from avsslib.fs import write_json_atomic
    from avsslib.reproduce_summary import summarise, summarise_folds

    logs = sorted(Path(source).glob("*/reproduce.json"))
    if not logs:
        raise ConfigError(
            f"{source}: no <model>/reproduce.json under it; point at the results directory "
            "the pipeline wrote (e.g. the node's results/ after `tools/gpu_node.sh pack`)."
        )
    merged: list[Path] = []
    for log_path in logs:
        there = _read_log(log_path)
        root = Path(results) / log_path.parent.name
        here_path = root / "reproduce.json"
        here = _read_log(here_path) if here_path.exists() else {}
        if here and here.get("model") != there.get("model"):
            raise ConfigError(
                f"{here_path} is of model {here.get('model')!r}, {log_path} of "
                f"{there.get('model')!r}: not merged."
            )
        folders = sorted(p.parent for p in log_path.parent.rglob(STAGE_SETTINGS))
        for folder in folders:
            target = root / folder.relative_to(log_path.parent)
            _replace_folder(folder, target)
            merged.append(target)
        done = {k: v for k, v in there.get("stages", {}).items() if v.get("status") == "done"}
        devices = set(here.get("devices", [])) | set(there.get("devices", []))
        log = {**there, **here} if here else dict(there)
        log["devices"] = sorted(devices)
        log["stages"] = {**here.get("stages", {}), **done}
        root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(here_path, log)
        touched = {t.relative_to(root).parts[0] for t in merged if root in t.parents}
        if "mitigation" in touched:
            summarise(root)
        for name in sorted(touched):
            if name.startswith("mitigation-") and name.endswith("fold"):
                summarise_folds(root, int(name.removeprefix("mitigation-").removesuffix("fold")))
    return merged
