"""Any other U-Net, described by its user: which modules consume ``cat([backbone, skip])``, and how wide the
backbone part of their input is.

    layout = freeu.CustomUNet(
        joins={"decoder.0.res": 256, "decoder.1.res": 256, "decoder.2.res": 128},  # consumer -> backbone width
        base_channels=64,                  # official convention: stage 1 at 4x this width, stage 2 at 2x
        levels={"decoder.0.res": 0, "decoder.1.res": 0, "decoder.2.res": 1},  # only for convention="diffusers"
    )
    freeu.apply(model, preset="sd15", layout=layout)

Each consumer must take the concatenated tensor ``(B, backbone + skip, H, W)`` as its first input. Where the module
exposes its input width (``in_channels``, ``channels``, or a first ``Conv2d``), the skip width is checked against
it when the layout is resolved; the hook always checks the width of what it receives.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping

from torch import nn

from .base import SkipJoin, UNetLayout, UnsupportedModelError

__all__ = ["CustomUNet"]


def _declared_in_channels(module: nn.Module) -> int | None:
    for attr in ("in_channels", "channels"):
        value = getattr(module, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d):
            return sub.in_channels
    return None


@dataclasses.dataclass(frozen=True)
class CustomUNet:
    """A user's description of a U-Net's skip joins (see the module docstring).

    Attributes:
        joins: ``{qualified name of a module that consumes cat([backbone, skip]): backbone width}``.
        base_channels: the U-Net's base width; the official convention gives stage 1 to joins whose backbone is 4x
            as wide and stage 2 to those 2x as wide.
        levels: ``{join name: decoder level}`` (0 = deepest), needed only for ``convention="diffusers"``, which gives
            stage 1 to level 0 and stage 2 to level 1.
    """

    joins: Mapping[str, int]
    base_channels: int
    levels: Mapping[str, int] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.joins, Mapping) or not self.joins:
            raise TypeError("CustomUNet.joins must be a non-empty mapping {consumer module name: backbone width}")
        for name, width in self.joins.items():
            if isinstance(width, bool) or not isinstance(width, int) or width < 1:
                raise ValueError(f"CustomUNet.joins[{name!r}] must be a backbone width (int >= 1), got {width!r}")
        if isinstance(self.base_channels, bool) or not isinstance(self.base_channels, int) or self.base_channels < 1:
            raise ValueError(f"CustomUNet.base_channels must be an int >= 1, got {self.base_channels!r}")
        if self.levels is not None:
            unknown = sorted(set(self.levels) - set(self.joins))
            missing = sorted(set(self.joins) - set(self.levels))
            if unknown or missing:
                raise ValueError(
                    f"CustomUNet.levels must name exactly the joins; unknown: {unknown}, missing: {missing}"
                )

    def resolve(self, model: nn.Module) -> UNetLayout:
        """The layout on ``model``: finds each named module and checks the widths it declares."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"a CustomUNet layout needs the U-Net module itself, got {type(model).__name__}")
        modules = dict(model.named_modules())
        joins = []
        positions: dict[int, int] = {}
        for name, backbone in self.joins.items():
            if name not in modules:
                near = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.5)
                raise UnsupportedModelError(f"CustomUNet: no module named {name!r} in the model (similar: {near})")
            module = modules[name]
            in_channels = _declared_in_channels(module)
            skip = in_channels - backbone if in_channels is not None else 0
            if in_channels is not None and skip < 1:
                raise UnsupportedModelError(
                    f"CustomUNet: {name} takes {in_channels} input channels, which leaves no skip part after a "
                    f"backbone of {backbone}"
                )
            level = self.levels[name] if self.levels is not None else -1
            position = positions.get(level, 0)
            positions[level] = position + 1
            joins.append(SkipJoin(name, module, backbone, skip, block=level, position=position))
        return UNetLayout(family=f"custom {type(model).__name__}", base_channels=self.base_channels, joins=tuple(joins))
