"""The original Stable Diffusion U-Net: ``openaimodel.UNetModel`` of the LDM and SGM code bases (also the layout
that ComfyUI, A1111 and Forge run; recognised by its structure, whatever its class is called). Its forward pushes
every input block's output on a stack ``hs`` and, before each output block, runs ``h = cat([h, hs.pop()], dim=1)``;
the first layer of each output block, a ``ResBlock``, consumes that.

The join is hooked on that ``ResBlock`` rather than on the output block itself, because some hosts call the layers
of a block one by one instead of the container. Widths are read from the layers (``channels``/``out_channels``) and
cross-checked like the diffusers family. The decoder level of each output block (diffusers' up-block index) advances
after every output block that upsamples.
"""

from __future__ import annotations

from torch import nn

from .base import SkipJoin, UNetLayout, UnsupportedModelError

__all__ = ["describe", "is_ldm_unet"]

_REQUIRED = ("input_blocks", "middle_block", "output_blocks", "model_channels")


def is_ldm_unet(module: object) -> bool:
    """The LDM layout by its structure, whatever the class is called (``UNetModel`` in LDM, SGM and ComfyUI,
    ``IntegratedUNet2DConditionModel`` in Forge): input, middle and output blocks and a base width. :func:`describe`
    then checks every join's widths."""
    return (
        all(hasattr(module, a) for a in _REQUIRED)
        and isinstance(module.input_blocks, nn.ModuleList)
        and isinstance(module.output_blocks, nn.ModuleList)
        and isinstance(module.model_channels, int)
    )


def _width_after(layers: nn.Module, width: int) -> int:
    """Channel count after running ``width`` channels through a block's layers (attention keeps the width)."""
    for layer in layers if isinstance(layers, nn.Sequential) else [layers]:
        out = getattr(layer, "out_channels", None)
        if isinstance(out, int) and out > 0:
            width = out
    return width


def _upsamples(block: nn.Sequential) -> bool:
    return any("Upsample" in type(m).__name__ for layer in list(block)[1:] for m in layer.modules())


def describe(unet: nn.Module) -> UNetLayout:
    """The skip joins of an LDM/SGM ``UNetModel``."""
    skips: list[int] = []
    width = 0
    for block in unet.input_blocks:
        width = _width_after(block, width)
        skips.append(width)
    backbone = _width_after(unet.middle_block, width)

    joins: list[SkipJoin] = []
    level = position = 0
    for i, block in enumerate(unet.output_blocks):
        name = f"output_blocks.{i}.0"
        if not isinstance(block, nn.Sequential) or len(block) == 0 or not hasattr(block[0], "channels"):
            raise UnsupportedModelError(
                f"output_blocks.{i} ({type(block).__name__}) does not start with a ResBlock that has `channels`; "
                "LDM output blocks are TimestepEmbedSequential(ResBlock, ...)"
            )
        if not skips:
            raise UnsupportedModelError(f"{name}: the encoder has no skip feature left for this join")
        skip = skips.pop()
        in_channels = int(block[0].channels)
        if backbone + skip != in_channels:
            raise UnsupportedModelError(
                f"{name}: backbone width {backbone} + skip width {skip} != the ResBlock's channels {in_channels}; "
                "this U-Net's skip joins do not follow the LDM layout"
            )
        joins.append(SkipJoin(name, block[0], backbone, skip, block=level, position=position))
        backbone = _width_after(block, in_channels)
        position += 1
        if _upsamples(block):
            level, position = level + 1, 0
    if skips:
        raise UnsupportedModelError(f"{len(skips)} encoder skip feature(s) are never consumed by the output blocks")
    return UNetLayout(family=f"LDM {type(unet).__name__}", base_channels=int(unet.model_channels), joins=tuple(joins))
