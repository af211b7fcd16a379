"""FreeU at one skip join: the pure operator that both installers call, with the helpers beside it.

:func:`freeu.apply`'s hooks (``freeu.hooks``) and the host patches (``freeu.hosts``) differ only in how they find a
join, its stage and the trajectory position; what FreeU then does to the join's two features is here, once:

- :func:`stage_widths`: the official convention's backbone width of each stage;
- :func:`window_weight`: FreeU's strength at a trajectory position, and :func:`window_strength` its two shortcuts
  (0 everywhere: the join is left exactly as the host built it; 1 everywhere: the factors as they are);
- :func:`blend`: a factor at a strength ``w``, ``1 + w (v - 1)``;
- :func:`skip_square`: the half-sizes of the square of filtered frequencies (the threshold, or a stage's cutoff);
- :func:`apply_join`: the backbone scaled and the skip filtered, never writing into the host's tensors.

Everything here is a function of tensors and settings; nothing sees a model.
"""

from __future__ import annotations

import torch

from .backbone import scale_backbone, scaled_half
from .config import FIRST_HALF, Stage, Version
from .fourier import cutoff_threshold, fourier_filter

__all__ = ["Factor", "apply_join", "blend", "skip_square", "stage_widths", "window_strength", "window_weight"]

#: A factor at one call: a python float, or a float32 tensor with one value per row of the join's batch.
Factor = float | torch.Tensor


def stage_widths(base_channels: int, num_stages: int = 2) -> dict[int, int]:
    """The official convention's backbone width of each stage: ``4 * base / 2 ** (k - 1)`` for stage ``k`` (1280,
    640 and 320 in SD: the authors' two stages, and sd-webui-freeu's third), as far as it is a whole width."""
    widths = {}
    for k in range(1, num_stages + 1):
        width, rest = divmod(4 * base_channels, 2 ** (k - 1))
        if rest or width < 1:
            break
        widths[width] = k
    return widths


def window_weight(progress: torch.Tensor, start: float, stop: float, ramp: float) -> torch.Tensor:
    """FreeU's strength in ``[0, 1]`` at each trajectory position: 1 on ``[start, stop]``, linear fades of width
    ``ramp`` inside both ends, 0 outside."""
    if ramp > 0:
        rise = ((progress - start) / ramp).clamp(0.0, 1.0)
        fall = ((stop - progress) / ramp).clamp(0.0, 1.0)
        return rise * fall
    return ((progress >= start) & (progress <= stop)).to(progress.dtype)


def window_strength(weight: torch.Tensor) -> torch.Tensor | float:
    """The window's weights of one call with its two shortcuts taken: ``0.0`` when every row is outside the window
    (leave the join untouched), ``1.0`` when every row is fully inside (the factors as they are), else ``weight``.
    The values are read only where they can be: while torch.compile traces, or on the meta device, ``weight``
    itself comes back (blending by it is exact either way)."""
    if torch.compiler.is_compiling() or weight.device.type == "meta":
        return weight
    if not bool((weight > 0).any()):
        return 0.0
    if bool((weight == 1).all()):
        return 1.0
    return weight


def blend(value: Factor, weight: torch.Tensor | float) -> Factor:
    """``value`` at window strength ``weight``: ``1 + weight * (value - 1)`` (1 at strength 0, ``value`` at 1). A
    factor of 1 stays the number 1 (the paper's filter, whatever the strength)."""
    if (isinstance(weight, float) and weight == 1.0) or (isinstance(value, float) and value == 1.0):
        return value
    return 1.0 + weight * (value - 1.0)


def skip_square(stage: Stage, threshold: int, height: int, width: int) -> int | tuple[int, int]:
    """The half-sizes of the square of low frequencies that ``s`` scales on an ``height x width`` map: the config's
    ``threshold`` in bins, or the stage's ``cutoff`` as a fraction of each half-size."""
    return threshold if stage.cutoff is None else cutoff_threshold(height, width, stage.cutoff)


def _rows(value: Factor) -> Factor:
    """A per-row factor shaped to scale the rows of a ``(B, C, H * W)``-like view; a float as it is."""
    return value if isinstance(value, float) else value.view(-1, 1)


def apply_join(
    backbone: torch.Tensor,
    skip: torch.Tensor,
    stage: Stage,
    *,
    version: Version,
    threshold: int,
    factors: tuple[Factor, Factor, Factor] | None = None,
    out: torch.Tensor | None = None,
    structure: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FreeU at one join: ``(backbone scaled by b, skip filtered by s and high)``. The inputs are never written to;
    a part FreeU leaves as it is (``b`` of 1; ``s`` and ``high`` of 1) may come back as the input itself.

    Args:
        backbone, skip: the join's two features, ``(B, C, H, W)`` each; never written to.
        stage: the join's stage settings (the backbone window, the cutoff; ``b``, ``s``, ``high`` unless
            ``factors`` is given).
        version: 1 (constant ``b``) or 2 (the structure-related map).
        threshold: the config's half-size of the filtered square, where the stage has no cutoff.
        factors: ``(b, s, high)`` of this call, when they differ from the stage's numbers (per-sample factors, a
            window's blend): python floats or float32 tensors with one value per row.
        out: a ``(B, C_backbone + C_skip, H, W)`` tensor to write both results into (eager inference: no
            concatenation pass afterwards); the two results are then views of it.
        structure: version 2's map from this feature instead of the backbone (a join whose backbone was normalised
            over its channels first: the feature before that).
    """
    b, s, high = (stage.b, stage.s, stage.high) if factors is None else factors
    square = skip_square(stage, threshold, skip.shape[-2], skip.shape[-1])
    unit_b = isinstance(b, float) and b == 1.0
    plain = stage.window == FIRST_HALF and isinstance(high, float)
    channels = backbone.shape[1]
    if out is None or not plain:
        scaled = backbone if unit_b else scale_backbone(backbone, b, version, window=stage.window, structure=structure)
        filtered = fourier_filter(skip, square, _rows(s), high=_rows(high))
        if out is None:
            return scaled, filtered
        out[:, :channels].copy_(scaled)
        out[:, channels:].copy_(filtered)
        return out[:, :channels], out[:, channels:]
    half = channels // 2
    if unit_b:
        out[:, :half].copy_(backbone[:, :half])
    else:
        scaled_half(backbone, b, version, out=out[:, :half], structure=structure)
    out[:, half:channels].copy_(backbone[:, half:])
    fourier_filter(skip, square, _rows(s), high=high, out=out[:, channels:])
    return out[:, :channels], out[:, channels:]
