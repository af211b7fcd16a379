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
    """The guidance meter per step: FreeU's equivalent guidance scale against the run's own scale (left), and the
    share of FreeU's change that no guidance scale makes (right)."""
    figure = figure_class()(figsize=(9, 3.4), dpi=110)
    left, right = figure.subplots(1, 2)
    steps = [s["index"] + 1 for s in result["steps"]]
    left.plot(steps, [s["equivalent"] for s in result["steps"]], marker="o", color="tab:red",
              label=f"FreeU's equivalent (mean {result['equivalent']:.3g})")  # fmt: skip
    left.axhline(result["scale"], linestyle="--", color="black", label=f"guidance scale {result['scale']:g}")
    left.set_xlabel("denoising step")
    left.set_ylabel("guidance scale")
    left.set_title("equivalent guidance scale", fontsize=9)
    left.legend(fontsize=7)
    right.plot(steps, [s["orthogonal_share"] for s in result["steps"]], marker="o", color="tab:blue")
    right.set_ylim(0, 1.05)
    right.set_xlabel("denoising step")
    right.set_ylabel("share of |change|^2")
    right.set_title(f"orthogonal to guidance (mean {result['orthogonal_share']:.2f})", fontsize=9)
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
    figure.suptitle(textwrap.shorten(f"{model}: {setting_label(result['freeu'])}", 110), fontsize=9)
    figure.tight_layout()
    path = Path(out) / filename
    figure.savefig(path)
    return [path]
