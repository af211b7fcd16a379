"""FreeU's backbone scaling: amplify the first half of the channels of the decoder's backbone feature.

Version 1 (arXiv v1, the first code release, diffusers) multiplies channels ``[0, C/2)`` by a constant ``b``.
Version 2 (CVPR paper Eq. 2-4, the authors' README code since 2023-10-18, ComfyUI ``FreeU_V2``, Forge) multiplies them
by ``alpha = (b - 1) * m + 1``, where ``m`` is the channel mean of the sample min-max normalised over its positions to
``[0, 1]``: the factor runs from 1 (least active position) to ``b`` (most active).

A channel window (sd-webui-freeu's backbone offset and width) scales another range of channels instead of the first
half: ``[floor(offset * C), floor((offset + width) * C))``, continued from channel 0 past the last one
(:func:`channel_window`); version 2's map still comes from the mean over all ``C`` channels.

The authors' version 2 divides by ``max - min`` with no epsilon, so a constant mean map (a ``1 x 1`` feature, say)
gives NaN there. Here such a sample counts as all at its maximum and gets the full ``b`` (as in version 1); every
other input gives the reference numbers.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from .fourier import channels_per_piece, traced

__all__ = ["channel_window", "scale_backbone", "scaled_half", "structure_factor"]

Version = Literal[1, 2]


def _per_sample(value: float | torch.Tensor, batch: int, device: torch.device) -> float | torch.Tensor:
    """A python float as is, or a per-sample tensor as ``(B, 1, 1, 1)`` float32 (float64 stays float64)."""
    if not isinstance(value, torch.Tensor):
        return float(value)
    acc = torch.float64 if value.dtype == torch.float64 else torch.float32
    value = value.to(device=device, dtype=acc)
    if value.dim() == 0:
        return value
    if value.shape != (batch,):
        raise ValueError(f"a per-sample factor must have shape ({batch},), got {tuple(value.shape)}")
    return value.view(batch, 1, 1, 1)


def _channel_mean(x: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """The mean over channels, ``(B, 1, H, W)`` in ``acc``. ``mean(dtype=acc)`` upcasts a half-precision input whole
    before it sums; summed a piece of channels at a time, only one piece is upcast at once."""
    if x.dtype == acc or traced(x):
        return x.mean(dim=1, keepdim=True, dtype=acc)
    step = channels_per_piece(x.shape[0], x.shape[-2] * x.shape[-1], x.device)
    total = x[:, :step].sum(dim=1, keepdim=True, dtype=acc)
    for first in range(step, x.shape[1], step):
        total += x[:, first : first + step].sum(dim=1, keepdim=True, dtype=acc)
    return total / x.shape[1]


def structure_factor(x: torch.Tensor, b: float | torch.Tensor) -> torch.Tensor:
    """The version-2 factor map ``(b - 1) * normalised_channel_mean + 1``, shape ``(B, 1, H, W)``, float32 or wider."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    mean = _channel_mean(x, acc)
    low, high = torch.aminmax(mean.flatten(1), dim=1)
    span = high - low
    flat_map = span == 0
    normalised = (mean - low.view(-1, 1, 1, 1)) / torch.where(flat_map, 1.0, span).view(-1, 1, 1, 1)
    normalised = normalised.masked_fill_(flat_map.view(-1, 1, 1, 1), 1.0)
    return (_per_sample(b, x.shape[0], x.device) - 1) * normalised + 1


def _factor(
    x: torch.Tensor, b: float | torch.Tensor, version: Version, structure: torch.Tensor | None
) -> float | torch.Tensor:
    """The backbone factor of ``x``: ``b`` (version 1), or version 2's map from ``structure`` (``x`` itself unless a
    join normalises its backbone first and gives the feature before that)."""
    if x.dim() != 4:
        raise ValueError(f"x must have shape (B, C, H, W), got {tuple(x.shape)}")
    if isinstance(version, bool) or version not in (1, 2):
        raise ValueError(f"version must be 1 or 2, got {version!r}")
    if version == 1:
        return _per_sample(b, x.shape[0], x.device)
    if structure is None:
        return structure_factor(x, b)
    if structure.dim() != 4 or structure.shape[0] != x.shape[0] or structure.shape[-2:] != x.shape[-2:]:
        raise ValueError(
            f"structure must be (B, C', H, W) with the batch and size of x {tuple(x.shape)}, got "
            f"{tuple(structure.shape)}"
        )
    return structure_factor(structure, b)


def scaled_half(
    x: torch.Tensor,
    b: float | torch.Tensor,
    version: Version = 2,
    *,
    out: torch.Tensor | None = None,
    structure: torch.Tensor | None = None,
) -> torch.Tensor:
    """The first ``C // 2`` channels of ``x`` (``(B, C, H, W)``) times FreeU's backbone factor, as a new tensor.

    Version 2 reads the channel mean over *all* ``C`` channels, so it needs the whole backbone feature, or
    ``structure``: the feature whose channel mean gives the map where it is not ``x`` (a backbone normalised over its
    channels before the join has a mean of zero). ``out`` (``x``'s dtype, shape of the half; not differentiable):
    write the result there instead of a new tensor.
    """
    factor = _factor(x, b, version, structure)
    half = x[:, : x.shape[1] // 2]
    if out is not None:  # a float32 factor multiplies in float32 and is rounded once into out, as below
        if isinstance(factor, torch.Tensor) and factor.dtype != x.dtype:
            # torch computes a mixed-precision product whole in float32 before it rounds into out: go in pieces
            step = channels_per_piece(x.shape[0], x.shape[-2] * x.shape[-1], x.device)
            for first in range(0, half.shape[1], step):
                torch.mul(half[:, first : first + step], factor, out=out[:, first : first + step])
            return out
        return torch.mul(half, factor, out=out)
    # a python float multiplies in the op's own math; a tensor factor is applied in float32, rounded once
    return half * factor if isinstance(factor, float) else (half * factor).to(x.dtype)


def channel_window(channels: int, offset: float = 0.0, width: float = 0.5) -> list[tuple[int, int]]:
    """The half-open channel ranges a window scales: ``[floor(offset * C), floor((offset + width) * C))``, the part
    past the last channel continued from channel 0. The default is ``[(0, C // 2)]``, the paper's first half.

    Args:
        channels: the backbone width ``C``.
        offset: where the window starts, a fraction of ``C`` in ``[0, 1)``.
        width: how much it covers, a fraction of ``C`` in ``[0, 1]``.
    """
    for name, value, interval in (("offset", offset, "[0, 1)"), ("width", width, "[0, 1]")):
        number = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        if not number or not 0 <= value <= 1 or (name == "offset" and value == 1):
            raise ValueError(f"the channel window's {name} must be in {interval} (a fraction of the channels), "
                             f"got {value!r}")  # fmt: skip
    # a decimal fraction of the channels lands on the channel it names (0.3 * 1280 is 383.99... in binary)
    begin, end = math.floor(offset * channels + 1e-9), math.floor((offset + width) * channels + 1e-9)
    if end <= channels:
        return [(begin, end)] if end > begin else []
    return [(begin, channels), (0, min(end - channels, begin))]


def scale_backbone(
    x: torch.Tensor,
    b: float | torch.Tensor,
    version: Version = 2,
    *,
    window: tuple[float, float] = (0.0, 0.5),
    structure: torch.Tensor | None = None,
) -> torch.Tensor:
    """A new ``(B, C, H, W)`` tensor: ``x`` with its first ``C // 2`` channels scaled by FreeU's backbone factor.

    ``b`` is a number or a tensor of shape ``(B,)`` (one factor per sample). ``x`` is not modified. ``window``:
    ``(offset, width)`` of the scaled channels as fractions of ``C`` (:func:`channel_window`); the default is the
    first half. ``structure``: version 2's map from this feature's channel mean instead of ``x``'s
    (:func:`scaled_half`).
    """
    if tuple(window) == (0.0, 0.5):
        first = scaled_half(x, b, version, structure=structure)
        return torch.cat([first, x[:, first.shape[1] :]], dim=1)
    factor = _factor(x, b, version, structure)
    ranges = channel_window(x.shape[1], *window)
    result = x.clone()
    for begin, end in ranges:
        part = x[:, begin:end] * factor
        result[:, begin:end] = part if isinstance(factor, float) else part.to(x.dtype)
    return result
