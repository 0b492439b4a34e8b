"""Shared fixtures. Tiers: unit tests (synthetic tensors, tiny random models) run everywhere;
tests marked ``slow`` load the embedded model or run notebooks; ``book`` builds the book."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()


#: test modules run by one xdist worker together: both use the notebooks executed once a session
NOTEBOOK_MODULES = frozenset({"test_book", "test_notebooks"})


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test`` runs ``-n 2``), each worker's PyTorch, and the notebook
    kernels and commands it starts, use the machine's cores divided among the workers, so that
    two workers on two cores do not run four threads."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(name, threads)
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


#: the longest modules (``--durations`` of a fresh-clone ``make test``, 2026-12-06), run first
#: so that the two workers finish together: the float64 digest (7 min), then the notebooks and
#: the book (5 min), then the evaluation parity tests (4 min)
FIRST_MODULES = ("test_reproduce_digest", "test_notebooks", "test_book", "test_eval_backend")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The modules of :data:`FIRST_MODULES` first, in that order; the rest as collected."""
    missing = [stem for stem in FIRST_MODULES if not (REPO / "tests" / f"{stem}.py").is_file()]
    if missing:
        raise pytest.UsageError(
            f"tests/conftest.py: FIRST_MODULES names {missing}, which are not test modules "
            "(renamed?); update the list."
        )
    rank = {stem: k for k, stem in enumerate(FIRST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: keeps the rest


@pytest.hookimpl(optionalhook=True)  # the hook exists only where pytest-xdist is loaded
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under pytest-xdist, whole test modules go to a worker (xdist's ``loadscope``), so a
    module's fixtures (a model, an evaluation, the built book) are built once; the notebook and
    book tests go together, since the book is built from the notebooks executed once per
    session. Modules are handed out in collection order (:data:`FIRST_MODULES` first), not
    xdist's largest-count-first. (Not ``--dist loadgroup`` with marks: xdist 3.8 tags the
    grouped tests by rewriting ``item._nodeid``, which pytest 9 no longer reads, so the groups
    are lost.)"""
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "notebooks" if Path(module).stem in NOTEBOOK_MODULES else module

    return ModuleScheduling(config, log)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The offline data directory (AVSS_DATA_DIR, else ../shared/data)."""
    value = os.environ.get("AVSS_DATA_DIR") or str(SHARED_DATA)
    path = Path(value)
    if not (path / "MANIFEST.json").exists():
        pytest.skip(f"offline data not found at {path}; set AVSS_DATA_DIR")
    os.environ["AVSS_DATA_DIR"] = str(path)
    return path


#: sizes of every tiny model; each config class reads the names it knows (attribute_map
#: translates hidden_size/num_hidden_layers/... for GPT-2, DistilBERT, ...)
TINY_SIZES = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
#: what an architecture needs beyond the sizes to be built that small
TINY_ARCH = {"gptj": {"rotary_dim": 4}}  # its default (64) exceeds the tiny head size (8)
ENCODERS = frozenset({"bert", "roberta", "distilbert"})


def build_tiny_model(arch: str = "llama", *, bare: bool = False, seed: int = 0, **overrides):
    """A randomly initialised ``arch`` model (``config.model_type``) of :data:`TINY_SIZES`
    with ``overrides``, weights from ``torch.manual_seed(seed)``, in eval mode: the causal-LM
    wrapper (masked LM for encoders) or, with ``bare``, the base model. Nothing is
    downloaded. Tests get it as the ``tiny_model`` fixture."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

    torch.manual_seed(seed)
    config = AutoConfig.for_model(arch, **TINY_SIZES | TINY_ARCH.get(arch, {}) | overrides)
    auto = (
        AutoModel if bare else (AutoModelForMaskedLM if arch in ENCODERS else AutoModelForCausalLM)
    )
    return auto.from_config(config).eval()


@pytest.fixture(scope="session")
def tiny_model():
    """The factory ``tiny_model(arch="llama", *, bare=False, seed=0, **overrides)``
    (:func:`build_tiny_model`): the one way tests build a small random model."""
    return build_tiny_model


@pytest.fixture(scope="session")
def tiny_llama():
    """A 4-layer randomly initialised Llama (hidden 32), built from a config: no download."""
    return build_tiny_model("llama")


@pytest.fixture(scope="session")
def smol():
    """The embedded SmolLM2-135M-Instruct (model, tokenizer), fp32 on CPU, loaded once per session."""
    from avsslib.models import load_model

    return load_model("smollm2-135m")


def byte_tokenizer():
    """A byte-level tokenizer (259 ids: ``<pad>``, ``<s>``, ``</s>`` and the 256 bytes): any text
    encodes, nothing is downloaded. Returns a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(alphabet)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


@pytest.fixture(scope="session")
def byte_tokenizer_factory():
    """:func:`byte_tokenizer` as a fixture (a new tokenizer per call)."""
    return byte_tokenizer


# ------------------------------------------------------------------ the notebook tier

NOTEBOOK_DIR = REPO / "notebooks"

# Small parameters per notebook (file stem -> papermill parameters); a notebook not listed runs
# with its own defaults, which must then be small enough for a CPU smoke run.
TINY_PARAMS: dict[str, dict[str, object]] = {
    "00_setup": {"max_new_tokens": 8},
    "01_avss_first_principles": {"n_calib": 8, "seq_len": 16, "batch_size": 4, "n_boot": 20},
    "03_layer_importance": {"n_calib": 8, "seq_len": 16, "batch_size": 4},
    "04_pruning_retention": {
        "tasks": ["wikitext2_ppl"],
        "n_eval": 4,
        "ppl_window": 32,
        "n_calib": 8,
        "seq_len": 16,
        "scores": ["avss", "random", "tail"],
        "sweep_fractions": [0.25],
        "sweep_scores": ["avss"],
        "n_boot": 20,
    },
    "02_official_code": {"n_calib": 8, "seq_len": 16, "batch_size": 4},
    "05_hallucination_prone_layers": {
        "datasets": "sciq,truthfulqa",
        "n": 8,
        "n_wikiqa": 2,
        "max_new_tokens": 6,
        "batch_size": 8,
        "n_boot": 20,
    },
    "06_mitigation": {
        "n_label": 8,
        "max_new_tokens": 6,
        "n_train": 4,
        "n_eval": 4,
        "kl_texts": 2,
        "ppl_windows": 1,
        "n_boot": 20,
    },
    "07_paper_scale": {},
    "08_reproduce_yourself": {},
    "09_exercises": {},
    "10_why_avss_fails": {},
}
CELL_TIMEOUT_S = 900


@pytest.fixture(scope="session")
def notebook_params() -> dict[str, dict[str, object]]:
    """:data:`TINY_PARAMS`, the small parameters of each notebook in the smoke tier."""
    return TINY_PARAMS


def execute_notebook(source: Path, workdir: Path) -> Path:
    """Execute the MyST notebook ``source`` with its ``TINY_PARAMS`` into ``workdir``.

    Returns the path of the executed ``.ipynb``; raises papermill's ``PapermillExecutionError``
    (naming the failing cell) when a cell fails.
    """
    import jupytext
    import papermill

    workdir.mkdir(parents=True, exist_ok=True)
    unexecuted = workdir / f"{source.stem}.src.ipynb"
    executed = workdir / f"{source.stem}.ipynb"
    jupytext.write(jupytext.read(source), unexecuted)
    params = dict(TINY_PARAMS.get(source.stem, {}))
    if "out_dir" in papermill.inspect_notebook(str(unexecuted)):
        params["out_dir"] = str(workdir / f"{source.stem}-out")
    papermill.execute_notebook(
        str(unexecuted),
        str(executed),
        parameters=params,
        cwd=str(NOTEBOOK_DIR),
        kernel_name="python3",
        progress_bar=False,
        execution_timeout=CELL_TIMEOUT_S,
    )
    return executed


# Executed notebooks by stem (or the error they raised), shared by test_notebooks.py and
# test_book.py so that each notebook runs once per test session.
_RUNS: dict[str, Path | Exception] = {}


@pytest.fixture(scope="session")
def run_notebook(tmp_path_factory) -> Callable[[str], Path]:
    """``run(stem)`` executes ``notebooks/<stem>.md`` once per session and returns the .ipynb."""
    if not os.environ.get("AVSS_DATA_DIR") and (SHARED_DATA / "MANIFEST.json").exists():
        os.environ["AVSS_DATA_DIR"] = str(SHARED_DATA)
    workdir = tmp_path_factory.mktemp("notebooks")

    def run(stem: str) -> Path:
        if stem not in _RUNS:
            try:
                _RUNS[stem] = execute_notebook(NOTEBOOK_DIR / f"{stem}.md", workdir)
            except Exception as error:  # remembered, so a second caller fails the same way
                _RUNS[stem] = error
        result = _RUNS[stem]
        if isinstance(result, Exception):
            raise result
        return result

    return run
