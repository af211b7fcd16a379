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


def _unwrap(model: object) -> object:
    """Follow the usual holders: torch.compile's wrapper, a pipeline's ``.unet``, LDM's ``.model.diffusion_model``."""
    for _ in range(4):
        if _family(model) is not None:
            return model
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif isinstance(getattr(model, "unet", None), nn.Module):
            model = model.unet
        elif isinstance(getattr(model, "diffusion_model", None), nn.Module):
            model = model.diffusion_model
        elif getattr(model, "model", None) is not None and model.model is not model:
            model = model.model
        else:
            break
    return model


def holds_compiled_unet(model: object) -> bool:
    """Whether the U-Net is reached through a ``torch.compile`` wrapper (``pipe.unet = torch.compile(pipe.unet)``)."""
    for _ in range(5):
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):
            return True
        nxt = _unwrap_once(model)
        if nxt is None:
            return False
        model = nxt
    return False


def _unwrap_once(model: object) -> object | None:
    if _family(model) is not None:
        return None
    for attr in ("unet", "diffusion_model", "model"):
        inner = getattr(model, attr, None)
        if inner is not None and inner is not model and (attr == "model" or isinstance(inner, nn.Module)):
            return inner
    return None


def find_unet(model: object) -> nn.Module:
    """The U-Net itself, found by structure in ``model`` or the wrappers that usually hold it."""
    candidate = _unwrap(model)
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
