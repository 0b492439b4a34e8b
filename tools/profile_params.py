"""Print the papermill parameters of one chapter under one profile, as YAML for ``papermill -f``.

    python tools/profile_params.py gpu 04_pruning_retention > params.yaml

The profiles live in one file, ``notebooks/profiles.yml`` (``{profile: {chapter: {name:
value}}}``); a chapter a profile does not list runs with its own defaults, and the empty profile
(``make book`` without ``PROFILE``) gives ``{}``. An unknown profile, or a parameter the chapter's
parameters cell does not define, exits with status 2 and says which.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "notebooks" / "profiles.yml"


def chapter_parameters(stem: str) -> set[str]:
    """Names assigned in the ``parameters`` cell of ``notebooks/<stem>.md``."""
    text = (REPO / "notebooks" / f"{stem}.md").read_text(encoding="utf-8")
    cell = re.search(r"```\{code-cell\}[^\n]*\n:tags: \[parameters\]\n(.*?)```", text, re.S)
    return set(re.findall(r"^(\w+)\s*=", cell.group(1), re.M)) if cell else set()


def params(profile: str, stem: str, path: Path = PROFILES) -> dict:
    if not profile:
        return {}
    profiles = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if profile not in profiles:
        raise ValueError(f"unknown profile {profile!r}; {path.name} defines {sorted(profiles)}")
    chosen = dict((profiles[profile] or {}).get(stem) or {})
    unknown = sorted(set(chosen) - chapter_parameters(stem))
    if unknown:
        raise ValueError(
            f"profile {profile!r} sets {unknown} for {stem}, which its parameters "
            "cell does not define"
        )
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", help="profile name ('' for the defaults)")
    parser.add_argument("chapter", help="notebook stem, e.g. 04_pruning_retention")
    args = parser.parse_args(argv)
    try:
        print(yaml.safe_dump(params(args.profile, args.chapter), sort_keys=False), end="")
    except ValueError as error:
        print(f"profile_params: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
