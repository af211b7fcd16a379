"""The set of FreeU settings that one evaluation compares: named configurations, grids and windows, parsed once.

A configuration is written as a short spec, on the command line (``--config NAME:SPEC``) or in a JSON/TOML file:

- ``off``: FreeU off (the baseline every other configuration is compared with);
- a preset name (``sd15``, ``sdxl``, ...), a preset file (``tuned.toml``, as ``freeu tune`` writes) or ``auto`` (the
  preset matching the pipeline's U-Net, chosen after it loads), optionally followed by ``key=value`` overrides:
  ``sd15 version=1``, ``sd15 start=0.5``, ``tuned.toml s2=0.9``;
- only ``key=value`` pairs: ``b1=1.1 b2=1.2 s1=0.9 s2=0.9`` (then all four factors are needed).

Keys: ``b1 b2 s1 s2`` (factors), ``version convention threshold start stop ramp`` (the :class:`freeu.FreeUConfig`
fields), ``guidance`` (that configuration's classifier-free guidance scale), ``compensate`` (``global`` or ``low``:
FreeU with the extra guidance that the guidance meter measures taken back, on every frequency or on the low band
only) and ``stage1`` .. ``stage8`` (one
stage's settings beyond the factors, one value, e.g. ``stage3=b=1.1,s=0.8`` or ``stage1=high=1.1,cutoff=0.1``;
the grammar of ``--stage`` without the stage number). A value may be a list ``1.0,1.2,1.4``
or a range ``1.0:1.6:0.2`` (stop included): the spec then expands into the Cartesian product of its lists, each
configuration named ``NAME[key=value,...]``; a list of windows, e.g. ``start=0,0.25,0.5``, is a grid too.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from freeu.config import MAX_STAGES, PRESETS, FreeUConfig, is_preset_file, parse_stage_settings, read_bounded
from freeu.settings import AUTO, Settings, check_settings, resolve

from ..options import FACTORS, FREEU_FIELDS, parse_values
from ..schedule import GuidanceSchedule

__all__ = [
    "BASELINE",
    "EvalConfig",
    "expand_spec",
    "guidance_baselines",
    "load_config_file",
    "parse_config_arg",
    "resolve_auto",
    "with_baseline",
]

logger = logging.getLogger(__name__)

#: The largest configuration file read, in bytes (one of a hundred grids is a few KiB).
MAX_CONFIG_FILE = 2**20
#: The name of the FreeU-off configuration that every other configuration is compared with.
BASELINE = "off"
STAGE_KEYS: tuple[str, ...] = tuple(f"stage{k}" for k in range(1, MAX_STAGES + 1))
KEYS: tuple[str, ...] = (*FACTORS, *FREEU_FIELDS, "guidance", "compensate", *STAGE_KEYS)
#: ``compensate=``: the guidance FreeU adds taken back on every frequency, or on the low band only.
COMPENSATIONS = ("global", "low")
_INT_KEYS = ("version", "threshold")
#: A configuration's words for the settings where they differ from the library's: its keys otherwise.
NAMES = {"stages": "stage settings"}


@dataclass(frozen=True)
class EvalConfig:
    """One evaluated configuration: a name, FreeU's settings (``None``: off), and an optional guidance scale.

    ``preset`` is the preset it came from (for the report), ``"auto"`` until :func:`resolve_auto` picks one.
    ``guidance`` ``None`` means the run's ``--guidance``. ``compensate`` (``"global"`` or ``"low"``): FreeU with the
    extra guidance the guidance meter measures taken back, on every frequency or on the low band only.
    ``schedules``: guidance per step or per band for each prompt (``None``: every prompt), which the run sets from
    the meter's readings (matched baselines, compensation), never the user.
    """

    name: str
    freeu: FreeUConfig | None = None
    guidance: float | None = None
    preset: str | None = None
    overrides: tuple[tuple[str, Any], ...] = ()
    compensate: str | None = None
    schedules: tuple[tuple[str | None, GuidanceSchedule], ...] = ()

    @property
    def is_off(self) -> bool:
        return self.freeu is None and self.preset is None and not self.schedules

    def schedule_for(self, prompt: str | None) -> GuidanceSchedule | None:
        """The guidance schedule of one prompt's units (``None``: the plain scale)."""
        table = dict(self.schedules)
        return table.get(prompt, table.get(None))

    def settings(self) -> dict[str, Any] | None:
        """The FreeU fields as written into records and PNGs (``None``: FreeU off)."""
        return None if self.freeu is None else self.freeu.to_dict()

    def describe(self) -> str:
        """A one-line description for the report: ``b1=1.5 b2=1.6 s1=0.9 s2=0.2 (v2, official)``."""
        parts = []
        if self.freeu is None:
            parts.append("FreeU off" if self.preset is None else f"preset {self.preset} (chosen when the model loads)")
        else:
            parts.append(self.freeu.label())
        if self.guidance is not None:
            parts.append(f"guidance {self.guidance:g}")
        if self.compensate is not None:
            parts.append(f"extra guidance taken back ({'low band' if self.compensate == 'low' else 'every band'})")
        if self.schedules and self.compensate is None:
            shown = {s.describe() for _, s in self.schedules}
            parts.append(shown.pop() if len(shown) == 1 else f"guidance per prompt ({len(self.schedules)} prompts)")
        return ", ".join(parts)


def _parse_value(name: str, key: str, text: str) -> list[Any]:
    if key in STAGE_KEYS:
        try:
            parse_stage_settings(f"{key[5:]}:{text}")
        except ValueError as error:
            raise ValueError(f"configuration {name!r}: {error}") from None
        return [text]  # one value: a stage's settings are not swept
    if key == "convention":
        values = [v.strip() for v in text.split(",") if v.strip()]
    elif key == "compensate":
        values = [v.strip() for v in text.split(",") if v.strip()]
        wrong = [v for v in values if v not in COMPENSATIONS]
        if wrong:
            raise ValueError(f"configuration {name!r}: compensate must be one of {', '.join(COMPENSATIONS)}, got "
                             f"{wrong[0]!r}")  # fmt: skip
    else:
        try:
            values = parse_values(key, text)
        except ValueError as error:
            raise ValueError(f"configuration {name!r}: {error}") from None
        if key in _INT_KEYS:
            if any(v != int(v) for v in values):
                raise ValueError(f"configuration {name!r}: {key} must be an integer, got {text!r}")
            values = [int(v) for v in values]
    if not values:
        raise ValueError(f"configuration {name!r}: {key}= has no value")
    return values


def _tokens(name: str, spec: str | Mapping[str, Any]) -> tuple[str | None, list[tuple[str, list[Any]]]]:
    """``(base, [(key, values), ...])`` of a spec string or of a file's table (``{"base": ..., "b1": [...]}``)."""
    base: str | None = None
    pairs: list[tuple[str, list[Any]]] = []
    if isinstance(spec, Mapping):
        items: Iterable[tuple[str, Any]] = spec.items()
        for key, value in items:
            if key == "base":
                base = str(value)
                continue
            values = value if isinstance(value, (list, tuple)) else [value]
            pairs.append((key, [str(v) for v in values]))
        pairs = [(k, _parse_value(name, k, ",".join(v))) if k in KEYS else (k, v) for k, v in pairs]
    elif isinstance(spec, str):
        for token in spec.replace(";", " ").split():
            if "=" not in token:
                if base is not None:
                    raise ValueError(
                        f"configuration {name!r}: two bases {base!r} and {token!r}; give one of off, auto or a "
                        f"preset ({', '.join(sorted(PRESETS))}), then key=value pairs"
                    )
                base = token
                continue
            key, _, text = token.partition("=")
            pairs.append((key, _parse_value(name, key, text) if key in KEYS else [text]))
    else:
        raise ValueError(f"configuration {name!r}: a spec must be a string or a table, got {type(spec).__name__}")
    unknown = [k for k, _ in pairs if k not in KEYS]
    if unknown:
        raise ValueError(f"configuration {name!r}: unknown key(s) {unknown}; allowed: {', '.join(KEYS)}")
    seen = [k for k, _ in pairs]
    if len(seen) != len(set(seen)):
        raise ValueError(f"configuration {name!r}: a key is given twice in {seen}")
    return base, pairs


def _number(name: str, key: str, value: Any) -> Any:
    return value if key in ("convention", "compensate", *_INT_KEYS, *STAGE_KEYS) else float(value)


def _settings(base: str | None, chosen: Mapping[str, Any]) -> Settings:
    """A configuration's base and ``key=value`` pairs as :class:`freeu.settings.Settings` (``stageK`` pairs joined
    into stage text)."""
    fields = {k: v for k, v in chosen.items() if k not in STAGE_KEYS}
    stages = "; ".join(f"{k[5:]}:{v}" for k, v in chosen.items() if k in STAGE_KEYS)
    return Settings(preset=base, **fields, stages=stages)


def _build(name: str, base: str | None, chosen: dict[str, Any]) -> EvalConfig:
    guidance = chosen.pop("guidance", None)
    if guidance is not None and not guidance >= 0:
        raise ValueError(f"configuration {name!r}: guidance must be >= 0, got {guidance}")
    compensate = chosen.pop("compensate", None)
    if compensate is not None and guidance is not None:
        raise ValueError(f"configuration {name!r}: compensate= sets the guidance from the guidance meter; leave "
                         "guidance= out")  # fmt: skip
    overrides = tuple(sorted(chosen.items()))
    try:
        if base == BASELINE:
            if chosen or compensate is not None:
                keys = sorted([*chosen, *(["compensate"] if compensate else [])])
                raise ValueError(f"configuration {name!r}: 'off' takes no FreeU keys, got {keys}")
            return EvalConfig(name, None, guidance)
        if base == AUTO:
            check_settings(_settings(AUTO, chosen), NAMES)  # the pairs checked now; the preset when the model loads
            return EvalConfig(name, None, guidance, preset=AUTO, overrides=overrides, compensate=compensate)
        resolved = resolve(_settings(base, chosen), names=NAMES)
        return EvalConfig(name, resolved.config, guidance, preset=base, compensate=compensate)
    except (TypeError, ValueError) as error:
        text = str(error)
        if base is None and text.startswith("give preset"):
            text = (f"give a base (off, auto, a preset: {', '.join(sorted(PRESETS))}, or a .toml file) or all four "
                    f"factors; missing {text.split('missing: ')[1]}")  # fmt: skip
        raise ValueError(text if text.startswith("configuration") else f"configuration {name!r}: {text}") from None


def expand_spec(name: str, spec: str | Mapping[str, Any]) -> list[EvalConfig]:
    """The configurations of one spec: one, or the grid over its list-valued keys (validated)."""
    if not name or not re.fullmatch(r"[^\s:\[\]/\\]+(?: [^\s:\[\]/\\]+)*", name) or name.startswith("."):
        raise ValueError(f"a configuration name must be non-empty, without ':', '[', ']', slashes or a leading '.' "
                         f"(it names files and folders), got {name!r}")  # fmt: skip
    base, pairs = _tokens(name, spec)
    swept = [k for k, values in pairs if len(values) > 1]
    out = []
    for combo in itertools.product(*[values for _, values in pairs]):
        chosen = {k: _number(name, k, v) for (k, _), v in zip(pairs, combo, strict=True)}
        label = name
        if swept:
            label += (
                "[" + ",".join(f"{k}={chosen[k]:g}" if k != "convention" else f"{k}={chosen[k]}" for k in swept) + "]"
            )
        out.append(_build(label, base, dict(chosen)))
    return out


def parse_config_arg(text: str) -> list[EvalConfig]:
    """``NAME:SPEC`` from ``--config``; a bare ``SPEC`` without ':' is named after itself (``sd15``, ``off``), or
    after the file's stem where it starts with a preset file (``runs/tuned.toml`` is ``tuned``)."""
    name, sep, spec = text.partition(":")
    if not sep:
        first = text.split()[0] if text.split() else ""
        name, spec = (Path(first).stem if is_preset_file(first) else text.strip()), text
    return expand_spec(name.strip(), spec)


def load_config_file(path: str | Path) -> tuple[list[EvalConfig], list[float | str]]:
    """Configurations and guidance baselines from a JSON or TOML file::

    guidance_baselines = [9, 12]
    [configs]
    off = "off"
    sd15 = "sd15"
    mild = "b1=1.1 b2=1.2 s1=0.9 s2=0.9"
    grid = { base = "sd15", b1 = [1.0, 1.2, 1.4], s1 = [0.2, 0.9] }
    late = { base = "sd15", start = 0.5 }
    """
    path = Path(path)
    try:
        text = read_bounded(path, "configuration file", MAX_CONFIG_FILE)
    except OSError as error:
        raise ValueError(f"configuration file {path}: cannot read it ({error.strerror or error})") from None
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ImportError as error:  # Python 3.10
                raise ValueError(f"{path}: TOML needs Python >= 3.11; write the same content as JSON") from error
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except (ValueError, json.JSONDecodeError) as error:
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
        raise ValueError(f"{path}: cannot parse it as {kind}: {error}") from None
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply to be a configuration file") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("configs"), Mapping):
        raise ValueError(f"{path}: expected a table 'configs' mapping names to specs, got keys {list(data)}")
    unknown = sorted(set(data) - {"configs", "guidance_baselines"})
    if unknown:
        raise ValueError(f"{path}: unknown top-level key(s) {unknown}; allowed: configs, guidance_baselines")
    configs = [c for name, spec in data["configs"].items() for c in expand_spec(str(name), spec)]
    baselines = data.get("guidance_baselines", [])
    if not isinstance(baselines, list) or not all(isinstance(v, (int, float)) or v == "auto" for v in baselines):
        raise ValueError(f"{path}: guidance_baselines must be a list of numbers and 'auto', got {baselines!r}")
    return configs, [v if v == "auto" else float(v) for v in baselines]


def guidance_baselines(values: Sequence[float]) -> list[EvalConfig]:
    """FreeU off at stronger guidance scales: ``off@cfg9`` ... (to tell a FreeU gain from a guidance gain)."""
    return [EvalConfig(f"{BASELINE}@cfg{v:g}", None, float(v)) for v in values]


def with_baseline(configs: Sequence[EvalConfig]) -> list[EvalConfig]:
    """``configs`` with the FreeU-off baseline named ``off`` first (added when missing); names must be unique."""
    names = [c.name for c in configs]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"configuration names must be unique, got {duplicated} more than once")
    base = [c for c in configs if c.name == BASELINE]
    if base and not (base[0].is_off and base[0].guidance is None):
        raise ValueError(f"the name {BASELINE!r} is reserved for FreeU off at the run's guidance, got {base[0]}")
    rest = [c for c in configs if c.name != BASELINE]
    return [EvalConfig(BASELINE), *rest]


def resolve_auto(config: EvalConfig, preset: str) -> EvalConfig:
    """An ``auto`` configuration with the preset chosen from the model's structure (same on every process)."""
    if config.preset != AUTO:
        return config
    chosen = resolve(_settings(preset, dict(config.overrides)), names=NAMES).config
    return EvalConfig(config.name, chosen, config.guidance, preset=preset, overrides=config.overrides,
                      compensate=config.compensate)  # fmt: skip


def as_dict(config: EvalConfig) -> dict[str, Any]:
    out = asdict(config)
    out["freeu"] = config.settings()
    out["overrides"] = dict(config.overrides)
    out["schedules"] = [{"prompt": prompt, **schedule.as_dict()} for prompt, schedule in config.schedules]
    return out
