"""The ``freeu`` command line: ``freeu plan`` (which skip join gets which stage) and ``freeu demo``.

Commands use the public API like a user would. They need the ``diffusers`` extra (``pip install freeu[diffusers]``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import torch

import freeu

logger = logging.getLogger(__name__)

# Full-size layouts, built on the meta device (no weights, no download): diffusers' UNet2DConditionModel kwargs.
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
LATENT = {"sd15": 64, "sd21": 96, "sdxl": 128}


def _require_diffusers():
    try:
        import diffusers
    except ImportError:
        sys.exit("freeu: this command needs diffusers; install it with: pip install 'freeu[diffusers]'")
    return diffusers


def _stage_name(stage: int | None) -> str:
    return "-" if stage is None else f"b{stage},s{stage}"


def plan_table(layout: str) -> str:
    """The FREEU.md section 2 table for a full-size layout, computed from the U-Net's structure."""
    diffusers = _require_diffusers()
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


def demo() -> int:
    """Until the bundled demo model lands: FreeU on a tiny random SD-1.5-shaped U-Net, fully offline."""
    diffusers = _require_diffusers()
    print(plan_table("sd15"), end="\n\n")
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(32, 64, 128, 128),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
        layers_per_block=2,
    ).eval()
    gen = torch.Generator().manual_seed(1)
    inputs = dict(
        sample=torch.randn(2, 4, 16, 16, generator=gen),
        timestep=torch.tensor([500, 500]),
        encoder_hidden_states=torch.randn(2, 5, 32, generator=gen),
    )
    with torch.no_grad():
        base = unet(**inputs).sample
        print("tiny random SD-1.5-shaped U-Net (widths 32/64/128/128), one forward pass per setting:")
        for name in ("sd15", "sdxl-sweep"):
            preset = freeu.get_preset(name)
            for convention in ("official", "diffusers"):
                with freeu.apply(unet, preset=name, convention=convention) as handle:
                    out = unet(**inputs).sample
                touched = sum(p.stage is not None for p in handle.plans)
                change = ((out - base).norm() / base.norm()).item()
                c = preset.config
                print(
                    f"  preset {name:10s} (b1={c.b1} b2={c.b2} s1={c.s1} s2={c.s2}, v{c.version}) "
                    f"convention {convention:9s}: {touched:2d} joins patched, relative change {change:.3f}"
                )
        restored = unet(**inputs).sample
    print(f"after remove: output bit-identical to the unpatched model: {torch.equal(restored, base)}")
    x = torch.randn(2, 320, 24, 40)
    err = (freeu.fourier_filter(x, 1, 0.2) - freeu.fourier_filter(x, 1, 0.2, method="fft")).abs().max().item()
    print(f"FFT-free skip filter vs FFT on a 24x40 map: max difference {err:.1e}")
    return 0 if torch.equal(restored, base) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="freeu", description="FreeU for diffusion U-Nets.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the library does")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="show which skip join gets which FreeU stage under each convention")
    p.add_argument("layout", choices=sorted(LAYOUTS), help="a full-size U-Net layout (built without weights)")
    sub.add_parser("demo", help="an offline example on a tiny random U-Net")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    if args.command == "plan":
        print(plan_table(args.layout))
        return 0
    return demo()
