"""The ``avss`` command line: thin subcommands over the same functions the notebooks call.

Each subcommand lives in its own module in this package and exposes three names:
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``; ``LOCK_OUT = True``
makes the dispatcher hold the lock of ``--out`` (:func:`avsslib.report.results_lock`) while
``run`` writes there, so that a second run into the same directory is refused.
To add a command, write the module and append its name to ``COMMANDS``.

Errors of the ``AvssError`` family (bad input) print one paragraph and exit with status 2.
Any other exception is a bug in avsslib: the command prints one paragraph naming the command and
the file that holds the traceback and the environment (:func:`write_crash_report`, under
``<cache>/crash-reports/``) and exits with status 1. ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import platform
import sys
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from avsslib import __version__
from avsslib.errors import AvssError
from avsslib.progress import no_progress_bars as _no_progress_bars

COMMANDS: tuple[str, ...] = (
    "models",
    "data",
    "eval",
    "score",
    "prune",
    "study",
    "diagnose",
    "heal",
    "hallucination",
    "mitigate",
    "reproduce",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avss",
        description="Layer importance (AVSS) and hallucination-prone layers (EAVSS) for LLMs.",
    )
    parser.add_argument("--version", action="version", version=f"avsslib {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"avsslib.cli.{name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run, _lock_out=getattr(module, "LOCK_OUT", False))
    return parser


def _environment() -> list[str]:
    """Versions and devices, for a crash report (never fails)."""
    from avsslib.report import library_versions

    lines = [f"platform: {platform.platform()}"]
    lines += [f"{k}: {v}" for k, v in library_versions().items()]
    try:
        import torch

        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            lines.append(f"cuda: {torch.version.cuda}; devices: {', '.join(names)}")
        else:
            lines.append("cuda: not available")
    except Exception as exc:  # noqa: BLE001 - a report must not fail on a broken install
        lines.append(f"torch: cannot query devices ({exc!r})")
    return lines


def write_crash_report(command: str, argv: Sequence[str], exc: BaseException) -> Path:
    """Write the traceback of ``exc`` and the environment to a new file under
    ``<cache>/crash-reports/`` (``avsslib.paths.cache_dir``; the system temporary directory when
    that is not writable) and return its path."""
    from avsslib.paths import cache_dir

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = (
        "\n".join(
            [
                f"avss {command}: unexpected error (a bug in avsslib)",
                f"command line: avss {' '.join(argv)}",
                f"time (UTC): {stamp}",
                "",
                "".join(traceback.format_exception(exc)).rstrip(),
                "",
                "environment:",
                *(f"  {line}" for line in _environment()),
            ]
        )
        + "\n"
    )
    name = f"avss-{command}-{stamp}-{os.getpid()}.txt"
    for folder in (cache_dir() / "crash-reports", Path(os.environ.get("TMPDIR", "/tmp"))):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            path.write_text(text, encoding="utf-8")
            return path
        except OSError:
            continue
    raise OSError("no writable directory for the crash report")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    quiet = bool(getattr(args, "quiet", False))
    stack = contextlib.ExitStack()
    if quiet:  # every tqdm bar, ours and the libraries' (harness, transformers)
        stack.enter_context(_no_progress_bars())
    try:
        if args._lock_out:  # one writer per results directory (avsslib.report.results_lock)
            from avsslib.fs import results_lock

            with results_lock(args.out):
                return int(args._run(args) or 0)
        return int(args._run(args) or 0)
    except AvssError as exc:
        if args.debug:
            raise
        print(f"avss {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"avss {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - anything else is a bug: report it, exit 1
        if args.debug:
            raise
        try:
            report = write_crash_report(args.command, argv, exc)
            where = f"The traceback and the environment (versions, device) are in {report}."
        except OSError:
            where = "No file could be written for the traceback; rerun with --debug to see it."
        print(
            f"avss {args.command}: internal error: {type(exc).__name__}: {exc}. This is a bug "
            f"in avsslib, not in your input. {where} Please report it with that file; "
            f"`avss --debug {args.command} ...` shows the traceback here.",
            file=sys.stderr,
        )
        return 1
    finally:
        stack.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
