"""``avss data``: the dataset table, or a few records of one dataset.

``avss data`` loads every split that has local files and prints its record count next to the
count the registry expects (from the data README/MANIFEST); splits read from the hub are not
downloaded, their count column shows ``-``. Exit status 1 when a count differs or a file fails.
``avss data NAME [--split S] [--n N] [--seed S] [--show K]`` prints K records of one split.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from avsslib import paths
from avsslib.data import DATASETS, data_file_hashes, get_spec, load_dataset, resolve_source
from avsslib.errors import ConfigError, DataError
from avsslib.options import named_values

HELP = "list the datasets (splits, record counts, source, licence) or show records of one"
_CLIP = 160  # characters shown per string field


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "name",
        nargs="?",
        choices=list(DATASETS),
        metavar="NAME",
        help=f"dataset to show ({', '.join(DATASETS)}); omit for the table",
    )
    parser.add_argument("--split", help="split (default: the dataset's default split)")
    parser.add_argument("--n", type=int, help="seeded sample of N records (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="sample seed (default 0)")
    parser.add_argument(
        "--show", type=int, default=3, metavar="K", help="records to print (default 3)"
    )
    parser.add_argument(
        "--answerable-only",
        action="store_true",
        help="WikiQA: keep only questions with a correct sentence",
    )
    parser.add_argument(
        "--data-dir", help="data folder laid out like shared/data (default: AVSS_DATA_DIR)"
    )


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _count(
    name: str, split: str, data_dir: str | None, hub_mode: bool
) -> tuple[str, str, str | None]:
    """``(records, source, problem)`` for one row of the table."""
    spec = DATASETS[name]
    if hub_mode and spec.splits[split].hub_split is None:
        return "-", "local files only (set AVSS_DATA_DIR)", None
    try:
        src = resolve_source(name, split, data_dir=data_dir)
        if not src.is_local:
            return "-", src.describe(), None
        count = len(load_dataset(name, split, data_dir=data_dir))
    except DataError as exc:
        return "ERROR", "ERROR", str(exc)
    expected = spec.splits[split].records
    problem = (
        None if count == expected else f"{name} {split}: {count:,} records, expected {expected:,}."
    )
    return f"{count:,}", src.describe(), problem


def _list(data_dir: str | None) -> int:
    hub_mode = data_dir is None and paths.data_dir() is None
    if hub_mode:
        print("data dir: none (AVSS_DATA_DIR unset): splits load from the Hugging Face hub")
    else:
        root = Path(data_dir).expanduser().resolve() if data_dir else paths.data_dir()
        print(f"data dir: {root} (from {'--data-dir' if data_dir else 'AVSS_DATA_DIR'})")
    rows = [["DATASET", "SPLIT", "RECORDS", "EXPECTED", "SOURCE", "LICENCE"]]
    problems = []
    for name, spec in DATASETS.items():
        for i, (split, s) in enumerate(spec.splits.items()):
            count, source, problem = _count(name, split, data_dir, hub_mode)
            problems += [problem] if problem else []
            rows.append(
                [
                    name if i == 0 else "",
                    split + ("*" if split == spec.default_split else ""),
                    count,
                    f"{s.records:,}" + (f" ({s.answerable:,} answerable)" if s.answerable else ""),
                    source,
                    spec.licence if i == 0 else "",
                ]
            )
    print(_table(rows))
    print(
        "\n* default split. RECORDS: counted by loading the local files ('-' = not loaded: hub or "
        "absent); EXPECTED: the registry (data README / MANIFEST)."
    )
    for p in problems:
        print(f"problem: {p}")
    return 1 if problems else 0


def _clip(value: Any) -> Any:
    if isinstance(value, str):
        return value if len(value) <= _CLIP else value[:_CLIP] + f"... [{len(value):,} chars]"
    if isinstance(value, list | tuple):
        shown = [_clip(v) for v in value[:12]]
        return shown + [f"... [{len(value)} items]"] if len(value) > 12 else shown
    return value


def _show(args: argparse.Namespace) -> int:
    if args.show < 0:
        raise ConfigError(f"--show {args.show}: the number of records to print must be >= 0.")
    spec = get_spec(args.name)
    src = resolve_source(args.name, args.split, data_dir=args.data_dir)
    chosen = named_values(args, "n", "seed", "data_dir", "answerable_only")
    records = load_dataset(args.name, src.split, **chosen)
    expected = spec.splits[src.split].records
    print(f"{spec.name} [{src.split}]: {spec.description}")
    print(f"record type: {spec.record_type.__name__}; licence: {spec.licence}")
    where = f" (data dir {src.root}, from {src.origin})" if src.is_local else ""
    print(f"source: {src.describe()}{where}")
    if note := spec.splits[src.split].note:
        print(f"note: {note}")
    if src.is_local:
        for path, digest in data_file_hashes(args.name, src.split, data_dir=args.data_dir).items():
            print(f"  sha256 {digest}  {path}")
    sample = f", sample n={args.n} seed={args.seed}" if args.n is not None else ""
    print(
        f"records: {len(records):,} (registry: {expected:,} in the split{sample}); "
        f"showing {min(args.show, len(records))}"
    )
    for record in records[: args.show]:
        print("-" * 40)
        for key, value in dataclasses.asdict(record).items():
            print(f"{key}: {json.dumps(_clip(value), ensure_ascii=False)}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.name is None:
        return _list(args.data_dir)
    return _show(args)
