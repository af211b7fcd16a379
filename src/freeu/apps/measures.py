"""The measures the commands share: weight-free sample-quality metrics, pure functions on tensors that compare two
sets of images and need no pretrained network (``freeu demo``, ``freeu eval``, ``freeu tune`` through eval, and the
demo model's training use them; ``freeu analyze``'s own measurements are in :mod:`freeu.apps.analyze.measures`).

The two distances take two image batches ``(N, C, H, W)`` (sizes may differ; same ``C, H, W``; any common value
range, the demo uses ``[0, 1]``) and return a non-negative distance that is exactly 0 for identical sets and grows as
the sets' statistics part.

- :func:`swd_laplacian`: multi-scale sliced Wasserstein distance on Laplacian-pyramid patches, after Karras et al.,
  "Progressive Growing of GANs" (ICLR 2018), section 5: it compares the distributions of local ``7x7`` neighbourhoods
  at each scale, so it sees both blur (fine levels) and wrong colours or layouts (coarse levels).
- :func:`rapsd_distance`: distance between radially averaged power spectra: it sees how much energy each spatial
  frequency has, i.e. blur, noise and ringing, but not colour or structure.

Their parts are public too, for the commands that compute them piecewise (``freeu eval`` prepares the reference side
once): :func:`gaussian_pyramid`, :func:`laplacian_pyramid`, :func:`patch_descriptors`, :func:`quantiles`,
:func:`sliced_wasserstein`, :func:`radial_power_spectrum`; and :func:`high_frequency_share`, a per-image summary.

Everything is pure torch and deterministic given ``seed``.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

__all__ = [
    "gaussian_pyramid",
    "high_frequency_share",
    "laplacian_pyramid",
    "patch_descriptors",
    "quantiles",
    "radial_power_spectrum",
    "rapsd_distance",
    "sliced_wasserstein",
    "swd_laplacian",
]

logger = logging.getLogger(__name__)

_BINOMIAL = (1.0, 4.0, 6.0, 4.0, 1.0)


def _check_images(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point (N, C, H, W) tensor, got {getattr(x, 'shape', type(x))}")
    if x.shape[0] < 1:
        raise ValueError(f"{name} must hold at least one image, got shape {tuple(x.shape)}")


def _blur(x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """Separable 5-tap binomial blur [1 4 6 4 1]/16 per channel, reflect padding (Burt & Adelson's kernel)."""
    channels = x.shape[1]
    k = torch.tensor(_BINOMIAL, dtype=x.dtype, device=x.device) / 16.0
    kernel = (torch.outer(k, k) * gain).expand(channels, 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel, groups=channels)


def _reduce(x: torch.Tensor) -> torch.Tensor:
    """Blur, then keep every second row and column."""
    return _blur(x)[..., ::2, ::2]


def _expand(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Upsample by 2 to ``size``: insert zeros, blur with the kernel scaled by 4 (so the mean is kept)."""
    up = x.new_zeros(*x.shape[:2], *size)
    up[..., ::2, ::2] = x
    return _blur(up, gain=4.0)


def gaussian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """``levels`` images: ``x``, then each one blurred and halved (finest first)."""
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    pyramid = [x]
    for _ in range(levels - 1):
        if min(pyramid[-1].shape[-2:]) < 6:
            raise ValueError(f"levels={levels} is too many for {tuple(x.shape[-2:])} images (each level halves)")
        pyramid.append(_reduce(pyramid[-1]))
    return pyramid


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Burt-Adelson Laplacian pyramid, finest first: ``levels - 1`` band-pass images ``g_i - expand(g_{i+1})``,
    then the coarsest Gaussian level ``g_{levels-1}`` (the low-pass residual). Summing back reconstructs ``x``.
    """
    gauss = gaussian_pyramid(x, levels)
    bands = [g - _expand(coarse, g.shape[-2:]) for g, coarse in zip(gauss[:-1], gauss[1:], strict=True)]
    return [*bands, gauss[-1]]


def patch_descriptors(
    x: torch.Tensor, patch_size: int = 7, per_image: int = 64, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``(N * k, C * patch_size**2)`` flattened ``patch_size`` neighbourhoods of ``x`` (channel-major, like
    ``F.unfold``): ``k = min(per_image, all)`` positions per image, drawn without replacement with ``generator`` (all
    valid positions, in raster order, if ``per_image`` covers them). Only the chosen patches are materialised.
    """
    n, c, h, w = x.shape
    size = min(patch_size, h, w)
    across = w - size + 1
    positions = (h - size + 1) * across
    if per_image >= positions:
        pos = torch.arange(positions).expand(n, -1)
    else:
        pos = torch.stack([torch.randperm(positions, generator=generator)[:per_image] for _ in range(n)])
    offsets = torch.arange(size, device=x.device)
    pos = pos.to(x.device)
    rows = (pos // across)[..., None, None] + offsets[:, None]  # (N, k, size, 1)
    cols = (pos % across)[..., None, None] + offsets[None, :]  # (N, k, 1, size)
    image = torch.arange(n, device=x.device)[:, None, None, None]
    patches = x.permute(0, 2, 3, 1)[image, rows, cols]  # (N, k, size, size, C)
    return patches.permute(0, 1, 4, 2, 3).reshape(-1, c * size * size)


def quantiles(sorted_values: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` evenly spaced quantiles (midpoint rule) of each column of ``sorted_values``, interpolated linearly."""
    n = sorted_values.shape[0]
    if n == count:
        return sorted_values
    pos = ((torch.arange(count, dtype=torch.float64) + 0.5) * n / count - 0.5).clamp(0, n - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    frac = (pos - lo).to(sorted_values.dtype).unsqueeze(1)
    return sorted_values[lo] * (1 - frac) + sorted_values[hi] * frac


def sliced_wasserstein(
    a: torch.Tensor, b: torch.Tensor, projections: int = 512, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Sliced 1-Wasserstein distance between point sets ``a (n, D)`` and ``b (m, D)``.

    Both are projected on ``projections`` random unit directions (drawn with ``generator``); for each direction the
    1-D W1 distance is the mean absolute difference of the sorted projections (compared at ``min(n, m)`` common
    quantiles when ``n != m``); the result is the mean over directions. 0 iff the projected distributions coincide.
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must be (n, D) and (m, D) with the same D, got {tuple(a.shape)}, {tuple(b.shape)}")
    directions = torch.randn(a.shape[1], projections, generator=generator, dtype=torch.float64).to(a.dtype)
    directions = directions / directions.norm(dim=0, keepdim=True)
    pa = (directions.T @ a.T).sort(dim=1).values.T  # sorting contiguous rows is much faster than columns
    pb = (directions.T @ b.T).sort(dim=1).values.T
    count = min(pa.shape[0], pb.shape[0])
    return (quantiles(pa, count) - quantiles(pb, count)).abs().mean()


@torch.no_grad()
def swd_laplacian(
    generated: torch.Tensor,
    reference: torch.Tensor,
    levels: int = 3,
    patch_size: int = 7,
    per_image: int = 64,
    projections: int = 512,
    seed: int = 0,
) -> torch.Tensor:
    """Multi-scale sliced Wasserstein distance (Karras et al. 2018) per Laplacian level, finest first: ``(levels,)``.

    For each level of :func:`laplacian_pyramid` (``levels - 1`` band-pass levels and the low-pass residual), take
    ``per_image`` random ``patch_size x patch_size`` neighbourhoods per image (:func:`patch_descriptors`, all of them
    when the level is small), normalise every descriptor element by the *reference* set's per-channel mean and
    standard deviation at that level (Karras normalise each set by its own statistics; using the reference's for
    both keeps global contrast and colour errors visible), and take :func:`sliced_wasserstein` with ``projections``
    directions. Positions and directions come from generators seeded with ``seed``, the same for both sets, so
    identical sets give exactly 0. Computed in float64. Take ``.mean()`` for one number.
    """
    _check_images("generated", generated)
    _check_images("reference", reference)
    if generated.shape[1:] != reference.shape[1:]:
        raise ValueError(f"generated {tuple(generated.shape)} and reference {tuple(reference.shape)} differ in C, H, W")
    channels = generated.shape[1]
    pyr_g = laplacian_pyramid(generated.double(), levels)
    pyr_r = laplacian_pyramid(reference.double(), levels)
    out = []
    for level, (lg, lr) in enumerate(zip(pyr_g, pyr_r, strict=True)):
        dg = patch_descriptors(lg, patch_size, per_image, torch.Generator().manual_seed(seed + 7919 * level))
        dr = patch_descriptors(lr, patch_size, per_image, torch.Generator().manual_seed(seed + 7919 * level))
        per_channel = dr.reshape(dr.shape[0], channels, -1)
        mean = per_channel.mean(dim=(0, 2)).repeat_interleave(per_channel.shape[-1])
        std = per_channel.std(dim=(0, 2)).clamp_min(1e-8).repeat_interleave(per_channel.shape[-1])
        dg, dr = (dg - mean) / std, (dr - mean) / std
        out.append(sliced_wasserstein(dg, dr, projections, torch.Generator().manual_seed(seed + 104729 + level)))
    return torch.stack(out).float()


def radial_power_spectrum(x: torch.Tensor) -> torch.Tensor:
    """Mean power per integer radial frequency ``r = 1 .. min(H, W) // 2`` of each image: ``(N, R)``.

    Per image and channel: subtract the mean (DC is excluded anyway), ``|FFT2|^2 / (H * W)``; the frequency of bin
    ``(ky, kx)`` (in cycles per image, signed) has radius ``round(sqrt(ky^2 + kx^2))``; power is averaged over the
    bins of each radius and over channels. Corners beyond ``min(H, W) // 2`` are dropped. Computed in float64.
    """
    _check_images("x", x)
    n, c, h, w = x.shape
    x = x.double()
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(x).abs().square().mean(dim=1) / (h * w)  # (N, H, W)
    ky = torch.fft.fftfreq(h, d=1.0 / h, dtype=torch.float64)
    kx = torch.fft.fftfreq(w, d=1.0 / w, dtype=torch.float64)
    radius = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2).round().long().flatten()
    r_max = min(h, w) // 2
    keep = (radius >= 1) & (radius <= r_max)
    idx = radius[keep] - 1
    counts = torch.bincount(idx, minlength=r_max).to(torch.float64)
    sums = torch.zeros(n, r_max, dtype=torch.float64).index_add_(1, idx, power.reshape(n, -1)[:, keep])
    return sums / counts


@torch.no_grad()
def rapsd_distance(generated: torch.Tensor, reference: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """RMS over radii of ``log10`` of the set-mean radial power spectra's ratio (a scalar).

    Each set's spectrum is :func:`radial_power_spectrum` averaged over its images; the distance is
    ``sqrt(mean_r (log10(P_gen(r) + eps) - log10(P_ref(r) + eps))^2)``: 0.1 means the power is off by a factor of
    about 10^0.1 = 1.26 on average. Blur lowers the high radii, noise raises them.
    """
    _check_images("generated", generated)
    _check_images("reference", reference)
    if generated.shape[1:] != reference.shape[1:]:
        raise ValueError(f"generated {tuple(generated.shape)} and reference {tuple(reference.shape)} differ in C, H, W")
    pg = radial_power_spectrum(generated).mean(dim=0)
    pr = radial_power_spectrum(reference).mean(dim=0)
    return ((pg + eps).log10() - (pr + eps).log10()).square().mean().sqrt().float()


def high_frequency_share(images: torch.Tensor) -> torch.Tensor:
    """Per image, the fraction of its (mean-removed) power at radial frequencies above half the Nyquist frequency.

    Uses :func:`radial_power_spectrum` (mean power per integer radius ``1..min(H, W)//2``),
    weighted by the number of Fourier bins on each ring (``2 pi r``), so the share is one of total power.
    """
    spectrum = radial_power_spectrum(images)
    radius = torch.arange(1, spectrum.shape[1] + 1, dtype=torch.float64)
    power = spectrum * radius
    high = radius > spectrum.shape[1] / 2
    return power[:, high].sum(dim=1) / power.sum(dim=1).clamp_min(1e-30)
