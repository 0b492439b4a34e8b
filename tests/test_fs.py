"""avsslib.fs: the one atomic writer, cached steps, key files, hashes, and the moved names."""

from __future__ import annotations

import json
import warnings

import pytest

from avsslib import fs


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "sub" / "w.bin"
    fs.write_bytes_atomic(path, b"old")
    with pytest.raises(RuntimeError), fs.atomic_path(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert path.read_bytes() == b"old"
    assert [p.name for p in path.parent.iterdir()] == ["w.bin"]  # no temporary file left


def test_atomic_path_keep_suffix_for_writers_that_read_it(tmp_path):
    path = tmp_path / "fig.png"
    with fs.atomic_path(path, keep_suffix=True) as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path and tmp.name.startswith(".fig.")
        assert fs._STALE_TMP.match(tmp.name)  # a killed writer's file is recognised
        tmp.write_bytes(b"png")
    assert path.read_bytes() == b"png"


def test_cached_computes_once_per_key(tmp_path):
    path = tmp_path / "step.json"
    calls = []

    def compute():
        calls.append(1)
        return {"x": 0.5}

    key = {"n": 3, "layers": (1, 2)}  # a tuple: saved as a list, still equal
    assert fs.cached(path, key, compute) == ({"x": 0.5}, False)
    assert fs.cached(path, key, compute) == ({"x": 0.5}, True)
    assert len(calls) == 1
    assert fs.cached(path, {**key, "n": 4}, compute) == ({"x": 0.5}, False)
    assert len(calls) == 2
    saved = json.loads(path.read_text())
    assert saved == {"key": {"n": 4, "layers": [1, 2]}, "result": {"x": 0.5}}
    value, hit = fs.cached(
        tmp_path / "e.json",
        "h1",
        lambda: [1],
        encode=lambda v: {"v": v},
        decode=lambda d: d["v"],
        extra=lambda v: {"count": len(v)},
        key_field="hash",
    )
    assert (value, hit) == ([1], False)
    assert json.loads((tmp_path / "e.json").read_text()) == {
        "hash": "h1",
        "count": 1,
        "result": {"v": [1]},
    }
    assert fs.cached(
        tmp_path / "e.json", "h1", lambda: [2], decode=lambda d: d["v"], key_field="hash"
    ) == ([1], True)


def test_read_cached_needs_every_required_file_and_holds_key(tmp_path):
    fs.write_json_atomic(tmp_path / "meta.json", {"key": "abc", "n": 1})
    other = tmp_path / "table.csv"
    assert fs.read_cached(tmp_path / "meta.json", "abc", requires=[other]) is None
    other.write_text("a\n")
    assert fs.read_cached(tmp_path / "meta.json", "abc", requires=[other])["n"] == 1
    assert fs.read_cached(tmp_path / "meta.json", "abd") is None
    (tmp_path / "bad.json").write_text("{not json")
    assert fs.read_cached(tmp_path / "bad.json", "abc") is None
    fs.write_json_atomic(tmp_path / "k.json", {"seed": 1, "eps": 0.1})
    assert fs.holds_key(tmp_path / "k.json", {"eps": 0.1, "seed": 1})
    assert not fs.holds_key(tmp_path / "k.json", {"eps": 0.1, "seed": 2})
    assert not fs.holds_key(tmp_path / "missing.json", {})


def test_content_hash_is_the_hash_earlier_runs_saved():
    """The cache keys of the study (UTF-8 JSON) and of healing (ASCII JSON) did not change,
    so finished runs stay finished."""
    obj = {"a": 1, "b": (1.0, "é"), "c": 0.1 + 0.2}
    assert fs.content_hash(obj) == "1ac93101d6d527b7"
    assert fs.content_hash(obj, ensure_ascii=True) == "f5b80ab97383cfad"


def test_file_sha256(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert fs.file_sha256(path) == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    from avsslib.errors import DataError

    with pytest.raises(DataError, match="cannot hash"):
        fs.file_sha256(tmp_path / "missing")


def test_moved_names_still_import_from_report_with_a_warning():
    from avsslib import report

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert report.write_json_atomic is fs.write_json_atomic
        assert report._jsonable is fs.to_jsonable
        from avsslib.report import results_lock
    assert results_lock is fs.results_lock
    assert len(caught) == 3 and all(w.category is DeprecationWarning for w in caught)
    assert "avsslib.fs" in str(caught[0].message)
    with pytest.raises(AttributeError):
        report.no_such_name  # noqa: B018
