"""Model families: find the U-Net in what the user passed, and describe its skip joins."""

from __future__ import annotations

from torch import nn

from . import diffusers_unet, hunyuan_dit, kandinsky3, ldm, stable_cascade
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
    "UNetSpatioTemporalConditionModel (Stable Video Diffusion), Kandinsky3UNet (Kandinsky 3), StableCascadeUNet "
    "(Stable Cascade's stages C and B), HunyuanDiT2DModel (Hunyuan-DiT's long skips); the LDM/SGM "
    "openaimodel.UNetModel (original Stable Diffusion, ComfyUI, A1111); a diffusers pipeline (.unet) or an LDM "
    "wrapper (.model.diffusion_model) holding one; or any U-Net described with freeu.CustomUNet"
)

_FAMILIES = (
    (diffusers_unet.is_diffusers_unet, diffusers_unet.describe),
    (kandinsky3.is_kandinsky3_unet, kandinsky3.describe),
    (hunyuan_dit.is_hunyuan_dit, hunyuan_dit.describe),
    (stable_cascade.is_stable_cascade_unet, stable_cascade.describe),
    (ldm.is_ldm_unet, ldm.describe),
)


def _family(module: object):
    for matches, describe_fn in _FAMILIES:
        if isinstance(module, nn.Module) and matches(module):
            return describe_fn
    return None


def _holder_chain(model: object) -> list[object]:
    """``model`` and what it holds, step by step, until a known U-Net: torch.compile's wrapper (``_orig_mod``), a
    pipeline's ``.unet`` (``.transformer``; Stable Cascade's ``.prior`` or ``.decoder``), LDM's ``.diffusion_model``
    / ``.model``."""
    chain = [model]
    for _ in range(5):
        if _family(model) is not None:
            break
        inner = model._orig_mod if isinstance(getattr(model, "_orig_mod", None), nn.Module) else None
        for attr in ("unet", "transformer", "prior", "decoder", "diffusion_model", "model"):
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


#: Where a diffusion transformer keeps its blocks (diffusers' DiT, PixArt, Sana: ``transformer_blocks``; SD3:
#: ``transformer_blocks``; Flux: ``transformer_blocks`` and ``single_transformer_blocks``; ComfyUI's MMDiT:
#: ``joint_blocks``; ComfyUI's Flux: ``double_blocks`` and ``single_blocks``; many others: ``blocks`` or ``layers``).
_TRANSFORMER_BLOCKS = ("transformer_blocks", "single_transformer_blocks", "joint_blocks", "double_blocks",
                       "single_blocks", "blocks", "layers")  # fmt: skip
#: What turns an image into tokens in those models.
_PATCH_EMBEDDINGS = ("pos_embed", "patch_embed", "x_embedder", "img_in", "patch_embedding", "proj_in")


def _plain_transformer(module: object) -> bool:
    """A diffusion transformer by its structure: a patch embedding and a list of transformer blocks, and no decoder
    (``up_blocks``, ``output_blocks``). Its blocks run one after another: no block takes an earlier block's output
    concatenated with its own, so there is no skip join."""
    if not isinstance(module, nn.Module) or hasattr(module, "up_blocks") or hasattr(module, "output_blocks"):
        return False
    lists = [getattr(module, a, None) for a in _TRANSFORMER_BLOCKS]
    return any(isinstance(m, nn.ModuleList) and len(m) > 0 for m in lists) and any(
        hasattr(module, a) for a in _PATCH_EMBEDDINGS
    )


def _no_skip_joins_error(model: object) -> UnsupportedModelError | None:
    """The error for a diffusion transformer without skip joins found in ``model`` or what holds it (a pipeline's
    ``.transformer``, a host's ``.diffusion_model``); ``None`` where there is none."""
    for candidate in _holder_chain(model):  # the chain follows a pipeline's .transformer
        if _family(candidate) is None and _plain_transformer(candidate):
            name = type(candidate).__name__
            where = "" if candidate is model else f" (in the {type(model).__name__} given)"
            return UnsupportedModelError(
                f"{name}{where} is a diffusion transformer with no skip joins: its blocks run one after another and "
                "none concatenates an earlier block's features with its own, so FreeU (which scales the backbone "
                "and filters the skip feature at such joins) has nothing to act on. This holds for SD3, Flux, "
                "PixArt, Sana and other plain DiTs. Use FreeU with a U-Net model (Stable Diffusion 1.x/2.x, SDXL, "
                f"their fine-tunes, the video U-Nets). Supported: {SUPPORTED}"
            )
    return None


def find_unet(model: object) -> nn.Module:
    """The U-Net itself, found by structure in ``model`` or the wrappers that usually hold it."""
    if hasattr(model, "prior_pipe") and hasattr(model, "decoder_pipe"):
        raise UnsupportedModelError(
            f"{type(model).__name__} runs two U-Nets, one after the other (Stable Cascade: the prior, stage C, then "
            "the decoder, stage B): give FreeU the one to act on, pipe.prior_pipe or pipe.decoder_pipe (or both, one "
            "at a time)"
        )
    candidate = _holder_chain(model)[-1]
    if isinstance(candidate, nn.Module) and _family(candidate) is not None:
        return candidate
    error = _no_skip_joins_error(model)
    if error is not None:
        raise error
    raise UnsupportedModelError(
        f"model must be a supported U-Net or hold one; got {type(model).__name__}. Supported: {SUPPORTED}"
    )


def describe(unet: nn.Module) -> UNetLayout:
    """The skip joins of a U-Net returned by :func:`find_unet`."""
    describe_fn = _family(unet)
    if describe_fn is None:
        error = _no_skip_joins_error(unet)
        if error is not None:
            raise error
        raise UnsupportedModelError(f"{type(unet).__name__} is not a supported U-Net. Supported: {SUPPORTED}")
    return describe_fn(unet)
