"""What ``freeu tune`` leaves in its folder: ``preset.toml`` (the winner, with the record of how it won),
``report.md`` (the search and the confirmation with their intervals), ``search.png`` (the search curve)."""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from freeu.config import PRESETS, FreeUConfig

from ..evaluate.configs import BASELINE
from ..evaluate.stats import Estimate, paired_mean_difference, resample
from ..options import FACTORS
from ..runtime import Model
from .preset_file import write_preset
from .search import Rung, SearchSpace

__all__ = ["Confirmation", "nearest_preset", "plot_search", "write_outputs"]

logger = logging.getLogger(__name__)


def nearest_preset(config: FreeUConfig) -> str:
    """The published preset closest to ``config``: same version and convention first, then the smallest distance of
    the factors."""

    def distance(name: str) -> tuple[bool, bool, float, str]:
        other = PRESETS[name].config
        gap = sum((float(getattr(other, k)) - float(getattr(config, k))) ** 2 for k in FACTORS)
        return other.version != config.version, other.convention != config.convention, gap, name

    return min(PRESETS, key=distance)


def _estimate(table: Mapping[str, Any]) -> Estimate:
    return Estimate(table["value"], table["low"], table["high"], table["level"])


class Confirmation:
    """The confirmation run's numbers for the objective: each configuration's value, and its difference from off."""

    def __init__(self, metrics: Mapping[str, Any], metric: str, lower_is_better: bool) -> None:
        self.metric, self.lower = metric, lower_is_better
        self.entries = {c["name"]: c for c in metrics["configs"]}
        self.header = metrics["header"]

    def value(self, name: str) -> Estimate:
        entry = self.entries[name]
        if self.metric in entry["set_level"]:
            return _estimate(entry["set_level"][self.metric]["value"])
        return _estimate(entry["per_image_mean"][self.metric])

    def versus_off(self, name: str) -> Estimate:
        entry = self.entries[name]
        if self.metric in entry["set_level"]:
            return _estimate(entry["set_level"][self.metric]["difference_vs_off"])
        return _estimate(entry["per_image_paired_vs_off"][self.metric]["mean"])

    def better(self, estimate: Estimate) -> bool:
        """Whether a difference's interval lies entirely on the better side of zero."""
        return estimate.high < 0 if self.lower else estimate.low > 0


def _per_image_pair(folder: Path, metric: str, a: str, b: str, args: argparse.Namespace, higher: bool) -> Any:
    """The paired per-image difference ``a - b`` on the confirmation units (``None`` where the metric has no
    per-image value: FID, KID)."""
    rows: dict[str, dict[int, float]] = {a: {}, b: {}}
    for line in (folder / "records.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["config"] in rows and metric in record["metrics"]:
            rows[record["config"]][record["unit"]] = float(record["metrics"][metric])
    if not rows[a] or rows[a].keys() != rows[b].keys():
        return None
    units = sorted(rows[a])
    first, second = (torch.tensor([rows[name][u] for u in units], dtype=torch.float64) for name in (a, b))
    indices = resample(len(units), args.bootstrap, args.bootstrap_seed) if args.bootstrap else torch.empty(0, 0)
    return paired_mean_difference(first, second, indices.long(), args.confidence, higher_is_better=higher)


def plot_search(path: Path, names: Sequence[str], history: Sequence[Mapping[str, float]], schedule: Sequence[Rung],
                offs: Sequence[float], winner: str, label: str, candidates: Mapping[str, Mapping[str, Any]],
                varied: Sequence[str]) -> bool:  # fmt: skip
    """Left: every candidate's score at each rung it reached (FreeU off dashed, the winner in red). Right: the first
    rung's scores against each varied setting. False without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("matplotlib is missing: no search.png (pip install 'freeu[eval]')")
        return False
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


def write_outputs(
    args: argparse.Namespace, out: Path, model: Model, space: SearchSpace, schedule: Sequence[Rung],
    candidates: Mapping[str, Mapping[str, Any]], history: Sequence[Mapping[str, float]], winner: str,
    tuned: FreeUConfig, preset: str, preset_note: str, metrics: Mapping[str, Any], prompts: Sequence[str],
    matched: bool = False,
) -> str:  # fmt: skip
    """Write ``preset.toml``, ``report.md`` and ``search.png``; returns the lines to print."""
    from .cli import METRICS, command_line
    from .search import rung_cost

    lower = METRICS[args.metric][1]
    label = f"{args.metric.upper()} ({'lower' if lower else 'higher'} is better)"
    search_label = (f"{args.metric.upper()} minus that of FreeU off at the candidate's equivalent guidance "
                    f"({'lower' if lower else 'higher'} is better)" if matched else label)  # fmt: skip
    numbers = Confirmation(metrics, args.metric, lower)
    level = round(args.confidence * 100)
    tuned_value, off_value, preset_value = (numbers.value(n) for n in ("tuned", BASELINE, preset))
    tuned_off, preset_off = numbers.versus_off("tuned"), numbers.versus_off(preset)
    beats = numbers.better(tuned_off)
    pair = _per_image_pair(out / "confirm", args.metric, "tuned", preset, args, higher=not lower)
    search_seeds = _seeds(args.first_seed, args.seeds, prompts)
    confirm_seeds = _seeds(args.confirm_first_seed, args.confirm_seeds, prompts)
    if beats:
        verdict = (f"The tuned setting beats FreeU off on the confirmation seeds: {args.metric} "
                   f"{_signed(tuned_off)} ({level}% interval excludes 0).")  # fmt: skip
    else:
        verdict = (f"Nothing the search found beat FreeU off on the confirmation seeds: the tuned setting's "
                   f"{args.metric} difference from off is {_signed(tuned_off)}, an interval that does not lie below "
                   "0. Keep FreeU off for this model and metric, or search another space." if lower else
                   f"Nothing the search found beat FreeU off on the confirmation seeds: the tuned setting's "
                   f"{args.metric} difference from off is {_signed(tuned_off)}, an interval that does not lie above "
                   "0. Keep FreeU off for this model and metric, or search another space.")  # fmt: skip
    stem = Path(str(args.model)).name or "model"
    name = args.name or f"tuned-{stem}"
    record = {
        "metric": args.metric, "lower_is_better": lower, "steps": args.steps,
        "protocol": metrics["header"]["model"], "search_seeds": search_seeds, "confirmation_seeds": confirm_seeds,
        "space": space.describe(), "budget": args.budget, "candidates": len(candidates),
        "rungs": [f"{r.candidates} on {r.seeds} seeds" for r in schedule], "winner": winner,
        "command": command_line(args),
        "confirmation": {
            "level": args.confidence, "off": off_value.value, "tuned": tuned_value.value,
            "tuned_minus_off": [tuned_off.value, tuned_off.low, tuned_off.high], "beats_off": beats,
            "preset": preset, "preset_value": preset_value.value,
            "preset_minus_off": [preset_off.value, preset_off.low, preset_off.high],
        },
    }  # fmt: skip
    if pair is not None:
        record["confirmation"]["tuned_minus_preset_per_image"] = [pair.mean.value, pair.mean.low, pair.mean.high]
    matched_lines: list[str] = []
    matched = f"{BASELINE}@tuned"
    if matched in numbers.entries:
        guidance = numbers.entries[matched]["guidance"]
        versus = _per_image_pair(out / "confirm", args.metric, "tuned", matched, args, higher=not lower)
        gap = numbers.value("tuned").value - numbers.value(matched).value
        text = (f"Against FreeU off at the tuned setting's equivalent guidance ({matched}, guidance {guidance:g}, "
                f"from the guidance meter): {args.metric} {gap:+.4g} as a set")  # fmt: skip
        if versus is not None:
            text += (f", per image {_signed(versus.mean)} (better on {versus.better_share:.0%} of the units): "
                     + ("the tuned setting does more than add guidance." if (versus.mean.high < 0 if lower
                        else versus.mean.low > 0) else "not clearly more than added guidance."))  # fmt: skip
        matched_lines.append(text + ("" if versus is not None else "."))
        record["confirmation"]["matched_guidance"] = guidance
    write_preset(
        out / "preset.toml", tuned, name=name, model=f"{model.description} ({model.fingerprint})",
        source=f"freeu tune {args.metric} on seeds {search_seeds}, confirmed on seeds {confirm_seeds}",
        tune=record,
        comment="FreeU settings found by freeu tune. Use them with freeu.apply(unet, preset=\"preset.toml\"),\n"
        "--preset preset.toml in every freeu command, the page's preset box, or the ComfyUI node's preset_file.",
    )  # fmt: skip
    names = list(candidates)
    offs = [math.nan] * len(history)
    state = json.loads((out / "tune.json").read_text())
    for i, rung in enumerate(state.get("rungs", [])[: len(history)]):
        offs[i] = rung["off"]
    varied = [d.key for d in space.varied]
    # matched: the scores are differences from each candidate's own baseline, so FreeU off's line is 0
    plotted = plot_search(out / "search.png", names, history, schedule, [0.0] * len(history) if matched else offs,
                          winner, search_label, candidates, varied)  # fmt: skip
    lines = [
        "# freeu tune report",
        "",
        f"- model: {metrics['header']['model']}",
        f"- objective: {label}, against {metrics['header']['reference']}",
        f"- space: `{space.describe()}`; {len(candidates)} candidates (scrambled Sobol, seed {args.search_seed}, "
        f"rounded to 2 digits)",
        f"- search: successive halving, eta {args.eta}, {len(schedule)} rungs, "
        f"{rung_cost(schedule, 2 if matched else 1)} images per prompt (FreeU off included) on search seeds "
        f"{search_seeds}; score: {search_label}",
        f"- confirmation: seeds {confirm_seeds}, never seen by the search; {level}% paired bootstrap intervals "
        "(see confirm/report.md)",
        f"- command: `{command_line(args)}`",
        "",
        "## Verdict",
        "",
        verdict,
        "",
        "| configuration | settings | " + f"{args.metric} | Δ vs off |",
        "|---|---|---|---|",
        f"| off | FreeU off | {off_value.format(4)} | — |",
        f"| tuned ({winner}) | {tuned.label()} | {tuned_value.format(4)} | {_signed(tuned_off)} |",
        f"| {preset} | {PRESETS[preset].config.label()} | {preset_value.format(4)} | {_signed(preset_off)} |",
    ]
    for name, entry in numbers.entries.items():
        if name.startswith(f"{BASELINE}@"):
            lines.append(f"| {name} | FreeU off, guidance {entry['guidance']:g} | {numbers.value(name).format(4)} | "
                         f"{_signed(numbers.versus_off(name))} |")  # fmt: skip
    lines += [
        "",
        f"The comparison preset is {preset}: {preset_note}.",
    ]
    if pair is not None:
        lines += [
            f"Tuned against {preset}, paired per image on the confirmation units: per-image {args.metric} "
            f"{_signed(pair.mean)}; the tuned setting is better on {pair.better_share:.0%} of them.",
        ]
    lines += matched_lines
    lines += [
        "",
        'The preset file is `preset.toml`: `freeu.apply(unet, preset="preset.toml")`, `--preset preset.toml`.',
        "",
        "## Search",
        "",
        f"| rung | candidates | seeds | FreeU off | best | {'best score' if matched else 'best Δ vs off'} |",
        "|---|---|---|---|---|---|",
    ]
    for i, (rung, scores) in enumerate(zip(schedule, history, strict=False)):
        best = (min if lower else max)(scores, key=lambda n: scores[n])
        score = scores[best] if matched else scores[best] - offs[i]
        lines.append(f"| {i + 1} | {rung.candidates} | {rung.seeds} | {offs[i]:.4g} | {best} | {score:+.4g} |")
    lines += ["", f"Every candidate, with its score ({search_label}) at each rung it reached (set-level on that "
              "rung's seeds):", ""]  # fmt: skip
    head = ["candidate", "settings"] + [f"rung {i + 1}" for i in range(len(history))]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    reached = sorted(names, key=lambda n: (-sum(n in h for h in history), history[0][n] * (1 if lower else -1)))
    for n in reached:
        cells = [f"{h[n]:.4g}" if n in h else "" for h in history]
        mark = " (winner)" if n == winner else ""
        lines.append(f"| {n}{mark} | {config_label(candidates[n])} | " + " | ".join(cells) + " |")
    lines += ["", "## Files", "", "- `preset.toml`: the tuned setting and this record",
              "- `search.png`: the search curve" + ("" if plotted else " (not written: matplotlib is missing)"),
              "- `confirm/`: the confirmation's freeu eval report (report.md, metrics.png, samples.png: the same "
              "seeds under off, tuned and the preset)",
              "- `search/`: the search's freeu eval folder (every image; its report is the last rung's)",
              "- `tune.json`: candidates and every rung's scores (a rerun resumes from it); `log.txt`", ""]  # fmt: skip
    (out / "report.md").write_text("\n".join(lines))
    return "\n".join([
        f"tuned: {tuned.label()}",
        f"{args.metric} on the confirmation seeds: off {off_value.format(4)}, tuned {tuned_value.format(4)}, "
        f"{preset} {preset_value.format(4)}",
        verdict,
        f"wrote {out / 'preset.toml'}, {out / 'report.md'}",
    ])  # fmt: skip


def config_label(settings: Mapping[str, Any]) -> str:
    return FreeUConfig(**settings).label()
