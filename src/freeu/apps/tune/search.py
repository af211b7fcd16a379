"""The search of ``freeu tune``, apart from any model: the space of settings, the candidates drawn from it, the
successive-halving schedule a budget allows, and the halving itself on any evaluation function.

Successive halving (Jamieson & Talwalkar 2016; the rungs of Li et al.'s Hyperband): every candidate is scored on a
few seeds, the better ``1 / eta`` go on to a rung with ``eta`` times the seeds, and so on until the last rung, which
scores the few that remain on all the search seeds; the best there wins. Because a rung's seeds include the previous
rung's, and images are keyed by settings and seed, a candidate's images are made once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from freeu.config import CONVENTIONS, VERSIONS, FreeUConfig

__all__ = [
    "DEFAULT_SPACE",
    "Dimension",
    "Rung",
    "SearchSpace",
    "draw_candidates",
    "parse_space",
    "plan_rungs",
    "rung_cost",
    "schedule_for_budget",
    "successive_halving",
]

#: Keys a search may vary: the factors, the version and convention, the step window.
KEYS = ("b1", "b2", "s1", "s2", "version", "convention", "start", "stop")
#: The default ranges: the published settings lie inside (b up to 1.6, s from 0.2), and so does FreeU off (1, 1, 1, 1).
DEFAULT_SPACE = "b1=1.0:1.6 b2=1.0:1.8 s1=0.2:1.0 s2=0.2:1.0"
#: Digits the drawn numbers keep: settings a person can read, write and type again.
DIGITS = 2


@dataclass(frozen=True)
class Dimension:
    """One key of the space: a range ``low..high`` (numbers) or a list of choices (one choice: a fixed value)."""

    key: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()

    @property
    def fixed(self) -> bool:
        return len(self.choices) == 1

    def value(self, u: float) -> Any:
        """The value at ``u`` in ``[0, 1)`` (a quasi-random coordinate)."""
        if self.choices:
            return self.choices[min(int(u * len(self.choices)), len(self.choices) - 1)]
        assert self.low is not None and self.high is not None
        return round(self.low + u * (self.high - self.low), DIGITS)

    def describe(self) -> str:
        if self.choices:
            return f"{self.key}={','.join(str(c) for c in self.choices)}"
        return f"{self.key}={self.low:g}:{self.high:g}"


@dataclass(frozen=True)
class SearchSpace:
    """The keys a search varies (in :data:`KEYS` order) and the settings it keeps fixed."""

    dimensions: tuple[Dimension, ...]

    @property
    def varied(self) -> tuple[Dimension, ...]:
        return tuple(d for d in self.dimensions if not d.fixed)

    def describe(self) -> str:
        return " ".join(d.describe() for d in self.dimensions)

    def settings(self, point: Sequence[float]) -> dict[str, Any]:
        """The settings at one point of the unit cube of the varied keys (fixed keys added)."""
        out = {d.key: d.choices[0] for d in self.dimensions if d.fixed}
        out.update({d.key: d.value(u) for d, u in zip(self.varied, point, strict=True)})
        return {k: out[k] for k in KEYS if k in out}


def _number(key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--space {key}: {text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"--space {key}: values must be finite and >= 0, got {text!r}")
    if key in ("start", "stop") and value > 1:
        raise ValueError(f"--space {key}: a fraction of the trajectory, in [0, 1], got {text!r}")
    return value


def parse_space(texts: Sequence[str] = (), version: int = 2, convention: str = "official") -> SearchSpace:
    """The space from ``--space`` entries on top of :data:`DEFAULT_SPACE` (each ``KEY=LOW:HIGH`` for a range,
    ``KEY=A,B`` for choices, ``KEY=VALUE`` to fix it); ``version`` and ``convention`` are fixed unless given.
    ``ValueError`` names the entry it refuses."""
    entries: dict[str, str] = {}
    for text in (DEFAULT_SPACE, f"version={version} convention={convention}", *texts):
        for token in text.replace(";", " ").split():
            key, sep, value = token.partition("=")
            if not sep or key not in KEYS or not value:
                raise ValueError(f"--space {token!r}: write KEY=LOW:HIGH, KEY=A,B or KEY=VALUE with KEY one of "
                                 f"{', '.join(KEYS)}")  # fmt: skip
            entries[key] = value
    dimensions = []
    for key in KEYS:
        if key not in entries:
            continue
        text = entries[key]
        if ":" in text:
            if key in ("version", "convention"):
                raise ValueError(f"--space {key}: choose among values (e.g. {key}=1,2), not a range")
            low_text, _, high_text = text.partition(":")
            low, high = _number(key, low_text), _number(key, high_text)
            if not low < high:
                raise ValueError(f"--space {key}={text}: the range needs LOW < HIGH")
            dimensions.append(Dimension(key, low, high))
            continue
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if key == "version":
            if any(p not in {str(v) for v in VERSIONS} for p in parts):
                raise ValueError(f"--space version: choose among {VERSIONS}, got {text!r}")
            choices: tuple[Any, ...] = tuple(dict.fromkeys(int(p) for p in parts))
        elif key == "convention":
            if any(p not in CONVENTIONS for p in parts):
                raise ValueError(f"--space convention: choose among {CONVENTIONS}, got {text!r}")
            choices = tuple(dict.fromkeys(parts))
        else:
            choices = tuple(dict.fromkeys(_number(key, p) for p in parts))
        dimensions.append(Dimension(key, choices=choices))
    space = SearchSpace(tuple(dimensions))
    if not space.varied:
        raise ValueError(f"--space: nothing left to search ({space.describe()}); give a range or choices")
    return space


def draw_candidates(
    space: SearchSpace, count: int, seed: int = 0, first: Sequence[Mapping[str, Any]] = ()
) -> list[dict[str, Any]]:
    """``count`` distinct settings: ``first`` (e.g. the model's own preset), then a scrambled Sobol sequence over the
    varied keys, rounded to :data:`DIGITS` digits. Settings that :class:`FreeUConfig` refuses (a window with
    ``start >= stop``) and repeats after rounding are skipped."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    engine = torch.quasirandom.SobolEngine(len(space.varied), scramble=True, seed=seed)
    out: list[dict[str, Any]] = []
    seen: set[tuple[tuple[str, Any], ...]] = set()

    def add(settings: Mapping[str, Any]) -> None:
        key = tuple(sorted(settings.items()))
        if key in seen or len(out) >= count:
            return
        try:
            FreeUConfig(**settings)
        except ValueError:
            return
        seen.add(key)
        out.append(dict(settings))

    for settings in first:
        add(settings)
    for _ in range(64):  # rounds of draws: a small space may run out of distinct points
        if len(out) >= count:
            break
        for point in engine.draw(max(count, 8)).double().tolist():
            add(space.settings(point))
    if len(out) < count:
        raise ValueError(f"the space {space.describe()} holds only {len(out)} distinct settings at {DIGITS} digits, "
                         f"fewer than the {count} candidates asked for: widen it or lower --budget")  # fmt: skip
    return out


@dataclass(frozen=True)
class Rung:
    """One rung: how many candidates it scores and on how many of the search seeds (the first ``seeds``)."""

    candidates: int
    seeds: int


def plan_rungs(candidates: int, seeds: int, eta: int = 2, min_seeds: int = 16) -> list[Rung]:
    """The rungs for ``candidates`` first candidates: each keeps ``1 / eta`` of its candidates (rounded up) for the
    next, until at most ``eta`` are left; the last rung scores those on all ``seeds``, each earlier one on ``1 / eta``
    of the next one's seeds, but at least ``min_seeds``. Where that floor gives rungs the same seeds, they are one
    rung (scoring again on the same seeds would tell nothing new): it keeps what the last of them would have kept."""
    if candidates < 2 or eta < 2 or seeds < 1 or min_seeds < 1:
        raise ValueError(f"need candidates >= 2, eta >= 2, seeds >= 1, min_seeds >= 1; got {candidates}, {eta}, "
                         f"{seeds}, {min_seeds}")  # fmt: skip
    counts = [candidates]
    while counts[-1] > eta:
        counts.append(math.ceil(counts[-1] / eta))
    last = len(counts) - 1
    floor = min(min_seeds, seeds)
    rungs: list[Rung] = []
    for r, n in enumerate(counts):
        rung = Rung(n, max(floor, seeds // eta ** (last - r)))
        if not rungs or rung.seeds > rungs[-1].seeds:
            rungs.append(rung)
    return rungs


#: The most candidates a search draws, whatever the budget.
MAX_CANDIDATES = 512


def schedule_for_budget(
    budget: int, seeds: int, eta: int = 2, min_seeds: int = 16, per_candidate: int = 1
) -> list[Rung]:
    """The rungs of the most candidates (up to :data:`MAX_CANDIDATES`) whose images fit in ``budget``
    (:func:`rung_cost`); ``ValueError`` where not even two candidates fit."""
    best = None
    for count in range(2, MAX_CANDIDATES + 1):
        rungs = plan_rungs(count, seeds, eta, min_seeds)
        if rung_cost(rungs, per_candidate) <= budget:
            best = rungs
    if best is None:
        smallest = rung_cost(plan_rungs(2, seeds, eta, min_seeds), per_candidate)
        raise ValueError(f"--budget {budget}: the smallest search (2 candidates and FreeU off on {seeds} seeds) makes "
                         f"{smallest} images; raise --budget or lower --seeds")  # fmt: skip
    return best


def rung_cost(rungs: Sequence[Rung], per_candidate: int = 1) -> int:
    """Images the rungs make, FreeU off included, counting each (setting, seed) once: a rung reuses the images of
    the rungs before it. ``per_candidate`` 2: each candidate also has its own baseline (FreeU off at its matched
    guidance)."""
    total, previous = 0, 0
    for rung in rungs:
        total += (per_candidate * rung.candidates + 1) * max(rung.seeds - previous, 0)
        previous = max(previous, rung.seeds)
    return total


def successive_halving(
    candidates: Sequence[str],
    rungs: Sequence[Rung],
    evaluate: Callable[[int, Sequence[str], int], Mapping[str, float]],
    lower_is_better: bool = True,
    done: Sequence[Mapping[str, float]] = (),
) -> tuple[str, list[dict[str, float]]]:
    """``(winner, scores of each rung)``: ``evaluate(rung index, names, seeds)`` scores candidates on the first
    ``seeds`` search seeds; each rung keeps its best (ties broken by the order of ``candidates``), as many as the
    next rung scores, and the best of the last rung wins. ``done`` holds the scores of rungs already finished (a
    resumed search): they are not evaluated again."""
    if len(candidates) != rungs[0].candidates:
        raise ValueError(f"the first rung scores {rungs[0].candidates} candidates, got {len(candidates)}")
    order = {name: i for i, name in enumerate(candidates)}
    alive = list(candidates)
    history: list[dict[str, float]] = []
    sign = 1.0 if lower_is_better else -1.0
    for index, rung in enumerate(rungs):
        if index < len(done):
            scores = {k: float(v) for k, v in done[index].items()}
            if set(scores) != set(alive):
                raise ValueError(f"rung {index} on record scored {sorted(scores)}, expected {sorted(alive)}")
        else:
            result = evaluate(index, alive, rung.seeds)
            scores = {name: float(result[name]) for name in alive}
        history.append(scores)
        ranked = sorted(alive, key=lambda n: (_rank_value(sign * scores[n]), order[n]))
        alive = ranked[: rungs[index + 1].candidates] if index + 1 < len(rungs) else ranked[:1]
    return alive[0], history


def _rank_value(value: float) -> float:
    return math.inf if math.isnan(value) else value
