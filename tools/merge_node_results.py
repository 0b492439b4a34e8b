"""Merge the finished stages of a pipeline run made on another machine into ``results/``.

    tar xzf results.tgz -C /tmp/node            # what `tools/gpu_node.sh pack` brought back
    .venv/bin/python tools/merge_node_results.py /tmp/node/results

Each finished stage folder (one holding ``reproduce_stage.json``) replaces its namesake under
``--into``, its ``reproduce.json`` entry replaces ours, and the mitigation summaries are written
again (:func:`avsslib.reproduce_merge.merge_finished_stages`). Prints what it replaced.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from avsslib.errors import ConfigError
from avsslib.reproduce_merge import merge_finished_stages

RESULTS = Path(__file__).resolve().parents[1] / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path, help="the other machine's results directory")
    parser.add_argument("--into", type=Path, default=RESULTS, help=f"default: {RESULTS}")
    args = parser.parse_args()
    try:
        merged = merge_finished_stages(args.source, args.into)
    except ConfigError as exc:
        sys.exit(f"merge_node_results: {exc}")
    for folder in merged:
        print(folder)
    print(f"{len(merged)} stage folder(s) merged into {args.into}")


if __name__ == "__main__":
    main()
