"""Publishing tools: the parameter profiles, the editions' configuration, the chapter box."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


profile_params = _load(REPO / "tools" / "profile_params.py", "profile_params")
edition_config = _load(REPO / "tools" / "edition_config.py", "edition_config")
avss_book = _load(REPO / "book" / "_ext" / "avss_book.py", "avss_book")


def test_gpu_profile_sets_only_parameters_the_chapters_define(capsys):
    profiles = yaml.safe_load((REPO / "notebooks" / "profiles.yml").read_text())
    assert set(profiles) == {"gpu"}
    for stem, values in profiles["gpu"].items():
        assert (REPO / "notebooks" / f"{stem}.md").exists(), stem
        assert profile_params.params("gpu", stem) == values
        assert set(values) <= profile_params.chapter_parameters(stem)
    assert profile_params.params("", "04_pruning_retention") == {}
    assert profile_params.main(["gpu", "09_exercises"]) == 0  # unlisted: defaults
    assert capsys.readouterr().out.strip() == "{}"


def test_profile_params_refuses_unknown_profiles_and_parameters(tmp_path, capsys):
    assert profile_params.main(["tpu", "00_setup"]) == 2
    assert "unknown profile 'tpu'" in capsys.readouterr().err
    bad = tmp_path / "profiles.yml"
    bad.write_text("gpu:\n  00_setup:\n    n_calib: 9\n")
    with pytest.raises(ValueError, match="n_calib"):
        profile_params.params("gpu", "00_setup", bad)


def test_online_edition_adds_buttons_that_the_offline_one_lacks():
    offline = edition_config.edition_config("offline")
    online = edition_config.edition_config("online", "https://example.org/team/avss/")
    assert (
        not offline["launch_buttons"]["colab_url"]
        and not offline["launch_buttons"]["binderhub_url"]
    )
    assert not offline["html"]["use_repository_button"]
    assert online["launch_buttons"]["colab_url"] and online["launch_buttons"]["binderhub_url"]
    assert online["html"]["use_repository_button"] and online["html"]["use_edit_page_button"]
    assert online["repository"]["url"] == "https://example.org/team/avss"
    template = online["sphinx"]["config"]["html_context"]["edit_page_url_template"]
    assert template.startswith("https://example.org/team/avss/edit/main/") and ".md" in template
    assert online["sphinx"]["config"]["html_context"]["default_mode"] == "auto"  # merged
    assert online["bibtex_bibfiles"] == offline["bibtex_bibfiles"]
    assert Path(online["sphinx"]["local_extensions"]["avss_book"]).is_absolute()


def test_chapter_box_reads_the_measured_run_time():
    assert avss_book.reading_minutes("word " * 450) == 3
    assert avss_book.reading_minutes("```python\n" + "code " * 1000 + "\n```\nfew words") == 1
    executed = {
        "metadata": {"papermill": {"duration": 83.4}, "avss_run": {"cpus": 2, "profile": ""}}
    }
    assert avss_book.run_line(executed).startswith("1 min 23 s on 2 CPU cores, no GPU")
    gpu = {
        "metadata": {
            "papermill": {"duration": 12.0},
            "avss_run": {"cpus": 16, "gpu": "NVIDIA H200", "profile": "gpu"},
        }
    }
    assert avss_book.run_line(gpu).startswith("12 s on 16 CPU cores and NVIDIA H200, profile gpu")
    assert avss_book.run_line({"metadata": {}}).startswith("not measured")
