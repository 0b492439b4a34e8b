"""avsslib.launch: what a chapter launched outside the repository finds and reports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from avsslib import launch

REPO = Path(__file__).resolve().parents[1]


def test_find_data_dir_prefers_the_environment_then_the_first_manifest(tmp_path, monkeypatch):
    monkeypatch.delenv("AVSS_DATA_DIR", raising=False)
    empty, data = tmp_path / "empty", tmp_path / "data"
    empty.mkdir()
    data.mkdir()
    (data / "MANIFEST.json").write_text(json.dumps({"files": []}))
    assert launch.find_data_dir([str(empty)], set_env=False) is None
    assert launch.find_data_dir([str(empty), str(data)]) == data.resolve()
    assert launch.find_data_dir([]) == data.resolve()  # now from AVSS_DATA_DIR


def test_prepare_reports_missing_data_and_model_without_raising(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AVSS_DATA_DIR", str(tmp_path))  # a folder without the files
    missing = launch.prepare(model="qwen2.5-coder-1.5b", datasets=[("sciq", None)])
    out = capsys.readouterr().out
    assert f"data: {tmp_path.resolve()}" in out
    assert any(line.strip().startswith("sciq") and "MISSING" in line for line in missing)
    from avsslib.models import zoo_status

    qwen = {r["name"]: r for r in zoo_status()}["qwen2.5-coder-1.5b"]
    assert any("qwen2.5-coder-1.5b" in line for line in missing) == (
        not (qwen["installed"] or qwen["cached"])
    )


def test_every_chapter_opens_with_the_guarded_launch_cell():
    """The first code cell of every chapter installs only when avsslib is missing, and names
    the repository of the online edition's configuration."""
    import yaml

    url = yaml.safe_load((REPO / "book" / "online.yml").read_text())["repository"]["url"]
    for path in sorted((REPO / "notebooks").glob("*.md")):
        first = re.search(r"```\{code-cell\}[^\n]*\n(.*?)```", path.read_text(), re.S).group(1)
        assert ":tags: [remove-cell]" in first, path.name
        assert 'if importlib.util.find_spec("avsslib") is None:' in first, path.name
        assert f'REPOSITORY = "{url}"' in first, path.name
        assert "prepare(" in first, path.name
