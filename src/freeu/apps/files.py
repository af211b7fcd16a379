"""Files a command reads back that a user could have edited, replaced or pointed elsewhere (a tune's ``tune.json``,
the guidance meter's ``guidance.json``, a configuration file): read through :func:`freeu.config.read_bounded` (a
regular file under a size cap, so a FIFO or a link to a device is refused, not waited on), parsed with nesting
refused, and every problem a ``ValueError`` that names the file and says what to do, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from freeu.config import read_bounded

__all__ = ["MAX_RECORD", "read_json"]

#: The largest record read back, in bytes: a tune of a thousand candidates writes about 200 KiB.
MAX_RECORD = 16 * 2**20


def read_json(path: str | Path, what: str, limit: int = MAX_RECORD) -> Any:
    """The JSON value in ``path``; ``ValueError`` starting with ``what`` and the path for a file that is not a
    regular file, is over ``limit`` bytes, is not UTF-8 JSON or is nested too deeply, and for one that cannot be
    read."""
    try:
        text = read_bounded(path, what, limit)
    except OSError as error:
        raise ValueError(f"{what} {path}: cannot read it ({error.strerror or error})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} {path}: not valid JSON ({error})") from None
    except RecursionError:
        raise ValueError(f"{what} {path}: nested too deeply to be a {what}") from None
