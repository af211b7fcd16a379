"""What every model family answers: where the skip joins are, how wide each side is, and which block holds them."""

from __future__ import annotations

import dataclasses

from torch import nn

__all__ = ["SkipJoin", "UNetLayout", "UnsupportedModelError", "class_names"]


def class_names(obj: object) -> set[str]:
    """Names of the classes along ``obj``'s MRO: families are detected by structure, never by checkpoint name."""
    return {cls.__name__ for cls in type(obj).__mro__}


class UnsupportedModelError(TypeError):
    """The model (or one of its blocks) is not a U-Net this library knows how to patch."""


@dataclasses.dataclass(frozen=True)
class SkipJoin:
    """One place where the decoder feeds ``cat([backbone, skip], dim=1)`` to a module.

    ``name`` is the consumer's qualified name in the U-Net (``"up_blocks.1.resnets.0"``); ``module`` receives the
    concatenated tensor as its first input; ``block`` and ``position`` are the up-block index and the join's index
    inside that block (``block`` -1: the model has no decoder levels).

    ``patch``: ``None`` for feature maps ``(B, C, H, W)``; for a transformer's long skip, the patch size of its
    tokens: the join's input is then ``cat([backbone, skip], dim=-1)`` of shape ``(B, N, C)``, whose ``N`` tokens
    are the patches of the model's input in row-major order, a grid of ``(H / patch) x (W / patch)``.

    ``channels_last``: the consumer receives the concatenation channels-last, ``(B, H, W, C)`` (an MLP over
    channels, as in Stable Cascade's residual blocks). ``structure``: where the backbone is normalised over its
    channels before the join (its channel mean is then zero), the module whose first input gives version 2's
    structure map instead (the block that normalises it); ``None``: the backbone at the join gives it.
    """

    name: str
    module: nn.Module = dataclasses.field(repr=False, compare=False)
    backbone_channels: int
    skip_channels: int
    block: int
    position: int
    patch: int | None = None
    channels_last: bool = False
    structure: nn.Module | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def in_channels(self) -> int:
        return self.backbone_channels + self.skip_channels


@dataclasses.dataclass(frozen=True)
class UNetLayout:
    """A U-Net's skip joins in decoder order, and its base width (the channels of its first convolution)."""

    family: str
    base_channels: int
    joins: tuple[SkipJoin, ...]
