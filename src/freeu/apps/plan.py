"""``freeu plan``: which skip join of a full-size U-Net layout gets which FreeU stage, under both conventions.

The layouts are built on the meta device (no weights, nothing downloaded) from diffusers' ``UNet2DConditionModel``
arguments, and the table is computed from their structure by :func:`freeu.plan`: the tables of ``docs/method.md``
section 2 come from here.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

import freeu

from .errors import require

__all__ = ["LATENT", "LAYOUTS", "plan_table", "register"]

#: The blocks the Kandinsky 2.2 decoder and DeepFloyd IF's first stage share: three levels of simple cross-attention
#: over a resnet level that downsamples by itself, three resnets per level.
_SIMPLE_CROSS_LADDER: dict = dict(
    layers_per_block=3,
    down_block_types=("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * 3,
    up_block_types=("SimpleCrossAttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",),
    mid_block_type="UNetMidBlock2DSimpleCrossAttn",
    resnet_time_scale_shift="scale_shift",
    attention_head_dim=64,
)
#: Full-size layouts as diffusers ``UNet2DConditionModel`` keyword arguments.
LAYOUTS: dict[str, dict] = {
    "sd15": dict(cross_attention_dim=768),
    "sd21": dict(cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True),
    "sdxl": dict(
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    ),
    # the published width ladders and block types of two U-Nets whose widths grow by 1x, 2x, 3x, 4x the base (their
    # conditioning left at plain cross-attention: it does not change where the skip joins are)
    "kandinsky22": dict(
        _SIMPLE_CROSS_LADDER, block_out_channels=(384, 768, 1152, 1536), cross_attention_dim=768, out_channels=8
    ),
    "if-i-xl": dict(
        _SIMPLE_CROSS_LADDER,
        block_out_channels=(704, 1408, 2112, 2816),
        cross_attention_dim=4096,
        in_channels=3,
        out_channels=6,
    ),
}
#: Layouts of other U-Net classes: the diffusers class and its arguments (Kandinsky 3: the class's defaults).
OTHER_LAYOUTS: dict[str, tuple[str, dict]] = {"kandinsky3": ("Kandinsky3UNet", {})}
#: The latent size each layout is shown at (its native resolution / 8; DeepFloyd IF's first stage is pixels, 64 px).
LATENT = {"sd15": 64, "sd21": 96, "sdxl": 128, "kandinsky22": 96, "if-i-xl": 64, "kandinsky3": 128}
PIXELS = {"if-i-xl": 1}


def register(subparsers: Any) -> None:
    """Add ``plan`` to the ``freeu`` command line."""
    p = subparsers.add_parser("plan", help="show which skip join gets which FreeU stage under each convention")
    p.add_argument("layout", choices=sorted([*LAYOUTS, *OTHER_LAYOUTS]), help="a full-size U-Net layout (built "
                   "without weights)")  # fmt: skip
    p.add_argument(
        "--stages", type=_stage_count, default=2,
        help="how many FreeU stages (2: the paper's; 3 adds SD's 320-wide joins, as sd-webui-freeu does)",
    )  # fmt: skip
    p.set_defaults(handler=run)


def _stage_count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 8:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 8, got {text!r}")
    return int(text)


def run(args: argparse.Namespace) -> int:
    print(plan_table(args.layout, args.stages))
    return 0


def _stage_name(stage: int | None) -> str:
    return "-" if stage is None else f"b{stage},s{stage}"


def plan_table(layout: str, stages: int = 2) -> str:
    """The skip joins of a full-size layout with their widths, map size and stage under each convention."""
    diffusers = require("diffusers", "diffusers", "freeu plan")
    with torch.device("meta"):
        if layout in OTHER_LAYOUTS:
            name, kwargs = OTHER_LAYOUTS[layout]
            unet = getattr(diffusers, name)(**kwargs)
        else:
            unet = diffusers.UNet2DConditionModel(**LAYOUTS[layout])
    official = freeu.plan(unet, "official", stages=stages)
    by_index = freeu.plan(unet, "diffusers", stages=stages)
    levels = len(unet.up_blocks)
    scale = PIXELS.get(layout, 8)
    space = "pixels" if scale == 1 else "latent"
    lines = [
        f"{layout}: skip joins at {LATENT[layout] * scale} px ({LATENT[layout]}x{LATENT[layout]} {space}), "
        f"{stages} stages",
        f"{'join':24s} {'backbone':>8s} {'skip':>5s} {'size':>5s}  {'official':9s} {'diffusers':9s}",
    ]
    for a, b in zip(official, by_index, strict=True):
        j = a.join
        size = LATENT[layout] // 2 ** (levels - 1 - j.block)
        lines.append(
            f"{j.name:24s} {j.backbone_channels:8d} {j.skip_channels:5d} {size:5d}  "
            f"{_stage_name(a.stage):9s} {_stage_name(b.stage):9s}"
        )
    return "\n".join(lines)
