"""What ``freeu tune`` leaves in its folder: ``preset.toml`` (the winner, with the record of how it won),
``report.md`` (the search and the confirmation with their intervals), ``search.png`` (the search curve). Everything
is written from a :class:`TuneOutcome`: the settings, the search's history and the confirmation's
:class:`~freeu.apps.evaluate.EvalResult`."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from freeu.config import PRESETS, FreeUConfig

from ..evaluate.configs import BASELINE
from ..evaluate.results import ConfigResult, EvalResult
from ..evaluate.stats import Estimate, PairedDifference, paired_mean_difference, resample
from ..options import FACTORS
from .preset_file import write_preset
from .search import Rung, SearchSpace, rung_cost
from .settings import METRICS, TuneSettings

__all__ = ["Confirmation", "TuneOutcome", "config_label", "nearest_preset", "per_image_pair", "plot_search",
           "write_outputs"]  # fmt: skip

logger = logging.getLogger(__name__)


def nearest_preset(config: FreeUConfig) -> str:
    """The published preset closest to ``config``: same version and convention first, then the smallest distance of
    the factors."""

    def distance(name: str) -> tuple[bool, bool, float, str]:
        other = PRESETS[name].config
        gap = sum((float(getattr(other, k)) - float(getattr(config, k))) ** 2 for k in FACTORS)
        return other.version != config.version, other.convention != config.convention, gap, name

    return min(PRESETS, key=distance)


class Confirmation:
    """The confirmation run's numbers for the objective: each configuration's value, and its difference from off
    (``results``: the confirmation's configurations, e.g. :attr:`EvalResult.configs`)."""

    def __init__(self, results: Sequence[ConfigResult], metric: str, lower_is_better: bool) -> None:
        self.metric, self.lower = metric, lower_is_better
        self.entries = {r.config.name: r for r in results}

    def value(self, name: str) -> Estimate:
        """The objective's value for one configuration (set-level, or the per-image mean for CLIP)."""
        entry = self.entries[name]
        if self.metric in entry.sets:
            return entry.sets[self.metric][0]
        return entry.means[self.metric]

    def versus_off(self, name: str) -> Estimate:
        """One configuration's difference from FreeU off, with its paired interval."""
        entry = self.entries[name]
        if self.metric in entry.sets:
            return entry.sets[self.metric][1]
        return entry.paired[self.metric].mean

    def better(self, estimate: Estimate) -> bool:
        """Whether a difference's interval lies entirely on the better side of zero."""
        return estimate.high < 0 if self.lower else estimate.low > 0


def per_image_pair(
    result: EvalResult, metric: str, a: str, b: str, statistics: Any, higher: bool
) -> PairedDifference | None:
    """The paired per-image difference ``a - b`` on the evaluation's units, with the interval of ``statistics``
    (:class:`~freeu.apps.evaluate.StatisticsOptions`); ``None`` where the metric has no per-image value (FID,
    KID)."""
    values = result.per_image
    if metric not in values.get(a, {}) or metric not in values.get(b, {}):
        return None
    first, second = values[a][metric].double(), values[b][metric].double()
    count = first.numel()
    indices = resample(count, statistics.bootstrap, statistics.bootstrap_seed) if statistics.bootstrap else None
    rows = indices.long() if indices is not None else torch.empty(0, 0, dtype=torch.long)
    return paired_mean_difference(first, second, rows, statistics.confidence, higher_is_better=higher)


@dataclass(frozen=True)
class TuneOutcome:
    """A finished tune, as its report needs it: the settings, the model (``"description (fingerprint)"``), the
    space, the rungs and their scores (``history``) with FreeU off's value on each (``offs``), the candidates'
    settings by name, the winner, the comparison preset and why it was chosen, the confirmation's result, the
    prompts, and whether candidates were scored against matched guidance."""

    settings: TuneSettings
    model: str
    space: SearchSpace
    schedule: tuple[Rung, ...]
    candidates: Mapping[str, Mapping[str, Any]]
    history: tuple[Mapping[str, float], ...]
    offs: tuple[float, ...]
    winner: str
    preset: str
    preset_note: str
    confirmation: EvalResult
    prompts: tuple[str, ...]
    matched: bool = False

    @property
    def tuned(self) -> FreeUConfig:
        """The winner's settings."""
        return FreeUConfig(**self.candidates[self.winner])

    @property
    def lower(self) -> bool:
        """Whether the objective is better lower."""
        return METRICS[self.settings.metric][1]


@dataclass(frozen=True)
class _Verdict:
    """The confirmation's figures for the report and the preset file."""

    label: str
    search_label: str
    numbers: Confirmation
    tuned_off: Estimate
    preset_off: Estimate
    beats: bool
    pair: PairedDifference | None
    search_seeds: str
    confirm_seeds: str
    text: str
    command: str


def _verdict(outcome: TuneOutcome) -> _Verdict:
    s, lower = outcome.settings, outcome.lower
    better = "lower" if lower else "higher"
    label = f"{s.metric.upper()} ({better} is better)"
    search_label = (f"{s.metric.upper()} minus that of FreeU off at the candidate's equivalent guidance "
                    f"({better} is better)" if outcome.matched else label)  # fmt: skip
    if s.compensate:
        band = "on every frequency" if s.compensate == "global" else "on the low band"
        search_label = f"{label}, each candidate with its extra guidance taken back {band}"
    numbers = Confirmation(outcome.confirmation.configs, s.metric, lower)
    tuned_off = numbers.versus_off("tuned")
    beats = numbers.better(tuned_off)
    if beats:
        text = (f"The tuned setting beats FreeU off on the confirmation seeds: {s.metric} {_signed(tuned_off)} "
                f"({round(s.statistics.confidence * 100)}% interval excludes 0).")  # fmt: skip
    else:
        text = (f"Nothing the search found beat FreeU off on the confirmation seeds: the tuned setting's "
                f"{s.metric} difference from off is {_signed(tuned_off)}, an interval that does not lie "
                f"{'below' if lower else 'above'} 0. Keep FreeU off for this model and metric, or search another "
                "space.")  # fmt: skip
    pair = per_image_pair(outcome.confirmation, s.metric, "tuned", outcome.preset, s.statistics, higher=not lower)
    return _Verdict(
        label, search_label, numbers, tuned_off, numbers.versus_off(outcome.preset), beats, pair,
        _seeds(s.first_seed, s.seeds, outcome.prompts), _seeds(s.confirm_start, s.confirm_seeds, outcome.prompts),
        text, s.command_line(),
    )  # fmt: skip


def _preset_record(outcome: TuneOutcome, v: _Verdict) -> dict[str, Any]:
    """The ``[tune]`` table of ``preset.toml``: how the setting was chosen and confirmed."""
    s = outcome.settings
    off, tuned, preset = (v.numbers.value(n) for n in (BASELINE, "tuned", outcome.preset))
    record = {
        "metric": s.metric, "lower_is_better": outcome.lower, "steps": s.steps,
        "protocol": outcome.confirmation.header.model, "search_seeds": v.search_seeds,
        "confirmation_seeds": v.confirm_seeds, "space": outcome.space.describe(), "budget": s.budget,
        "candidates": len(outcome.candidates),
        "rungs": [f"{r.candidates} on {r.seeds} seeds" for r in outcome.schedule], "winner": outcome.winner,
        "command": v.command,
        "confirmation": {
            "level": s.statistics.confidence, "off": off.value, "tuned": tuned.value,
            "tuned_minus_off": [v.tuned_off.value, v.tuned_off.low, v.tuned_off.high], "beats_off": v.beats,
            "preset": outcome.preset, "preset_value": preset.value,
            "preset_minus_off": [v.preset_off.value, v.preset_off.low, v.preset_off.high],
        },
    }  # fmt: skip
    if v.pair is not None:
        record["confirmation"]["tuned_minus_preset_per_image"] = [v.pair.mean.value, v.pair.mean.low,
                                                                  v.pair.mean.high]  # fmt: skip
    return record


def _versus_matched(outcome: TuneOutcome, v: _Verdict, record: dict[str, Any]) -> list[str]:
    """The tuned setting against FreeU off at its own equivalent guidance (where the confirmation measured it); the
    matched scale goes into ``record``."""
    s, lower = outcome.settings, outcome.lower
    matched = f"{BASELINE}@tuned"
    if matched not in v.numbers.entries:
        return []
    config = v.numbers.entries[matched].config
    guidance: Any = config.guidance
    if guidance is None:  # matched per prompt: each prompt's own scale
        guidance = {p: list(schedule.scale) for p, schedule in config.schedules}
        scales = [x for values in guidance.values() for x in values]
        shown = f"each prompt's own guidance, {min(scales):g} to {max(scales):g}"
    else:
        shown = f"guidance {guidance:g}"
    versus = per_image_pair(outcome.confirmation, s.metric, "tuned", matched, s.statistics, higher=not lower)
    gap = v.numbers.value("tuned").value - v.numbers.value(matched).value
    text = (f"Against FreeU off at the tuned setting's equivalent guidance ({matched}, {shown}, "
            f"from the guidance meter): {s.metric} {gap:+.4g} as a set")  # fmt: skip
    if versus is not None:
        more = versus.mean.high < 0 if lower else versus.mean.low > 0
        text += (f", per image {_signed(versus.mean)} (better on {versus.better_share:.0%} of the units): "
                 + ("the tuned setting does more than add guidance." if more
                    else "not clearly more than added guidance."))  # fmt: skip
    record["confirmation"]["matched_guidance"] = guidance
    return [text + ("" if versus is not None else ".")]


def write_outputs(outcome: TuneOutcome) -> str:
    """Write ``preset.toml``, ``report.md`` and ``search.png`` into the tune's folder; returns the lines to print."""
    s, out = outcome.settings, outcome.settings.out
    v = _verdict(outcome)
    record = _preset_record(outcome, v)
    matched_lines = _versus_matched(outcome, v, record)
    tuned = outcome.tuned
    stem = Path(str(s.model)).name or "model"
    write_preset(
        out / "preset.toml", tuned, name=s.name or f"tuned-{stem}", model=outcome.model,
        source=f"freeu tune {s.metric} on seeds {v.search_seeds}, confirmed on seeds {v.confirm_seeds}",
        tune=record,
        comment="FreeU settings found by freeu tune. Use them with freeu.apply(unet, preset=\"preset.toml\"),\n"
        "--preset preset.toml in every freeu command, the page's preset box, or the ComfyUI node's preset_file.",
    )  # fmt: skip
    plotted = plot_search(out / "search.png", outcome, v.search_label)
    lines = _report_head(outcome, v) + _verdict_lines(outcome, v) + matched_lines + _search_lines(outcome, v)
    lines += ["", "## Files", "", "- `preset.toml`: the tuned setting and this record",
              "- `search.png`: the search curve" + ("" if plotted else " (not written: matplotlib is missing)"),
              "- `confirm/`: the confirmation's freeu eval report (report.md, metrics.png, samples.png: the same "
              "seeds under off, tuned and the preset)",
              "- `search/`: the search's freeu eval folder (every image; its report is the last rung's)",
              "- `tune.json`: candidates and every rung's scores (a rerun resumes from it); `log.txt`", ""]  # fmt: skip
    (out / "report.md").write_text("\n".join(lines))
    n = v.numbers
    return "\n".join([
        f"tuned: {tuned.label()}",
        f"{s.metric} on the confirmation seeds: off {n.value(BASELINE).format(4)}, tuned {n.value('tuned').format(4)}, "
        f"{outcome.preset} {n.value(outcome.preset).format(4)}",
        v.text,
        f"wrote {out / 'preset.toml'}, {out / 'report.md'}",
    ])  # fmt: skip


def _report_head(outcome: TuneOutcome, v: _Verdict) -> list[str]:
    s, header = outcome.settings, outcome.confirmation.header
    return [
        "# freeu tune report",
        "",
        f"- model: {header.model}",
        f"- objective: {v.label}, against {header.reference}",
        f"- space: `{outcome.space.describe()}`; {len(outcome.candidates)} candidates (scrambled Sobol, seed "
        f"{s.search_seed}, rounded to 2 digits)",
        f"- search: successive halving, eta {s.eta}, {len(outcome.schedule)} rungs, "
        f"{rung_cost(outcome.schedule, 2 if outcome.matched else 1)} images per prompt (FreeU off included) on search "
        f"seeds {v.search_seeds}; score: {v.search_label}",
        *_compensation_lines(outcome),
        f"- confirmation: seeds {v.confirm_seeds}, never seen by the search; "
        f"{round(s.statistics.confidence * 100)}% paired bootstrap intervals (see confirm/report.md)",
        f"- command: `{v.command}`",
        "",
    ]


def _compensation_lines(outcome: TuneOutcome) -> list[str]:
    s = outcome.settings
    if not s.compensate:
        return []
    band = "every frequency" if s.compensate == "global" else "the low band only"
    return [f"- compensated ({s.compensate}): every candidate, the tuned setting and {outcome.preset} were sampled "
            f"with the extra guidance the meter measured for them taken back, on {band}; preset.toml holds the factors "
            "alone, which add that guidance again wherever they are used without it"]  # fmt: skip


def _verdict_lines(outcome: TuneOutcome, v: _Verdict) -> list[str]:
    s, n, preset = outcome.settings, v.numbers, outcome.preset
    lines = [
        "## Verdict",
        "",
        v.text,
        "",
        "| configuration | settings | " + f"{s.metric} | Δ vs off |",
        "|---|---|---|---|",
        f"| off | FreeU off | {n.value(BASELINE).format(4)} | — |",
        f"| tuned ({outcome.winner}) | {outcome.tuned.label()} | {n.value('tuned').format(4)} | "
        f"{_signed(v.tuned_off)} |",
        f"| {preset} | {PRESETS[preset].config.label()} | {n.value(preset).format(4)} | {_signed(v.preset_off)} |",
    ]
    for name, entry in n.entries.items():
        if name.startswith(f"{BASELINE}@"):
            lines.append(f"| {name} | {entry.config.describe()} | {n.value(name).format(4)} | "
                         f"{_signed(n.versus_off(name))} |")  # fmt: skip
    lines += ["", f"The comparison preset is {preset}: {outcome.preset_note}."]
    if v.pair is not None:
        lines.append(f"Tuned against {preset}, paired per image on the confirmation units: per-image {s.metric} "
                     f"{_signed(v.pair.mean)}; the tuned setting is better on {v.pair.better_share:.0%} of "
                     "them.")  # fmt: skip
    return lines


def _search_lines(outcome: TuneOutcome, v: _Verdict) -> list[str]:
    history, offs, lower, matched = outcome.history, outcome.offs, outcome.lower, outcome.matched
    lines = [
        "",
        'The preset file is `preset.toml`: `freeu.apply(unet, preset="preset.toml")`, `--preset preset.toml`.',
        "",
        "## Search",
        "",
        f"| rung | candidates | seeds | FreeU off | best | {'best score' if matched else 'best Δ vs off'} |",
        "|---|---|---|---|---|---|",
    ]
    for i, (rung, scores) in enumerate(zip(outcome.schedule, history, strict=False)):
        best = (min if lower else max)(scores, key=lambda n: scores[n])
        score = scores[best] if matched else scores[best] - offs[i]
        lines.append(f"| {i + 1} | {rung.candidates} | {rung.seeds} | {offs[i]:.4g} | {best} | {score:+.4g} |")
    lines += ["", f"Every candidate, with its score ({v.search_label}) at each rung it reached (set-level on that "
              "rung's seeds):", ""]  # fmt: skip
    head = ["candidate", "settings"] + [f"rung {i + 1}" for i in range(len(history))]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    names = list(outcome.candidates)
    reached = sorted(names, key=lambda n: (-sum(n in h for h in history), history[0][n] * (1 if lower else -1)))
    for n in reached:
        cells = [f"{h[n]:.4g}" if n in h else "" for h in history]
        mark = " (winner)" if n == outcome.winner else ""
        lines.append(f"| {n}{mark} | {config_label(outcome.candidates[n])} | " + " | ".join(cells) + " |")
    return lines


def plot_search(path: Path, outcome: TuneOutcome, label: str) -> bool:
    """Left: every candidate's score at each rung it reached (FreeU off dashed, the winner in red; at 0 where the
    scores are differences from each candidate's matched baseline). Right: the first rung's scores against each
    varied setting. ``label`` names the score. False without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("matplotlib is missing: no search.png (pip install 'freeu[eval]')")
        return False
    names, history, schedule = list(outcome.candidates), list(outcome.history), outcome.schedule
    winner, candidates, varied = outcome.winner, outcome.candidates, [d.key for d in outcome.space.varied]
    # matched: the scores are differences from each candidate's own baseline, so FreeU off's line is 0
    offs = [0.0] * len(history) if outcome.matched else list(outcome.offs)
    panels = 1 + len(varied)
    fig = Figure(figsize=(4.2 + 2.6 * len(varied), 3.6), dpi=110)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    ax = axes[0]
    seeds = [r.seeds for r in schedule[: len(history)]]
    positions = list(range(len(history)))
    for name in names:
        points = [(i, h[name]) for i, h in enumerate(history) if name in h]
        xs, ys = zip(*points, strict=True)
        style = dict(color="tab:red", linewidth=2, zorder=3) if name == winner else dict(color="grey", alpha=0.5)
        ax.plot(xs, ys, marker="o", markersize=3, **style)
    ax.plot(positions, offs, linestyle="--", color="black", label="FreeU off")
    ax.plot([], [], color="tab:red", linewidth=2, label=f"winner {winner}")
    ax.set_xticks(positions)
    ax.set_xticklabels([f"{r + 1}\n{s} seeds" for r, s in zip(positions, seeds, strict=True)], fontsize=7)
    ax.set_xlabel("rung", fontsize=8)
    ax.set_ylabel(label, fontsize=8)
    ax.set_title("successive halving", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    first = history[0]
    for ax, key in zip(axes[1:], varied, strict=True):
        xs = [float(candidates[n][key]) if key != "convention" else candidates[n][key] == "diffusers" for n in first]
        ax.scatter(xs, list(first.values()), s=12, color="tab:blue")
        ax.scatter([float(candidates[winner][key]) if key != "convention" else candidates[winner][key] == "diffusers"],
                   [first[winner]], s=30, color="tab:red", zorder=3)  # fmt: skip
        ax.axhline(offs[0], linestyle="--", color="black", linewidth=0.8)
        ax.set_xlabel(key, fontsize=8)
        ax.set_title(f"rung 1 against {key}", fontsize=9)
        ax.set_ylabel(label.split(" (")[0], fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"freeu tune: {label}, set-level on each rung's search seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return True


def _seeds(first: int, count: int, prompts: Sequence[str]) -> str:
    text = f"{first}..{first + count - 1}"
    return text + (f" x {len(prompts)} prompts" if prompts else "")


def _signed(e: Estimate) -> str:
    if math.isnan(e.low):
        return f"{e.value:+.4g}"
    return f"{e.value:+.4g} [{e.low:+.4g}, {e.high:+.4g}]"


def config_label(settings: Mapping[str, Any]) -> str:
    """A candidate's settings in one line (:meth:`FreeUConfig.label`)."""
    return FreeUConfig(**settings).label()
