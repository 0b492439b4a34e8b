"""Which wheels an offline GPU node needs: the requirement closure of the evaluation stack, as
installed in this ``.venv``, less the distributions the node already has.

    .venv/bin/python tools/node_wheels.py --have node-packages.txt > wheels.txt

``--have`` names a file with the node's distributions, one name per line (``pip list
--format=freeze`` output works; versions are ignored). Printed: ``name==version`` per line,
sorted, for ``pip download --no-deps`` (``tools/gpu_node.sh setup`` installs them). A
distribution the node has is taken with its own requirements, except ``transformers``, which is
always printed, so that the node runs the version ``requirements/constraints.txt`` pins. Extras
are not followed.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import sys
from pathlib import Path

ROOTS = ("lm_eval", "datasets", "evaluate", "gguf", "transformers", "peft")
ALWAYS = frozenset({"transformers"})


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: tuple[str, ...], have: frozenset[str]) -> dict[str, str]:
    """``{name: version}`` of ``roots`` and what they require (no extras), as installed here;
    a distribution in ``have`` (the node's) counts as there with its own requirements, except
    those in :data:`ALWAYS`."""
    seen: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = canonical(todo.pop())
        if name in seen or (name in have and name not in ALWAYS):
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue  # an optional or platform-only requirement that is not installed here
        seen[name] = dist.version
        for requirement in dist.requires or []:
            if "extra ==" not in requirement:
                match = re.match(r"[A-Za-z0-9_.\-]+", requirement)
                if match:
                    todo.append(match.group(0))
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--have", type=Path, required=True, help="the node's distributions")
    args = parser.parse_args(argv)
    have = frozenset(
        canonical(re.split(r"[=<>@ ]", line.strip())[0])
        for line in args.have.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    )
    for name, version in sorted(closure(ROOTS, have).items()):
        sys.stdout.write(f"{name}=={version}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
