"""FreeU settings: one validated dataclass, the published presets with their sources, and preset files."""

from __future__ import annotations

import dataclasses
import math
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

__all__ = [
    "FreeUConfig",
    "Stage",
    "Preset",
    "PRESETS",
    "get_preset",
    "load_preset_file",
    "preset_file_in",
    "read_bounded",
    "parse_stage_settings",
    "stage_settings_text",
    "Convention",
    "Factor",
    "Version",
    "check_field",
    "check_window",
]

Convention = Literal["official", "diffusers"]
Version = Literal[1, 2]
CONVENTIONS: tuple[str, ...] = ("official", "diffusers")
VERSIONS: tuple[int, ...] = (1, 2)


Factor = float | tuple[float, ...]
#: The four factors of the paper's two stages.
FACTORS: tuple[str, ...] = ("b1", "b2", "s1", "s2")


#: The largest factor accepted: far beyond any published setting (b <= 1.6, s <= 1), and small enough that a
#: float16 feature scaled by it cannot overflow where the feature itself is below 655.
MAX_FACTOR = 100.0


def _check_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number >= 0, got {type(value).__name__} {value!r}")
    try:
        value = float(value)
    except OverflowError:
        raise ValueError(f"{name} must be at most {MAX_FACTOR:g}, got an integer too large for a float") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if value > MAX_FACTOR:
        raise ValueError(f"{name} must be at most {MAX_FACTOR:g} (FreeU's factors stay near 1), got {value!r}")
    return value


def _check_factor(name: str, value: object) -> Factor:
    """A number, or a non-empty sequence of numbers (one per sample), each finite and >= 0."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{name} must be a number or a non-empty sequence of numbers, got an empty sequence")
        return tuple(_check_number(f"{name}[{i}]", v) for i, v in enumerate(value))
    if hasattr(value, "tolist") and not isinstance(value, (int, float)):  # a tensor or array of per-sample values
        return _check_factor(name, value.tolist())
    return _check_number(name, value)


def _check_fraction(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a fraction of the denoising trajectory in [0, 1], got {value!r}")
    return float(value)


def check_window(
    start: float, stop: float, ramp: float, labels: Mapping[str, str] | None = None
) -> tuple[float, float, float]:
    """The step window's fields, each in [0, 1], together: ``start < stop`` and a ramp of at most half the window.
    ``labels`` names the fields as the caller does (``{"stop": "end_percent"}``)."""
    name = {k: (labels or {}).get(k, k) for k in ("start", "stop", "ramp")}
    start, stop, ramp = (_check_fraction(name[k], v) for k, v in (("start", start), ("stop", stop), ("ramp", ramp)))
    if start >= stop:
        raise ValueError(f"{name['start']} must be < {name['stop']}, got {name['start']}={start} and "
                         f"{name['stop']}={stop}")  # fmt: skip
    if 2 * ramp > stop - start:
        raise ValueError(f"{name['ramp']} must be at most half the window ({name['stop']} - {name['start']}) / 2 = "
                         f"{(stop - start) / 2}, got {ramp}")  # fmt: skip
    return start, stop, ramp


def _check_whole(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def check_field(field: str, value: object, label: str | None = None) -> object:
    """One field of :class:`FreeUConfig` checked alone, exactly as the config checks it, and returned in the
    config's form (a factor as a float or a tuple, the stages as :class:`Stage`). The error names the field
    ``label`` (the caller's word for it; default the field's own name). Fields that must agree with others (the
    window's ``start < stop``) are checked together by :func:`check_window` and the config."""
    name = field if label is None else label
    if field in FACTORS:
        return _check_factor(name, value)
    if field == "version":
        if isinstance(value, bool) or value not in VERSIONS:
            raise ValueError(f"{name} must be one of {VERSIONS}, got {value!r}")
        return value
    if field == "convention":
        if value not in CONVENTIONS:
            raise ValueError(f"{name} must be one of {CONVENTIONS}, got {value!r}")
        return value
    if field in ("threshold", "num_train_timesteps"):
        return _check_whole(name, value, 1)
    if field in ("start", "stop", "ramp"):
        return _check_fraction(name, value)
    if field == "stages":
        if not isinstance(value, (tuple, list)):
            raise TypeError(f"{name} must be a sequence of freeu.Stage, got {type(value).__name__}")
        return tuple(_as_stage(i, s) for i, s in enumerate(value))
    fields = ", ".join(f.name for f in dataclasses.fields(FreeUConfig))
    raise ValueError(f"{field!r} is no FreeU setting; the settings are {fields}")


def _format(value: Factor) -> str:
    return ",".join(f"{v:g}" for v in value) if isinstance(value, tuple) else f"{value:g}"


#: The backbone channels the paper scales: the first half, as ``(offset, width)`` fractions of the channels.
FIRST_HALF = (0.0, 0.5)


@dataclasses.dataclass(frozen=True)
class Stage:
    """The settings of one FreeU stage: the paper's two numbers and the controls sd-webui-freeu adds.

    ``b`` amplifies the backbone channels of ``window`` (``(offset, width)`` as fractions of the channels; the
    default is the paper's first half), ``s`` is the gain of the skip's lowest frequencies and ``high`` the gain of
    all the others (1: untouched). ``cutoff`` sets the square of low frequencies as a fraction of each map's
    half-size (``max(1, floor(n // 2 * cutoff))`` bins per axis, sd-webui-freeu's ``skip_cutoff``); ``None`` uses
    the config's ``threshold`` (bins). ``b`` and ``s`` may hold one value per sample, like ``b1``.
    """

    b: Factor = 1.0
    s: Factor = 1.0
    high: float = 1.0
    window: tuple[float, float] = FIRST_HALF
    cutoff: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "b", _check_factor("b", self.b))
        object.__setattr__(self, "s", _check_factor("s", self.s))
        object.__setattr__(self, "high", _check_number("high", self.high))
        window = self.window
        if not isinstance(window, (tuple, list)) or len(window) != 2:
            raise ValueError(f"window must be (offset, width), fractions of the channels, got {window!r}")
        offset = _check_unit("window offset", window[0], "[0, 1)")
        width = _check_unit("window width", window[1], "[0, 1]")
        if offset == 1:
            raise ValueError("window offset must be in [0, 1) (a fraction of the channels), got 1")
        object.__setattr__(self, "window", (offset, width))
        if self.cutoff is not None:
            object.__setattr__(self, "cutoff", _check_unit("cutoff", self.cutoff, "[0, 1]"))

    @property
    def plain(self) -> bool:
        """Whether only ``b`` and ``s`` are set (the paper's controls)."""
        return self.high == 1.0 and self.window == FIRST_HALF and self.cutoff is None

    def is_identity(self) -> bool:
        """Whether the stage leaves every sample untouched."""
        values = [v for f in (self.b, self.s) for v in (f if isinstance(f, tuple) else (f,))]
        return self.high == 1.0 and all(v == 1.0 for v in values)

    def to_dict(self) -> dict[str, object]:
        """``b`` and ``s``, and the controls that differ from their defaults (JSON-able)."""
        out: dict[str, object] = {k: list(v) if isinstance(v, tuple) else v for k, v in (("b", self.b), ("s", self.s))}
        if self.high != 1.0:
            out["high"] = self.high
        if self.window != FIRST_HALF:
            out["window"] = list(self.window)
        if self.cutoff is not None:
            out["cutoff"] = self.cutoff
        return out

    def label(self) -> str:
        parts = [f"b={_format(self.b)}", f"s={_format(self.s)}"]
        if self.high != 1.0:
            parts.append(f"high={self.high:g}")
        if self.window != FIRST_HALF:
            parts.append(f"window={self.window[0]:g}/{self.window[1]:g}")
        if self.cutoff is not None:
            parts.append(f"cutoff={self.cutoff:g}")
        return " ".join(parts)


#: The fields of a :class:`Stage`, and the most stages a config may have.
STAGE_FIELDS: tuple[str, ...] = ("b", "s", "high", "window", "cutoff")
MAX_STAGES = 8
_STAGED = ("b1", "b2", "s1", "s2", "stages")


def parse_stage_settings(text: str) -> dict[int, dict[str, object]]:
    """Stage settings written as text, the one grammar of the command line, the page and the host nodes:
    ``STAGE:KEY=VALUE,KEY=VALUE`` with stages separated by ``;``, e.g. ``"3:b=1.1,s=0.9; 1:high=1.1,cutoff=0.1"``.
    Keys: ``b``, ``s``, ``high`` (numbers), ``window`` (``OFFSET/WIDTH``, fractions of the channels), ``cutoff``
    (a fraction of the map, or ``none`` for the config's threshold). A stage, or a key within a stage, given twice is
    refused (not the last one silently kept), and so is text that is not ASCII (Python reads other scripts' digits as
    numbers). ``ValueError`` names the part it refuses."""
    if not isinstance(text, str):
        raise ValueError(f"stage settings must be text like '3:b=1.1,s=0.9', got {type(text).__name__}")
    if not text.isascii():
        raise ValueError("stage settings must be plain ASCII text like '3:b=1.1,s=0.9' (digits 0-9)")
    out: dict[int, dict[str, object]] = {}
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        number, sep, body = part.partition(":")
        if not sep or not number.strip().isdigit() or not 1 <= int(number) <= MAX_STAGES:
            raise ValueError(f"stage settings {part!r}: start with the stage number 1 to {MAX_STAGES} and ':', "
                             f"e.g. '3:b=1.1,s=0.9'")  # fmt: skip
        if int(number) in out:
            raise ValueError(f"stage {int(number)} is given twice; give each stage once, e.g. '3:b=1.1,s=0.9'")
        fields = out.setdefault(int(number), {})
        for item in (i.strip() for i in body.split(",")):
            key, sep, value = item.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or key not in STAGE_FIELDS:
                raise ValueError(f"stage {int(number)}: {item!r} is not KEY=VALUE with KEY one of {STAGE_FIELDS}")
            if key in fields:
                raise ValueError(f"stage {int(number)}: {key} is given twice")
            try:
                if key == "window":
                    offset, slash, width = value.partition("/")
                    if not slash:
                        raise ValueError
                    fields[key] = (float(offset), float(width))
                elif key == "cutoff" and value.lower() == "none":
                    fields[key] = None
                else:
                    fields[key] = float(value)
            except ValueError:
                form = "OFFSET/WIDTH, e.g. 0.25/0.5" if key == "window" else "a number"
                raise ValueError(f"stage {int(number)}: {key} must be {form}, got {value!r}") from None
    return out


def stage_settings_text(config: FreeUConfig) -> str:
    """What ``config`` sets beyond ``b1, b2, s1, s2``, in :func:`parse_stage_settings`' grammar (``""`` for the
    paper's two plain stages): ``config.replace(stages=()).with_stages(parse_stage_settings(text))`` is ``config``."""
    parts = []
    for k, stage in enumerate(config.stages, start=1):
        fields = {"b": stage.b, "s": stage.s} if k > 2 else {}
        if stage.high != 1.0:
            fields["high"] = stage.high
        if stage.window != FIRST_HALF:
            fields["window"] = f"{stage.window[0]!r}/{stage.window[1]!r}"
        if stage.cutoff is not None:
            fields["cutoff"] = stage.cutoff
        if fields:
            parts.append(f"{k}:" + ",".join(f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}"
                                            for key, value in fields.items()))  # fmt: skip
    return "; ".join(parts)


def _check_unit(name: str, value: object, interval: str) -> float:
    number = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not number or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in {interval} (a fraction), got {value!r}")
    return float(value)


def _as_stage(index: int, value: object) -> Stage:
    if isinstance(value, Stage):
        return value
    if isinstance(value, dict):
        unknown = sorted(set(value) - {f.name for f in dataclasses.fields(Stage)})
        if unknown:
            raise ValueError(f"stages[{index}] has unknown keys {unknown}; a stage has b, s, high, window, cutoff")
        try:
            return Stage(**{k: tuple(v) if k == "window" else v for k, v in value.items()})
        except (TypeError, ValueError) as error:
            raise type(error)(f"stages[{index}]: {error}") from None
    raise TypeError(f"stages[{index}] must be a freeu.Stage or a dict, got {type(value).__name__}")


@dataclasses.dataclass(frozen=True)
class FreeUConfig:
    """FreeU's factors, where they apply, and when.

    ``b1``/``b2`` amplify the backbone feature and ``s1``/``s2`` damp the skip feature's lowest frequencies at
    stage 1 (the deepest decoder stage) and stage 2 (the next one); 1 leaves that part untouched. Each may also be a
    sequence with one value per sample of the batch the pipeline makes (the U-Net batch may be a multiple of it:
    classifier-free guidance doubles it), so a grid of settings runs as one batch.
    ``version`` 1 scales by a constant, 2 by the paper's structure-related map (CVPR Eq. 2-4).
    ``convention`` picks the stage of each skip join: ``"official"`` by the backbone width at the join (the authors'
    code, ComfyUI, A1111, Forge), ``"diffusers"`` by the up-block index (diffusers' ``enable_freeu``).
    ``threshold`` is the half-width of the square of scaled frequencies (1 in every published setting).
    ``start``/``stop`` restrict FreeU to that part of the denoising trajectory, measured as
    ``1 - timestep / num_train_timesteps`` from the timestep the U-Net receives (0: pure noise, 1: the end);
    ``ramp`` > 0 fades the factors in over ``[start, start + ramp]`` and out over ``[stop - ramp, stop]``.
    ``stages``: every stage as a :class:`Stage`, for more than the paper's two stages or for the controls beyond
    ``b`` and ``s`` (:meth:`from_stages` builds such a config); stages 1 and 2 must agree with ``b1, s1, b2, s2``.
    Left empty, the two stages are ``b1, s1`` and ``b2, s2`` with nothing else (a ``stages`` that says only that is
    stored empty, so equal settings compare, hash and label equal).
    """

    b1: Factor
    b2: Factor
    s1: Factor
    s2: Factor
    version: Version = 2
    convention: Convention = "official"
    threshold: int = 1
    start: float = 0.0
    stop: float = 1.0
    ramp: float = 0.0
    num_train_timesteps: int = 1000
    stages: tuple[Stage, ...] = ()

    def __post_init__(self) -> None:
        for name in FACTORS:
            object.__setattr__(self, name, check_field(name, getattr(self, name)))
        stages: tuple[Stage, ...] = check_field("stages", self.stages)  # type: ignore[assignment]
        for k, stage in enumerate(stages[:2], start=1):
            for name, ours in ((f"b{k}", stage.b), (f"s{k}", stage.s)):
                if getattr(self, name) != ours:
                    raise ValueError(
                        f"{name}={_format(getattr(self, name))} disagrees with stage {k}'s {name[0]}={_format(ours)}: "
                        "give the factors once (FreeUConfig.from_stages)"
                    )
        if len(stages) == 1:
            raise ValueError("stages must list stages 1 and 2 at least (b1, s1 and b2, s2)")
        if len(stages) > MAX_STAGES:
            raise ValueError(f"stages: at most {MAX_STAGES} stages, got {len(stages)}")
        while len(stages) > 2 and stages[-1].plain and stages[-1].is_identity():
            stages = stages[:-1]  # a last stage that changes nothing is no stage
        if len(stages) == 2 and all(s.plain for s in stages):
            stages = ()  # the paper's two stages: stored as b1..s2 alone
        object.__setattr__(self, "stages", stages)
        # every stage, built once (the hooks read them at every call, also under torch.compile)
        every = stages or (Stage(self.b1, self.s1), Stage(self.b2, self.s2))
        object.__setattr__(self, "_every_stage", every)
        factors = [getattr(self, n) for n in FACTORS] + [f for s in stages[2:] for f in (s.b, s.s)]
        lengths = {len(f) for f in factors if isinstance(f, tuple)}
        if len(lengths) > 1:
            raise ValueError(f"per-sample factors (b1, b2, s1, s2 and every stage's) must all have the same length, "
                             f"got lengths {sorted(lengths)}")  # fmt: skip
        for name in ("version", "convention", "threshold", "num_train_timesteps"):
            check_field(name, getattr(self, name))
        window = check_window(self.start, self.stop, self.ramp)
        for name, value in zip(("start", "stop", "ramp"), window, strict=True):
            object.__setattr__(self, name, value)

    @classmethod
    def from_stages(cls, stages: list[Stage] | tuple[Stage, ...], **settings: object) -> FreeUConfig:
        """A config of these stages (stage 1 first; at least one, a missing stage 2 is left alone) and the other
        settings by name (``version``, ``convention``, ``threshold``, the window)."""
        stages = tuple(_as_stage(i, s) for i, s in enumerate(stages))
        if not stages:
            raise ValueError("from_stages needs at least one stage")
        if len(stages) == 1:
            stages = (*stages, Stage())
        return cls(stages[0].b, stages[1].b, stages[0].s, stages[1].s, stages=stages, **settings)  # type: ignore[arg-type]

    @property
    def num_stages(self) -> int:
        """How many stages the settings have (2: the paper's)."""
        return max(2, len(self.stages))

    def stage(self, stage: int) -> Stage:
        """The settings of stage ``stage`` (1 is the deepest)."""
        if isinstance(stage, bool) or not isinstance(stage, int) or not 1 <= stage <= self.num_stages:
            raise ValueError(f"stage must be 1 to {self.num_stages}, got {stage!r}")
        return self._every_stage[stage - 1]  # type: ignore[attr-defined]

    @property
    def batch_size(self) -> int | None:
        """Number of per-sample values, or ``None`` when every factor is a single number."""
        factors = [getattr(self, n) for n in ("b1", "b2", "s1", "s2")] + [f for s in self.stages for f in (s.b, s.s)]
        for value in factors:
            if isinstance(value, tuple):
                return len(value)
        return None

    @property
    def windowed(self) -> bool:
        """Whether FreeU is restricted to part of the trajectory."""
        return self.start > 0.0 or self.stop < 1.0 or self.ramp > 0.0

    def stage_factors(self, stage: int) -> tuple[Factor, Factor]:
        """``(b, s)`` of a stage."""
        settings = self.stage(stage)
        return settings.b, settings.s

    def is_identity(self, stage: int) -> bool:
        """Whether stage ``stage`` leaves every sample untouched (all its factors are 1)."""
        return self.stage(stage).is_identity()

    def to_dict(self) -> dict[str, object]:
        """The settings as plain JSON-able values (per-sample factors as lists), e.g. for an image's metadata;
        ``FreeUConfig(**config.to_dict())`` gives the config back. ``num_train_timesteps`` is left out at its
        default of 1000."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.num_train_timesteps == 1000:
            del fields["num_train_timesteps"]
        stages = fields.pop("stages")
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}
        if stages:  # only where set, so the paper's settings keep their old dict (and eval's image keys)
            out["stages"] = [s.to_dict() for s in stages]
        return out

    def label(self) -> str:
        """The settings in one line, e.g. ``b1=1.5 b2=1.6 s1=0.9 s2=0.2 (v2, official)``; a threshold other than
        1 and a step window are added where set."""
        factors = " ".join(f"{name}={_format(getattr(self, name))}" for name in ("b1", "b2", "s1", "s2"))
        extra = f", threshold {self.threshold}" if self.threshold != 1 else ""
        if self.windowed:
            ramp = f", ramp {self.ramp:g}" if self.ramp > 0 else ""
            extra += f", steps {self.start:g}-{self.stop:g}{ramp}"
        for k, stage in enumerate(self.stages, start=1):
            if k > 2 or not stage.plain:
                extra += f", stage {k}: {stage.label()}"
        return f"{factors} (v{self.version}, {self.convention}{extra})"

    def replace(self, **changes: object) -> FreeUConfig:
        """A copy with some fields changed (validated again); ``b1, s1, b2, s2`` also change stages 1 and 2."""
        if self.stages and "stages" not in changes:
            stages = list(self.stages)
            for k in (1, 2):
                update = {f: changes[f"{f}{k}"] for f in ("b", "s") if f"{f}{k}" in changes}
                if update:
                    stages[k - 1] = dataclasses.replace(stages[k - 1], **update)  # type: ignore[arg-type]
            changes = {**changes, "stages": tuple(stages)}
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def with_stages(self, changes: dict[int, dict[str, object]]) -> FreeUConfig:
        """A copy with some stages' settings changed, ``{stage: {field: value}}`` (fields of :class:`Stage`); a
        stage beyond the last is added, with the stages in between left alone (``b = s = 1``)."""
        if not changes:
            return self
        for k in changes:
            if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_STAGES:
                raise ValueError(f"a stage is a number from 1 to {MAX_STAGES}, got {k!r}")
        count = max(self.num_stages, *changes)
        stages = [self.stage(k) if k <= self.num_stages else Stage() for k in range(1, count + 1)]
        for k, fields in changes.items():
            unknown = sorted(set(fields) - set(STAGE_FIELDS))
            if unknown:
                raise ValueError(f"stage {k}: unknown setting(s) {unknown}; a stage has {', '.join(STAGE_FIELDS)}")
            try:
                stages[k - 1] = dataclasses.replace(stages[k - 1], **fields)  # type: ignore[arg-type]
            except (TypeError, ValueError) as error:
                raise ValueError(f"stage {k}: {error}") from None
        others = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _STAGED}
        return FreeUConfig.from_stages(stages, **others)


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named, published FreeU setting and where it was published."""

    name: str
    config: FreeUConfig
    model: str
    source: str
    path: str | None = None  # the preset file it was read from (None: a published preset)


_README = "official README, github.com/ChenyangSi/FreeU (values published with the version-2 code, 2023-10-18)"
_FIRST = "official README, first release (2023-09, version-1 code)"

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset("sd14", FreeUConfig(1.3, 1.4, 0.9, 0.2), "Stable Diffusion 1.4", _README),
        Preset("sd14-v1", FreeUConfig(1.2, 1.4, 0.9, 0.2, version=1), "Stable Diffusion 1.4", _FIRST),
        Preset("sd15", FreeUConfig(1.5, 1.6, 0.9, 0.2), "Stable Diffusion 1.5", _README),
        Preset("sd21", FreeUConfig(1.4, 1.6, 0.9, 0.2), "Stable Diffusion 2.1", _README),
        Preset("sd21-v1", FreeUConfig(1.1, 1.2, 0.9, 0.2, version=1), "Stable Diffusion 2.1", _FIRST),
        Preset("sdxl", FreeUConfig(1.3, 1.4, 0.9, 0.2), "Stable Diffusion XL", _README),
        Preset(
            "sdxl-sweep",
            FreeUConfig(1.1, 1.2, 0.6, 0.4),
            "Stable Diffusion XL",
            "community W&B sweep linked from the official README",
        ),
        Preset(
            "modelscope",
            FreeUConfig(1.2, 1.4, 0.9, 0.2, version=1, convention="diffusers"),
            "ModelScope / ZeroScope text-to-video",
            "community diffusers port, quoted by the diffusers FreeU docs (diffusers' enable_freeu: version 1)",
        ),
    )
}


#: The top-level keys of a preset file: ``[freeu]`` holds the settings (:class:`FreeUConfig`'s fields), the others
#: say what it is; ``[tune]`` is the record ``freeu tune`` leaves of how it chose them (read by people, not here).
PRESET_FILE_KEYS = ("name", "model", "source", "freeu", "tune")


def is_preset_file(name: object) -> bool:
    """Whether ``name`` names a preset file (a path ending in ``.toml``) rather than a published preset."""
    return isinstance(name, (str, os.PathLike)) and os.fspath(name).lower().endswith(".toml")


#: The largest preset file read, in bytes: one is a few hundred bytes; a larger "file" is something else.
MAX_PRESET_FILE = 64 * 1024


def read_bounded(path: str | os.PathLike[str], what: str, limit: int) -> str:
    """The text of the file at ``path`` that a user or a client named: a regular file (not a FIFO, a device or a
    folder, which could block or never end) of at most ``limit`` bytes, as UTF-8. ``ValueError`` starts with
    ``what`` and the path and never quotes the content; ``OSError`` where the file cannot be opened."""
    path = Path(path)
    info = path.stat()  # follows links: a link to /dev/zero is a device
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{what} {path}: not a regular file")
    with path.open("rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{what} {path}: over {_size(limit)}, too large to be a {what}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{what} {path}: not UTF-8 text (byte {error.start})") from None


def _size(limit: int) -> str:
    return f"{limit // 2**20} MiB" if limit % 2**20 == 0 else f"{limit // 1024} KiB"


def preset_file_in(name: str, folders: Sequence[str | os.PathLike[str]], label: str = "preset_file") -> Path:
    """The preset file called ``name`` inside one of ``folders`` (the first that holds it), for hosts that serve
    others: a server opens preset files only where its operator put them. ``name`` is relative (``tuned.toml``,
    ``sd15/late.toml``) and ends in ``.toml``; an absolute path, ``~``, ``..`` or a link that leads out of the
    folder is refused before anything is opened, and the error says only that no such preset file is there (never
    whether a path outside exists). ``ValueError`` starts with ``label``."""
    where = ", ".join(str(f) for f in folders) or "(no folder is set)"
    text = os.fspath(name) if isinstance(name, (str, os.PathLike)) else None
    if not text or not is_preset_file(text):
        raise ValueError(f"{label} must name a preset file (.toml) in {where}, got {name!r}")
    relative = Path(text)
    if relative.is_absolute() or text.startswith("~") or ".." in relative.parts or relative.drive:
        raise ValueError(f"{label}: {text!r} is not a name inside {where}; give the file's name in that folder")
    for folder in folders:
        root = Path(folder).resolve()
        candidate = (root / relative).resolve()
        if candidate.is_relative_to(root) and candidate.exists():
            return root / relative
    raise ValueError(f"{label}: no preset file {text!r} in {where}")


def load_preset_file(path: str | os.PathLike[str]) -> Preset:
    """A :class:`Preset` from a TOML file, such as the one ``freeu tune`` writes::

        name = "my-model"                # optional: the file's stem
        model = "my fine-tune of SD 1.5" # optional: what it was chosen for
        source = "freeu tune ..."        # optional: how it was chosen
        [freeu]                          # FreeUConfig's fields; b1, b2, s1, s2 are required
        b1 = 1.2
        b2 = 1.3
        s1 = 0.9
        s2 = 0.6
        version = 2

    Unknown keys are refused, not ignored. Needs Python >= 3.11 (``tomllib``).
    """
    path = Path(path).expanduser()
    try:
        import tomllib
    except ImportError:  # Python 3.10
        raise ValueError(f"preset file {path}: reading TOML needs Python >= 3.11 (tomllib)") from None
    try:
        text = read_bounded(path, "preset file", MAX_PRESET_FILE)
        data = tomllib.loads(text)
    except OSError as error:
        raise ValueError(f"preset file {path}: cannot read it ({error.strerror or error})") from None
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"preset file {path}: not valid TOML ({error})") from None
    except RecursionError:
        raise ValueError(f"preset file {path}: nested too deeply to be a preset file") from None
    unknown = sorted(set(data) - set(PRESET_FILE_KEYS))
    if unknown:
        raise ValueError(f"preset file {path}: unknown key(s) {unknown}; allowed: {', '.join(PRESET_FILE_KEYS)}")
    settings = data.get("freeu")
    if not isinstance(settings, dict):
        raise ValueError(f"preset file {path}: needs a [freeu] table with b1, b2, s1, s2 (and optionally version, "
                         "convention, threshold, start, stop, ramp, stages)")  # fmt: skip
    fields = {f.name for f in dataclasses.fields(FreeUConfig)}
    unknown = sorted(set(settings) - fields)
    missing = [k for k in ("b1", "b2", "s1", "s2") if k not in settings]
    if unknown or missing:
        problem = f"unknown key(s) {unknown}" if unknown else f"missing {', '.join(missing)}"
        raise ValueError(f"preset file {path}: [freeu] {problem}; its keys are {', '.join(sorted(fields))}")
    for key in ("name", "model", "source"):
        if key in data and not isinstance(data[key], str):
            raise ValueError(f"preset file {path}: {key} must be a string, not {type(data[key]).__name__}")
    try:
        config = FreeUConfig(**settings)
    except (TypeError, ValueError) as error:
        raise ValueError(f"preset file {path}: [freeu] {error}") from None
    return Preset(
        data.get("name", path.stem), config, data.get("model", "unknown"), data.get("source", str(path)), path=str(path)
    )


def get_preset(name: str | os.PathLike[str]) -> Preset:
    """The published preset called ``name``, or the preset file at ``name`` when it ends in ``.toml``
    (:func:`load_preset_file`); a ``ValueError`` listing the known names otherwise."""
    if is_preset_file(name):
        return load_preset_file(name)
    try:
        return PRESETS[name]  # type: ignore[index]
    except (KeyError, TypeError):
        raise ValueError(f"preset must be one of {sorted(PRESETS)} or a preset file (.toml), got {name!r}") from None
