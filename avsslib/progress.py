"""Quiet runs: :func:`no_progress_bars` silences every tqdm bar (ours, the evaluation harness's,
transformers') within a block; ``avss --quiet`` and the reproduction driver's quiet stages use
it. Writes no file."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def no_progress_bars(active: bool = True) -> Iterator[None]:
    """Within the block every tqdm bar is disabled, whoever creates it, and child processes
    inherit ``TQDM_DISABLE=1`` (``active=False``: a block that changes nothing)."""
    if not active:
        yield
        return
    from tqdm import std

    original = std.tqdm.__init__

    def quiet_init(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        original(self, *args, **kwargs)

    saved = os.environ.get("TQDM_DISABLE")
    std.tqdm.__init__ = quiet_init
    os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        std.tqdm.__init__ = original
        if saved is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = saved


__all__ = ["no_progress_bars"]
