"""The paper's Fourier measurements as pure functions on tensors (FREEU.md section 4).

- :func:`relative_log_amplitude`: the convention of the paper's Fig. 4, 6, 7 and 13, taken from Park & Kim ("How do
  vision transformers work?", ICLR 2022): per sample and channel ``log |FFT2|``, DC shifted to the centre, averaged
  over the batch and channels, read along the half-diagonal from DC towards the corner (``(H//2 + j, W//2 + j)``),
  minus its value at DC, plotted against ``linspace(0, pi)``. ``path="radial"`` averages over rings of equal
  normalised frequency instead (a variant the paper does not use, steadier on small maps).
- :func:`frequency_split`: an image's low- and high-frequency parts (paper Fig. 3), by an ideal radial mask in the
  Fourier domain at ``cutoff`` (a fraction of the Nyquist frequency); the two parts add up to the input.

Everything is computed in float64 on the input's device; results are float64 tensors.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

__all__ = ["frequency_split", "normalised_radius", "relative_log_amplitude"]

Path = Literal["diagonal", "radial"]
_EPS = 1e-12  # keeps log finite on exactly-zero bins; far below float32 resolution of any real amplitude


def normalised_radius(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """``(H, W)`` distance of each shifted bin from DC, in units of the Nyquist frequency per axis (1 = Nyquist)."""
    ky = (torch.arange(height, device=device, dtype=torch.float64) - height // 2) / max(height / 2, 1)
    kx = (torch.arange(width, device=device, dtype=torch.float64) - width // 2) / max(width / 2, 1)
    return torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)


def _log_amplitude(x: torch.Tensor) -> torch.Tensor:
    """Mean over all leading dims of ``log |fftshift(fft2(x))|``: shape ``(H, W)``."""
    if x.dim() < 2:
        raise ValueError(f"x must have shape (..., H, W), got {tuple(x.shape)}")
    spectrum = torch.fft.fftshift(torch.fft.fft2(x.to(torch.float64)), dim=(-2, -1))
    return torch.log(spectrum.abs() + _EPS).reshape(-1, *x.shape[-2:]).mean(dim=0)


def relative_log_amplitude(
    x: torch.Tensor, path: Path = "diagonal", bins: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(frequency, relative log amplitude)`` of ``x`` (``(..., H, W)``), frequency from 0 to pi (see module doc).

    ``diagonal`` gives ``min(H - H//2, W - W//2)`` points; ``radial`` gives ``bins`` rings (default: as many as the
    diagonal) centred on normalised radii ``0, 1/(bins-1), ..., 1``, the first holding DC alone.
    """
    if path not in ("diagonal", "radial"):
        raise ValueError(f"path must be 'diagonal' or 'radial', got {path!r}")
    amplitude = _log_amplitude(x)
    height, width = amplitude.shape
    steps = min(height - height // 2, width - width // 2)
    if path == "diagonal":
        j = torch.arange(steps, device=amplitude.device)
        values = amplitude[height // 2 + j, width // 2 + j]
        frequency = torch.linspace(0.0, math.pi, steps, dtype=torch.float64)
    else:
        bins = bins or steps
        if bins < 1:
            raise ValueError(f"bins must be an int >= 1, got {bins!r}")
        radius = normalised_radius(height, width, amplitude.device).flatten()
        # ring b is centred on radius b / (bins - 1); DC alone is ring 0, so the curve starts at exactly 0
        index = torch.clamp((radius * (bins - 1)).round().long(), min=1, max=bins - 1)
        index[radius == 0] = 0
        inside = radius <= 1.0 + 1e-9
        sums = torch.zeros(bins, dtype=torch.float64, device=amplitude.device)
        counts = torch.zeros(bins, dtype=torch.float64, device=amplitude.device)
        sums.index_add_(0, index[inside], amplitude.flatten()[inside])
        counts.index_add_(0, index[inside], torch.ones_like(radius[inside]))
        values = sums / counts.clamp_min(1)
        frequency = torch.linspace(0.0, math.pi, bins, dtype=torch.float64)
    return frequency.cpu(), (values - values[0]).cpu()


def frequency_split(x: torch.Tensor, cutoff: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    """``(low, high)`` parts of each ``H x W`` map of ``x``: bins within normalised radius ``cutoff`` and the rest.

    ``low + high == x`` (up to float64 rounding, cast back to ``x``'s dtype).
    """
    if not 0.0 < cutoff < math.sqrt(2.0):
        raise ValueError(f"cutoff must be a fraction of the Nyquist frequency in (0, sqrt(2)), got {cutoff!r}")
    height, width = x.shape[-2:]
    spectrum = torch.fft.fftshift(torch.fft.fft2(x.to(torch.float64)), dim=(-2, -1))
    mask = (normalised_radius(height, width, x.device) <= cutoff).to(torch.float64)
    low = torch.fft.ifft2(torch.fft.ifftshift(spectrum * mask, dim=(-2, -1))).real
    high = x.to(torch.float64) - low
    return low.to(x.dtype), high.to(x.dtype)
