"""tools/gpu_node.sh: detached jobs record their own process id, `running` sees them, `stop` ends
one by that id (never by a name pattern)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu_node.sh"


def node(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AVSS_NODE_DIR": str(tmp_path / "node")}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def wait_for(predicate, seconds: float = 20.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(os.name != "posix", reason="bash tool")
def test_start_running_stop(tmp_path):
    marker = tmp_path / "go"
    pid_file = tmp_path / "node" / "logs" / "job.pid"
    r = node(tmp_path, "start-after", str(marker), "job", "0", "-c", "import time; time.sleep(60)")
    assert r.returncode == 0, r.stderr
    assert wait_for(pid_file.exists)
    assert node(tmp_path, "running").returncode == 0  # waiting for its file counts as running
    marker.touch()
    pid = int(pid_file.read_text())
    # the recorded id is the job's own: once started, it is python itself, not a wrapper shell
    assert wait_for(lambda: "python" in Path(f"/proc/{pid}/cmdline").read_bytes().decode())
    stopped = node(tmp_path, "stop", "job")
    assert stopped.returncode == 0 and f"pid {pid}" in stopped.stdout
    assert wait_for(lambda: node(tmp_path, "running").returncode == 1)


@pytest.mark.skipif(os.name != "posix", reason="bash tool")
def test_running_is_false_when_every_job_ended(tmp_path):
    assert node(tmp_path, "start", "quick", "0", "-c", "pass").returncode == 0
    assert wait_for(lambda: node(tmp_path, "running").returncode == 1)


def test_node_wheels_lists_what_the_node_lacks(tmp_path):
    """tools/node_wheels.py: the evaluation stack's closure less the node's distributions (and
    their own requirements), transformers always, versions as installed here."""
    import importlib.metadata as md

    have = tmp_path / "have.txt"
    have.write_text("torch==2.11.0\ntransformers==5.17.0\nnumpy\nhuggingface_hub\npandas\n")
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "node_wheels.py"), "--have", str(have)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    listed = dict(line.split("==") for line in done.stdout.split())
    assert listed["lm-eval"] == md.version("lm_eval")
    # transformers is listed although the node has one: the node runs the version pinned here
    assert listed["transformers"] == md.version("transformers")
    assert not {"torch", "numpy", "huggingface-hub", "pandas"} & set(listed)
    assert "datasets" in listed and "gguf" in listed


def _wheel(folder: Path, name: str) -> None:
    """A minimal pure-Python wheel of distribution ``name`` (a module of the same name)."""
    import zipfile

    info = f"{name}-0.1.dist-info"
    with zipfile.ZipFile(folder / f"{name}-0.1-py3-none-any.whl", "w") as z:
        z.writestr(f"{name}.py", "X = 1\n")
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        z.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        z.writestr(f"{info}/RECORD", "")


@pytest.mark.skipif(os.name != "posix", reason="bash tool")
def test_bundle_joins_checks_and_sets_up(tmp_path):
    """`bundle`: the carried pieces, joined in name order and checked against their sum, give the
    wheels (less those the skip glob names), the data and the GGUF files; a wrong sum stops it."""
    import hashlib
    import tarfile

    src = tmp_path / "src"
    for sub in ("whl", "data/sciq", "gguf"):
        (src / sub).mkdir(parents=True)
    _wheel(src / "whl", "keepme")
    _wheel(src / "whl", "dropme")
    (src / "data" / "sciq" / "a.jsonl").write_text("{}\n")
    (src / "gguf" / "m.gguf").write_bytes(b"GGUF")
    blob = tmp_path / "b.tgz"
    with tarfile.open(blob, "w:gz") as tar:
        for sub in ("whl", "data", "gguf"):
            tar.add(src / sub, arcname=sub)
    data = blob.read_bytes()
    stage = tmp_path / "stage"
    stage.mkdir()
    for i, k in enumerate(range(0, len(data), 300)):
        (stage / f"p.a{chr(97 + i // 26)}{chr(97 + i % 26)}").write_bytes(data[k : k + 300])
    assert len(list(stage.iterdir())) > 1

    bad = node(tmp_path, "bundle", str(stage), "0" * 64)
    assert bad.returncode == 3 and "do not add up" in bad.stderr
    assert list(stage.iterdir())  # pieces kept for another try
    sha = hashlib.sha256(data).hexdigest()
    typo = node(tmp_path, "bundle", str(stage), sha, "transformers-*")
    assert typo.returncode == 3 and "no wheel in the bundle matches" in typo.stderr
    assert not (tmp_path / "node" / "site" / "keepme.py").exists()
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "p.aa").write_bytes(data[: len(data) // 2])
    broken = node(tmp_path, "bundle", str(cut), hashlib.sha256(data[: len(data) // 2]).hexdigest())
    assert broken.returncode == 3 and "unpacking" in broken.stderr
    assert list(stage.iterdir())  # a skip glob matching nothing keeps the pieces too

    # `setup` ends by importing the evaluation stack: give it this interpreter
    env_path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    done = subprocess.run(
        ["bash", str(SCRIPT), "bundle", str(stage), sha, "dropme-*"],
        cwd=ROOT,
        env={**os.environ, "AVSS_NODE_DIR": str(tmp_path / "node"), "PATH": env_path},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    site = tmp_path / "node" / "site"
    assert (site / "keepme.py").exists() and not (site / "dropme.py").exists()
    assert (tmp_path / "node" / "data" / "sciq" / "a.jsonl").exists()
    assert (tmp_path / "node" / "gguf" / "m.gguf").read_bytes() == b"GGUF"
    assert not list(stage.iterdir())  # pieces removed once unpacked
    assert not (tmp_path / "node" / "bundle").exists()  # its copy removed once set up
