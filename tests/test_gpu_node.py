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
