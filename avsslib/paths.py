"""Where avsslib reads data and keeps caches. One place, environment-driven.

* ``AVSS_DATA_DIR``: directory with the offline datasets (layout of ``shared/data``:
  ``nq_open/``, ``sciq/``, ...). Unset means: use the Hugging Face hub when a network exists.
* ``AVSS_CACHE_DIR``: where dequantized models are cached as safetensors.
  Default ``$XDG_CACHE_HOME/avsslib`` (``~/.cache/avsslib``).
"""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path | None:
    """The offline data directory from ``AVSS_DATA_DIR``, or ``None`` when unset or empty."""
    value = os.environ.get("AVSS_DATA_DIR", "").strip()
    return Path(value).expanduser().resolve() if value else None


def cache_dir() -> Path:
    """The model cache directory (created on demand by the code that writes to it)."""
    value = os.environ.get("AVSS_CACHE_DIR", "").strip()
    if value:
        return Path(value).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "avsslib").resolve()
