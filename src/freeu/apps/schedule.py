"""Classifier-free guidance that departs from one scale: a scale per step, and a scale per frequency band.

A guided sampler at scale ``w`` follows ``eps = u + w d``, with ``u`` the unconditional prediction and
``d = c - u`` the guidance direction. A :class:`GuidanceSchedule` asks for
``eps = u + w_low(i) L d + w(i) (d - L d)`` at the ``i``-th U-Net call instead, where ``L`` keeps the lowest
frequencies of each map (:func:`freeu.fourier.low_band`, the symmetric square that a ``cutoff`` gives, as the
guidance meter's bands) and ``w_low = w`` where no low-band scale is given. Guidance per band is FDG's idea
(arXiv 2506.19713: guidance's low frequencies drive colour and saturation, its high ones detail).

:func:`scheduled_guidance` makes any sampler that combines a classifier-free-guidance batch as diffusers' pipelines
do (the unconditional half first, ``u + w (c - u)``, at a ``w`` above 1) follow a schedule: a forward hook on the
U-Net replaces the conditional half of each output by ``c' = u + (w(i) / w) d + ((w_low(i) - w(i)) / w) L d``, so
that the sampler's own ``u + w (c' - u)`` is the scheduled prediction. Nothing else of the sampler changes. Uses:
FreeU off following FreeU's guidance curve step by step (a matched baseline), and compensated FreeU: FreeU with the
extra guidance the meter measured taken back, on every frequency or on the low band only
(:mod:`freeu.apps.guidance`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from freeu.fourier import cutoff_threshold, low_band

__all__ = ["GuidanceSchedule", "scheduled_guidance"]


def _scales(name: str, values: Any) -> tuple[float, ...]:
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = (values,)
    if not isinstance(values, Sequence) or isinstance(values, str) or not values:
        raise ValueError(f"GuidanceSchedule: {name} must be a number or a non-empty list of numbers, got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"GuidanceSchedule: {name} must hold finite numbers, got {v!r}")
        out.append(float(v))
    return tuple(out)


@dataclass(frozen=True)
class GuidanceSchedule:
    """The guidance scale at each U-Net call (``scale``: one value for every call, or one per call) and, optionally,
    another for the low frequencies (``low``, likewise; ``None``: the same as ``scale``); ``cutoff`` is the low
    band's square as a fraction of the map (:func:`freeu.fourier.cutoff_threshold`: 0 is the 3 x 3 lowest)."""

    scale: tuple[float, ...]
    low: tuple[float, ...] | None = None
    cutoff: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", _scales("scale", self.scale))
        if self.low is not None:
            object.__setattr__(self, "low", _scales("low", self.low))
            if len(self.low) > 1 and len(self.scale) > 1 and len(self.low) != len(self.scale):
                raise ValueError(f"GuidanceSchedule: scale has {len(self.scale)} steps and low {len(self.low)}; give "
                                 "one value or the same number of steps")  # fmt: skip
        cutoff_threshold(2, 2, self.cutoff)

    @property
    def steps(self) -> int | None:
        """How many U-Net calls the schedule spells out (``None``: one value for every call)."""
        lengths = [len(v) for v in (self.scale, self.low) if v is not None and len(v) > 1]
        return lengths[0] if lengths else None

    def at(self, index: int) -> tuple[float, float]:
        """``(low-band scale, scale of the rest)`` at the ``index``-th U-Net call."""
        steps = self.steps
        if steps is not None and index >= steps:
            raise ValueError(f"the guidance schedule has {steps} steps, and the sampler called the U-Net a "
                             f"{index + 1}th time: sample with as many steps as the schedule was made for")  # fmt: skip
        high = self.scale[index if len(self.scale) > 1 else 0]
        low = high if self.low is None else self.low[index if len(self.low) > 1 else 0]
        return low, high

    def as_dict(self) -> dict[str, Any]:
        return {"scale": list(self.scale), "low": None if self.low is None else list(self.low), "cutoff": self.cutoff}

    def describe(self) -> str:
        """In words: ``guidance 1.57``, ``guidance 2.31 .. 1.87 over 25 steps``, ``low band 1.4, the rest 2``."""

        def text(values: tuple[float, ...]) -> str:
            if len(values) == 1:
                return f"{values[0]:.3g}"
            return f"{min(values):.3g} .. {max(values):.3g} over {len(values)} steps"

        if self.low is None:
            return f"guidance {text(self.scale)}"
        return f"guidance {text(self.low)} on the low band (cutoff {self.cutoff:g}), {text(self.scale)} on the rest"


@contextlib.contextmanager
def scheduled_guidance(
    unet: torch.nn.Module, base: float, schedule: GuidanceSchedule, *, unconditional_first: bool = True
) -> Iterator[None]:
    """While open, a sampler that runs ``unet`` on classifier-free-guidance batches (the unconditional half first,
    or with ``unconditional_first=False`` the conditional half first, as Stable Cascade's pipelines build them) and
    combines them at scale ``base`` (above 1) follows ``schedule`` (see the module docstring). The calls are counted
    from the first one after entering."""
    if not (isinstance(base, (int, float)) and base > 1):
        raise ValueError(f"a guidance schedule needs the sampler's own guidance scale above 1 (where it runs the "
                         f"unconditional branch), got {base!r}")  # fmt: skip
    count = [0]

    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        sample = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
        if sample.shape[0] % 2:
            raise RuntimeError(f"a guidance schedule needs classifier-free guidance batches (an unconditional and a "
                               f"conditional half), got a batch of {sample.shape[0]}")  # fmt: skip
        low, high = schedule.at(count[0])
        count[0] += 1
        uncond, cond = sample.chunk(2) if unconditional_first else sample.chunk(2)[::-1]
        acc = torch.float64 if sample.dtype == torch.float64 else torch.float32
        u, d = uncond.to(acc), cond.to(acc) - uncond.to(acc)
        shaped = u + (high / base) * d
        if low != high:
            rows, cols = cutoff_threshold(d.shape[-2], d.shape[-1], schedule.cutoff)
            shaped = shaped + ((low - high) / base) * low_band(d, (rows, cols))
        cond.copy_(shaped.to(sample.dtype))  # in place: the output object the sampler reads stays the same

    handle = unet.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
