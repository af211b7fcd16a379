"""Paired bootstrap statistics over seeds: every configuration is resampled with the same seeds in each replicate.

The unit of resampling is the sample unit (a seed, or a prompt and seed pair): all configurations were generated from
the same units, so one replicate draws ``n`` units with replacement and every configuration is scored on exactly those
units. Differences against the baseline are then taken replicate by replicate (a paired bootstrap), which removes
the variation that the seeds cause in both configurations alike. Means of per-image quantities get percentile
intervals; set-level metrics (a distance between two sets, biased when units are duplicated) get basic intervals.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

__all__ = [
    "Estimate",
    "PairedDifference",
    "counts",
    "holm",
    "paired_mean_difference",
    "two_sided_p",
    "percentile_interval",
    "resample",
    "set_metric_estimates",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a bootstrap interval (``low``, ``high``) at ``level``; NaN bounds without replicates.
    ``p_value``: for a difference, the bootstrap's two-sided p-value of "no difference" (:func:`two_sided_p`, from
    the replicates that make the interval; NaN where none was computed)."""

    value: float
    low: float
    high: float
    level: float = 0.95
    p_value: float = math.nan

    def format(self, digits: int = 4) -> str:
        if math.isnan(self.low):
            return f"{self.value:.{digits}g}"
        return f"{self.value:.{digits}g} [{self.low:.{digits}g}, {self.high:.{digits}g}]"

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict[str, float]:
        out = {"value": self.value, "low": self.low, "high": self.high, "level": self.level}
        if not math.isnan(self.p_value):
            out["p_value"] = self.p_value
        return out


def two_sided_p(replicates: torch.Tensor) -> float:
    """The two-sided bootstrap p-value of 0 from a difference's replicates (already reflected for a basic interval):
    ``2 min(#{r <= 0} + 1, #{r >= 0} + 1) / (B + 1)``, at most 1. An interval at level ``1 - a`` built from the same
    replicates excludes 0 about when this is below ``a``; the smallest value ``B`` replicates can give is
    ``2 / (B + 1)``."""
    values = replicates.double().flatten()
    values = values[~values.isnan()]
    if values.numel() == 0:
        return math.nan
    below, above = int((values <= 0).sum()), int((values >= 0).sum())
    return min(1.0, 2 * (min(below, above) + 1) / (values.numel() + 1))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of ``p_values`` (in their order): the ``k``-th smallest becomes
    ``max over j <= k of min(1, (m - j + 1) p_(j))``. Rejecting where the adjusted value is below ``a`` keeps the
    chance of any false rejection among the ``m`` at most ``a``. NaN stays NaN and does not count in ``m``."""
    known = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    out = [math.nan] * len(p_values)
    running, m = 0.0, len(known)
    for rank, (p, i) in enumerate(known):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def resample(n: int, replicates: int, seed: int = 0) -> torch.Tensor:
    """``(replicates, n)`` unit indices drawn with replacement, from a generator seeded with ``seed``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if replicates < 0:
        raise ValueError(f"replicates must be >= 0, got {replicates}")
    return torch.randint(n, (replicates, n), generator=torch.Generator().manual_seed(seed))


def counts(indices: torch.Tensor, n: int) -> torch.Tensor:
    """How often each unit was drawn in each replicate: ``(replicates, n)`` float64."""
    out = torch.zeros(indices.shape[0], n, dtype=torch.float64)
    return out.scatter_add_(1, indices, torch.ones_like(indices, dtype=torch.float64))


def percentile_interval(replicates: torch.Tensor, level: float = 0.95) -> tuple[float, float]:
    """The ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the replicates (NaN when there are none)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    values = replicates.double().flatten()
    values = values[~values.isnan()]
    if values.numel() == 0:
        return float("nan"), float("nan")
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    low, high = torch.quantile(values, q).tolist()
    return low, high


@dataclass(frozen=True)
class PairedDifference:
    """Per-unit differences ``config - baseline``: their mean with an interval, and the share of units where the
    configuration is better (lower for distances, higher for scores; ties count half)."""

    mean: Estimate
    better_share: float
    n: int

    def as_dict(self) -> dict[str, object]:
        return {"mean": self.mean.as_dict(), "better_share": self.better_share, "n": self.n}


def paired_mean_difference(
    config: torch.Tensor,
    baseline: torch.Tensor,
    indices: torch.Tensor,
    level: float = 0.95,
    higher_is_better: bool = False,
) -> PairedDifference:
    """Mean of ``config[u] - baseline[u]`` over units ``u``, with a percentile interval from ``indices``."""
    if config.shape != baseline.shape or config.dim() != 1:
        raise ValueError(f"config and baseline must be 1-D of one length, got {config.shape} and {baseline.shape}")
    diff = config.double() - baseline.double()
    n = diff.numel()
    reps = counts(indices, n) @ diff / n if indices.numel() else diff.new_empty(0)
    low, high = percentile_interval(reps, level)
    sign = 1.0 if higher_is_better else -1.0
    better = ((sign * diff > 0).double() + 0.5 * (diff == 0).double()).mean().item()
    return PairedDifference(Estimate(diff.mean().item(), low, high, level, two_sided_p(reps)), better, n)


def basic_interval(point: float, replicates: torch.Tensor, level: float = 0.95) -> tuple[float, float]:
    """The basic (reverse percentile) interval ``[2 point - q_high, 2 point - q_low]``: it corrects, to first order,
    the bias that resampling gives a set-level distance (duplicated units look like a smaller, less varied set)."""
    low, high = percentile_interval(replicates, level)
    return 2 * point - high, 2 * point - low


def set_metric_estimates(
    values: torch.Tensor, baseline: torch.Tensor, level: float = 0.95
) -> tuple[Estimate, Estimate]:
    """A set-level metric and its difference from the baseline, with paired basic bootstrap intervals.

    ``values`` and ``baseline`` are ``[point, replicate_1, ..., replicate_B]``: the metric on all units, then on each
    replicate's units (the same replicate rows for both, which is what makes the difference paired).
    """
    if values.shape != baseline.shape or values.dim() != 1:
        raise ValueError(f"values and baseline must be 1-D of one length, got {values.shape} and {baseline.shape}")
    values, baseline = values.double(), baseline.double()
    point, diff = values[0].item(), (values[0] - baseline[0]).item()
    replicates = values[1:] - baseline[1:]
    return (
        Estimate(point, *basic_interval(point, values[1:], level), level),
        Estimate(diff, *basic_interval(diff, replicates, level), level, two_sided_p(2 * diff - replicates)),
    )
