"""Kandinsky 3's U-Net (diffusers ``Kandinsky3UNet``): find the skip joins by structure.

Its forward keeps the output of every down block but the last, and before every up block but the first runs
``sample = cat([sample, skip], dim=1)``; the up block consumes that (its first resnet takes backbone + skip channels,
and upsamples inside it, after the join). So each joined up block is one join, hooked on the up block itself.

The base width is the first level's (``block_out_channels[0]``), not ``conv_in``'s: Kandinsky 3's ``conv_in`` is half
as wide as its first level, where Stable Diffusion's is as wide. With it the official convention gives stage 1 to the
deepest join (backbone 4x the base, as 1280 = 4 x 320 in SD) and stage 2 to the next (2x); the top level's join
(1x) gets none. The decoder level of a join (diffusers' convention) counts the up blocks that join, from the deepest:
the same two joins.
"""

from __future__ import annotations

from torch import nn

from .base import SkipJoin, UNetLayout, UnsupportedModelError, class_names

__all__ = ["describe", "is_kandinsky3_unet"]


def is_kandinsky3_unet(module: object) -> bool:
    return "Kandinsky3UNet" in class_names(module)


def _first_block(block: nn.Module, where: str) -> nn.Module:
    try:
        return block.resnets_in[0].resnet_blocks[0]
    except (AttributeError, IndexError, TypeError):
        raise UnsupportedModelError(
            f"{where} ({type(block).__name__}) has no resnets_in[0].resnet_blocks[0]; Kandinsky 3 blocks start with a "
            "Kandinsky3ResNetBlock"
        ) from None


def _out_width(block: nn.Module, where: str) -> int:
    """The channels a down or up block puts out: the projection of its last resnet's last layer."""
    try:
        return int(block.resnets_out[-1].resnet_blocks[-1].projection.out_channels)
    except (AttributeError, IndexError, TypeError):
        raise UnsupportedModelError(
            f"{where} ({type(block).__name__}) has no resnets_out[-1].resnet_blocks[-1].projection; Kandinsky 3 "
            "blocks end with a Kandinsky3ResNetBlock"
        ) from None


def describe(unet: nn.Module) -> UNetLayout:
    """The skip joins of a ``Kandinsky3UNet``."""
    downs, ups = list(unet.down_blocks), list(unet.up_blocks)
    skips = [_out_width(block, f"down_blocks.{i}") for i, block in enumerate(downs[:-1])]
    backbone = _out_width(downs[-1], f"down_blocks.{len(downs) - 1}")
    joins: list[SkipJoin] = []
    for i, block in enumerate(ups):
        name = f"up_blocks.{i}"
        if i > 0:
            if not skips:
                raise UnsupportedModelError(f"{name}: the encoder has no skip feature left for this join")
            skip = skips.pop()
            in_channels = int(_first_block(block, name).projection.in_channels)
            if backbone + skip != in_channels:
                raise UnsupportedModelError(
                    f"{name}: backbone width {backbone} + skip width {skip} != its first layer's input width "
                    f"{in_channels}; this U-Net's skip joins do not follow the Kandinsky 3 layout"
                )
            joins.append(SkipJoin(name, block, backbone, skip, block=i - 1, position=0))
        backbone = _out_width(block, name)
    if skips:
        raise UnsupportedModelError(f"{len(skips)} encoder skip feature(s) are never consumed by the up blocks")
    return UNetLayout(
        family=f"diffusers {type(unet).__name__}", base_channels=_out_width(downs[0], "down_blocks.0"),
        joins=tuple(joins),
    )  # fmt: skip
