"""Model families: find the U-Net in what the user passed, and describe its skip joins."""

from __future__ import annotations

from torch import nn

from . import diffusers_unet
from .base import SkipJoin, UNetLayout, UnsupportedModelError

__all__ = ["SUPPORTED", "SkipJoin", "UNetLayout", "UnsupportedModelError", "describe", "find_unet"]

SUPPORTED = (
    "diffusers UNet2DConditionModel and UNet2DModel (Stable Diffusion 1.x/2.x, SDXL, pixel-space DDPM models), "
    "or a diffusers pipeline holding one as .unet"
)


def find_unet(model: object) -> nn.Module:
    """The U-Net itself: ``model``, ``model.unet`` (a pipeline), or the module inside a ``torch.compile`` wrapper."""
    candidate = model
    if not isinstance(candidate, nn.Module) and isinstance(getattr(candidate, "unet", None), nn.Module):
        candidate = candidate.unet
    candidate = getattr(candidate, "_orig_mod", candidate)  # torch.compile's OptimizedModule
    if isinstance(candidate, nn.Module) and diffusers_unet.is_diffusers_unet(candidate):
        return candidate
    raise UnsupportedModelError(
        f"model must be a supported U-Net or a pipeline with one as .unet; got {type(model).__name__}. "
        f"Supported: {SUPPORTED}"
    )


def describe(unet: nn.Module) -> UNetLayout:
    """The skip joins of a U-Net returned by :func:`find_unet`."""
    return diffusers_unet.describe(unet)
