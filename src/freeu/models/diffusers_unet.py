"""diffusers U-Nets, image and video: find the skip joins by structure.

The encoder pushes one skip feature per resnet and per downsampler (after ``conv_in``); each up block pops one per
resnet and concatenates ``[backbone, skip]`` right before that resnet. The widths are read from the modules and
cross-checked: the backbone width (what the decoder carries into the join) plus the skip width (what the encoder
pushed) must equal the resnet's ``in_channels``.
"""

from __future__ import annotations

from torch import nn

from .base import SkipJoin, UNetLayout, UnsupportedModelError, class_names

__all__ = ["MODEL_CLASSES", "UP_BLOCK_CLASSES", "describe", "is_diffusers_unet"]

MODEL_CLASSES: tuple[str, ...] = (
    "UNet2DConditionModel",
    "UNet2DModel",
    "UNet3DConditionModel",
    "UNetMotionModel",
    "I2VGenXLUNet",
    "UNetSpatioTemporalConditionModel",
    "UNetControlNetXSModel",
)
# Up blocks that concatenate one skip feature in front of each of their resnets.
UP_BLOCK_CLASSES: tuple[str, ...] = (
    "UpBlock2D",
    "CrossAttnUpBlock2D",
    "AttnUpBlock2D",
    "SimpleCrossAttnUpBlock2D",
    "ResnetUpsampleBlock2D",
    "SkipUpBlock2D",
    "AttnSkipUpBlock2D",
    "UpBlock3D",
    "CrossAttnUpBlock3D",
    "UpBlockMotion",
    "CrossAttnUpBlockMotion",
    "UpBlockSpatioTemporal",
    "CrossAttnUpBlockSpatioTemporal",
    "ControlNetXSCrossAttnUpBlock2D",
)


def is_diffusers_unet(module: object) -> bool:
    return bool(class_names(module) & set(MODEL_CLASSES))


def _out_channels(module: nn.Module, default: int) -> int:
    out = getattr(module, "out_channels", None)
    return int(out) if out else default


def _in_channels(resnet: nn.Module) -> int:
    """Input width of a join's consumer: a resnet, or the spatial resnet inside a spatio-temporal one (SVD)."""
    inner = getattr(resnet, "spatial_res_block", resnet)
    return int(inner.in_channels)


def _resnet_out_channels(resnet: nn.Module, default: int) -> int:
    return _out_channels(getattr(resnet, "spatial_res_block", resnet), default)


def _as_list(modules: nn.Module | None) -> list[nn.Module]:
    """Samplers come as ``None``, a ``ModuleList``, or a single module (ControlNet-XS)."""
    if modules is None:
        return []
    return list(modules) if isinstance(modules, nn.ModuleList) else [modules]


def _conv_in(unet: nn.Module) -> nn.Module:
    return unet.base_conv_in if hasattr(unet, "base_conv_in") else unet.conv_in  # ControlNet-XS: the base U-Net's


def _encoder_widths(unet: nn.Module) -> list[int]:
    """Widths of the skip features in the order the encoder pushes them."""
    widths = [int(_conv_in(unet).out_channels)]
    for i, block in enumerate(unet.down_blocks):
        resnets = getattr(block, "base_resnets", None) or getattr(block, "resnets", None)  # ControlNet-XS: base_*
        if resnets is None:
            raise UnsupportedModelError(
                f"down_blocks.{i} ({type(block).__name__}) has no resnets; supported down blocks push one skip "
                "feature per resnet and per downsampler"
            )
        for resnet in resnets:
            widths.append(_resnet_out_channels(resnet, widths[-1]))
        downsamplers = getattr(block, "downsamplers", None) or getattr(block, "base_downsamplers", None)
        for downsampler in _as_list(downsamplers):
            widths.append(_out_channels(downsampler, widths[-1]))
    return widths


def _mid_resnets(unet: nn.Module) -> list[nn.Module]:
    mid = getattr(unet, "mid_block", None)
    mid = getattr(mid, "base_midblock", mid)  # ControlNet-XS
    return list(getattr(mid, "resnets", None) or [])


def describe(unet: nn.Module) -> UNetLayout:
    """The skip joins of a diffusers U-Net of one of :data:`MODEL_CLASSES` (or a subclass)."""
    skips = _encoder_widths(unet)
    backbone = skips[-1]
    mid_resnets = _mid_resnets(unet)
    if mid_resnets:
        backbone = _resnet_out_channels(mid_resnets[-1], backbone)

    joins: list[SkipJoin] = []
    for i, block in enumerate(unet.up_blocks):
        prefix = f"up_blocks.{i}"
        if not class_names(block) & set(UP_BLOCK_CLASSES):
            raise UnsupportedModelError(
                f"{prefix} is a {type(block).__name__}, which does not concatenate a skip feature before each "
                f"resnet; supported up blocks: {', '.join(UP_BLOCK_CLASSES)}"
            )
        for j, resnet in enumerate(block.resnets):
            name = f"{prefix}.resnets.{j}"
            if not skips:
                raise UnsupportedModelError(f"{name}: the encoder has no skip feature left for this join")
            skip = skips.pop()
            in_channels = _in_channels(resnet)
            if backbone + skip != in_channels:
                raise UnsupportedModelError(
                    f"{name}: backbone width {backbone} + skip width {skip} != the resnet's in_channels "
                    f"{in_channels}; this U-Net's skip joins do not follow the diffusers layout"
                )
            joins.append(SkipJoin(name, resnet, backbone, skip, block=i, position=j))
            backbone = _resnet_out_channels(resnet, in_channels)
        for upsampler in _as_list(getattr(block, "upsamplers", None)):
            backbone = _out_channels(upsampler, backbone)
    if skips:
        raise UnsupportedModelError(f"{len(skips)} encoder skip feature(s) are never consumed by the up blocks")
    return UNetLayout(
        family=f"diffusers {type(unet).__name__}", base_channels=int(_conv_in(unet).out_channels), joins=tuple(joins)
    )
