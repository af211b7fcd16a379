"""Stable Cascade's U-Nets (diffusers ``StableCascadeUNet``, ComfyUI's ``StageC`` and ``StageB``: stage C, the prior,
and stage B, the decoder), recognised by their structure: decoder levels with upscalers and repeat mappers.

The decoder's levels run deepest first. The first residual block of every level but the deepest takes the encoder's
output of that level as ``x_skip``, and joins it inside the block::

    x_res = x
    x = norm(depthwise(x))           # a per-pixel LayerNorm over the channels, no affine
    x = cat([x, x_skip], dim=1)      # the skip join
    x = channelwise(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) + x_res

So the join is the input of ``channelwise`` (an MLP over channels, run channels-last: ``(B, H, W, C + C_skip)``),
hooked there. Backbone = the normalised block input, skip = the encoder's feature; a level whose repeat mappers run
its blocks again joins the same skip on every repeat, and FreeU acts on every one.

Version 2's structure map: FreeU's map is the channel mean of the backbone, but at this join the backbone has just
been normalised over its channels at every pixel, so its channel mean is zero up to rounding and the map would be
noise. The map is taken one step earlier, from the block's input: the decoder's hidden state arriving at the join,
the feature that a Stable Diffusion U-Net concatenates as it is. ``b`` then scales the normalised backbone's first
half (what the join receives; no normalisation follows before the MLP, so its gain acts as it does in SD).

Stages: the official convention picks a stage by the backbone's width against a base width; both stages' widths are
what Stable Cascade's levels have only where they grow (stage B: 320, 640, 1280, 1280). The base width is taken as a
quarter of the widest join, so the widest joins are stage 1, as SD's 1280-wide ones are: for stage B it is 320, its
first level, the SD rule; for stage C, whose two levels are both 2048 wide, its one join is stage 1. Diffusers'
convention (stage by decoder level, from the deepest joining level) gives the same joins here. The published factors
were chosen for SD U-Nets: tune them (``freeu tune``).

The U-Net receives the timestep as a ratio in ``[0, 1]`` (1: pure noise): a step window needs
``num_train_timesteps=1``.
"""

from __future__ import annotations

from torch import nn

from .base import SkipJoin, UNetLayout, UnsupportedModelError, class_names

__all__ = ["describe", "is_stable_cascade_unet"]


#: What a Stable Cascade U-Net has, in diffusers and in ComfyUI: its decoder's levels, their upscalers and the 1x1
#: convolutions that run a level's blocks again.
_DECODER = ("up_blocks", "up_upscalers", "up_repeat_mappers")


def is_stable_cascade_unet(module: object) -> bool:
    return "StableCascadeUNet" in class_names(module) or all(
        isinstance(getattr(module, name, None), nn.ModuleList) for name in _DECODER
    )


def _join_widths(block: nn.Module, where: str) -> tuple[int, int] | None:
    """``(backbone, skip)`` widths of a residual block that joins a skip (``None`` for one that does not), read from
    its depthwise convolution and the first layer of its channel MLP."""
    if not (hasattr(block, "depthwise") and hasattr(block, "channelwise")):
        return None  # an attention or timestep block
    try:
        backbone = int(block.depthwise.in_channels)
        total = int(block.channelwise[0].in_features)
    except (AttributeError, IndexError, TypeError):
        raise UnsupportedModelError(
            f"{where} ({type(block).__name__}) has no depthwise convolution and channelwise MLP; this U-Net's residual "
            "blocks do not follow the Stable Cascade layout"
        ) from None
    return (backbone, total - backbone) if total > backbone else None


def describe(unet: nn.Module) -> UNetLayout:
    """The skip joins of a ``StableCascadeUNet``, in the order its decoder runs them."""
    joins: list[SkipJoin] = []
    for u, level in enumerate(unet.up_blocks):
        for k, block in enumerate(level):
            name = f"up_blocks.{u}.{k}"
            widths = _join_widths(block, name)
            if widths is None:
                continue
            if u == 0 or k != 0:
                raise UnsupportedModelError(
                    f"{name}: a residual block that takes a skip feature here (its MLP is {sum(widths)} wide for "
                    f"{widths[0]} channels) is not where Stable Cascade's decoder joins one: the first block of each "
                    "level but the deepest"
                )
            backbone, skip = widths
            if skip != backbone:
                raise UnsupportedModelError(
                    f"{name}: the skip feature is {skip} wide and the backbone {backbone}; Stable Cascade joins a "
                    "level's encoder output with a backbone of the same width"
                )
            joins.append(SkipJoin(f"{name}.channelwise", block.channelwise, backbone, skip, block=len(joins),
                                  position=0, channels_last=True, structure=block))  # fmt: skip
    if not joins:
        raise UnsupportedModelError(f"{type(unet).__name__}: no decoder block joins a skip feature")
    widest = max(j.backbone_channels for j in joins)
    return UNetLayout(family=f"Stable Cascade ({type(unet).__name__})", base_channels=widest // 4, joins=tuple(joins))
