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
}
#: The latent size each layout is shown at (its native resolution / 8).
LATENT = {"sd15": 64, "sd21": 96, "sdxl": 128}


def register(subparsers: Any) -> None:
    """Add ``plan`` to the ``freeu`` command line."""
    p = subparsers.add_parser("plan", help="show which skip join gets which FreeU stage under each convention")
    p.add_argument("layout", choices=sorted(LAYOUTS), help="a full-size U-Net layout (built without weights)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    print(plan_table(args.layout))
    return 0


def _stage_name(stage: int | None) -> str:
    return "-" if stage is None else f"b{stage},s{stage}"


def plan_table(layout: str) -> str:
    """The skip joins of a full-size layout with their widths, map size and stage under each convention."""
    diffusers = require("diffusers", "diffusers", "freeu plan")
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**LAYOUTS[layout])
    official = freeu.plan(unet, "official")
    by_index = freeu.plan(unet, "diffusers")
    levels = len(unet.up_blocks)
    lines = [
        f"{layout}: skip joins at {LATENT[layout] * 8} px ({LATENT[layout]}x{LATENT[layout]} latent)",
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
