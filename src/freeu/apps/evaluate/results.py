"""From records and per-image analysis to numbers: set-level metrics and per-image paired differences, with paired
bootstrap intervals over units (see :mod:`freeu.apps.evaluate.stats`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .configs import BASELINE, EvalConfig
from .metrics import FeatureDistances, LaplacianSWD, SpectrumDistance, to_float
from .stats import Estimate, PairedDifference, paired_mean_difference, percentile_interval, set_metric_estimates

__all__ = ["ConfigResult", "METRICS", "PER_IMAGE", "compute_results"]

logger = logging.getLogger(__name__)

#: Set-level metrics: name -> (label, lower is better).
METRICS: dict[str, tuple[str, bool]] = {
    "swd": ("SWD", True),
    "rapsd": ("RAPSD", True),
    "fid": ("FID", True),
    "kid": ("KID", True),
}
#: Per-image quantities: name -> (label, direction: "lower", "higher" or None when it has no better side).
PER_IMAGE: dict[str, tuple[str, str | None]] = {
    "swd": ("per-image SWD", "lower"),
    "rapsd": ("per-image RAPSD", "lower"),
    "clip": ("CLIP score", "higher"),
    "hf_share": ("high-frequency share", None),
    "change_vs_off": ("change vs off (grey levels)", None),
}


@dataclass
class ConfigResult:
    config: EvalConfig
    n: int
    sets: dict[str, tuple[Estimate, Estimate]] = field(default_factory=dict)
    means: dict[str, Estimate] = field(default_factory=dict)
    paired: dict[str, PairedDifference] = field(default_factory=dict)
    #: The configuration against its matched baseline (FreeU off at its equivalent guidance), when it has one: the
    #: baseline's name, set-level differences (paired basic intervals) and per-image paired differences.
    matched: str | None = None
    sets_vs_matched: dict[str, Estimate] = field(default_factory=dict)
    paired_vs_matched: dict[str, PairedDifference] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        versus = None
        if self.matched is not None:
            versus = {
                "baseline": self.matched,
                "set_level_difference": {k: v.as_dict() for k, v in self.sets_vs_matched.items()},
                "per_image_paired": {k: v.as_dict() for k, v in self.paired_vs_matched.items()},
            }
        return {
            "name": self.config.name,
            "description": self.config.describe(),
            "freeu": self.config.settings(),
            "preset": self.config.preset,
            "guidance": self.config.guidance,
            "n": self.n,
            "set_level": {
                k: {"value": v.as_dict(), "difference_vs_off": d.as_dict()} for k, (v, d) in self.sets.items()
            },
            "per_image_mean": {k: v.as_dict() for k, v in self.means.items()},
            "per_image_paired_vs_off": {k: v.as_dict() for k, v in self.paired.items()},
            "versus_matched_guidance": versus,
        }


def _mean_estimate(values: torch.Tensor, indices: torch.Tensor, level: float) -> Estimate:
    from .stats import counts

    reps = counts(indices, values.numel()) @ values.double() / values.numel()
    low, high = percentile_interval(reps, level)
    return Estimate(values.double().mean().item(), low, high, level)


def compute_results(
    configs: Sequence[EvalConfig],
    n: int,
    scalars: dict[str, dict[str, torch.Tensor]],
    spectra: dict[str, torch.Tensor],
    features: dict[str, torch.Tensor] | None,
    load_images: Callable[[str], torch.Tensor] | None,
    swd: LaplacianSWD | None,
    spectrum: SpectrumDistance | None,
    feature_distances: FeatureDistances | None,
    indices: torch.Tensor,
    set_indices: torch.Tensor,
    level: float = 0.95,
    device: str | torch.device = "cpu",
    swd_method: str = "linear",
    on_config: Callable[[str], None] = lambda name: None,
    matched: dict[str, str] | None = None,
) -> list[ConfigResult]:
    """Every configuration's numbers. ``scalars[config][metric]``, ``spectra[config]``, ``features[config]`` are in
    unit order; ``load_images(config)`` gives its ``uint8`` images (evaluation size, unit order) for the SWD;
    ``indices`` are the bootstrap rows shared by all configurations, ``set_indices`` those of the set-level metrics
    (usually fewer: they cost more per replicate). ``matched`` maps a configuration to its matched-guidance
    baseline (another configuration): it is also compared with that, as with FreeU off."""
    set_rows = set_indices
    base_sets: dict[str, torch.Tensor] = {}
    all_sets: dict[str, dict[str, torch.Tensor]] = {}
    matched = dict(matched or {})
    names = {c.name for c in configs}
    unknown = {k: v for k, v in matched.items() if k not in names or v not in names}
    if unknown:
        raise ValueError(f"matched names configurations that are not evaluated: {unknown}")
    results = []
    ordered = [c for c in configs if c.name == BASELINE] + [c for c in configs if c.name != BASELINE]
    for config in ordered:
        on_config(config.name)
        result = ConfigResult(config, n)
        values: dict[str, torch.Tensor] = {}
        if swd is not None and load_images is not None:
            images = to_float(load_images(config.name))
            values["swd"] = swd.set_values(swd.projections(images, range(n)), set_rows, device, swd_method)
            del images
        if spectrum is not None:
            values["rapsd"] = spectrum.set_values(spectra[config.name], set_rows)
        if feature_distances is not None and features is not None:
            values["fid"] = feature_distances.fid_values(features[config.name], set_rows)
            values["kid"] = feature_distances.kid_values(features[config.name], set_rows)
        all_sets[config.name] = values
        for metric, tensor in values.items():
            if config.name == BASELINE:
                base_sets[metric] = tensor
            result.sets[metric] = set_metric_estimates(tensor, base_sets[metric], level)
        for metric, (_, direction) in PER_IMAGE.items():
            if metric not in scalars[config.name]:
                continue
            mine = scalars[config.name][metric]
            result.means[metric] = _mean_estimate(mine, indices, level)
            if direction is not None:
                result.paired[metric] = paired_mean_difference(
                    mine, scalars[BASELINE][metric], indices, level, higher_is_better=direction == "higher"
                )
        results.append(result)
    by_name = {r.config.name: r for r in results}
    for name, baseline in matched.items():
        result = by_name[name]
        result.matched = baseline
        for metric, tensor in all_sets[name].items():
            result.sets_vs_matched[metric] = set_metric_estimates(tensor, all_sets[baseline][metric], level)[1]
        for metric, (_, direction) in PER_IMAGE.items():
            if direction is not None and metric in scalars[name]:
                result.paired_vs_matched[metric] = paired_mean_difference(
                    scalars[name][metric], scalars[baseline][metric], indices, level,
                    higher_is_better=direction == "higher",
                )  # fmt: skip
    return [by_name[c.name] for c in configs]
