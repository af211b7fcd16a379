"""Model families: find the U-Net in what the user passed, and describe its skip joins."""

from __future__ import annotations

from torch import nn

from . import diffusers_unet, ldm
from .base import SkipJoin, UNetLayout, UnsupportedModelError, class_names
from .custom import CustomUNet

__all__ = [
    "SUPPORTED",
    "CustomUNet",
    "SkipJoin",
    "UNetLayout",
    "UnsupportedModelError",
    "class_names",
    "describe",
    "find_unet",
]

SUPPORTED = (
    "diffusers UNet2DConditionModel and UNet2DModel (Stable Diffusion 1.x/2.x, SDXL, pixel-space DDPM models), "
    "UNet3DConditionModel (ModelScope/ZeroScope), UNetMotionModel (AnimateDiff), I2VGenXLUNet, "
    "UNetSpatioTemporalConditionModel (Stable Video Diffusion); the LDM/SGM openaimodel.UNetModel (original Stable "
    "Diffusion, ComfyUI, A1111); a diffusers pipeline (.unet) or an LDM wrapper (.model.diffusion_model) holding "
    "one; or any U-Net described with freeu.CustomUNet"
)

_FAMILIES = ((diffusers_unet.is_diffusers_unet, diffusers_unet.describe), (ldm.is_ldm_unet, ldm.describe))


def _family(module: object):
    for matches, describe_fn in _FAMILIES:
        if isinstance(module, nn.Module) and matches(module):
            return describe_fn
    return None


def _holder_chain(model: object) -> list[object]:
    """``model`` and what it holds, step by step, until a known U-Net: torch.compile's wrapper (``_orig_mod``), a
    pipeline's ``.unet``, LDM's ``.diffusion_model`` / ``.model``."""
    chain = [model]
    for _ in range(5):
        if _family(model) is not None:
            break
        inner = model._orig_mod if isinstance(getattr(model, "_orig_mod", None), nn.Module) else None
        for attr in ("unet", "diffusion_model", "model"):
            if inner is not None:
                break
            candidate = getattr(model, attr, None)
            if (
                candidate is not None
                and candidate is not model
                and (attr == "model" or isinstance(candidate, nn.Module))
            ):
                inner = candidate
        if inner is None:
            break
        chain.append(inner)
        model = inner
    return chain


def find_unet(model: object) -> nn.Module:
    """The U-Net itself, found by structure in ``model`` or the wrappers that usually hold it."""
    candidate = _holder_chain(model)[-1]
    if isinstance(candidate, nn.Module) and _family(candidate) is not None:
        return candidate
    raise UnsupportedModelError(
        f"model must be a supported U-Net or hold one; got {type(model).__name__}. Supported: {SUPPORTED}"
    )


def describe(unet: nn.Module) -> UNetLayout:
    """The skip joins of a U-Net returned by :func:`find_unet`."""
    describe_fn = _family(unet)
    if describe_fn is None:
        raise UnsupportedModelError(f"{type(unet).__name__} is not a supported U-Net. Supported: {SUPPORTED}")
    return describe_fn(unet)
