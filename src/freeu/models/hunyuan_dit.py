"""Hunyuan-DiT (diffusers ``HunyuanDiT2DModel``, ComfyUI's ``HunYuanDiT``): a diffusion transformer with U-Net-style
long skips, recognised by its structure: a list of blocks of which some have ``skip_linear`` and ``skip_norm``.

Its forward keeps the output of each block of the first half and hands it, last kept first, to each block of the
second half, which runs ``skip_linear(skip_norm(cat([hidden_states, skip], dim=-1)))`` before its attention: a skip
join on patch tokens, ``(B, N, 2 D)``, whose ``N`` tokens are the input's patches in row-major order. The join is
hooked on ``skip_norm``: FreeU acts on the tokens laid out on their grid (``freeu.hooks``), backbone = the hidden
states, skip = the saved tokens (and ControlNet's residual where one is added).

A LayerNorm over both halves follows the concatenation, so an overall gain is normalised away: ``b`` and ``s`` act
through the balance between backbone and skip, and between the skip's low and high frequencies.

Stages: every join carries the model's full width ``D``, at one resolution. Under the official convention (stage by
backbone width, the widest joins first: 1280 = 4 x 320 in SD) every join is that widest kind, so all are stage 1 (the
base width is taken as ``D / 4``); there are no decoder levels for diffusers' convention, which is refused. The
published factors were chosen for SD U-Nets: tune them (``freeu tune``).
"""

from __future__ import annotations

from torch import nn

from .base import SkipJoin, UNetLayout, UnsupportedModelError, class_names

__all__ = ["describe", "is_hunyuan_dit"]


def is_hunyuan_dit(module: object) -> bool:
    if "HunyuanDiT2DModel" in class_names(module):
        return True
    blocks = getattr(module, "blocks", None)
    return isinstance(blocks, nn.ModuleList) and any(
        getattr(b, "skip_linear", None) is not None and getattr(b, "skip_norm", None) is not None for b in blocks
    )


def _patch_size(model: nn.Module) -> int:
    """The side of a patch token: diffusers' ``pos_embed.patch_size`` (a number), ComfyUI's ``x_embedder.patch_size``
    (a pair)."""
    for holder in ("pos_embed", "x_embedder"):
        size = getattr(getattr(model, holder, None), "patch_size", None)
        if isinstance(size, (tuple, list)) and len(size) == 2 and size[0] == size[1]:
            size = size[0]
        if isinstance(size, int) and not isinstance(size, bool) and size >= 1:
            return size
    raise UnsupportedModelError(
        f"{type(model).__name__}: no square patch size (pos_embed.patch_size or x_embedder.patch_size) to lay its "
        "tokens on a grid"
    )


def describe(model: nn.Module) -> UNetLayout:
    """The long-skip joins of a Hunyuan-DiT, in the order the forward runs them."""
    patch = _patch_size(model)
    joins: list[SkipJoin] = []
    width = None
    for i, block in enumerate(model.blocks):
        linear, norm = getattr(block, "skip_linear", None), getattr(block, "skip_norm", None)
        if linear is None:
            continue
        name = f"blocks.{i}.skip_norm"
        dim = int(linear.out_features)
        shape = tuple(getattr(norm, "normalized_shape", ()))
        if norm is None or shape != (2 * dim,) or int(linear.in_features) != 2 * dim:
            raise UnsupportedModelError(
                f"{name}: expected a LayerNorm over 2 x {dim} channels before skip_linear ({int(linear.in_features)} "
                f"-> {dim}), got {type(norm).__name__} over {shape}; this model's long skips do not follow the "
                "Hunyuan-DiT layout"
            )
        width = dim
        joins.append(SkipJoin(name, norm, dim, dim, block=-1, position=len(joins), patch=patch))
    if not joins or width is None:
        raise UnsupportedModelError(f"{type(model).__name__}: no block with a long skip (skip_linear)")
    return UNetLayout(family=f"Hunyuan-DiT ({type(model).__name__})", base_channels=width // 4, joins=tuple(joins))
