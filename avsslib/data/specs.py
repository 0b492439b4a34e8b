"""The dataset table: one ``DatasetSpec`` per dataset (description, record type, licence, hub
id, splits with their local files and expected record counts, the local and hub parsers).

The table itself is the package data file ``datasets.toml`` next to this module (one TOML
table per dataset, its keys explained in its header), read once at import. :data:`DATASETS` is
what ``avss data`` prints and what :mod:`avsslib.data.registry` loads from; :func:`get_spec`
looks a name up. Writes no file.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from avsslib.data import loaders, records
from avsslib.errors import DataError

__all__ = ["DATASETS", "DatasetSpec", "Fetch", "SplitSpec", "get_spec"]

Fetch = Callable[[str | None, str], list[Mapping[str, Any]]]
"""``fetch(config, hub_split)`` -> the hub rows of one config and split, as dicts."""


@dataclass(frozen=True)
class SplitSpec:
    """One split: its local files (relative to the data dir; empty = hub only), the expected
    record count, and where it lives on the hub (``hub_split=None`` = local only)."""

    files: tuple[str, ...]
    records: int
    hub_split: str | None
    hub_config: str | None = None
    note: str = ""
    answerable: int | None = None  # WikiQA: questions with at least one label-1 sentence


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset: description, record type, licence, splits, and its local and hub parsers."""

    name: str
    description: str
    record_type: type
    licence: str
    hub_id: str
    hub_config: str | None
    default_split: str
    splits: Mapping[str, SplitSpec]
    local: Callable[[Sequence[Path], str], list[Any]]
    hub: Callable[[Fetch, str | None, str, str], list[Any]]
    aliases: Mapping[str, str] = field(default_factory=dict)

    def split_name(self, split: str | None) -> str:
        """The canonical split name (``None`` = default; aliases such as ``validation`` -> ``dev``)."""
        if split is None:
            return self.default_split
        split = self.aliases.get(split, split)
        if split not in self.splits:
            valid = ", ".join(self.splits)
            raise DataError(f"dataset {self.name!r} has no split {split!r}; valid splits: {valid}.")
        return split


def _hub_parser(
    parser: Callable[..., list[Any]], configs: Sequence[str]
) -> Callable[[Fetch, str | None, str, str], list[Any]]:
    """The hub loader of a table row: ``parser(rows, split)`` of the split's hub rows, or with
    ``configs`` ``parser(rows of configs[0], rows of configs[1], ...)`` of one hub split."""

    def load(fetch: Fetch, config: str | None, hub_split: str, split: str) -> list[Any]:
        if configs:
            return parser(*(fetch(c, hub_split) for c in configs))
        return parser(fetch(config, hub_split), split)

    return load


def _spec(name: str, row: Mapping[str, Any]) -> DatasetSpec:
    """The :class:`DatasetSpec` of one table of ``datasets.toml`` (its header comment says
    what each key means)."""
    splits = {
        split: SplitSpec(**{"hub_split": None, **fields, "files": tuple(fields["files"])})
        for split, fields in row["splits"].items()
    }
    return DatasetSpec(
        name=name,
        description=row["description"],
        record_type=getattr(records, row["record_type"]),
        licence=row["licence"],
        hub_id=row["hub_id"],
        hub_config=row.get("hub_config"),
        default_split=row["default_split"],
        splits=splits,
        local=getattr(loaders, row["local"]),
        hub=_hub_parser(getattr(loaders, row["hub"]), row.get("hub_configs", ())),
        aliases=dict(row.get("aliases", {})),
    )


DATASETS: dict[str, DatasetSpec] = {
    name: _spec(name, row)
    for name, row in tomllib.loads(
        resources.files(__package__).joinpath("datasets.toml").read_text(encoding="utf-8")
    ).items()
}
"""The registry: dataset name -> :class:`DatasetSpec` (``avss data`` prints it), one per table
of the package data file ``avsslib/data/datasets.toml``."""


def get_spec(name: str) -> DatasetSpec:
    """The registry entry for ``name``; an unknown name lists the known ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(
            f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}."
        ) from None
