"""The measurements of ``freeu analyze``, as pure functions on tensors (the paper's analyses: docs/method.md
section 5, docs/analyze.md).

- :func:`relative_log_amplitude`: the convention of the paper's Fig. 4, 6, 7 and 13, taken from Park & Kim ("How do
  vision transformers work?", ICLR 2022): per sample and channel ``log |FFT2|``, DC shifted to the centre, averaged
  over the batch and channels, read along the half-diagonal from DC towards the corner (``(H//2 + j, W//2 + j)``),
  minus its value at DC, plotted against ``linspace(0, pi)``. ``path="radial"`` averages over rings of equal
  normalised frequency instead (a variant the paper does not use, steadier on small maps).
- :func:`frequency_split`: an image's low- and high-frequency parts (paper Fig. 3), by an ideal radial mask in the
  Fourier domain at ``cutoff`` (a fraction of the Nyquist frequency); the two parts add up to the input.

- :func:`high_band`, :func:`high_fraction` and :func:`strip_steps`: the summaries the figures and the text report.

Everything is computed in float64 on the input's device; results are float64 tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

__all__ = [
    "PATHS",
    "check_path",
    "amplitude_curve",
    "frequency_split",
    "high_band",
    "high_fraction",
    "mean_known",
    "normalised_radius",
    "relative_log_amplitude",
    "rms",
    "strip_steps",
]

PATHS: tuple[str, ...] = ("diagonal", "radial")

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


# -- summaries ------------------------------------------------------------------------------------------------------


def check_path(path: str, bins: int | None, cutoff: float | None = None) -> None:
    """``ValueError`` unless ``path``, ``bins`` and ``cutoff`` make sense together."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {list(PATHS)}, got {path!r}")
    if bins is not None and path != "radial":
        raise ValueError(f"bins (--bins) counts the rings of path='radial'; the diagonal has none, got bins={bins!r}")
    if cutoff is not None and not 0.0 < cutoff < math.sqrt(2.0):
        raise ValueError(f"cutoff must be a fraction of the Nyquist frequency in (0, sqrt(2)), got {cutoff!r}")


def amplitude_curve(x: torch.Tensor, path: str, bins: int | None) -> tuple[list[float], list[float]]:
    """The relative log amplitude curve of ``x`` as lists ``(frequency, values)``."""
    frequency, values = relative_log_amplitude(x, path=path, bins=bins)  # type: ignore[arg-type]
    return frequency.tolist(), values.tolist()


def high_band(frequency: Sequence[float], values: Sequence[float], start: float = math.pi / 2) -> float | None:
    """Mean of a relative log amplitude curve over frequencies ``>= start`` (default the upper half, pi/2 .. pi);
    ``None`` for a curve with no point there (a 2x2 or smaller map, whose diagonal holds DC alone)."""
    picked = [v for f, v in zip(frequency, values, strict=True) if f >= start - 1e-12]
    return sum(picked) / len(picked) if picked else None


def mean_known(values: Sequence[float | None]) -> float | None:
    """Mean of the values that are not ``None`` (``None`` if none is)."""
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def high_fraction(x: torch.Tensor, high: torch.Tensor) -> float:
    """Share of ``x``'s energy (each map's mean removed) that lies in its high-frequency part ``high``.

    The ideal masks of :func:`frequency_split` are orthogonal projections and DC lies in the low part, so this is
    ``sum(high^2) / sum((x - mean)^2)``, in ``[0, 1]``.
    """
    x = x.to(torch.float64)
    centred = x - x.mean(dim=(-2, -1), keepdim=True)
    total = float((centred**2).sum())
    return float((high.to(torch.float64) ** 2).sum()) / total if total > 0 else 0.0


def rms(x: torch.Tensor) -> float:
    return float(x.to(torch.float64).pow(2).mean().sqrt())


def strip_steps(steps: int, columns: int) -> list[int]:
    """Up to ``columns`` step indices spread evenly over ``0 .. steps - 1``, first and last included."""
    if columns < 1:
        raise ValueError(f"columns must be an int >= 1, got {columns!r}")
    if columns >= steps:
        return list(range(steps))
    if columns == 1:
        return [steps - 1]
    return sorted({round(i * (steps - 1) / (columns - 1)) for i in range(columns)})
