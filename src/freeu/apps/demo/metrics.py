"""Moved to :mod:`freeu.apps.measures` (``freeu demo``, ``freeu eval`` and the demo's training share them); these
names stay importable from here for code written against the old place."""

from __future__ import annotations

from ..measures import (
    gaussian_pyramid,
    high_frequency_share,
    laplacian_pyramid,
    patch_descriptors,
    quantiles,
    radial_power_spectrum,
    rapsd_distance,
    sliced_wasserstein,
    swd_laplacian,
)

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
