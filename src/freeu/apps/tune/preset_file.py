"""Writing preset files: the TOML that :func:`freeu.config.load_preset_file` reads (``freeu.apply(unet,
preset="tuned.toml")``, ``--preset tuned.toml`` in every command, the page's preset box, the ComfyUI node's
``preset_file``). The standard library reads TOML but does not write it; the few value types a preset holds are
written here."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from freeu.config import FreeUConfig, load_preset_file

__all__ = ["preset_toml", "write_preset"]


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string (same escapes)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"a preset file holds numbers, text, lists and tables, got {type(value).__name__}")


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _table(lines: list[str], name: str, values: Mapping[str, Any]) -> None:
    plain = {k: v for k, v in values.items() if not isinstance(v, Mapping)}
    nested = {k: v for k, v in values.items() if isinstance(v, Mapping)}
    lines += ["", f"[{name}]"] + [f"{_key(k)} = {_value(v)}" for k, v in plain.items()]
    for key, table in nested.items():
        _table(lines, f"{name}.{_key(key)}", table)


def preset_toml(
    config: FreeUConfig, *, name: str, model: str, source: str, tune: Mapping[str, Any] | None = None,
    comment: str = "",
) -> str:  # fmt: skip
    """The text of a preset file: ``name``, ``model``, ``source``, the ``[freeu]`` settings, and the ``[tune]``
    record of how they were chosen."""
    lines = [f"# {line}" for line in comment.splitlines()]
    lines += [f"name = {_value(name)}", f"model = {_value(model)}", f"source = {_value(source)}"]
    _table(lines, "freeu", config.to_dict())
    if tune:
        _table(lines, "tune", tune)
    return "\n".join(lines) + "\n"


def write_preset(path: str | Path, config: FreeUConfig, **fields: Any) -> Path:
    """Write the preset file (atomically) and read it back: the file must give ``config`` again."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(preset_toml(config, **fields), encoding="utf-8")
    os.replace(tmp, path)
    loaded = load_preset_file(path).config
    if loaded != config:
        raise RuntimeError(f"{path} reads back as {loaded.label()}, not {config.label()}")
    return path
