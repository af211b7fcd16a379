"""The guidance meter: how much of FreeU's change to a guided model's prediction is stronger classifier-free guidance.

With classifier-free guidance at scale ``w`` a sampler follows ``eps = eps_u + w * d`` with ``d = eps_c - eps_u``
(the conditional minus the unconditional noise prediction). At each step of a sampling run with FreeU on, the meter
evaluates the U-Net on the same inputs with FreeU on and off, and splits FreeU's change of the guided prediction,
``delta = eps_on - eps_off``, into its component along the guidance direction of FreeU off, ``d_off``, and the rest:

- ``extra = <delta, d_off> / <d_off, d_off>`` (per sample, the least-squares fit ``delta ~ extra * d_off`` over every
  element of the sample): FreeU off at scale ``w + extra`` gives exactly ``eps_off + extra * d_off``, the part of
  FreeU's change that stronger guidance would make. ``w + extra`` is the step's **equivalent guidance scale**.
- ``orthogonal = delta - extra * d_off``, the part no guidance scale can make; its **share** is
  ``|orthogonal|^2 / |delta|^2`` (the parallel share is one minus it; 0 where FreeU changes nothing).

A step's numbers are the means over the samples of the batch; a run's equivalent scale is the mean over its steps
(every step counts the same, as every step moves the sample once), and so is its orthogonal share. A second
aggregate weights each step by the size of its guidance direction ``|d_off|`` (a step where guidance is large
counts more); both are reported, as they differ where FreeU's extra guidance changes over the trajectory.

**Per frequency band.** Guidance's low frequencies drive colour and saturation and its high ones detail (FDG, arXiv
2506.19713). :func:`band_split` splits a prediction's maps exactly into the symmetric square of low frequencies that
a ``cutoff`` gives (a fraction of the map, as a stage's ``cutoff``; 0, the default, is the 3 x 3 lowest, where
FreeU's ``s`` acts) and the rest; the two parts have disjoint frequencies, so they are orthogonal and add up to the
whole. :func:`guided_change_by_band` decomposes FreeU's change in each band
against the guidance direction in that band: ``extra_low`` is how much stronger FreeU makes guidance's low
frequencies, ``extra_high`` its high ones. ``docs/eval.md`` relates this to GA-Eval's calibration.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from freeu.config import FreeUConfig
from freeu.fourier import cutoff_threshold, low_band
from freeu.hooks import apply

from .runtime import Model, Request, timestep_number
from .schedule import GuidanceSchedule

__all__ = [
    "BANDS",
    "MATCH_MODES",
    "GuidanceReading",
    "GuidanceStep",
    "GuidanceTrace",
    "band_split",
    "decompose",
    "guided_change",
    "guided_change_by_band",
    "measure_guidance",
]

#: where a U-Net call gives its timestep by keyword (diffusers' U-Nets and transformers; Stable Cascade's ratio)
_TIMESTEP_KEYWORDS = ("timestep", "timesteps", "timestep_ratio")

#: The bands :func:`guided_change_by_band` reports, in order.
BANDS = ("low", "high")

logger = logging.getLogger(__name__)


def decompose(change: torch.Tensor, direction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(extra, orthogonal share)`` per sample (dim 0) of ``change`` against ``direction``, in float64:
    ``extra = <change, direction> / <direction, direction>`` and ``|change - extra * direction|^2 / |change|^2``
    (0 where ``change`` is 0; ``extra`` 0 where ``direction`` is 0)."""
    if change.shape != direction.shape or change.dim() < 2:
        raise ValueError(f"change and direction must have one shape (N, ...), got {change.shape} and {direction.shape}")
    a = change.detach().double().flatten(1)
    d = direction.detach().double().flatten(1)
    dd = (d * d).sum(dim=1)
    extra = torch.where(dd > 0, (a * d).sum(dim=1) / dd.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    rest = a - extra[:, None] * d
    aa = (a * a).sum(dim=1)
    share = torch.where(aa > 0, (rest * rest).sum(dim=1) / aa.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    return extra, share


def guided_change(
    uncond_off: torch.Tensor, cond_off: torch.Tensor, uncond_on: torch.Tensor, cond_on: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(extra, orthogonal share, relative size)`` per sample, from the four noise predictions at one step: FreeU's
    change of the guided prediction ``eps = u + scale * (c - u)`` decomposed against FreeU off's guidance direction
    (:func:`decompose`); the relative size is ``|delta| / |scale * d_off|``, FreeU's change against the guidance term
    itself."""
    off = uncond_off.double() + scale * (cond_off.double() - uncond_off.double())
    on = uncond_on.double() + scale * (cond_on.double() - uncond_on.double())
    direction = cond_off.double() - uncond_off.double()
    delta = on - off
    extra, share = decompose(delta, direction)
    size = delta.flatten(1).norm(dim=1) / (abs(scale) * direction.flatten(1).norm(dim=1)).clamp_min(1e-300)
    return extra, share, size


def band_split(x: torch.Tensor, cutoff: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(low, high)`` of each ``H x W`` map of ``x`` (``(..., H, W)``), in float64 on the CPU: the frequencies
    ``(k, m)`` with ``|k| <= rows`` and ``|m| <= cols`` (:func:`freeu.fourier.cutoff_threshold`'s half-widths of
    ``cutoff``, a fraction of the map; 0 gives the 3 x 3 lowest, the square FreeU's ``s`` damps) and the rest.
    ``low + high == x`` and the two are orthogonal: the square is symmetric, so each part is a real projection.
    (FreeU's own filter, with the authors' mask, is not: its square runs from ``-t`` to ``t - 1``, and taking the real
    part gives the frequencies at ``+t`` half their gain.)"""
    if x.dim() < 2:
        raise ValueError(f"band_split needs maps (..., H, W), got shape {tuple(x.shape)}")
    whole = x.detach().to("cpu", torch.float64)
    low = low_band(whole, cutoff_threshold(whole.shape[-2], whole.shape[-1], cutoff))
    return low, whole - low


def guided_change_by_band(
    uncond_off: torch.Tensor, cond_off: torch.Tensor, uncond_on: torch.Tensor, cond_on: torch.Tensor, scale: float,
    cutoff: float = 0.0,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
    """``{"low": (extra, orthogonal share), "high": (...)}`` per sample: :func:`guided_change`'s decomposition of
    FreeU's change of the guided prediction, in each frequency band of :func:`band_split` against the guidance
    direction in that band."""
    off = uncond_off.double() + scale * (cond_off.double() - uncond_off.double())
    on = uncond_on.double() + scale * (cond_on.double() - uncond_on.double())
    change = band_split(on - off, cutoff)
    direction = band_split(cond_off.double() - uncond_off.double(), cutoff)
    return {band: decompose(change[i], direction[i]) for i, band in enumerate(BANDS)}


@dataclass
class GuidanceStep:
    """One denoising step: its index and timestep, and the means over the batch's samples."""

    index: int
    #: the scheduler's timestep (a ratio in [0, 1] for Stable Cascade's; -1 where the call does not say)
    timestep: int | float
    extra: float
    equivalent: float
    orthogonal_share: float
    relative_change: float
    per_sample_extra: list[float] = field(default_factory=list)
    #: the mean size ``|d_off|`` of the step's guidance direction (the weight of the weighted aggregate)
    direction_norm: float = math.nan
    #: the extra guidance in the low and the high band (:func:`guided_change_by_band`), means over the batch
    extra_low: float = math.nan
    extra_high: float = math.nan


@dataclass
class GuidanceTrace:
    """A sampling run's steps and the run's summary (means over the steps)."""

    scale: float
    steps: list[GuidanceStep]
    config: dict[str, Any] | None = None
    #: the cutoff of the low band (:func:`band_split`)
    band_cutoff: float = 0.0

    @property
    def equivalent(self) -> float:
        """The run's equivalent guidance scale: the mean over steps of ``scale + extra``."""
        return self.scale + self.extra

    @property
    def extra(self) -> float:
        return sum(s.extra for s in self.steps) / len(self.steps) if self.steps else math.nan

    @property
    def equivalent_weighted(self) -> float:
        """The equivalent scale with each step weighted by the size of its guidance direction ``|d_off|``."""
        weights = [s.direction_norm for s in self.steps]
        if not self.steps or not all(math.isfinite(w) for w in weights) or sum(weights) <= 0:
            return math.nan
        return self.scale + sum(w * s.extra for w, s in zip(weights, self.steps, strict=True)) / sum(weights)

    def band_equivalent(self, band: str) -> float:
        """The equivalent scale of one frequency band (``"low"`` or ``"high"``), the mean over the steps."""
        if band not in BANDS:
            raise ValueError(f"band must be one of {BANDS}, got {band!r}")
        values = [getattr(s, f"extra_{band}") for s in self.steps]
        return self.scale + sum(values) / len(values) if values else math.nan

    @property
    def orthogonal_share(self) -> float:
        return sum(s.orthogonal_share for s in self.steps) / len(self.steps) if self.steps else math.nan

    def as_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale, "equivalent": self.equivalent, "extra": self.extra,
            "equivalent_weighted": self.equivalent_weighted, "orthogonal_share": self.orthogonal_share,
            "band_cutoff": self.band_cutoff, "equivalent_low": self.band_equivalent("low"),
            "equivalent_high": self.band_equivalent("high"), "freeu": self.config,
            "steps": [asdict(s) for s in self.steps],
        }  # fmt: skip

    def csv(self) -> str:
        columns = "step,timestep,extra,equivalent_scale,orthogonal_share,relative_change,direction_norm"
        rows = [f"{columns},extra_low,extra_high"]
        rows += [f"{s.index},{s.timestep},{s.extra:.6g},{s.equivalent:.6g},{s.orthogonal_share:.6g},"
                 f"{s.relative_change:.6g},{s.direction_norm:.6g},{s.extra_low:.6g},{s.extra_high:.6g}"
                 for s in self.steps]  # fmt: skip
        return "\n".join(rows) + "\n"


#: How a matched baseline or a compensation follows the meter: one scale over every prompt (``global``), one scale
#: per prompt (``prompt``), or per prompt and step (``steps``, FreeU's guidance curve).
MATCH_MODES = ("global", "prompt", "steps")


@dataclass(frozen=True)
class GuidanceReading:
    """What the meter read over one or more runs (means weighted by their units): the base ``scale``, the equivalent
    scale of every frequency and of the low band (the means over steps), and the same per step (``steps``,
    ``steps_low``); ``cutoff`` is the low band's. A matched baseline (:meth:`matched`) and compensated FreeU
    (:meth:`compensation`) are schedules made from it (:mod:`freeu.apps.schedule`)."""

    scale: float
    equivalent: float
    equivalent_low: float
    steps: tuple[float, ...]
    steps_low: tuple[float, ...]
    cutoff: float = 0.0

    @classmethod
    def of(cls, runs: Sequence[tuple[int, Any]]) -> GuidanceReading:
        """The reading of ``(units, run)`` pairs, a run being a :class:`GuidanceTrace` or its :meth:`~GuidanceTrace.
        as_dict`; every run must have the same scale, steps and cutoff."""
        traces = [(n, run.as_dict() if isinstance(run, GuidanceTrace) else run) for n, run in runs]
        if not traces:
            raise ValueError("a guidance reading needs at least one run")
        first = traces[0][1]
        lengths = {len(t["steps"]) for _, t in traces}
        if len(lengths) != 1 or any(t["scale"] != first["scale"] or t["band_cutoff"] != first["band_cutoff"]
                                    for _, t in traces):  # fmt: skip
            raise ValueError("the runs of a guidance reading must share their scale, steps and band cutoff")
        total = sum(n for n, _ in traces)

        def mean(values: Callable[[dict[str, Any]], float]) -> float:
            return sum(n * values(t) for n, t in traces) / total

        steps = tuple(mean(lambda t, i=i: t["steps"][i]["equivalent"]) for i in range(lengths.pop()))
        steps_low = tuple(mean(lambda t, i=i: t["scale"] + t["steps"][i]["extra_low"]) for i in range(len(steps)))
        return cls(float(first["scale"]), mean(lambda t: t["equivalent"]), mean(lambda t: t["equivalent_low"]),
                   steps, steps_low, float(first["band_cutoff"]))  # fmt: skip

    def matched(self, per_step: bool = False) -> GuidanceSchedule:
        """FreeU off's guidance that matches the reading: the equivalent scale (2 digits), or per step (4 digits)."""
        if per_step:
            return GuidanceSchedule(tuple(round(v, 4) for v in self.steps))
        return GuidanceSchedule((round(self.equivalent, 2),))

    def compensation(self, band: str, per_step: bool = False) -> GuidanceSchedule:
        """The guidance under which FreeU's extra guidance is taken back: the base scale minus the extra guidance
        (``scale - (equivalent - scale)``), on every frequency (``band="global"``) or on the low band only
        (``"low"``: the low band at ``scale - (equivalent_low - scale)``, the rest at the base scale); one value,
        or one per step (4 digits)."""
        if band not in ("global", "low"):
            raise ValueError(f"band must be 'global' or 'low', got {band!r}")
        values = (self.steps if band == "global" else self.steps_low) if per_step else (
            self.equivalent if band == "global" else self.equivalent_low,)  # fmt: skip
        taken = tuple(round(2 * self.scale - v, 4) for v in values)
        if band == "global":
            return GuidanceSchedule(taken)
        return GuidanceSchedule((self.scale,), low=taken, cutoff=self.cutoff)


@contextlib.contextmanager
def _metered(
    unet: torch.nn.Module,
    scale: float,
    record: Callable[[GuidanceStep], None],
    band_cutoff: float = 0.0,
    unconditional_first: bool = True,
) -> Iterator[None]:
    """While open, every call of ``unet`` on a classifier-free-guidance batch (the unconditional half first, as most
    of diffusers' pipelines build it; the conditional half first with ``unconditional_first=False``, as Stable
    Cascade's do) is repeated with FreeU off on the same inputs, and the step is recorded."""
    state = {"inside": False, "index": 0}

    def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        if state["inside"]:
            return
        on = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
        if on.shape[0] % 2:
            raise RuntimeError(f"the guidance meter needs classifier-free guidance (an unconditional and a "
                               f"conditional half in each U-Net batch), got a batch of {on.shape[0]}")  # fmt: skip
        state["inside"] = True
        try:
            with torch.no_grad(), apply(module, FreeUConfig(1.0, 1.0, 1.0, 1.0)):  # b = s = 1: no join is touched
                again = module(*args, **kwargs)
        finally:
            state["inside"] = False
        off = again[0] if isinstance(again, tuple) else getattr(again, "sample", again)
        order = slice(None) if unconditional_first else slice(None, None, -1)
        uncond_on, cond_on = on.chunk(2)[order]
        uncond_off, cond_off = off.chunk(2)[order]
        extra, share, size = guided_change(uncond_off, cond_off, uncond_on, cond_on, scale)
        bands = guided_change_by_band(uncond_off, cond_off, uncond_on, cond_on, scale, band_cutoff)
        norm = (cond_off.double() - uncond_off.double()).flatten(1).norm(dim=1).mean().item()
        timestep = args[1] if len(args) > 1 else next((kwargs[k] for k in _TIMESTEP_KEYWORDS if k in kwargs), None)
        t = timestep_number(timestep) if timestep is not None else -1
        record(GuidanceStep(state["index"], t, extra.mean().item(), scale + extra.mean().item(), share.mean().item(),
                            size.mean().item(), extra.tolist(), norm, bands["low"][0].mean().item(),
                            bands["high"][0].mean().item()))  # fmt: skip
        state["index"] += 1

    handle = unet.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def measure_guidance(
    model: Model,
    seeds: Sequence[int],
    request: Request,
    config: FreeUConfig,
    on_step: Callable[[int], None] | None = None,
    band_cutoff: float = 0.0,
) -> GuidanceTrace:
    """Sample ``seeds`` with FreeU (``config``) on and measure every step (:mod:`freeu.apps.guidance`).

    ``model`` must be a guided pipeline sampled with a guidance scale above 1 (diffusers runs no guidance at or below
    1). The U-Net runs twice per step; the samples are those of FreeU on. ``band_cutoff``: the low band's square
    as a fraction of the map (:func:`band_split`; 0 is FreeU's own square), for the per-band numbers.
    """
    if not model.guided:
        raise ValueError(f"the guidance meter needs a model sampled with classifier-free guidance; {model.name} "
                         "takes no guidance scale")  # fmt: skip
    request = model.check(request)
    scale = float(request.guidance if request.guidance is not None else 0.0)
    if not scale > 1:
        raise ValueError(f"guidance {scale:g}: the guidance meter needs a guidance scale above 1 (at or below 1 the "
                         "pipeline runs no unconditional branch)")  # fmt: skip
    steps: list[GuidanceStep] = []

    def record(step: GuidanceStep) -> None:
        steps.append(step)
        if on_step is not None:
            on_step(1)

    cutoff_threshold(2, 2, band_cutoff)  # a cutoff out of [0, 1] is refused before sampling
    with _metered(model.unet, scale, record, band_cutoff, model.unconditional_first):
        model.sample(list(seeds), request, freeu=config, output="tensor")
    return GuidanceTrace(scale, steps, config.to_dict(), band_cutoff)
