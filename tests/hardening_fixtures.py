"""Inputs for the hardening tests (``tests/test_hardening.py``), built by plain functions so the
table of bad inputs and their messages (``python tests/test_hardening.py --table OUT.md``) runs
the same cases outside pytest.

Everything is small and made on the spot: a 4-block random Llama (hidden 16, context 64) over a
byte-level tokenizer (no download, no zoo model), broken copies of it, and broken copies of the
data files of every dataset's default split.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import json
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONTEXT = 64
"""``max_position_embeddings`` of the tiny model (sequences longer than this are refused)."""


def shared_data() -> Path:
    """The offline data folder (``AVSS_DATA_DIR``, else ``../shared/data``)."""
    return Path(os.environ.get("AVSS_DATA_DIR") or REPO.parent / "shared" / "data")


# ---------------------------------------------------------------- models


def make_tokenizer(path: Path) -> None:
    """A byte-level tokenizer (259 ids: pad, bos, eos and the 256 bytes), saved to ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(alphabet)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    ).save_pretrained(path)


def make_tiny_model(path: Path, *, arch: str = "llama") -> Path:
    """A random 4-block model (``llama``) or 2-block GPT-BigCode (``gpt_bigcode``, an
    architecture transformers knows but avsslib's table does not) with the byte tokenizer."""
    import torch
    from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if arch == "llama":
        cfg = LlamaConfig(
            vocab_size=259,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=4,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=CONTEXT,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
        model = LlamaForCausalLM(cfg)
    else:
        cfg = GPTBigCodeConfig(
            vocab_size=259,
            n_embd=16,
            n_layer=2,
            n_head=2,
            n_positions=CONTEXT,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
        model = GPTBigCodeForCausalLM(cfg)
    model.save_pretrained(path)
    make_tokenizer(path)
    return path


_EVIL = '''"""Model code shipped in a model directory: importing it leaves a marker file."""
from pathlib import Path

Path(__file__).resolve().parent.joinpath("{marker}").write_text("remote code ran")
from transformers import LlamaConfig as EvilConfig, LlamaForCausalLM as EvilModel  # noqa: E402
'''


def _copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_config(path: Path, **changes: Any) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def build_models(base: Path) -> dict[str, Path]:
    """The tiny model and its broken variants, as ``{name: path}``."""
    tiny = make_tiny_model(base / "tiny")
    out = {"tiny": tiny, "nowhere": base / "no" / "such" / "model"}
    out["no_weights"] = _copy_model(tiny, base / "no_weights")
    (out["no_weights"] / "model.safetensors").unlink()
    out["truncated_weights"] = _copy_model(tiny, base / "truncated_weights")
    weights = out["truncated_weights"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    out["garbage_weights"] = _copy_model(tiny, base / "garbage_weights")
    (out["garbage_weights"] / "model.safetensors").write_bytes(b"\x00\x01not safetensors" * 64)
    out["bad_config"] = _copy_model(tiny, base / "bad_config")
    (out["bad_config"] / "config.json").write_text('{"model_type": "llama", "hidden_size": ')
    out["unknown_arch"] = _copy_model(tiny, base / "unknown_arch")
    _edit_config(
        out["unknown_arch"], model_type="nosucharch", architectures=["NoSuchArchForCausalLM"]
    )
    out["foreign_arch"] = make_tiny_model(base / "foreign_arch", arch="gpt_bigcode")
    out["remote_code"] = _copy_model(tiny, base / "remote_code")
    (out["remote_code"] / "evil.py").write_text(_EVIL.format(marker="REMOTE_CODE_RAN"))
    _edit_config(
        out["remote_code"],
        model_type="evil",
        architectures=["EvilModel"],
        auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"},
    )
    out["empty_dir"] = base / "empty_dir"
    out["empty_dir"].mkdir()
    return out


# ---------------------------------------------------------------- data files

VARIANTS = ("empty", "non_utf8", "malformed", "truncated")
"""How a data file is broken: ``empty`` (0 bytes), ``non_utf8`` (a byte that is not UTF-8),
``malformed`` (text that is not the format), ``truncated`` (the first half of the real file,
cut inside a line, in a folder with the MANIFEST.json listing the full size)."""


def default_files(name: str) -> tuple[str, ...]:
    """The files (relative to the data folder) of ``name``'s default split."""
    from avsslib.data import DATASETS

    spec = DATASETS[name]
    return spec.splits[spec.default_split].files


def broken_data_dir(base: Path, name: str, variant: str) -> Path:
    """A data folder holding ``name``'s default-split files, the first one broken by ``variant``
    (the others are intact copies). Returns the folder."""
    src = shared_data()
    root = base / f"data_{name}_{variant}"
    files = default_files(name)
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, root / rel)
    target = root / files[0]
    raw = (src / files[0]).read_bytes()
    gz = target.suffix == ".gz"
    if variant == "empty":
        data = b""
    elif variant == "non_utf8":
        body = b"\xff\xfe\xfa this is not UTF-8\n"
        data = gzip.compress(body, mtime=0) if gz else body
    elif variant == "malformed":
        body = b"this is not the data format\nnor is this\n"
        data = gzip.compress(body, mtime=0) if gz else body
    elif variant == "truncated":
        cut = len(raw) // 2
        while raw[cut - 1 : cut] == b"\n":
            cut += 1
        data = raw[:cut]
        shutil.copyfile(src / "MANIFEST.json", root / "MANIFEST.json")
    else:
        raise ValueError(variant)
    target.write_bytes(data)
    return root


def escape_data_dir(base: Path) -> Path:
    """A data folder whose NQ-open file is a symlink to a file outside it."""
    root = base / "data_escape"
    outside = base / "outside.jsonl"
    outside.write_text('{"question": "q", "answer": ["a"]}\n')
    (root / "nq_open").mkdir(parents=True)
    os.symlink(outside, root / "nq_open" / "NQ-open.dev.jsonl")
    return root


def build_fixtures(base: Path) -> dict[str, Path]:
    """Every path the cases refer to (``{name}`` placeholders in their arguments)."""
    base.mkdir(parents=True, exist_ok=True)
    fx = build_models(base)
    fx["out"] = base / "out"
    fx["data"] = shared_data()
    fx["bad_nq"] = broken_data_dir(base, "nq_open", "malformed")
    fx["empty_wikitext"] = broken_data_dir(base, "wikitext2", "empty")
    # calibration data is wikitext2 validation (not the default split): make that file empty
    (fx["empty_wikitext"] / "wikitext2" / "wiki.valid.tokens").write_bytes(b"")
    fx["escape"] = escape_data_dir(base)
    fx["a_directory"] = base / "a_directory.csv"
    fx["a_directory"].mkdir()
    fx["bad_json"] = base / "bad.json"
    fx["bad_json"].write_bytes(b"\xff[1, 2")
    fx["interrupted"] = base / "interrupted"  # what a killed `avss mitigate` leaves
    fx["interrupted"].mkdir()
    (fx["interrupted"] / "checkpoint.pt").write_bytes(b"a checkpoint")
    fx["busy"] = base / "busy"  # a results folder another run is writing
    return fx


# ---------------------------------------------------------------- running a case


@dataclass
class Outcome:
    """What one bad input produced: the exit status (CLI) or the exception (API)."""

    status: str  # "exit 2", "DataError", ...
    message: str  # the whole message (stderr for the CLI)
    code: int | None = None
    error: BaseException | None = None
    stdout: str = ""

    @property
    def first_line(self) -> str:
        return next((line for line in self.message.splitlines() if line.strip()), "")


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_cli(argv: Sequence[str], env: dict[str, str] | None = None) -> Outcome:
    """``avss ARGV`` in this process; stderr and the exit status captured."""
    import torch

    from avsslib.cli import main

    err, out = io.StringIO(), io.StringIO()
    with environment(env or {}), contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 1
        finally:  # set_seed's deterministic-kernels switch is process-wide
            torch.use_deterministic_algorithms(False)
    return Outcome(f"exit {code}", err.getvalue(), code=code, stdout=out.getvalue())


def run_api(call: Any) -> Outcome:
    """``call()``, which must raise; its exception captured."""
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the point is to capture whatever it raises
        return Outcome(type(exc).__name__, str(exc), error=exc)
    return Outcome("no error", "")


@dataclass
class Case:
    """One bad input: a command line (``argv``, with ``{fixture}`` placeholders) or an API call
    (``api(fx)``), what it must produce (``status``: ``"exit 2"`` or an exception class name)
    and the substrings its message must contain (placeholders allowed)."""

    id: str
    topic: str
    status: str
    expect: tuple[str, ...]
    argv: tuple[str, ...] | None = None
    api: Any = None
    shown: str = ""  # how the table shows an API call
    env: dict[str, str] = field(default_factory=dict)
    locked: str | None = None  # a fixture folder whose results lock this process holds meanwhile

    def render(self, fx: dict[str, Path]) -> list[str]:
        return [a.format(**{k: str(v) for k, v in fx.items()}) for a in self.argv or ()]

    def describe(self, fx: dict[str, Path], base: Path | None = None) -> str:
        text = "avss " + " ".join(self.render(fx)) if self.argv is not None else self.shown
        env = " ".join(
            f"{k}={v.format(**{k2: str(v2) for k2, v2 in fx.items()})}" for k, v in self.env.items()
        )
        text = f"{env} {text}".strip()
        return text.replace(str(base), "$TMP") if base is not None else text

    def run(self, fx: dict[str, Path]) -> Outcome:
        if self.locked is not None:
            from avsslib.report import results_lock

            with results_lock(fx[self.locked]):
                return dataclasses.replace(self, locked=None).run(fx)
        if self.argv is not None:
            env = {
                k: v.format(**{k2: str(v2) for k2, v2 in fx.items()}) for k, v in self.env.items()
            }
            return run_cli(self.render(fx), env)
        return run_api(lambda: self.api(fx))


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for ``avss`` subprocesses: this one, one thread, this repository first on
    the path, the offline data folder."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "AVSS_DATA_DIR": str(shared_data()),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    env.update(extra)
    return env


KILL_HOOK = """
import os, signal, sys
from avsslib.cli import main

target, nth = os.environ.get("AVSS_KILL_AT"), int(os.environ.get("AVSS_KILL_NTH", "1"))
seen = {"n": 0}
for name in ("replace", "rename"):
    real = getattr(os, name)
    def patched(src, dst, *a, _real=real, **k):
        if target and target in os.path.basename(os.fspath(dst)):
            seen["n"] += 1
            if seen["n"] == nth:
                if os.environ.get("AVSS_KILL_AFTER"):
                    _real(src, dst, *a, **k)
                os.kill(os.getpid(), signal.SIGKILL)   # before: the new file written, not renamed
        return _real(src, dst, *a, **k)
    setattr(os, name, patched)
sys.exit(main(sys.argv[1:]))
"""
"""``python -c KILL_HOOK ARGV`` runs ``avss ARGV`` and kills itself with SIGKILL at the
``AVSS_KILL_NTH``-th rename onto a file whose name contains ``AVSS_KILL_AT``: before that rename
(the new file complete under its temporary name), or just after it with ``AVSS_KILL_AFTER=1``."""


def python() -> str:
    return sys.executable
