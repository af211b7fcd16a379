"""The errors the applications raise on purpose, and the one mapping of errors to exit codes for every command.

- exit 2 (:data:`USAGE`): a value that a flag, the model or the settings refuse (``ValueError``; a model FreeU
  does not apply to, :class:`freeu.UnsupportedModelError`; argparse's own refusals exit 2 as well), printed as
  ``freeu COMMAND: error: MESSAGE``;
- exit 1 (:data:`FAILURE`): something the command needs is not there: a model that cannot be loaded offline
  (:class:`ModelLoadError`), a file that cannot be read or written, a missing optional dependency
  (:class:`MissingExtra`), printed as ``freeu COMMAND: MESSAGE``;
- exit 130: interrupted with Ctrl+C.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from freeu.models import UnsupportedModelError

__all__ = ["FAILURE", "INTERRUPTED", "USAGE", "MissingExtra", "ModelLoadError", "require", "run_command"]

USAGE = 2
FAILURE = 1
INTERRUPTED = 130


class ModelLoadError(RuntimeError):
    """A model could not be loaded without the network; the message says how to get it."""


class MissingExtra(ImportError):
    """An optional dependency of one application is not installed; the message names the extra to install."""


def require(module: str, extra: str, what: str) -> Any:
    """``import module``, or :class:`MissingExtra` saying that ``what`` needs ``pip install 'freeu[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingExtra(f"{what} needs {module.split('.')[0]}: pip install 'freeu[{extra}]'") from error


#: Output folders the running command made (:func:`freeu.apps.options.writable_folder`), outermost first.
_made_folders: list[Path] = []


def note_made_folders(folders: Sequence[Path]) -> None:
    """Record folders a command made for its output (outermost first), so that a command that fails removes those
    it left empty."""
    _made_folders.extend(folders)


def _remove_empty_made_folders() -> None:
    """The folders the failed command made and wrote nothing into, removed (innermost first; a folder holding
    anything stays)."""
    while _made_folders:
        folder = _made_folders.pop()
        with contextlib.suppress(OSError):  # not empty (or gone): kept as it is
            folder.rmdir()


def run_command(command: str, handler: Callable[[Any], int | None], args: Any) -> int:
    """``handler(args)`` with every expected failure turned into a one-paragraph message and an exit code; a
    failed command leaves no empty output folder of its own making behind."""
    _made_folders.clear()
    try:
        code = handler(args) or 0
    except (ModelLoadError, MissingExtra, OSError) as error:
        print(f"freeu {command}: {_paragraph(error)}", file=sys.stderr)
        code = FAILURE
    except (ValueError, UnsupportedModelError) as error:
        print(f"freeu {command}: error: {_paragraph(error)}", file=sys.stderr)
        code = USAGE
    except KeyboardInterrupt:
        print(f"freeu {command}: interrupted", file=sys.stderr)
        code = INTERRUPTED
    except BaseException:
        _remove_empty_made_folders()
        raise
    if code:
        _remove_empty_made_folders()
    _made_folders.clear()
    return code


def _paragraph(error: BaseException) -> str:
    return " ".join(str(error).split())
