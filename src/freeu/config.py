"""FreeU settings: one validated dataclass, and the published presets with their sources."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

__all__ = ["FreeUConfig", "Preset", "PRESETS", "get_preset", "Convention", "Version"]

Convention = Literal["official", "diffusers"]
Version = Literal[1, 2]
CONVENTIONS: tuple[str, ...] = ("official", "diffusers")
VERSIONS: tuple[int, ...] = (1, 2)


def _check_factor(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number >= 0, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class FreeUConfig:
    """FreeU's factors and where they apply.

    ``b1``/``b2`` amplify the backbone feature and ``s1``/``s2`` damp the skip feature's lowest frequencies at
    stage 1 (the deepest decoder stage) and stage 2 (the next one); 1 leaves that part untouched.
    ``version`` 1 scales by a constant, 2 by the paper's structure-related map (CVPR Eq. 2-4).
    ``convention`` picks the stage of each skip join: ``"official"`` by the backbone width at the join (the authors'
    code, ComfyUI, A1111, Forge), ``"diffusers"`` by the up-block index (diffusers' ``enable_freeu``).
    ``threshold`` is the half-width of the square of scaled frequencies (1 in every published setting).
    """

    b1: float
    b2: float
    s1: float
    s2: float
    version: Version = 2
    convention: Convention = "official"
    threshold: int = 1

    def __post_init__(self) -> None:
        for name in ("b1", "b2", "s1", "s2"):
            object.__setattr__(self, name, _check_factor(name, getattr(self, name)))
        if isinstance(self.version, bool) or self.version not in VERSIONS:
            raise ValueError(f"version must be one of {VERSIONS}, got {self.version!r}")
        if self.convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {CONVENTIONS}, got {self.convention!r}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int) or self.threshold < 1:
            raise ValueError(f"threshold must be an int >= 1, got {self.threshold!r}")

    def stage_factors(self, stage: int) -> tuple[float, float]:
        """``(b, s)`` of stage 1 or 2."""
        if stage == 1:
            return self.b1, self.s1
        if stage == 2:
            return self.b2, self.s2
        raise ValueError(f"stage must be 1 or 2, got {stage!r}")

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
