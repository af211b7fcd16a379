"""``--guidance-baselines auto``: FreeU off at each FreeU configuration's equivalent guidance, as the guidance meter
(:func:`freeu.apps.guidance.measure_guidance`) measures it, so that a FreeU gain can be told from a guidance gain;
and ``compensate=``: FreeU with that extra guidance taken back. Matched one scale for every prompt, one per prompt
(as GA-Eval does), or per prompt and step (``--guidance-match``). The measurements are kept in the report folder
(``guidance.json``, ``guidance/NAME.csv``, ``guidance/NAME.png``) and reused by a rerun with the same settings."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..files import read_json
from ..guidance import MATCH_MODES, GuidanceReading
from ..runtime import Model, Request
from ..schedule import GuidanceSchedule
from .configs import BASELINE, EvalConfig
from .generation import Unit, slug
from .processes import progress_bar

if TYPE_CHECKING:
    from .request import EvalRequest

__all__ = ["GuidanceMatch", "match_mode", "measure_matched_guidance", "meter_units"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GuidanceMatch:
    """The guidance meter's reading of one FreeU configuration: its settings (``freeu``), the run's guidance scale
    (``scale``), the scale it acts like (``equivalent``: the units-weighted mean over the measured prompts of each
    run's unweighted mean over steps; ``equivalent_weighted`` weights the steps by the size of the guidance direction;
    ``equivalent_low`` and ``equivalent_high`` per frequency band), the share of its change orthogonal to the
    guidance direction, and how it is matched (``mode``, :data:`~freeu.apps.guidance.MATCH_MODES`): its baseline,
    FreeU off named ``baseline`` at ``baseline_guidance`` (the equivalent rounded to 2 digits) in ``global`` mode,
    at each prompt's own equivalent in ``prompt`` mode, following each prompt's guidance curve in ``steps`` mode;
    or, for a configuration with ``compensate``, no baseline (``None``): the configuration itself samples with the
    extra guidance taken back. ``readings``: each measured prompt's :class:`~freeu.apps.guidance.GuidanceReading`."""

    freeu: Mapping[str, Any] | None
    scale: float
    equivalent: float
    orthogonal_share: float
    baseline: str | None
    baseline_guidance: float
    equivalent_weighted: float = math.nan
    equivalent_low: float = math.nan
    equivalent_high: float = math.nan
    mode: str = "global"
    compensate: str | None = None
    readings: tuple[tuple[str | None, GuidanceReading], ...] = ()
    overall: GuidanceReading | None = None

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any], name: str, mode: str = "global",
                   compensate: str | None = None) -> GuidanceMatch:  # fmt: skip
        """Configuration ``name``'s entry of ``guidance.json``, matched in ``mode``."""
        runs = list(zip(entry["prompts"], entry["counts"], entry["runs"], strict=True))
        total = sum(n for _, n, _ in runs)

        def mean(key: str) -> float:
            return sum(n * run.get(key, math.nan) for _, n, run in runs) / total

        readings = tuple((prompt, GuidanceReading.of([(n, run)])) for prompt, n, run in runs)
        overall = GuidanceReading.of([(n, run) for _, n, run in runs])
        return cls(entry["freeu"], entry["scale"], entry["equivalent"], entry["orthogonal_share"],
                   None if compensate else f"{BASELINE}@{name}", round(entry["equivalent"], 2),
                   mean("equivalent_weighted"), mean("equivalent_low"), mean("equivalent_high"), mode, compensate,
                   readings, overall)  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        """The entry of ``metrics.json``'s ``guidance_meter`` (``guidance.json``'s without per-step runs and key)."""
        return {
            "freeu": self.freeu, "scale": self.scale, "equivalent": self.equivalent,
            "equivalent_weighted": self.equivalent_weighted, "equivalent_low": self.equivalent_low,
            "equivalent_high": self.equivalent_high, "orthogonal_share": self.orthogonal_share, "mode": self.mode,
            "compensate": self.compensate, "baseline": self.baseline, "baseline_guidance": self.baseline_guidance,
            "per_prompt": [{"prompt": p, "equivalent": r.equivalent, "equivalent_low": r.equivalent_low}
                           for p, r in self.readings],
        }  # fmt: skip

    def _schedules(self, make: Callable[[GuidanceReading, bool], GuidanceSchedule]) -> tuple[Any, ...]:
        if self.mode == "global":
            assert self.overall is not None
            return ((None, make(self.overall, False)),)
        return tuple((prompt, make(reading, self.mode == "steps")) for prompt, reading in self.readings)

    def baseline_config(self) -> EvalConfig:
        """The matched baseline as a configuration: FreeU off at ``baseline_guidance`` (``global``), or following
        each prompt's equivalent guidance (``prompt``) or guidance curve (``steps``)."""
        if self.baseline is None:
            raise ValueError("a compensated configuration has no matched baseline")
        if self.mode == "global":
            return EvalConfig(self.baseline, None, float(self.baseline_guidance))
        return EvalConfig(self.baseline, None, schedules=self._schedules(lambda r, steps: r.matched(steps)))

    def compensated(self, config: EvalConfig) -> EvalConfig:
        """``config`` sampled with the extra guidance taken back (its ``compensate`` band), as ``mode`` says."""
        band = config.compensate
        if band is None:
            return config
        return replace(config, schedules=self._schedules(lambda r, steps: r.compensation(band, steps)))


def meter_units(units: Sequence[Unit], count: int) -> list[Unit]:
    """The ``count`` units the meter samples: the first seed of every prompt, then the second, ... (it sees every
    prompt before a second seed of one)."""
    return sorted(units, key=lambda u: (u.seed, u.prompt_index or 0))[:count]


def match_mode(request: EvalRequest, units: Sequence[Unit]) -> str:
    """The matching mode of ``--guidance-match``: ``auto`` is ``prompt`` where the meter's units hold every prompt,
    else ``global``; ``prompt`` and ``steps`` need that too (``ValueError`` saying how many units)."""
    prompts = list(dict.fromkeys(u.prompt for u in units))
    covered = {u.prompt for u in meter_units(units, request.guidance_units)}
    whole = len(covered) == len(prompts)
    if request.guidance_match == "auto":
        return "prompt" if whole else "global"
    if request.guidance_match != "global" and not whole:
        raise ValueError(f"--guidance-match {request.guidance_match}: the guidance meter's {request.guidance_units} "
                         f"units (--guidance-units) hold {len(covered)} of the {len(prompts)} prompts; give "
                         f"--guidance-units {len(prompts)} or more (it takes the first seed of every prompt first), "
                         "or --guidance-match global")  # fmt: skip
    return request.guidance_match


def measure_matched_guidance(
    request: EvalRequest, model: Model, sampling: Request, configs: Sequence[EvalConfig], units: Sequence[Unit],
    state: Any, notes: Callable[[str], None],
) -> dict[str, GuidanceMatch]:  # fmt: skip
    """Each measured FreeU configuration's matched guidance, by name: every FreeU configuration with
    ``request.matched_guidance`` (``--guidance-baselines auto``), and every one with ``compensate`` (the meter on
    ``request.guidance_units`` units, each prompt's seeds in one batch; ``sampling``: the run's steps, guidance,
    size, negative prompt). The main process measures and writes ``guidance.json`` (and per-step CSVs and figures
    under ``guidance/``); every process reads it back, so all sample the same configurations. Settings measured
    before with the same model, steps, guidance and units are not measured again (under any name). ``notes`` gets
    one line per configuration (main process)."""
    path = Path(request.out) / "guidance.json"
    measured = [c for c in configs if c.freeu is not None and c.guidance is None
                and (request.matched_guidance or c.compensate is not None)]  # fmt: skip
    if not measured:
        raise ValueError("--guidance-baselines auto: no FreeU configuration to measure (give --config ...)")
    mode = match_mode(request, units)
    shown = meter_units(units, request.guidance_units)
    common = {
        "model": model.fingerprint, "steps": sampling.steps, "guidance": sampling.guidance,
        "size": list(sampling.size), "negative_prompt": sampling.negative_prompt,
        "units": [[u.seed, u.prompt] for u in shown],
    }  # fmt: skip
    if state.is_main_process:
        _measure_missing(path, measured, common, model, sampling, shown, request.progress)
    state.wait_for_everyone()
    data = _record(path)
    matches = {c.name: GuidanceMatch.from_entry(data["configs"][c.name], c.name, mode, c.compensate)
               for c in measured}  # fmt: skip
    for name, match in matches.items():
        if not math.isfinite(match.equivalent) or match.baseline_guidance < 0:
            raise ValueError(f"--guidance-baselines auto: {name}'s equivalent guidance is {match.equivalent}, "
                             "not a scale FreeU off can sample at")  # fmt: skip
        if state.is_main_process:
            what = (f"adds {match.baseline} ({_MODE_WORDS[mode]})" if match.baseline is not None
                    else f"samples with it taken back ({'low band' if match.compensate == 'low' else 'every band'}, "
                    f"{_MODE_WORDS[mode]})")  # fmt: skip
            notes(f"guidance meter: {name} acts like guidance {match.equivalent:.3f} (the run's {sampling.guidance:g}"
                  f"; low band {match.equivalent_low:.3f}), {match.orthogonal_share:.0%} of its change orthogonal; "
                  f"{what}")  # fmt: skip
    return matches


#: The matching modes in words (``--guidance-match``).
_MODE_WORDS = {"global": "one scale for every prompt", "prompt": "each prompt's own scale",
               "steps": "each prompt's guidance curve, step by step"}  # fmt: skip
assert set(_MODE_WORDS) == set(MATCH_MODES)


def _record(path: Path) -> dict[str, Any]:
    """``guidance.json`` as read back: a table with a ``configs`` table, or a ``ValueError`` saying what to do."""
    data = read_json(path, "guidance record")
    if not isinstance(data, dict) or not isinstance(data.get("configs"), dict):
        raise ValueError(f"{path}: not a guidance record (a table with a 'configs' table); move it away to measure "
                         "again")  # fmt: skip
    return data


def _valid_entry(entry: Any, key: str) -> bool:
    """Whether an entry was measured with these settings and is whole (a damaged or hand-edited one is measured
    again)."""
    if not isinstance(entry, dict) or entry.get("key") != key or not isinstance(entry.get("freeu"), dict):
        return False
    numbers = [entry.get(k) for k in ("scale", "equivalent", "orthogonal_share")]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
        return False
    runs, prompts, counts = entry.get("runs"), entry.get("prompts"), entry.get("counts")
    if not (isinstance(runs, list) and isinstance(prompts, list) and isinstance(counts, list)) or not runs:
        return False
    if not len(runs) == len(prompts) == len(counts) or not all(isinstance(n, int) and n > 0 for n in counts):
        return False
    try:  # what reading it back computes: every run's fields, and one scale, step count and cutoff for all
        GuidanceReading.of(list(zip(counts, runs, strict=True)))
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        return False
    return True


def _key(common: Mapping[str, Any], config: EvalConfig) -> str:
    """What decides a measurement: the model, steps, guidance, size, negative prompt, units and FreeU settings."""
    text = json.dumps({**common, "freeu": config.settings()}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _measure_missing(
    path: Path, measured: Sequence[EvalConfig], common: Mapping[str, Any], model: Model, sampling: Request,
    shown: Sequence[Unit], progress: bool,
) -> None:  # fmt: skip
    """Measure the configurations ``guidance.json`` lacks (or holds for other settings), writing it after each."""
    from ..guidance import measure_guidance

    out = path.parent
    data = _record(path) if path.exists() or path.is_symlink() else {"configs": {}}
    data["units"] = [u.stem for u in shown]
    entries = data["configs"]
    todo, copied = [], False
    for config in measured:
        key = _key(common, config)
        if _valid_entry(entries.get(config.name), key):
            continue
        same = [e for e in entries.values() if _valid_entry(e, key)]  # these settings under another name
        if same:
            entries[config.name], copied = same[0], True
        else:
            todo.append(config)
    with progress_bar(len(todo) * len(shown) * sampling.steps, "guidance meter", progress) as bar:
        for config in todo:
            traces = []
            for prompt in dict.fromkeys(u.prompt for u in shown):
                group = [u.seed for u in shown if u.prompt == prompt]
                count = len(group)
                trace = measure_guidance(model, group, replace(sampling, prompt=prompt), config.freeu,
                                         on_step=lambda n, k=count: bar.update(k))  # fmt: skip
                traces.append((len(group), trace))
            total = sum(n for n, _ in traces)
            entries[config.name] = {
                "key": _key(common, config), "freeu": config.settings(), "scale": sampling.guidance,
                "equivalent": sum(n * t.equivalent for n, t in traces) / total,
                "orthogonal_share": sum(n * t.orthogonal_share for n, t in traces) / total,
                "prompts": list(dict.fromkeys(u.prompt for u in shown)), "counts": [n for n, _ in traces],
                "runs": [t.as_dict() for _, t in traces],
            }  # fmt: skip
            _write_meter_files(out, config.name, traces, model.name)
            _save(path, data)
    if copied and not todo:  # entries copied from the same settings under another name, nothing measured
        _save(path, data)


def _save(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _write_meter_files(out: Path, name: str, traces: list[tuple[int, Any]], model: str) -> None:
    """``guidance/NAME.csv`` (every run's steps) and ``guidance/NAME.png`` (the first run's figure)."""
    folder = out / "guidance"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (_, trace) in enumerate(traces):
        lines = trace.csv().splitlines()
        rows += (["run," + lines[0]] if i == 0 else []) + [f"{i},{line}" for line in lines[1:]]
    (folder / f"{slug(name)}.csv").write_text("\n".join(rows) + "\n")
    from ..plotting import plot_guidance

    try:
        plot_guidance(traces[0][1].as_dict(), folder, model, filename=f"{slug(name)}.png")
    except ImportError:  # matplotlib, imported when the figure is drawn
        logger.warning("matplotlib is missing: no guidance figure (pip install 'freeu[eval]')")
