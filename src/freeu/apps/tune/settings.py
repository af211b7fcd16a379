"""What one ``freeu tune`` run is asked to do (:class:`TuneSettings`), and its objectives (:data:`METRICS`): typed
values built once, by the command line from its flags or by a caller, and never changed afterwards."""

from __future__ import annotations

import datetime
import json
import math
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..evaluate.configs import COMPENSATIONS
from ..evaluate.request import DTYPES, MetricOptions, StatisticsOptions
from ..evaluate.results import ConfigResult
from ..runtime import DEMO, Size

__all__ = ["METRICS", "TuneSettings", "metric_value"]

#: The objectives: metric -> (where ``freeu eval`` reports it, lower is better): ``set_level`` values are
#: :attr:`ConfigResult.sets`, ``per_image_mean`` values :attr:`ConfigResult.means`.
METRICS: dict[str, tuple[str, bool]] = {
    "swd": ("set_level", True),
    "rapsd": ("set_level", True),
    "fid": ("set_level", True),
    "kid": ("set_level", True),
    "clip": ("per_image_mean", False),
}


def metric_value(result: ConfigResult, metric: str) -> float:
    """A configuration's value of an objective (NaN where the evaluation did not compute it)."""
    where, _ = METRICS[metric]
    if where == "set_level":
        return result.sets[metric][0].value if metric in result.sets else math.nan
    return result.means[metric].value if metric in result.means else math.nan


def _at_least(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class TuneSettings:
    """One tune: each field is the ``freeu tune`` flag of the same name, with the same default (``prompts`` are
    those of ``--prompt`` and ``--prompts FILE``; ``matched_guidance`` is the opposite of
    ``--no-matched-guidance``; ``compensate`` is ``--compensate`` (``None``, ``"global"`` or ``"low"``);
    ``guidance_baselines`` and ``auto_guidance_baselines`` are ``--guidance-baselines``
    without and with ``auto``; ``metrics`` and ``statistics`` the flags shared with ``freeu eval``; ``argv`` the
    command line, from ``tune`` on, that the report records (``None``: this process's)). Checked when built, with
    errors that name the field and what it allows."""

    model: str = DEMO
    steps: int = 25
    prompts: tuple[str, ...] = ()
    negative_prompt: str | None = None
    guidance: float | None = None
    size: Size | None = None
    dtype: str = "float32"
    device: str | None = None
    batch_size: int = 64
    seeds: int = 64
    first_seed: int = 0
    budget: int = 704
    eta: int = 2
    min_seeds: int = 16
    space: tuple[str, ...] = ()
    version: int = 2
    convention: str = "official"
    search_seed: int = 0
    metric: str = "swd"
    matched_guidance: bool = True
    guidance_units: int | None = None
    compensate: str | None = None
    confirm_seeds: int = 256
    confirm_first_seed: int | None = None
    guidance_baselines: tuple[float, ...] = ()
    auto_guidance_baselines: bool = False
    metrics: MetricOptions = field(default_factory=MetricOptions)
    statistics: StatisticsOptions = field(default_factory=StatisticsOptions)
    out: Path = Path("freeu-tune")
    name: str | None = None
    progress: bool = True
    argv: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("prompts", "space", "guidance_baselines"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, Sequence):
                raise ValueError(f"{name} must be a sequence, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        for name, minimum in (("steps", 1), ("batch_size", 1), ("seeds", 1), ("first_seed", 0), ("budget", 1),
                              ("min_seeds", 1), ("confirm_seeds", 1)):  # fmt: skip
            _at_least(name, getattr(self, name), minimum)
        if self.guidance_units is not None:
            _at_least("guidance_units", self.guidance_units, 1)
        if self.confirm_first_seed is not None:
            _at_least("confirm_first_seed", self.confirm_first_seed, 0)
        choices: tuple[tuple[str, Sequence[Any]], ...] = (
            ("metric", tuple(METRICS)), ("eta", (2, 3, 4)), ("version", (1, 2)),
            ("convention", ("official", "diffusers")), ("dtype", DTYPES), ("compensate", (None, *COMPENSATIONS)),
        )  # fmt: skip
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}, got {getattr(self, name)!r}")
        if not isinstance(self.metrics, MetricOptions) or not isinstance(self.statistics, StatisticsOptions):
            raise ValueError("metrics must be MetricOptions and statistics StatisticsOptions")
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "guidance_baselines", tuple(float(v) for v in self.guidance_baselines))

    @property
    def confirm_start(self) -> int:
        """The first confirmation seed: ``confirm_first_seed``, by default right after the search seeds."""
        return self.first_seed + self.seeds if self.confirm_first_seed is None else self.confirm_first_seed

    def check_seeds(self) -> None:
        """``ValueError`` where the confirmation seeds overlap the search seeds or pass 2**63."""
        search = range(self.first_seed, self.first_seed + self.seeds)
        confirm = range(self.confirm_start, self.confirm_start + self.confirm_seeds)
        if max(search.start, confirm.start) < min(search.stop, confirm.stop):
            raise ValueError(f"--confirm-first-seed {self.confirm_start}: the confirmation seeds {confirm.start}.."
                             f"{confirm.stop - 1} overlap the search seeds {search.start}..{search.stop - 1}; they "
                             "must be disjoint")  # fmt: skip
        if confirm.stop > 2**63:
            raise ValueError("--confirm-first-seed/--confirm-seeds: the seeds must stay below 2**63")

    def fingerprint(self, space: str, prompts: Sequence[str], matched: bool) -> dict[str, Any]:
        """What decides the search's result (``tune.json`` keeps it): a rerun into the same folder must have the same.
        The same keys and values as every earlier version wrote, so that their folders resume."""
        metrics = self.metrics
        out = {
            "model": self.model, "steps": self.steps, "negative_prompt": self.negative_prompt,
            "guidance": self.guidance, "size": self.size, "dtype": self.dtype, "seeds": self.seeds,
            "first_seed": self.first_seed, "budget": self.budget, "eta": self.eta, "min_seeds": self.min_seeds,
            "search_seed": self.search_seed, "metric": self.metric, "reference": metrics.reference,
            "reference_count": metrics.reference_count, "eval_size": metrics.eval_size,
            "swd_levels": metrics.swd_levels, "swd_patches": metrics.swd_patches,
            "swd_projections": metrics.swd_projections,
        }  # fmt: skip
        out.update(space=space, prompts=list(prompts), format=1, matched=matched)
        if matched or self.compensate:
            out["guidance_units"] = self.guidance_units
        if self.compensate:  # only where set: folders of earlier versions keep resuming
            out["compensate"] = self.compensate
        return json.loads(json.dumps(out))

    def command_line(self) -> str:
        """The command as a user would type it again, with a time stamp."""
        words = ["freeu", *(self.argv if self.argv is not None else sys.argv[1:])]
        stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        return f"{shlex.join(words)}  # {stamp}"
