"""Record where an executed notebook ran: ``metadata.avss_run = {cpus, gpu, profile}``.

    python tools/stamp_run.py notebooks/01_avss_first_principles.ipynb --profile gpu

``make notebooks`` runs this after papermill, which records the run time itself
(``metadata.papermill.duration``); the box that opens each chapter (``book/_ext/avss_book.py``)
shows both. ``cpus`` is the number of CPU cores this process may use, ``gpu`` the name of the
first GPU ``nvidia-smi`` lists (absent without one).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


def machine(profile: str = "") -> dict[str, object]:
    """The facts recorded: CPU cores available, the first GPU's name (if any), the profile."""
    facts: dict[str, object] = {
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    }
    if shutil.which("nvidia-smi"):
        try:
            done = subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            names = [line.strip() for line in done.stdout.splitlines() if line.strip()]
            if done.returncode == 0 and names:
                facts["gpu"] = names[0]
        except (OSError, subprocess.TimeoutExpired):
            pass
    if profile:
        facts["profile"] = profile
    return facts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--profile", default="", help="the parameter profile it ran with")
    args = parser.parse_args(argv)
    notebook = json.loads(args.notebook.read_text(encoding="utf-8"))
    notebook.setdefault("metadata", {})["avss_run"] = machine(args.profile)
    tmp = args.notebook.with_suffix(".stamp.tmp")
    tmp.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(args.notebook)
    return 0


if __name__ == "__main__":
    sys.exit(main())
