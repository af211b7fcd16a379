"""FreeU settings: one validated dataclass, and the published presets with their sources."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

__all__ = ["FreeUConfig", "Preset", "PRESETS", "get_preset", "Convention", "Factor", "Version"]

Convention = Literal["official", "diffusers"]
Version = Literal[1, 2]
CONVENTIONS: tuple[str, ...] = ("official", "diffusers")
VERSIONS: tuple[int, ...] = (1, 2)


Factor = float | tuple[float, ...]


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


def _format(value: Factor) -> str:
    return ",".join(f"{v:g}" for v in value) if isinstance(value, tuple) else f"{value:g}"


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

    def __post_init__(self) -> None:
        for name in ("b1", "b2", "s1", "s2"):
            object.__setattr__(self, name, _check_factor(name, getattr(self, name)))
        lengths = {len(getattr(self, n)) for n in ("b1", "b2", "s1", "s2") if isinstance(getattr(self, n), tuple)}
        if len(lengths) > 1:
            raise ValueError(f"per-sample b1, b2, s1, s2 must all have the same length, got lengths {sorted(lengths)}")
        if isinstance(self.version, bool) or self.version not in VERSIONS:
            raise ValueError(f"version must be one of {VERSIONS}, got {self.version!r}")
        if self.convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {CONVENTIONS}, got {self.convention!r}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int) or self.threshold < 1:
            raise ValueError(f"threshold must be an int >= 1, got {self.threshold!r}")
        for name in ("start", "stop", "ramp"):
            object.__setattr__(self, name, _check_fraction(name, getattr(self, name)))
        if self.start >= self.stop:
            raise ValueError(f"start must be < stop, got start={self.start} and stop={self.stop}")
        if 2 * self.ramp > self.stop - self.start:
            raise ValueError(
                f"ramp must be at most half the window (stop - start) / 2 = {(self.stop - self.start) / 2}, "
                f"got {self.ramp}"
            )
        steps = self.num_train_timesteps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"num_train_timesteps must be an int >= 1, got {steps!r}")

    @property
    def batch_size(self) -> int | None:
        """Number of per-sample values, or ``None`` when every factor is a single number."""
        for name in ("b1", "b2", "s1", "s2"):
            value = getattr(self, name)
            if isinstance(value, tuple):
                return len(value)
        return None

    @property
    def windowed(self) -> bool:
        """Whether FreeU is restricted to part of the trajectory."""
        return self.start > 0.0 or self.stop < 1.0 or self.ramp > 0.0

    def stage_factors(self, stage: int) -> tuple[Factor, Factor]:
        """``(b, s)`` of stage 1 or 2."""
        if stage == 1:
            return self.b1, self.s1
        if stage == 2:
            return self.b2, self.s2
        raise ValueError(f"stage must be 1 or 2, got {stage!r}")

    def is_identity(self, stage: int) -> bool:
        """Whether stage ``stage`` leaves every sample untouched (all its factors are 1)."""
        return all(v == 1.0 for f in self.stage_factors(stage) for v in (f if isinstance(f, tuple) else (f,)))

    def to_dict(self) -> dict[str, object]:
        """The settings as plain JSON-able values (per-sample factors as lists), e.g. for an image's metadata;
        ``FreeUConfig(**config.to_dict())`` gives the config back. ``num_train_timesteps`` is left out at its
        default of 1000."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.num_train_timesteps == 1000:
            del fields["num_train_timesteps"]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}

    def label(self) -> str:
        """The settings in one line, e.g. ``b1=1.5 b2=1.6 s1=0.9 s2=0.2 (v2, official)``; a threshold other than
        1 and a step window are added where set."""
        factors = " ".join(f"{name}={_format(getattr(self, name))}" for name in ("b1", "b2", "s1", "s2"))
        extra = f", threshold {self.threshold}" if self.threshold != 1 else ""
        if self.windowed:
            ramp = f", ramp {self.ramp:g}" if self.ramp > 0 else ""
            extra += f", steps {self.start:g}-{self.stop:g}{ramp}"
        return f"{factors} (v{self.version}, {self.convention}{extra})"

    def replace(self, **changes: object) -> FreeUConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named, published FreeU setting and where it was published."""

    name: str
    config: FreeUConfig
    model: str
    source: str


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


def get_preset(name: str) -> Preset:
    """The preset called ``name``; a ``ValueError`` listing the known names otherwise."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}") from None
