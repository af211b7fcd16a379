"""The figures of ``freeu analyze`` (matplotlib, imported only when a figure is drawn): one function per
experiment of :mod:`.experiments`, each writing PNG files into a folder and returning their paths."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import torch

from .. import plotting
from ..plotting import setting_label

__all__ = ["plot_b_sweep", "plot_features", "plot_trajectory"]


def _display(x: torch.Tensor, space: str, centred: bool) -> Any:
    """``(N, C, H, W)`` as RGB/grey arrays in ``[0, 1]``: pixels by ``(x + 1) / 2``; high parts (``centred``) and
    latents stretched to the row's full range, the same stretch for every column so they stay comparable."""
    x = x.float()
    if x.shape[1] > 3:
        x = x[:, :3]
    if centred:
        scale = float(x.abs().max()) or 1.0
        x = 0.5 + x / (2 * scale)
    elif space == "pixel":
        x = (x + 1) / 2
    else:
        low, high = float(x.min()), float(x.max())
        x = (x - low) / ((high - low) or 1.0)
    x = x.clamp(0, 1)
    if x.shape[1] == 1:
        return x[:, 0].numpy()
    if x.shape[1] == 2:
        x = torch.cat([x, torch.zeros_like(x[:, :1])], dim=1)
    return x.permute(0, 2, 3, 1).numpy()


def plot_trajectory(result: dict[str, Any], out: str | Path, model: str) -> list[Path]:
    """Per space: ``trajectory-strip-SPACE.png`` (rows x0, low, high and the x_t ones; columns the strip steps) and
    ``trajectory-amplitude-SPACE.png`` (the curves per step, coloured by step, and the high-frequency share and the
    per-step change of the low and high parts)."""
    figure_class = plotting.figure_class()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    setting = setting_label(result["freeu"])
    which = ["x0", "xt"] if result["noisy"] else ["x0"]
    names = {"x0": "predicted x0", "xt": "noisy x_t"}
    for space, numbers in result["spaces"].items():
        title = f"{model} | {setting} | path {result['path']}, {space} space, cutoff {result['cutoff']:g} x Nyquist"
        images = result["images"][space]
        rows = [(f"{w}{p}", f"{w}{label}") for w in which for p, label in
                (("", ""), ("_low", " low"), ("_high", " high\n(stretched)"))]  # fmt: skip
        cols = result["strip_steps"]
        width = max(6.0, 1.4 * len(cols) + 1.5)
        fig = figure_class(figsize=(width, 1.5 * len(rows) + 1.2), layout="constrained")
        axes = fig.subplots(len(rows), len(cols), squeeze=False)
        for r, (key, label) in enumerate(rows):
            shown = _display(images[key], space, centred=key.endswith("_high"))
            for c, step in enumerate(cols):
                ax = axes[r][c]
                ax.imshow(shown[c], cmap="gray" if shown.ndim == 3 else None, vmin=0, vmax=1, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(f"step {step + 1}\nt={result['timesteps'][step]}", fontsize=8)
                if c == 0:
                    ax.set_ylabel(label, fontsize=8)
        heading = f"Denoising trajectory, seed {result['seeds'][0]}: {title}"
        fig.suptitle(textwrap.fill(heading, width=int(width * 12)), fontsize=9)
        written.append(out / f"trajectory-strip-{space}.png")
        fig.savefig(written[-1], dpi=110)

        fig = figure_class(figsize=(6 * len(which) + 5, 4.6), layout="constrained")
        axes = fig.subplots(1, len(which) + 1, squeeze=False)[0]
        import matplotlib.cm as cm

        steps = len(numbers[which[0]])
        for ax, w in zip(axes, which, strict=False):
            for k, curve in enumerate(numbers[w]):
                label = f"step {k + 1}" if k in (0, steps - 1) or k in cols else None
                ax.plot(numbers["frequency"], curve, color=cm.viridis(k / max(steps - 1, 1)), lw=1.2, label=label)
            ax.set_xlabel("frequency (0 .. pi)")
            ax.set_ylabel("relative log amplitude (log |F| - log |F(0)|)")
            ax.set_title(f"{names[w]}, per step (mean over {len(result['seeds'])} seeds and channels)", fontsize=9)
            ax.legend(fontsize=7, title="sampling step", title_fontsize=7)
            ax.grid(alpha=0.3)
        ax = axes[-1]
        x = list(range(1, steps + 1))
        for w, style in zip(which, ("-", "--"), strict=False):
            ax.plot(x, numbers[f"{w}_high_fraction"], style, color="C3", label=f"{w}: high-frequency energy share")
            ax.plot(x[1:], numbers[f"{w}_low_change"], style, color="C0", label=f"{w}: RMS change of low part")
            ax.plot(x[1:], numbers[f"{w}_high_change"], style, color="C1", label=f"{w}: RMS change of high part")
        ax.set_xlabel("sampling step")
        ax.set_ylabel("share (0..1) / RMS change (sample units)")
        ax.set_title(f"low/high split at {result['cutoff']:g} x Nyquist", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.suptitle(f"Relative log amplitude along the trajectory\n{title}", fontsize=9)
        written.append(out / f"trajectory-amplitude-{space}.png")
        fig.savefig(written[-1], dpi=110)
    return written


def plot_b_sweep(result: dict[str, Any], out: str | Path, model: str) -> list[Path]:
    """Per space, ``b-sweep-SPACE.png``: the final samples' curve for each ``b``, and the first seed's samples."""
    figure_class = plotting.figure_class()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    base = result["base"]
    varied = "b1 = b2" if result["factor"] == "both" else result["factor"]
    others = ", ".join(f"{k}={base[k]:g}" for k in ("b1", "b2", "s1", "s2") if k not in (varied, "b1 = b2"))
    if result["factor"] == "both":
        others = f"s1={base['s1']:g}, s2={base['s2']:g}"
    import matplotlib.cm as cm

    for space, numbers in result["spaces"].items():
        values = result["values"]
        fig = figure_class(figsize=(11, 5.2), layout="constrained")
        grid = fig.add_gridspec(2, max(len(values), 1), height_ratios=[3, 1])
        ax = fig.add_subplot(grid[0, :])
        for k, (b, curve) in enumerate(zip(values, numbers["curves"], strict=True)):
            color = cm.plasma(k / max(len(values) - 1, 1) * 0.85)
            ax.plot(numbers["frequency"], curve, color=color, lw=1.5, label=f"{varied} = {b:g}")
        ax.set_xlabel("frequency (0 .. pi)")
        ax.set_ylabel("relative log amplitude (log |F| - log |F(0)|)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        shown = _display(result["images"][space], space, centred=False)
        for k, b in enumerate(values):
            small = fig.add_subplot(grid[1, k])
            small.imshow(shown[k], cmap="gray" if shown.ndim == 3 else None, vmin=0, vmax=1, interpolation="nearest")
            small.set_xticks([])
            small.set_yticks([])
            small.set_xlabel(f"{varied}={b:g}, seed {result['seeds'][0]}", fontsize=7)
        fig.suptitle(
            f"Final samples vs backbone factor ({others}, v{base['version']}, {base['convention']}; "
            f"{len(result['seeds'])} seeds)\n{model} | path {result['path']}, {space} space",
            fontsize=9,
        )
        written.append(out / f"b-sweep-{space}.png")
        fig.savefig(written[-1], dpi=110)
    return written


def plot_features(result: dict[str, Any], out: str | Path, model: str) -> list[Path]:
    """``features.png``: one panel per skip join, backbone / skip / fused curves, FreeU off dashed and on solid."""
    figure_class = plotting.figure_class()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    joins = result["joins"]
    cols = min(4, len(joins))
    rows = -(-len(joins) // cols)
    fig = figure_class(figsize=(3.6 * cols, 3.0 * rows + 1.0), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    shown = (("backbone_out", "backbone", "C0"), ("skip_out", "skip", "C1"), ("fused", "fused", "C2"))
    for ax, join in zip(axes.flat, joins, strict=False):
        for kind, label, color in shown:
            ax.plot(join["frequency"], join["off"][kind], "--", color=color, lw=1.2, label=f"{label}, FreeU off")
            ax.plot(join["frequency"], join["on"][kind], "-", color=color, lw=1.5, label=f"{label}, FreeU on")
        stage = "untouched" if join["stage"] is None else f"stage {join['stage']}"
        h, w = join["size"]
        ax.set_title(
            f"{join['name']} ({stage})\n"
            f"backbone {join['backbone_channels']} + skip {join['skip_channels']} ch, {h}x{w}",
            fontsize=8,
        )
        ax.set_xlabel("frequency (0 .. pi)", fontsize=8)
        ax.set_ylabel("relative log amplitude", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(joins) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(
        f"Skip-join features (FreeU's output at each join; 'fused' = cat(backbone, skip) as the decoder sees it)\n"
        f"{model} | {setting_label(result['freeu'])} | path {result['path']}, U-Net's own space, mean over "
        f"{result['steps']} steps x {len(result['seeds'])} seeds",
        fontsize=9,
    )
    path = out / "features.png"
    fig.savefig(path, dpi=110)
    return [path]
