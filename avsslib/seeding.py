"""One call to make a run repeatable: seed every generator and prefer deterministic kernels."""

from __future__ import annotations

import operator
import os
import random

import numpy as np
import torch


def set_seed(seed: int, *, deterministic: bool = True) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every GPU).

    With ``deterministic=True`` (the default) also ask torch for deterministic algorithms
    (``torch.use_deterministic_algorithms(True, warn_only=True)``: an op without a deterministic
    kernel warns instead of failing), turn cuDNN autotuning off and set the cuBLAS workspace
    that deterministic matrix products need (``CUBLAS_WORKSPACE_CONFIG``, if unset; it only takes
    effect before CUDA is first used). Two runs with the same seed on the same machine and
    library versions then give the same numbers.

    Raises ``ConfigError`` for a seed that is not an integer in ``0 .. 2**32 - 1`` (NumPy's range).
    """
    from avsslib.errors import ConfigError

    try:
        ok = not isinstance(seed, bool) and 0 <= operator.index(seed) < 2**32
    except TypeError:
        ok = False
    if not ok:
        raise ConfigError(
            f"seed = {seed!r}: a seed must be an integer from 0 to 2**32 - 1 (e.g. --seed 0)."
        )
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
