"""The figures more than one command draws (matplotlib, imported only when a figure is drawn): the guidance meter's
(``freeu analyze`` and ``freeu eval`` draw it), and the helpers every figure uses."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from freeu.config import FreeUConfig

from .errors import require

__all__ = ["figure_class", "plot_guidance", "setting_label"]


def figure_class() -> Any:
    """``matplotlib.figure.Figure`` (a clear error naming the extra to install where matplotlib is missing)."""
    return require("matplotlib.figure", "plots", "freeu analyze's figures").Figure


def setting_label(settings: dict[str, Any] | None) -> str:
    """``FreeU off``, or ``FreeU`` and :meth:`freeu.FreeUConfig.label` of the settings of a results dict."""
    return "FreeU off" if settings is None else f"FreeU {FreeUConfig(**settings).label()}"


def plot_guidance(result: dict[str, Any], out: str | Path, model: str, filename: str = "guidance.png") -> list[Path]:
    """The guidance meter per step: FreeU's equivalent guidance scale against the run's own scale (left; its mean over
    steps and its mean weighted by the guidance direction's size), the same per frequency band (middle: the low band's
    and the high band's equivalent scale), and the share of FreeU's change that no guidance scale makes (right)."""
    figure = figure_class()(figsize=(13, 3.4), dpi=110)
    left, middle, right = figure.subplots(1, 3)
    steps = [s["index"] + 1 for s in result["steps"]]
    weighted = result.get("equivalent_weighted", float("nan"))
    left.plot(steps, [s["equivalent"] for s in result["steps"]], marker="o", color="tab:red",
              label=f"FreeU's equivalent (mean {result['equivalent']:.3g}, weighted {weighted:.3g})")  # fmt: skip
    left.axhline(result["scale"], linestyle="--", color="black", label=f"guidance scale {result['scale']:g}")
    left.set_xlabel("denoising step")
    left.set_ylabel("guidance scale")
    left.set_title("equivalent guidance scale", fontsize=9)
    left.legend(fontsize=7)
    for band, color in (("low", "tab:orange"), ("high", "tab:purple")):
        values = [result["scale"] + s.get(f"extra_{band}", float("nan")) for s in result["steps"]]
        mean = result.get(f"equivalent_{band}", float("nan"))
        middle.plot(steps, values, marker="o", color=color, label=f"{band} band (mean {mean:.3g})")
    middle.axhline(result["scale"], linestyle="--", color="black", label=f"guidance scale {result['scale']:g}")
    middle.set_xlabel("denoising step")
    middle.set_ylabel("guidance scale")
    middle.set_title(f"per band (low: cutoff {result.get('band_cutoff', 0.0):g} of the map)", fontsize=9)
    middle.legend(fontsize=7)
    right.plot(steps, [s["orthogonal_share"] for s in result["steps"]], marker="o", color="tab:blue")
    right.set_ylim(0, 1.05)
    right.set_xlabel("denoising step")
    right.set_ylabel("share of |change|^2")
    right.set_title(f"orthogonal to guidance (mean {result['orthogonal_share']:.2f})", fontsize=9)
    for ax in (left, middle, right):
        ax.grid(True, alpha=0.3)
    figure.suptitle(textwrap.shorten(f"{model}: {setting_label(result['freeu'])}", 110), fontsize=9)
    figure.tight_layout()
    path = Path(out) / filename
    figure.savefig(path)
    return [path]
