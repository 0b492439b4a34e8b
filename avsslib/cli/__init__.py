"""The ``avss`` command line: thin subcommands over the same functions the notebooks call.

Each subcommand lives in its own module in this package and exposes three names:
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``; ``LOCK_OUT = True``
makes the dispatcher hold the lock of ``--out`` (:func:`avsslib.report.results_lock`) while
``run`` writes there, so that a second run into the same directory is refused.
To add a command, write the module and append its name to ``COMMANDS``.

Errors of the ``AvssError`` family print one paragraph and exit with status 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from avsslib import __version__
from avsslib.errors import AvssError

COMMANDS: tuple[str, ...] = ("models", "data", "eval", "score", "prune", "study", "diagnose", "heal", "hallucination", "mitigate",
                             "reproduce")


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    try:
        if args._lock_out:       # one writer per results directory (avsslib.report.results_lock)
            from avsslib.report import results_lock

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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
