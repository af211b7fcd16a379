"""``--guidance-baselines auto``: FreeU off at each FreeU configuration's equivalent guidance scale, as the guidance
meter (:func:`freeu.apps.guidance.measure_guidance`) measures it, so that a FreeU gain can be told from a guidance
gain. The measurements are kept in the report folder (``guidance.json``, ``guidance/NAME.csv``,
``guidance/NAME.png``) and reused by a rerun with the same settings."""

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
from ..runtime import Model, Request
from .configs import BASELINE, EvalConfig
from .generation import Unit, slug
from .processes import progress_bar

if TYPE_CHECKING:
    from .request import EvalRequest

__all__ = ["GuidanceMatch", "measure_matched_guidance", "meter_units"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GuidanceMatch:
    """The guidance meter's reading of one FreeU configuration: its settings (``freeu``), the run's guidance scale
    (``scale``), the scale it acts like (``equivalent``), the share of its change orthogonal to the guidance
    direction, and its matched baseline: FreeU off named ``baseline`` at ``baseline_guidance`` (the equivalent
    scale rounded to 2 digits)."""

    freeu: Mapping[str, Any] | None
    scale: float
    equivalent: float
    orthogonal_share: float
    baseline: str
    baseline_guidance: float

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any]) -> GuidanceMatch:
        """One configuration's entry of ``guidance.json``."""
        return cls(entry["freeu"], entry["scale"], entry["equivalent"], entry["orthogonal_share"], entry["baseline"],
                   entry["baseline_guidance"])  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        """The entry of ``metrics.json``'s ``guidance_meter`` (``guidance.json``'s without per-step runs and key)."""
        return {
            "freeu": self.freeu, "scale": self.scale, "equivalent": self.equivalent,
            "orthogonal_share": self.orthogonal_share, "baseline": self.baseline,
            "baseline_guidance": self.baseline_guidance,
        }  # fmt: skip

    def baseline_config(self) -> EvalConfig:
        """The matched baseline as a configuration: FreeU off at ``baseline_guidance``."""
        return EvalConfig(self.baseline, None, float(self.baseline_guidance))


def meter_units(units: Sequence[Unit], count: int) -> list[Unit]:
    """The ``count`` units the meter samples: the first seed of every prompt, then the second, ... (it sees every
    prompt before a second seed of one)."""
    return sorted(units, key=lambda u: (u.seed, u.prompt_index or 0))[:count]


def measure_matched_guidance(
    request: EvalRequest, model: Model, sampling: Request, configs: Sequence[EvalConfig], units: Sequence[Unit],
    state: Any, notes: Callable[[str], None],
) -> dict[str, GuidanceMatch]:  # fmt: skip
    """Each FreeU configuration's matched guidance, by name (the meter on ``request.guidance_units`` units, each
    prompt's seeds in one batch; ``sampling``: the run's steps, guidance, size, negative prompt). The main process
    measures and writes ``guidance.json`` (and per-step CSVs and figures under ``guidance/``); every process reads
    it back, so all sample the same configurations. A configuration measured before with the same settings, model,
    steps, guidance and units is not measured again. ``notes`` gets one line per configuration (main process)."""
    path = Path(request.out) / "guidance.json"
    measured = [c for c in configs if c.freeu is not None and c.guidance is None]
    if not measured:
        raise ValueError("--guidance-baselines auto: no FreeU configuration to measure (give --config ...)")
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
    matches = {c.name: GuidanceMatch.from_entry(data["configs"][c.name]) for c in measured}
    for name, match in matches.items():
        if not math.isfinite(match.equivalent) or match.baseline_guidance < 0:
            raise ValueError(f"--guidance-baselines auto: {name}'s equivalent guidance is {match.equivalent}, "
                             "not a scale FreeU off can sample at")  # fmt: skip
        if state.is_main_process:
            notes(f"guidance meter: {name} acts like guidance {match.equivalent:.3f} (the run's {sampling.guidance:g}"
                  f"), {match.orthogonal_share:.0%} of its change orthogonal; adds {match.baseline} at "
                  f"{match.baseline_guidance:g}")  # fmt: skip
    return matches


def _record(path: Path) -> dict[str, Any]:
    """``guidance.json`` as read back: a table with a ``configs`` table, or a ``ValueError`` saying what to do."""
    data = read_json(path, "guidance record")
    if not isinstance(data, dict) or not isinstance(data.get("configs"), dict):
        raise ValueError(f"{path}: not a guidance record (a table with a 'configs' table); move it away to measure "
                         "again")  # fmt: skip
    return data


def _valid_entry(entry: Any, key: str, name: str) -> bool:
    """Whether a configuration's entry was measured with these settings and is whole (a damaged or hand-edited one
    is measured again)."""
    if not isinstance(entry, dict) or entry.get("key") != key or entry.get("baseline") != f"{BASELINE}@{name}":
        return False
    numbers = [entry.get(k) for k in ("scale", "equivalent", "orthogonal_share", "baseline_guidance")]
    return isinstance(entry.get("freeu"), dict) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers
    )


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
    todo = [c for c in measured if not _valid_entry(data["configs"].get(c.name), _key(common, c), c.name)]
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
            equivalent = sum(n * t.equivalent for n, t in traces) / total
            data["configs"][config.name] = {
                "key": _key(common, config), "freeu": config.settings(), "scale": sampling.guidance,
                "equivalent": equivalent, "orthogonal_share": sum(n * t.orthogonal_share for n, t in traces) / total,
                "baseline": f"{BASELINE}@{config.name}", "baseline_guidance": round(equivalent, 2),
                "runs": [t.as_dict() for _, t in traces],
            }  # fmt: skip
            _write_meter_files(out, config.name, traces, model.name)
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
