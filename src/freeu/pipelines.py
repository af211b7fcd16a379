"""Loading and running diffusers pipelines for the command line: offline only, same noise for every setting.

Nothing here downloads: ``from_pretrained`` runs with ``local_files_only=True`` on a local folder or a hub id that is
already in the Hugging Face cache. The preset for ``--preset auto`` is chosen from the U-Net's structure (its
conditioning and attention layout), never from the checkpoint's name.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .models import class_names, find_unet

__all__ = [
    "ModelLoadError",
    "VIDEO_UNETS",
    "detect_preset",
    "downsampling",
    "is_video",
    "load_pipeline",
    "peek_downsampling",
    "render",
]

logger = logging.getLogger(__name__)

VIDEO_UNETS = ("UNet3DConditionModel", "UNetMotionModel", "I2VGenXLUNet", "UNetSpatioTemporalConditionModel")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelLoadError(RuntimeError):
    """A pipeline could not be loaded without the network; the message says how to get it."""


def load_pipeline(model: str, dtype: str = "float32", device: str = "cpu"):
    """A diffusers pipeline from a local folder or the local Hugging Face cache (never the network)."""
    try:
        import diffusers
    except ImportError as error:
        raise ModelLoadError("this command needs diffusers: pip install 'freeu[diffusers]'") from error
    local = Path(model).expanduser()
    try:
        pipe = diffusers.DiffusionPipeline.from_pretrained(
            str(local) if local.exists() else model, dtype=DTYPES[dtype], local_files_only=True
        )
    except Exception as error:  # diffusers/huggingface_hub raise OSError, ValueError or their own errors
        if local.exists():
            raise ModelLoadError(f"could not load a diffusers pipeline from the folder {local}: {error}") from error
        raise ModelLoadError(
            f"{model!r} is neither a local folder nor a pipeline in the local Hugging Face cache, and this command "
            "never downloads. On a machine with network access run `hf download "
            f"{model}` (huggingface_hub; it fills the cache, which you can copy here), or save the pipeline with "
            "pipe.save_pretrained(FOLDER) and pass that folder."
        ) from None
    return pipe.to(device)


def is_video(pipe: Any) -> bool:
    return bool(class_names(find_unet(pipe)) & set(VIDEO_UNETS))


def detect_preset(pipe: Any) -> tuple[str, str]:
    """``(preset name, the structural evidence)`` for ``--preset auto``; ``ValueError`` when the layout is unknown."""
    unet = find_unet(pipe)
    names = class_names(unet)
    if names & set(VIDEO_UNETS):
        return "modelscope", f"a video U-Net ({type(unet).__name__})"
    config = getattr(unet, "config", None)
    if config is None or "UNet2DConditionModel" not in names:
        raise ValueError(
            f"--preset auto knows Stable Diffusion 1.x/2.x/XL and video U-Nets; {type(unet).__name__} is none of "
            "them: give --preset NAME or the factors"
        )
    if getattr(config, "addition_embed_type", None) == "text_time":
        return "sdxl", "text_time added conditioning (the SDXL U-Net layout)"
    if getattr(config, "use_linear_projection", False) or getattr(config, "cross_attention_dim", None) == 1024:
        return "sd21", "linear attention projections / 1024-wide cross-attention (the SD 2.x U-Net layout)"
    return (
        "sd15",
        "convolutional attention projections, no added conditioning (the SD 1.x layout; SD 1.4 and 1.5 share it)",
    )


def downsampling(pipe: Any) -> int:
    """How many pixels one step of the deepest U-Net level spans: sizes must be multiples of it."""
    unet = find_unet(pipe)
    vae_factor = int(getattr(pipe, "vae_scale_factor", 1) or 1)
    levels = len(getattr(unet, "down_blocks", [])) or 1
    return vae_factor * 2 ** (levels - 1)


def _config_file(model: str, name: str) -> Path | None:
    """``name`` (e.g. ``unet/config.json``) of a local pipeline folder or of a cached hub pipeline, without loading."""
    local = Path(model).expanduser()
    if local.exists():
        path = local / name
        return path if path.is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(model, name)
    except Exception:  # an id huggingface_hub rejects: the loader will say what is wrong
        return None
    return Path(found) if isinstance(found, str) else None


def peek_downsampling(model: str) -> int | None:
    """:func:`downsampling` read from the pipeline's config files alone (before loading any weights), if present."""
    import json

    unet_config, vae_config = _config_file(model, "unet/config.json"), _config_file(model, "vae/config.json")
    if unet_config is None or vae_config is None:
        return None
    try:
        levels = len(json.loads(unet_config.read_text())["down_block_types"])
        vae_levels = len(json.loads(vae_config.read_text())["block_out_channels"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return 2 ** (vae_levels - 1) * 2 ** (levels - 1)


def _noise(pipe: Any, seed: int, height: int, width: int, frames: int | None) -> torch.Tensor:
    """One sample of initial noise from ``seed`` (CPU generator, so every device draws the same numbers)."""
    unet = find_unet(pipe)
    factor = int(getattr(pipe, "vae_scale_factor", 1) or 1)
    channels = unet.config.in_channels
    shape: tuple[int, ...] = (1, channels, height // factor, width // factor)
    if frames is not None:
        if "UNetSpatioTemporalConditionModel" in class_names(unet):
            shape = (1, frames, channels // 2, height // factor, width // factor)
        else:
            shape = (1, channels, frames, height // factor, width // factor)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def render(
    pipe: Any,
    *,
    prompt: str,
    negative_prompt: str | None,
    seed: int,
    count: int,
    steps: int,
    guidance: float,
    height: int,
    width: int,
    frames: int | None = None,
) -> list[Any]:
    """``count`` samples from the same noise (one PIL image, or one list of frames for video, per sample)."""
    unet = find_unet(pipe)
    latents = _noise(pipe, seed, height, width, frames).repeat(count, *[1] * (4 if frames else 3))
    latents = latents.to(device=pipe.device, dtype=unet.dtype)
    kwargs: dict[str, Any] = dict(
        prompt=[prompt] * count, guidance_scale=guidance, num_inference_steps=steps, height=height, width=width,
        latents=latents, output_type="pil",
    )  # fmt: skip
    if negative_prompt:
        kwargs["negative_prompt"] = [negative_prompt] * count
    if frames is not None:
        kwargs["num_frames"] = frames
    out = pipe(**kwargs)
    if hasattr(out, "frames"):
        clips: Sequence[Any] = out.frames
        return [list(clip) for clip in clips]
    return list(out.images)
