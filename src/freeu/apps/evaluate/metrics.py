"""The metrics of ``freeu eval``: per image (for paired per-seed differences) and per set (with paired replicates).

Weight-free, always computed against the reference images:

- **SWD**: :func:`freeu.apps.measures.swd_laplacian`, the multi-scale sliced Wasserstein distance on Laplacian-
  pyramid patches (mean over levels). :class:`LaplacianSWD` prepares the reference side once and gives the same
  number for the whole set (exactly, tested), its value on bootstrap replicates (each image keeps its own patches,
  so a replicate is the same computation on the resampled images' patches), and a per-image SWD: one image's patches
  against the reference set's patches, with the same normalisation and the same directions.
- **RAPSD**: :func:`freeu.apps.measures.rapsd_distance` (RMS over radii of the log10 ratio of the set-mean radially
  averaged power spectra); per image, the same with that image's own spectrum against the reference mean spectrum.

With a feature network (only from weights on disk): **FID** (Fréchet distance between Gaussian fits of the features)
and **KID** (unbiased squared MMD with the kernel ``(x.y / D + 1)^3``), on the whole sets, computed from the features
so that bootstrap replicates cost no network pass; they equal torchmetrics' ``FrechetInceptionDistance`` and
``KernelInceptionDistance`` (one subset of all samples) on the same features (tested).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from ..measures import laplacian_pyramid, patch_descriptors, quantiles, radial_power_spectrum

__all__ = [
    "FeatureDistances",
    "LaplacianSWD",
    "SpectrumDistance",
    "fit_size",
    "to_float",
]

logger = logging.getLogger(__name__)


def fit_size(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The evaluation protocol's resize, the same for generated and reference images: ``uint8 (N, 3, H, W)`` scaled
    (bilinear, antialiased) until it covers ``size = (height, width)``, centre-cropped to it, rounded to 8 bits.
    Images already of that size are returned unchanged."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    height, width = images.shape[-2:]
    if (height, width) == tuple(size):
        return images
    scale = max(size[0] / height, size[1] / width)
    new = (max(size[0], round(height * scale)), max(size[1], round(width * scale)))
    x = F.interpolate(images.float(), size=new, mode="bilinear", antialias=True, align_corners=False)
    top, left = (new[0] - size[0]) // 2, (new[1] - size[1]) // 2
    x = x[..., top : top + size[0], left : left + size[1]]
    return x.round().clamp(0, 255).to(torch.uint8)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """``uint8`` images as float64 in ``[0, 1]``."""
    return images.double() / 255.0


def _level_positions(height: int, width: int, patch_size: int) -> int:
    size = min(patch_size, height, width)
    return (height - size + 1) * (width - size + 1)


class LaplacianSWD:
    """:func:`freeu.apps.measures.swd_laplacian` with its reference side prepared once.

    Each generated image has a unit index (its position in the full, ordered set of units): image ``u`` gets the
    patch positions that ``swd_laplacian`` would give the ``u``-th image of the set, so :meth:`set_values` on all
    units in order equals ``swd_laplacian(images, reference, ...).mean()``, whichever process analysed which image.
    ``generated_count`` (the number of units) sizes the reference quantiles that the set-level distance needs.
    """

    def __init__(
        self,
        reference: torch.Tensor,
        *,
        levels: int = 3,
        patch_size: int = 7,
        per_image: int = 64,
        projections: int = 512,
        seed: int = 0,
        generated_count: int | None = None,
    ) -> None:
        self.levels, self.patch_size, self.patches, self.seed = levels, patch_size, per_image, seed
        channels, height, width = reference.shape[1:]
        self.shape = (channels, height, width)
        self.directions: list[torch.Tensor] = []
        self.norm: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.per_image_counts: list[int] = []
        self.positions: list[int] = []
        self.image_quantiles: list[torch.Tensor] = []  # (k_l, P) reference quantiles at one image's patch count
        self.set_quantiles: list[torch.Tensor] = []  # (min(n k_l, M_l), P) at the whole set's patch count
        pyramid = laplacian_pyramid(reference.double(), levels)
        for level, lr in enumerate(pyramid):
            positions = _level_positions(*lr.shape[-2:], patch_size)
            k = min(per_image, positions)
            self.positions.append(positions)
            self.per_image_counts.append(k)
            dr = patch_descriptors(lr, patch_size, per_image, torch.Generator().manual_seed(seed + 7919 * level))
            per_channel = dr.reshape(dr.shape[0], channels, -1)
            mean = per_channel.mean(dim=(0, 2)).repeat_interleave(per_channel.shape[-1])
            std = per_channel.std(dim=(0, 2)).clamp_min(1e-8).repeat_interleave(per_channel.shape[-1])
            self.norm.append((mean, std))
            dr = (dr - mean) / std
            gen = torch.Generator().manual_seed(seed + 104729 + level)
            directions = torch.randn(dr.shape[1], projections, generator=gen, dtype=torch.float64).to(dr.dtype)
            directions = directions / directions.norm(dim=0, keepdim=True)
            self.directions.append(directions)
            ref_sorted = (directions.T @ dr.T).sort(dim=1).values.T  # (M_l, P)
            self.image_quantiles.append(quantiles(ref_sorted, min(k, ref_sorted.shape[0])))
            if generated_count is not None:
                self.set_quantiles.append(quantiles(ref_sorted, min(generated_count * k, ref_sorted.shape[0])))
            del ref_sorted

    def descriptors(self, images: torch.Tensor, units: Sequence[int]) -> list[torch.Tensor]:
        """Per level, the normalised patch descriptors ``(len(units) * k_l, D)`` of ``images`` (float, ``[0, 1]``),
        image ``i`` taking the positions of unit ``units[i]`` (units ascending)."""
        if images.shape[1:] != self.shape:
            raise ValueError(f"images {tuple(images.shape)} and reference {self.shape} differ in C, H, W")
        units = [int(u) for u in units]
        if any(b <= a for a, b in zip(units, units[1:], strict=False)) or (units and units[0] < 0):
            raise ValueError(f"units must be ascending and >= 0, got {units[:8]}...")
        pyramid = laplacian_pyramid(images.double(), self.levels)
        out = []
        for level, lg in enumerate(pyramid):
            gen = torch.Generator().manual_seed(self.seed + 7919 * level)
            random = self.patches < self.positions[level]  # patch_descriptors draws one permutation per image
            drawn, rows = 0, []
            for i, unit in enumerate(units):
                if random:
                    for _ in range(unit - drawn):
                        torch.randperm(self.positions[level], generator=gen)
                    drawn = unit + 1
                rows.append(patch_descriptors(lg[i : i + 1], self.patch_size, self.patches, gen))
            mean, std = self.norm[level]
            out.append((torch.cat(rows) - mean) / std)
        return out

    def per_image(self, images: torch.Tensor, units: Sequence[int]) -> torch.Tensor:
        """``(N,)``: each image's own patches against the reference set's (sliced W1 per level, mean over levels)."""
        levels = []
        for level, d in enumerate(self.descriptors(images, units)):
            k = self.per_image_counts[level]
            proj = (d @ self.directions[level]).reshape(len(units), k, -1).sort(dim=1).values  # (N, k, P)
            ref = self.image_quantiles[level]
            if ref.shape[0] < k:  # a reference smaller than one image's patch count
                proj = torch.stack([quantiles(p, ref.shape[0]) for p in proj])
            levels.append((proj - ref).abs().mean(dim=(1, 2)))
        return torch.stack(levels).mean(dim=0)

    def projections(self, images: torch.Tensor, units: Sequence[int]) -> list[torch.Tensor]:
        """Per level ``(P, N k_l)``: the projected descriptors of a whole set, for :meth:`set_values`."""
        return [(self.directions[level].T @ d.T) for level, d in enumerate(self.descriptors(images, units))]

    def set_values(
        self,
        projections: list[torch.Tensor],
        indices: torch.Tensor | None,
        device: str | torch.device = "cpu",
        method: Literal["linear", "exact"] = "linear",
    ) -> torch.Tensor:
        """``[point, replicate_1, ...]``: the set-level SWD (mean over levels) on all units, then on each row of
        ``indices`` (unit indices drawn with replacement; each image keeps its patches).

        ``exact`` recomputes the distance for every replicate (one sort of ``P x N k`` values per level and replicate:
        fine on a GPU, slow on a CPU). ``linear`` (default) uses the distance's first-order expansion in the units'
        weights, ``SWD(c) = SWD + sum_i (c_i - 1) psi_i`` (:meth:`influence`): one pass per level, then every
        replicate is a dot product.
        """
        if not self.set_quantiles:
            raise ValueError("LaplacianSWD was built without generated_count: set-level values need it")
        if method not in ("linear", "exact"):
            raise ValueError(f"method must be 'linear' or 'exact', got {method!r}")
        replicates = 0 if indices is None else indices.shape[0]
        out = torch.zeros(self.levels, replicates + 1, dtype=torch.float64)
        for level, proj in enumerate(projections):
            k = self.per_image_counts[level]
            proj = proj.to(device)
            ref = self.set_quantiles[level].to(device)
            n = proj.shape[1] // k
            count = ref.shape[0]

            def distance(p: torch.Tensor, ref: torch.Tensor = ref, count: int = count) -> float:
                ordered = p.sort(dim=1).values.T  # (N k, P)
                return (quantiles(ordered, count) - ref).abs().mean().item()

            out[level, 0] = distance(proj)
            if not replicates:
                continue
            if method == "linear":
                from .stats import counts

                psi = self._influence(proj, ref.T.contiguous(), k, n).cpu()
                out[level, 1:] = out[level, 0] + counts(indices, n) @ psi
                continue
            offsets = torch.arange(k, device=device)
            for r in range(replicates):
                rows = (indices[r].to(device)[:, None] * k + offsets).flatten()
                if rows.numel() != n * k:
                    raise ValueError(f"indices rows must hold {n} units, got {indices.shape[1]}")
                out[level, r + 1] = distance(proj[:, rows])
        return out.mean(dim=0)

    @staticmethod
    def _influence(proj: torch.Tensor, ref: torch.Tensor, k: int, n: int) -> torch.Tensor:
        """``(n,)``: the derivative of one level's sliced W1 with respect to each unit's weight (centred).

        Per direction, ``W1 = integral |F_G(t) - F_R(t)| dt`` over the merged sorted values, where the generated CDF
        ``F_G = sum_i (c_i / n) F_i`` mixes the units' own patch CDFs. Its derivative in ``c_i`` is
        ``(1 / n) integral sign(F_G - F_R) F_i dt = (1 / (n k)) sum over unit i's values v of S(v)``, with ``S(v)``
        the integral of ``sign(F_G - F_R)`` from ``v`` upwards; averaged over directions.
        """
        directions, total = proj.shape
        q = ref.shape[1]
        merged = torch.cat([proj, ref], dim=1)
        order = merged.argsort(dim=1, stable=True)
        values = merged.gather(1, order)
        from_gen = order < total
        gap = values.diff(dim=1)
        f_gen = from_gen.cumsum(dim=1)[:, :-1].to(proj.dtype) / total
        f_ref = (~from_gen).cumsum(dim=1)[:, :-1].to(proj.dtype) / q
        step = (f_gen - f_ref).sign() * gap
        above = torch.cat([step.flip(1).cumsum(dim=1).flip(1), step.new_zeros(directions, 1)], dim=1)
        unit = torch.where(from_gen, order, 0) // k  # descriptor rows are grouped by unit, k rows each
        psi = torch.zeros(directions, n, dtype=proj.dtype, device=proj.device)
        psi.scatter_add_(1, unit, torch.where(from_gen, above, 0))
        psi = psi.mean(dim=0) / (n * k)
        return (psi - psi.mean()).double()


class SpectrumDistance:
    """The RAPSD distance of :func:`freeu.apps.measures.rapsd_distance` against a fixed reference mean spectrum."""

    def __init__(self, reference: torch.Tensor, eps: float = 1e-12) -> None:
        self.eps = eps
        self.reference = radial_power_spectrum(reference).mean(dim=0)

    def _distance(self, spectra: torch.Tensor) -> torch.Tensor:
        diff = (spectra + self.eps).log10() - (self.reference + self.eps).log10()
        return diff.square().mean(dim=-1).sqrt()

    def per_image(self, spectra: torch.Tensor) -> torch.Tensor:
        """``(N,)``: each image's own spectrum against the reference set's mean spectrum."""
        return self._distance(spectra)

    def set_values(self, spectra: torch.Tensor, indices: torch.Tensor | None) -> torch.Tensor:
        """``[point, replicate_1, ...]``: the distance of the set-mean spectrum, then of each replicate's."""
        means = [spectra.mean(dim=0, keepdim=True)]
        if indices is not None and indices.numel():
            from .stats import counts

            means.append(counts(indices, spectra.shape[0]) @ spectra / spectra.shape[0])
        return self._distance(torch.cat(means))


class FeatureDistances:
    """FID and KID between generated features and fixed reference features, on the whole set and on replicates.

    FID ``= |mu_g - mu_r|^2 + tr S_g + tr S_r - 2 tr sqrt(S_g S_r)`` with unbiased covariances. The trace of the
    square root is the sum of the square roots of the eigenvalues of ``Xc S_r Xc^T / (n - 1)`` (``Xc``: the centred
    generated features, an ``n x n`` matrix, exact when ``n <= D``) or of ``S_r^1/2 S_g S_r^1/2`` (``D x D``).
    KID is the unbiased squared MMD with the polynomial kernel ``k(x, y) = (x.y / D + 1)^3`` over all pairs.
    """

    def __init__(self, reference: torch.Tensor, block: int = 2048) -> None:
        ref = reference.double()
        if ref.dim() != 2 or ref.shape[0] < 2:
            raise ValueError(f"reference features must be (M >= 2, D), got {tuple(reference.shape)}")
        self.reference = ref
        self.dim = ref.shape[1]
        self.mu = ref.mean(dim=0)
        centred = ref - self.mu
        self.sigma = centred.T @ centred / (ref.shape[0] - 1)
        values, vectors = torch.linalg.eigh(self.sigma)
        self.sigma_sqrt = (vectors * values.clamp_min(0).sqrt()) @ vectors.T
        m = ref.shape[0]
        total = 0.0
        for start in range(0, m, block):
            k = self._kernel(ref[start : start + block], ref)
            total += k.sum().item() - k.diagonal(offset=start).sum().item()
        self.kernel_rr = total / (m * (m - 1))

    def _kernel(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a @ b.T / self.dim + 1.0) ** 3

    @staticmethod
    def _rows(indices: torch.Tensor | None, n: int) -> list[torch.Tensor]:
        rows = [torch.arange(n)]
        if indices is not None:
            rows.extend(indices)
        return rows

    def fid_values(self, features: torch.Tensor, indices: torch.Tensor | None) -> torch.Tensor:
        """``[point, replicate_1, ...]`` of the FID."""
        x = features.double()
        n = x.shape[0]
        if n < 2:
            raise ValueError("FID needs at least two generated images")
        out = []
        if n <= self.dim:
            gram_sigma, gram, along = x @ self.sigma @ x.T, x @ x.T, x @ self.mu
            for rows in self._rows(indices, n):
                g, k, v = gram_sigma[rows][:, rows], gram[rows][:, rows], along[rows]
                centre = torch.eye(n, dtype=x.dtype) - 1.0 / n
                a = centre @ g @ centre / (n - 1)
                trace_g = (k.diagonal().sum() - k.sum() / n) / (n - 1)
                mean_term = k.mean() - 2 * v.mean() + self.mu @ self.mu
                root = torch.linalg.eigvalsh((a + a.T) / 2).clamp_min(0).sqrt().sum()
                out.append(mean_term + trace_g + self.sigma.diagonal().sum() - 2 * root)
        else:
            for rows in self._rows(indices, n):
                xs = x[rows]
                mu = xs.mean(dim=0)
                c = xs - mu
                sigma = c.T @ c / (n - 1)
                m = self.sigma_sqrt @ sigma @ self.sigma_sqrt
                root = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
                mean_term = (mu - self.mu).square().sum()
                out.append(mean_term + sigma.diagonal().sum() + self.sigma.diagonal().sum() - 2 * root)
        return torch.stack(out)

    def kid_values(self, features: torch.Tensor, indices: torch.Tensor | None) -> torch.Tensor:
        """``[point, replicate_1, ...]`` of the KID (unbiased MMD^2)."""
        x = features.double()
        n = x.shape[0]
        if n < 2:
            raise ValueError("KID needs at least two generated images")
        k_gg = self._kernel(x, x)
        blocks = [self._kernel(x, self.reference[s : s + 2048]) for s in range(0, self.reference.shape[0], 2048)]
        k_gr = torch.cat(blocks, dim=1).mean(dim=1)
        out = []
        for rows in self._rows(indices, n):
            k = k_gg[rows][:, rows]
            gg = (k.sum() - k.diagonal().sum()) / (n * (n - 1))
            out.append(gg + self.kernel_rr - 2 * k_gr[rows].mean())
        return torch.stack(out)
