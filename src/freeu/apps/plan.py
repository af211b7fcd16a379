"""``freeu plan``: which skip join of a U-Net gets which FreeU stage, under both conventions.

Named layouts are built on the meta device (no weights, nothing downloaded) from diffusers' arguments, and the table
is computed from their structure by :func:`freeu.plan`: the tables of ``docs/method.md`` section 2 come from here. A
model folder (a diffusers model's ``config.json``, or a pipeline folder with one in ``unet``, ``transformer``,
``prior`` or ``decoder``) is built on the meta device from its configuration alone; its weights are not read.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
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
_CASCADE_RES = ("SDCascadeResBlock", "SDCascadeTimestepBlock")
_CASCADE_ATTN = ("SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock")
#: Stable Cascade's published U-Nets, as diffusers' conversion script builds them: stage C (the prior, on a 24 x 24
#: latent at 1024 px; its two levels run at one size) and stage B (the decoder, on stage A's 256 x 256 latent).
STABLE_CASCADE: dict[str, dict] = {
    "stable-cascade-c": dict(
        in_channels=16, out_channels=16, timestep_ratio_embedding_dim=64, patch_size=1, conditioning_dim=2048,
        block_out_channels=(2048, 2048), num_attention_heads=(32, 32), down_num_layers_per_block=(8, 24),
        up_num_layers_per_block=(24, 8), down_blocks_repeat_mappers=(1, 1), up_blocks_repeat_mappers=(1, 1),
        block_types_per_layer=(_CASCADE_ATTN, _CASCADE_ATTN), clip_text_in_channels=1280,
        clip_text_pooled_in_channels=1280, clip_image_in_channels=768, clip_seq=4, kernel_size=3, dropout=(0.1, 0.1),
        self_attn=True, timestep_conditioning_type=("sca", "crp"), switch_level=(False,),
    ),
    "stable-cascade-b": dict(
        in_channels=4, out_channels=4, timestep_ratio_embedding_dim=64, patch_size=2, conditioning_dim=1280,
        block_out_channels=(320, 640, 1280, 1280), down_num_layers_per_block=(2, 6, 28, 6),
        up_num_layers_per_block=(6, 28, 6, 2), down_blocks_repeat_mappers=(1, 1, 1, 1),
        up_blocks_repeat_mappers=(3, 3, 2, 2), num_attention_heads=(0, 0, 20, 20),
        block_types_per_layer=(_CASCADE_RES, _CASCADE_RES, _CASCADE_ATTN, _CASCADE_ATTN),
        clip_text_pooled_in_channels=1280, clip_seq=4, effnet_in_channels=16, pixel_mapper_in_channels=3,
        kernel_size=3, dropout=(0, 0, 0.1, 0.1), self_attn=True, timestep_conditioning_type=("sca",),
    ),
}  # fmt: skip
#: Layouts of other U-Net classes: the diffusers class and its arguments (Kandinsky 3: the class's defaults).
OTHER_LAYOUTS: dict[str, tuple[str, dict]] = {
    "kandinsky3": ("Kandinsky3UNet", {}),
    **{name: ("StableCascadeUNet", kwargs) for name, kwargs in STABLE_CASCADE.items()},
}
#: The latent size each layout is shown at (its native resolution / 8; DeepFloyd IF's first stage is pixels, 64 px;
#: Stable Cascade at 1024 px: stage C's latent is 42.67 times smaller, stage B's (stage A's) 4 times).
LATENT = {"sd15": 64, "sd21": 96, "sdxl": 128, "kandinsky22": 96, "if-i-xl": 64, "kandinsky3": 128,
          "stable-cascade-c": 24, "stable-cascade-b": 256}  # fmt: skip
PIXELS = {"if-i-xl": 1}
#: The layouts whose join sizes are measured by a forward on the meta device, with its inputs: their levels do not
#: all halve (stage C's two run at one size) and their joins may run more than once per forward (repeat mappers).
MEASURED: dict[str, Callable[[], dict[str, torch.Tensor]]] = {
    "stable-cascade-c": lambda: dict(
        sample=torch.zeros(1, 16, 24, 24), timestep_ratio=torch.zeros(1), clip_text_pooled=torch.zeros(1, 1, 1280),
        clip_text=torch.zeros(1, 77, 1280), clip_img=torch.zeros(1, 1, 768),
    ),
    "stable-cascade-b": lambda: dict(
        sample=torch.zeros(1, 4, 256, 256), timestep_ratio=torch.zeros(1), clip_text_pooled=torch.zeros(1, 1, 1280),
        effnet=torch.zeros(1, 16, 24, 24),
    ),
}  # fmt: skip
#: Where a pipeline folder keeps the model ``freeu plan`` reads (the folder itself first).
MODEL_FOLDERS = ("", "unet", "transformer", "prior", "decoder")


def register(subparsers: Any) -> None:
    """Add ``plan`` to the ``freeu`` command line."""
    p = subparsers.add_parser("plan", help="show which skip join gets which FreeU stage under each convention")
    p.add_argument("layout", type=_layout_or_folder, metavar="LAYOUT|FOLDER",
                   help=f"a full-size U-Net layout, built without weights ({', '.join(_names())}), or a model or "
                   "pipeline folder (its config.json; the weights are not read)")  # fmt: skip
    p.add_argument(
        "--stages", type=_stage_count, default=2,
        help="how many FreeU stages (2: the paper's; 3 adds SD's 320-wide joins, as sd-webui-freeu does)",
    )  # fmt: skip
    p.set_defaults(handler=run)


def _stage_count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 8:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 8, got {text!r}")
    return int(text)


def _names() -> list[str]:
    return sorted([*LAYOUTS, *OTHER_LAYOUTS])


def _layout_or_folder(text: str) -> str:
    if text in LAYOUTS or text in OTHER_LAYOUTS or Path(text).is_dir():
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is neither a layout ({', '.join(_names())}) nor a folder")


def run(args: argparse.Namespace) -> int:
    print(plan_table(args.layout, args.stages))
    return 0


def _stage_name(stage: int | None) -> str:
    return "-" if stage is None else f"b{stage},s{stage}"


def _config_model(folder: Path, diffusers: Any) -> tuple[torch.nn.Module, Path]:
    """The model a folder describes, built on the meta device from its ``config.json`` (never its weights), and the
    folder that held the configuration."""
    for sub in MODEL_FOLDERS:
        path = folder / sub / "config.json"
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: not a readable JSON configuration ({error})") from None
        name = config.get("_class_name") if isinstance(config, dict) else None
        cls = getattr(diffusers, name, None) if isinstance(name, str) else None
        if cls is None or not hasattr(cls, "from_config"):
            raise ValueError(f"{path}: _class_name {name!r} is not a diffusers model class")
        with torch.device("meta"):
            return cls.from_config(config), path.parent
    places = ", ".join(f"{folder / sub}" for sub in MODEL_FOLDERS)
    raise ValueError(f"no config.json of a model in {places}")


def _measured_sizes(unet: torch.nn.Module, inputs: Callable[[], dict[str, torch.Tensor]]) -> dict[str, list[int]]:
    """Each join's map size, once per time it runs in one forward on the meta device."""
    seen: dict[str, list[int]] = {}
    joins = [p.join for p in freeu.plan(unet)]

    def record(name: str, channels_last: bool) -> Callable[..., None]:
        return lambda module, args: seen.setdefault(name, []).append(args[0].shape[-2 if channels_last else -1])

    hooks = [j.module.register_forward_pre_hook(record(j.name, j.channels_last)) for j in joins]
    try:
        with torch.device("meta"), torch.no_grad():
            unet(**inputs())
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def _stages(unet: torch.nn.Module, convention: str, stages: int) -> list[str] | None:
    """Each join's stage name under ``convention``, or ``None`` where the convention does not apply."""
    try:
        return [_stage_name(p.stage) for p in freeu.plan(unet, convention, stages=stages)]
    except ValueError:
        return None


def plan_table(layout: str, stages: int = 2) -> str:
    """The skip joins of a full-size layout (or of the model a folder describes) with their widths, map size and
    stage under each convention."""
    diffusers = require("diffusers", "diffusers", "freeu plan")
    folder = None
    if layout in LAYOUTS or layout in OTHER_LAYOUTS:
        with torch.device("meta"):
            if layout in OTHER_LAYOUTS:
                name, kwargs = OTHER_LAYOUTS[layout]
                unet = getattr(diffusers, name)(**kwargs)
            else:
                unet = diffusers.UNet2DConditionModel(**LAYOUTS[layout])
    else:
        unet, folder = _config_model(Path(layout), diffusers)
    joins = [p.join for p in freeu.plan(unet, "official", stages=stages)]
    official = _stages(unet, "official", stages)
    by_index = _stages(unet, "diffusers", stages) or ["n/a"] * len(joins)
    assert official is not None
    runs: dict[str, list[int]] = {}
    if folder is not None:
        sizes = ["-"] * len(joins)
        lines = [f"{folder}: {type(unet).__name__} (from its config.json), {stages} stages; sizes: see a named layout"]
    else:
        if layout in MEASURED:
            runs = _measured_sizes(unet, MEASURED[layout])
            sizes = [str(runs[j.name][0]) for j in joins]
        else:
            levels = len(unet.up_blocks)
            sizes = [str(LATENT[layout] // 2 ** (levels - 1 - j.block)) for j in joins]
        scale = PIXELS.get(layout, 8)
        space = "pixels" if scale == 1 else "latent"
        pixels = 1024 if layout in STABLE_CASCADE else LATENT[layout] * scale
        lines = [f"{layout}: skip joins at {pixels} px ({LATENT[layout]}x{LATENT[layout]} {space}), {stages} stages"]
    width = max(24, *(len(j.name) for j in joins))
    lines.append(f"{'join':{width}s} {'backbone':>8s} {'skip':>5s} {'size':>5s}  {'official':9s} {'diffusers':9s}")
    for j, size, a, b in zip(joins, sizes, official, by_index, strict=True):
        lines.append(f"{j.name:{width}s} {j.backbone_channels:8d} {j.skip_channels:5d} {size:>5s}  {a:9s} {b:9s}")
    repeated = [f"{name} x{len(sizes)}" for name, sizes in runs.items() if len(sizes) > 1]
    if repeated:
        lines.append(f"joins that run more than once per forward (repeated levels): {', '.join(repeated)}")
    if by_index[0] == "n/a":
        lines.append("diffusers' convention: n/a, the joins all run at one resolution, with no decoder levels")
    return "\n".join(lines)
