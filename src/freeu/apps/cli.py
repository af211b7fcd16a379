"""The ``freeu`` command line. Each command lives in its own module, which registers its parser and its handler
(``register(subparsers)``, ``set_defaults(handler=...)``); :func:`main` runs the handler through the one mapping of
errors to exit codes (:func:`freeu.apps.errors.run_command`).

The commands need optional dependencies (``pip install 'freeu[diffusers]'`` and the extras named in the README);
each imports them only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
from collections.abc import Sequence

from freeu import __version__

from .errors import run_command

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

#: The modules that register the commands, in the order ``freeu --help`` lists them.
COMMAND_MODULES = (
    ".plan",
    ".demo.showcase",
    ".generate",
    ".analyze.cli",
    ".evaluate.cli",
    ".tune.cli",
    ".ui",
    ".export",
)


def build_parser() -> argparse.ArgumentParser:
    """The ``freeu`` parser with every command's subparser."""
    parser = argparse.ArgumentParser(prog="freeu", description="FreeU for diffusion U-Nets.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the library does")
    parser.add_argument("--version", action="version", version=f"freeu {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        importlib.import_module(module, __package__).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``freeu ARGV``; returns the exit code (see :mod:`freeu.apps.errors`)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    args.argv = list(argv) if argv is not None else None
    return run_command(args.command, args.handler, args)
