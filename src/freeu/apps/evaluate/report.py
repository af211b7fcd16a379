"""The report folder's human-facing files: ``report.md`` (tables), ``metrics.png`` (estimates and paired
differences with their intervals), ``samples.png`` (a grid of the same units under every configuration)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .configs import BASELINE
from .meter import GuidanceMatch
from .results import METRICS, PER_IMAGE, ConfigResult, EvalResult
from .stats import Estimate, holm

__all__ = ["markdown", "plot_metrics", "sample_grid"]

logger = logging.getLogger(__name__)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


class _Marks:
    """Formats a difference with its interval and marks: ``*`` where the interval excludes 0, ``†`` where the
    difference stays significant after Holm's correction over every difference of the report (``adjusted``: the
    Holm-adjusted p-value of each estimate, by identity)."""

    def __init__(self, estimates: Sequence[Estimate]) -> None:
        self.count = sum(1 for e in estimates if not math.isnan(e.p_value))
        adjusted = holm([e.p_value for e in estimates])
        self.adjusted = {id(e): p for e, p in zip(estimates, adjusted, strict=True)}

    def __call__(self, estimate: Any, digits: int = 3) -> str:
        mark = " *" if estimate.excludes_zero() else ""
        adjusted = self.adjusted.get(id(estimate), math.nan)
        if adjusted < 1 - estimate.level:
            mark += "†"
        return f"{estimate.value:+.{digits}g} [{estimate.low:+.{digits}g}, {estimate.high:+.{digits}g}]{mark}"


def _differences(results: Sequence[ConfigResult]) -> list[Estimate]:
    """Every difference the report shows: from FreeU off and from the matched baselines, set-level and per image."""
    out: list[Estimate] = []
    for r in results:
        if r.config.name != BASELINE:
            out += [diff for _, diff in r.sets.values()]
            out += [d.mean for d in r.paired.values()]
        out += list(r.sets_vs_matched.values()) + [d.mean for d in r.paired_vs_matched.values()]
    return out


def markdown(result: EvalResult) -> str:
    """The report: protocol, set-level table, per-image paired table, the guidance meter and the comparison with
    matched guidance (where measured), skipped metrics, files."""
    results, header = result.configs, result.header
    n = results[0].n
    marks = _Marks(_differences(results))
    lines = [
        "# freeu eval report",
        "",
        f"- model: {header.model}",
        f"- units: {n} ({header.units}); every configuration sampled on the same units from the same noise",
        f"- reference: {header.reference}",
        f"- evaluation size: {header.eval_size[1]}x{header.eval_size[0]} (generated and reference images alike)",
        f"- intervals: {round(header.level * 100)}% paired bootstrap over units: set-level metrics "
        f"{header.set_replicates} replicates, basic intervals (SWD replicates: {header.swd_replicates}); per-image "
        f"means {header.replicates} replicates, percentile intervals; `*`: the interval of a difference excludes 0 "
        f"(not corrected for multiple comparisons); `†`: the difference stays significant at "
        f"{1 - header.level:g} after Holm's correction over all {marks.count} differences of this report "
        "(bootstrap p-values)",
        f"- processes: {header.world}; command: see command.txt",
        "",
    ]
    sets = [m for m in METRICS if m in results[0].sets]
    paired = [m for m, (_, d) in PER_IMAGE.items() if d is not None and m in results[0].means]
    lines += _set_table(results, sets, marks) + _paired_table(results, paired, marks)
    lines += _meter_section(result.guidance_meter, header.guidance_units)
    lines += _matched_table(results, sets, paired, marks)
    if result.skipped:
        lines += ["## Not computed", ""] + [f"- {s}" for s in result.skipped] + [""]
    lines += [
        "## Files",
        "",
        "- `records.jsonl`: one line per image (configuration, unit, seed, prompt, settings, PNG path, per-image "
        "metrics)",
        "- `metrics.json`: every number above, with interval bounds",
        "- `metrics.png`, `samples.png`, `command.txt`, `images/`",
        "",
    ]
    return "\n".join(lines)


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _set_table(results: Sequence[ConfigResult], sets: Sequence[str], _diff: _Marks) -> list[str]:
    """Set-level metrics against the reference, with their differences from FreeU off."""
    if not sets:
        return []
    lines = ["## Against the reference (set-level, lower is better)", ""]
    head = ["config", "settings", "n"]
    for m in sets:
        head += [METRICS[m][0], f"Δ {METRICS[m][0]} vs off"]
    lines += [_row(head), "|" + "---|" * len(head)]
    for r in results:
        row = [_cell(r.config.name), _cell(r.config.describe()), str(r.n)]
        for m in sets:
            value, diff = r.sets[m]
            row += [value.format(4), "—" if r.config.name == BASELINE else _diff(diff)]
        lines.append(_row(row))
    return [*lines, ""]


def _paired_table(results: Sequence[ConfigResult], paired: Sequence[str], _diff: _Marks) -> list[str]:
    """Per-image paired differences from FreeU off, and the means of the quantities that have no better side."""
    plain = [m for m, (_, d) in PER_IMAGE.items() if d is None and m in results[0].means]
    lines = [
        "## Per image, paired with FreeU off on the same unit",
        "",
        "Mean of the per-unit difference (configuration minus off) with its interval, and the share of units on "
        "which the configuration is better (ties count half).",
        "",
    ]
    head = ["config"]
    for m in paired:
        head += [f"Δ {PER_IMAGE[m][0]}", "better on"]
    head += [PER_IMAGE[m][0] for m in plain]
    lines += [_row(head), "|" + "---|" * len(head)]
    for r in results:
        row = [_cell(r.config.name)]
        for m in paired:
            if r.config.name == BASELINE:
                row += ["—", "—"]
            else:
                row += [_diff(r.paired[m].mean), f"{r.paired[m].better_share:.0%}"]
        row += [r.means[m].format(3) for m in plain]
        lines.append(_row(row))
    return [*lines, ""]


_MATCH_WORDS = {
    "global": "FreeU off at one scale for every prompt: the equivalent guidance, rounded to 2 digits",
    "prompt": "FreeU off at each prompt's own equivalent guidance (2 digits), as GA-Eval matches",
    "steps": "FreeU off following each prompt's guidance curve, step by step (a guidance schedule)",
}


def _meter_section(meter: Mapping[str, GuidanceMatch], units: int | None) -> list[str]:
    """The guidance meter's readings (``--guidance-baselines auto``, ``compensate=``)."""
    if not meter:
        return []
    mode = next(iter(meter.values())).mode
    lines = [
        "## Guidance meter",
        "",
        f"Each measured FreeU configuration sampled on {units} units (the first seed of every prompt, "
        "then the second, ...) with FreeU on; at every "
        "step the U-Net also ran with FreeU off on the same inputs, and FreeU's change of the guided prediction "
        "was split along the guidance direction (eps_c - eps_u of FreeU off) and orthogonal to it "
        "(docs/eval.md). The equivalent scale is the run's guidance plus the extra along the direction: the "
        "unweighted mean over steps, and weighted by the size of each step's guidance direction; the low band is "
        "the 3 x 3 lowest frequencies of each latent map, the high band the rest. Matched baselines: "
        f"{_MATCH_WORDS[mode]} (--guidance-match {mode}). Compensated configurations sample with the extra "
        "guidance taken back by the same rule.",
        "",
        "| config | guidance | equivalent (mean over steps) | weighted by step | low band | high band | "
        "orthogonal share | matched baseline |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in meter.items():
        if entry.baseline is None:
            matched = f"none: compensated ({'low band' if entry.compensate == 'low' else 'every band'})"
        elif mode == "global":
            matched = f"{_cell(entry.baseline)} at {entry.baseline_guidance:g}"
        else:
            matched = f"{_cell(entry.baseline)} ({'per prompt' if mode == 'prompt' else 'per prompt and step'})"
        lines.append(f"| {_cell(name)} | {entry.scale:g} | {entry.equivalent:.3f} | {entry.equivalent_weighted:.3f} | "
                     f"{entry.equivalent_low:.3f} | {entry.equivalent_high:.3f} | {entry.orthogonal_share:.0%} | "
                     f"{matched} |")  # fmt: skip
    prompts = [p for p, _ in next(iter(meter.values())).readings]
    if len(prompts) > 1:
        lines += ["", "Equivalent guidance per prompt (mean over steps; the low band's in brackets):", ""]
        lines += [_row(["prompt", *(_cell(n) for n in meter)]), "|" + "---|" * (len(meter) + 1)]
        for i, prompt in enumerate(prompts):
            readings = [m.readings[i][1] for m in meter.values()]
            cells = [f"{r.equivalent:.3f} ({r.equivalent_low:.3f})" for r in readings]
            lines.append(_row([_cell(str(prompt)), *cells]))
    return [*lines, "", "Per-step numbers: `guidance.json`, `guidance/*.csv`; figures: `guidance/*.png`.", ""]


def _matched_table(
    results: Sequence[ConfigResult], sets: Sequence[str], paired: Sequence[str], _diff: _Marks
) -> list[str]:
    """Each FreeU configuration against FreeU off at its matched guidance."""
    versus = [r for r in results if r.matched is not None]
    if not versus:
        return []
    lines = [
        "## Against FreeU off at the matched guidance",
        "",
        "Each FreeU configuration minus FreeU off at its equivalent guidance, on the same units: what FreeU does "
        "beyond the guidance it adds. Set-level differences with paired basic intervals; per-image differences "
        "paired per unit, with the share of units on which the configuration is better.",
        "",
    ]
    head = ["config", "matched baseline"]
    head += [f"Δ {METRICS[m][0]}" for m in sets]
    for m in paired:
        head += [f"Δ {PER_IMAGE[m][0]}", "better on"]
    lines += [_row(head), "|" + "---|" * len(head)]
    for r in versus:
        row = [_cell(r.config.name), _cell(r.matched or "")]
        row += [_diff(r.sets_vs_matched[m]) if m in r.sets_vs_matched else "—" for m in sets]
        for m in paired:
            d = r.paired_vs_matched.get(m)
            row += ["—", "—"] if d is None else [_diff(d.mean), f"{d.better_share:.0%}"]
        lines.append(_row(row))
    return [*lines, ""]


def plot_metrics(path: Path, results: Sequence[ConfigResult]) -> bool:
    """Each set-level metric with its interval (top) and its paired difference from off (bottom); False without
    matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("matplotlib is missing: no metrics.png (pip install 'freeu[eval]')")
        return False
    columns = [("set", m) for m in METRICS if m in results[0].sets]
    paired = set().union(*(r.paired for r in results))
    columns += [("paired", m) for m, (_, d) in PER_IMAGE.items() if d is not None and m in paired]
    if not columns:
        return False
    names = [r.config.name for r in results]
    y = list(range(len(results)))[::-1]
    fig = Figure(figsize=(3.2 * len(columns), 1.2 + 0.35 * len(results) * 2), dpi=110)
    axes = fig.subplots(2, len(columns), squeeze=False)
    for col, (kind, metric) in enumerate(columns):
        top, bottom = axes[0][col], axes[1][col]
        if kind == "set":
            values = [r.sets[metric][0] for r in results]
            diffs = [r.sets[metric][1] for r in results]
            label = METRICS[metric][0]
            top.errorbar([v.value for v in values], y, xerr=_errors(values), fmt="o", capsize=3)
            top.set_title(f"{label} (lower is better)", fontsize=9)
        else:
            values = [r.means[metric] for r in results]
            diffs = [r.paired[metric].mean if metric in r.paired else Estimate(0.0, 0.0, 0.0) for r in results]
            label = PER_IMAGE[metric][0]
            top.errorbar([v.value for v in values], y, xerr=_errors(values), fmt="o", capsize=3)
            top.set_title(f"mean {label}", fontsize=9)
        bottom.errorbar([d.value for d in diffs], y, xerr=_errors(diffs), fmt="s", color="tab:red", capsize=3)
        bottom.axvline(0, color="grey", linewidth=0.8)
        bottom.set_title(f"Δ {label} vs off (paired)", fontsize=9)
        for ax in (top, bottom):
            ax.set_yticks(y)
            ax.set_yticklabels(names if col == 0 else [], fontsize=8)
            ax.grid(True, alpha=0.3)
            ax.tick_params(axis="x", labelsize=7)
    fig.suptitle("freeu eval: estimates with 95% paired bootstrap intervals", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return True


def _errors(estimates: Sequence[Any]) -> list[list[float]]:
    lows = [0.0 if e.low != e.low else max(e.value - e.low, 0.0) for e in estimates]
    highs = [0.0 if e.high != e.high else max(e.high - e.value, 0.0) for e in estimates]
    return [lows, highs]


def sample_grid(
    path: Path, rows: Sequence[tuple[str, Sequence[torch.Tensor]]], col_labels: Sequence[str], title: str, footer: str
) -> None:
    """Rows of ``uint8 (3, H, W)`` images (one row per configuration) as one labelled PNG."""
    from PIL import Image

    from ..imaging import grid, save_png

    table = [[Image.fromarray(img.permute(1, 2, 0).contiguous().numpy()) for img in images] for _, images in rows]
    picture = grid(
        table,
        row_labels=[name for name, _ in rows],
        col_labels=list(col_labels),
        title=title,
        footer=footer,
        min_cell=64,
    )
    save_png(picture, path, {"role": "freeu eval samples", "title": title})
