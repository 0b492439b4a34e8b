"""One call to make a run repeatable: seed every generator and prefer deterministic kernels."""

from __future__ import annotations

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
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
