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
(every step counts the same, as every step moves the sample once), and so is its orthogonal share. ``docs/eval.md``
relates this to GA-Eval's calibration.
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
from freeu.hooks import apply

from .runtime import Model, Request

__all__ = ["GuidanceStep", "GuidanceTrace", "decompose", "guided_change", "measure_guidance"]

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


@dataclass
class GuidanceStep:
    """One denoising step: its index and timestep, and the means over the batch's samples."""

    index: int
    timestep: int
    extra: float
    equivalent: float
    orthogonal_share: float
    relative_change: float
    per_sample_extra: list[float] = field(default_factory=list)


@dataclass
class GuidanceTrace:
    """A sampling run's steps and the run's summary (means over the steps)."""

    scale: float
    steps: list[GuidanceStep]
    config: dict[str, Any] | None = None

    @property
    def equivalent(self) -> float:
        """The run's equivalent guidance scale: the mean over steps of ``scale + extra``."""
        return self.scale + self.extra

    @property
    def extra(self) -> float:
        return sum(s.extra for s in self.steps) / len(self.steps) if self.steps else math.nan

    @property
    def orthogonal_share(self) -> float:
        return sum(s.orthogonal_share for s in self.steps) / len(self.steps) if self.steps else math.nan

    def as_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale, "equivalent": self.equivalent, "extra": self.extra,
            "orthogonal_share": self.orthogonal_share, "freeu": self.config,
            "steps": [asdict(s) for s in self.steps],
        }  # fmt: skip

    def csv(self) -> str:
        rows = ["step,timestep,extra,equivalent_scale,orthogonal_share,relative_change"]
        rows += [f"{s.index},{s.timestep},{s.extra:.6g},{s.equivalent:.6g},{s.orthogonal_share:.6g},"
                 f"{s.relative_change:.6g}" for s in self.steps]  # fmt: skip
        return "\n".join(rows) + "\n"


@contextlib.contextmanager
def _metered(unet: torch.nn.Module, scale: float, record: Callable[[GuidanceStep], None]) -> Iterator[None]:
    """While open, every call of ``unet`` on a classifier-free-guidance batch (the unconditional half first, as
    diffusers' pipelines build it) is repeated with FreeU off on the same inputs, and the step is recorded."""
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
        uncond_on, cond_on = on.chunk(2)
        uncond_off, cond_off = off.chunk(2)
        extra, share, size = guided_change(uncond_off, cond_off, uncond_on, cond_on, scale)
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep", kwargs.get("timesteps"))
        t = int(torch.as_tensor(timestep).flatten()[0]) if timestep is not None else -1
        record(GuidanceStep(state["index"], t, extra.mean().item(), scale + extra.mean().item(), share.mean().item(),
                            size.mean().item(), extra.tolist()))  # fmt: skip
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
) -> GuidanceTrace:
    """Sample ``seeds`` with FreeU (``config``) on and measure every step (:mod:`freeu.apps.guidance`).

    ``model`` must be a guided pipeline sampled with a guidance scale above 1 (diffusers runs no guidance at or below
    1). The U-Net runs twice per step; the samples are those of FreeU on.
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

    with _metered(model.unet, scale, record):
        model.sample(list(seeds), request, freeu=config, output="tensor")
    return GuidanceTrace(scale, steps, config.to_dict())
