"""The work lm-evaluation-harness does around the model that our evaluations never read, and
:func:`lean_harness`, which leaves it out while ``lm_eval.simple_evaluate`` runs.

Around each ``simple_evaluate`` call the harness (0.4.x):

* compiles a task's Jinja templates again for every document: ``lm_eval.utils.apply_template``
  calls ``Environment.from_string`` on each call, about 12,000 compilations for SST-2, SciQ and
  TriviaQA at 1,000 questions each;
* collects its results header: ``torch.utils.collect_env`` (``pip list`` and the driver, in
  subprocesses) and ``git describe``. :func:`avsslib.evaluate.evaluate` reads the results,
  configurations and samples, never that header; our run records hold the environment.

:func:`lean_harness` compiles each template source once (a compiled Jinja template renders the
same text for the same document) and skips the header collection, for the duration only. What
the harness returns is otherwise unchanged: ``tests/test_evaluate.py`` compares whole
evaluations with and without it. ``benchmarks/bench_plumbing.py`` measures what it saves.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def lean_harness() -> Iterator[None]:
    """Within the block, ``lm_eval.utils.apply_template`` reuses compiled templates and
    ``simple_evaluate`` skips ``add_env_info`` and ``get_git_commit_hash`` (its results carry no
    ``pretty_env_info`` and a ``git_hash`` of ``None``); the originals are restored on exit.
    Blocks may nest; they are not thread-safe (the patches are module attributes), and
    ``avsslib`` evaluates in one thread."""
    import lm_eval.evaluator as evaluator
    import lm_eval.utils as utils

    compiled = functools.lru_cache(maxsize=1024)(utils.env.from_string)

    def apply_template(template: str, doc: dict[str, Any]) -> str:
        return compiled(template).render(**doc)

    saved = (utils.apply_template, evaluator.add_env_info, evaluator.get_git_commit_hash)
    utils.apply_template = apply_template
    evaluator.add_env_info = _no_env_info
    evaluator.get_git_commit_hash = _no_git_hash
    try:
        yield
    finally:
        utils.apply_template, evaluator.add_env_info, evaluator.get_git_commit_hash = saved


def _no_env_info(storage: dict[str, Any]) -> None:
    return None


def _no_git_hash() -> None:
    return None
