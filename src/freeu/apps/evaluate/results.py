"""From records and per-image analysis to numbers: set-level metrics and per-image paired differences, with paired
bootstrap intervals over units (see :mod:`freeu.apps.evaluate.stats`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .configs import BASELINE, EvalConfig
from .generation import Unit
from .meter import GuidanceMatch
from .metrics import FeatureDistances, LaplacianSWD, SpectrumDistance, to_float
from .stats import Estimate, PairedDifference, paired_mean_difference, percentile_interval, set_metric_estimates

__all__ = [
    "ConfigResult",
    "EvalHeader",
    "EvalResult",
    "METRICS",
    "Measurements",
    "PER_IMAGE",
    "Resampling",
    "Scorers",
    "compute_results",
]

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
    """One configuration's numbers: ``sets[metric]`` (set-level value, difference from FreeU off), ``means[metric]``
    (per-image mean), ``paired[metric]`` (per-image paired difference from FreeU off), each with its interval."""

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
        """This configuration's entry in ``metrics.json``."""
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
            "compensate": self.config.compensate,
            "guidance_schedules": [{"prompt": p, **schedule.as_dict()} for p, schedule in self.config.schedules],
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


@dataclass(frozen=True)
class Measurements:
    """What the per-image analysis gave, per configuration name and in unit order: the scalars (``scalars[config]
    [metric]``, ``(n,)`` each), the radial spectra, the FID features (``None`` without a feature network), and
    ``load_images(config)``, its ``uint8`` images at the evaluation size (for the set-level SWD; ``None``: no SWD)."""

    n: int
    scalars: Mapping[str, Mapping[str, torch.Tensor]]
    spectra: Mapping[str, torch.Tensor]
    features: Mapping[str, torch.Tensor] | None = None
    load_images: Callable[[str], torch.Tensor] | None = None


@dataclass(frozen=True)
class Scorers:
    """The set-level distances to the reference; each ``None`` where it is not computed (no reference, no feature
    network)."""

    swd: LaplacianSWD | None = None
    spectrum: SpectrumDistance | None = None
    features: FeatureDistances | None = None


@dataclass(frozen=True)
class Resampling:
    """The paired bootstrap: ``indices``, the replicate rows of unit indices shared by all configurations (per-image
    means), ``set_indices`` those of the set-level metrics (usually fewer: they cost more per replicate), the interval
    ``level``, the set-level SWD's replicates (``"linear"`` or ``"exact"``) and the device they are computed on."""

    indices: torch.Tensor
    set_indices: torch.Tensor
    level: float = 0.95
    swd_method: str = "linear"
    device: str | torch.device = "cpu"


def _set_values(config: str, data: Measurements, scorers: Scorers, resampling: Resampling) -> dict[str, torch.Tensor]:
    """``[point, replicate_1, ...]`` of each set-level metric of one configuration."""
    rows, n = resampling.set_indices, data.n
    values: dict[str, torch.Tensor] = {}
    if scorers.swd is not None and data.load_images is not None:
        images = to_float(data.load_images(config))
        projections = scorers.swd.projections(images, range(n))
        values["swd"] = scorers.swd.set_values(projections, rows, resampling.device, resampling.swd_method)
        del images
    if scorers.spectrum is not None:
        values["rapsd"] = scorers.spectrum.set_values(data.spectra[config], rows)
    if scorers.features is not None and data.features is not None:
        values["fid"] = scorers.features.fid_values(data.features[config], rows)
        values["kid"] = scorers.features.kid_values(data.features[config], rows)
    return values


def compute_results(
    configs: Sequence[EvalConfig],
    data: Measurements,
    scorers: Scorers,
    resampling: Resampling,
    matched: Mapping[str, str] | None = None,
    on_config: Callable[[str], None] = lambda name: None,
) -> list[ConfigResult]:
    """Every configuration's numbers, in the order of ``configs``: set-level metrics against the reference and
    their paired differences from FreeU off, per-image means and paired per-image differences. ``matched`` maps a
    configuration to its matched-guidance baseline (another configuration): it is also compared with that, as with
    FreeU off. ``on_config(name)`` is called as each configuration starts (a progress bar)."""
    level, indices = resampling.level, resampling.indices
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
        result = ConfigResult(config, data.n)
        values = all_sets[config.name] = _set_values(config.name, data, scorers, resampling)
        for metric, tensor in values.items():
            if config.name == BASELINE:
                base_sets[metric] = tensor
            result.sets[metric] = set_metric_estimates(tensor, base_sets[metric], level)
        for metric, (_, direction) in PER_IMAGE.items():
            if metric not in data.scalars[config.name]:
                continue
            mine = data.scalars[config.name][metric]
            result.means[metric] = _mean_estimate(mine, indices, level)
            if direction is not None:
                result.paired[metric] = paired_mean_difference(
                    mine, data.scalars[BASELINE][metric], indices, level, higher_is_better=direction == "higher"
                )
        results.append(result)
    by_name = {r.config.name: r for r in results}
    for name, baseline in matched.items():
        result = by_name[name]
        result.matched = baseline
        for metric, tensor in all_sets[name].items():
            result.sets_vs_matched[metric] = set_metric_estimates(tensor, all_sets[baseline][metric], level)[1]
        for metric, (_, direction) in PER_IMAGE.items():
            if direction is not None and metric in data.scalars[name]:
                result.paired_vs_matched[metric] = paired_mean_difference(
                    data.scalars[name][metric], data.scalars[baseline][metric], indices, level,
                    higher_is_better=direction == "higher",
                )  # fmt: skip
    return [by_name[c.name] for c in configs]


@dataclass(frozen=True)
class EvalHeader:
    """The protocol of one run, as ``report.md`` states it and the ``header`` of ``metrics.json`` records it:
    the model line, the units, the reference, the evaluation size ``(height, width)``, the interval level, the
    replicates (per-image means, set-level metrics), the number of processes, the set-level SWD's replicates, and
    the units the guidance meter sampled (``None`` without it)."""

    model: str
    units: str
    reference: str
    eval_size: tuple[int, int]
    level: float
    replicates: int
    set_replicates: int
    world: int
    swd_replicates: str = "linear"
    guidance_units: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The ``header`` of ``metrics.json`` without the guidance meter (:meth:`EvalResult.as_dict` adds it)."""
        return {
            "model": self.model, "units": self.units, "reference": self.reference, "eval_size": list(self.eval_size),
            "level": self.level, "replicates": self.replicates, "set_replicates": self.set_replicates,
            "world": self.world,
        }  # fmt: skip


@dataclass(frozen=True)
class EvalResult:
    """What one ``freeu eval`` run found (:func:`freeu.apps.evaluate.evaluate` returns it; ``metrics.json`` is
    :meth:`as_dict`).

    - ``configs``: every configuration's numbers (:class:`ConfigResult`), FreeU off first; ``result["sd15"]`` picks
      one by name;
    - ``units``: the sample units, in order; ``per_image[config][metric]``: the per-image values, ``(n,)`` float64
      in unit order (what ``records.jsonl`` holds);
    - ``guidance_meter``: each FreeU configuration's matched guidance (``--guidance-baselines auto``), by name;
    - ``skipped``: why a metric was not computed; ``generated``, ``reused``: images this process made and found;
    - ``out`` and ``files``: the report folder and the files this run wrote into it.
    """

    out: Path
    header: EvalHeader
    configs: tuple[ConfigResult, ...]
    units: tuple[Unit, ...]
    per_image: Mapping[str, Mapping[str, torch.Tensor]]
    guidance_meter: Mapping[str, GuidanceMatch] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()
    generated: int = 0
    reused: int = 0
    files: tuple[Path, ...] = ()

    def __getitem__(self, name: str) -> ConfigResult:
        for result in self.configs:
            if result.config.name == name:
                return result
        raise KeyError(f"no configuration named {name!r}; the run has {', '.join(self.names)}")

    @property
    def names(self) -> list[str]:
        """The configurations' names, in the report's order."""
        return [r.config.name for r in self.configs]

    def as_dict(self) -> dict[str, Any]:
        """The content of ``metrics.json``."""
        header = self.header.as_dict()
        if self.guidance_meter:
            header["guidance_meter"] = {name: entry.as_dict() for name, entry in self.guidance_meter.items()}
            header["guidance_units"] = self.header.guidance_units
        return {
            "header": header,
            "configs": [r.as_dict() for r in self.configs],
            "skipped": list(self.skipped),
            "units": [{"index": u.index, "seed": u.seed, "prompt": u.prompt} for u in self.units],
        }
