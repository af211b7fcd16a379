"""``freeu demo``: FreeU on the bundled demo model, offline, on a CPU, in well under two minutes.

The same seeds are sampled with FreeU off and at a few settings (a b-only row, an s-only row, the full setting in
version 2 and in version 1, a mild one), all through the public API (``freeu.apply`` as a context manager), and
three things are written into one folder:

- ``demo-grid.png``: rows are settings, columns are seeds, every cell from the same noise as the cells above it; the
  title states the sampler, the convention and the version. The PNG carries all settings in its ``freeu`` text chunk.
- ``demo-spectra.png``: the radially averaged power spectrum of each row's images (mean over seeds and channels),
  with held-out real patches for reference, and each row's spectrum divided by FreeU off.
- ``demo.json``: settings, seeds, sampler, and per row: the mean absolute change from FreeU off (in 8-bit grey
  levels), the share of power above half the Nyquist frequency, and the distances to held-out patches (Laplacian
  SWD and radial power spectrum distance; with a handful of seeds these are noisy: the model card has 1024-sample
  figures).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import freeu

from .data import HELD_OUT_IMAGES, HELD_OUT_SEED, PatchSampler
from .metrics import radial_power_spectrum, rapsd_distance, swd_laplacian
from .model import WEIGHTS_DIR, load_exported
from .train import sample_ddim

__all__ = ["DEFAULT_ROWS", "DemoRow", "high_frequency_share", "run_demo", "summary"]

logger = logging.getLogger(__name__)

#: Held-out patches drawn for the reference spectrum and distances (fixed seed, so every run compares alike).
REFERENCE_PATCHES = 256


@dataclass(frozen=True)
class DemoRow:
    """One row of the demo grid: a label and the keyword arguments of ``freeu.apply`` (``None``: FreeU off)."""

    label: str
    settings: dict[str, Any] | None = field(default=None)

    def describe(self) -> str:
        if self.settings is None:
            return self.label
        s = self.settings
        return f"{self.label}\nb1={s['b1']:g} b2={s['b2']:g}\ns1={s['s1']:g} s2={s['s2']:g}\nv{s['version']}"


def _setting(b1: float, b2: float, s1: float, s2: float, version: int = 2) -> dict[str, Any]:
    return dict(b1=b1, b2=b2, s1=s1, s2=s2, version=version, convention="official")


#: The demo's rows. The factors are the SD 1.5 ones from the authors' README (b1 1.5, b2 1.6, s1 0.9, s2 0.2), split
#: into their b and s halves, in version 2 and 1, and a mild setting; the demo model's two stages sit at the same
#: relative widths as SD's (4x and 2x the base width), see ``freeu.demo.model``.
DEFAULT_ROWS: tuple[DemoRow, ...] = (
    DemoRow("FreeU off"),
    DemoRow("b only", _setting(1.5, 1.6, 1.0, 1.0)),
    DemoRow("s only", _setting(1.0, 1.0, 0.9, 0.2)),
    DemoRow("FreeU", _setting(1.5, 1.6, 0.9, 0.2)),
    DemoRow("FreeU v1", _setting(1.5, 1.6, 0.9, 0.2, version=1)),
    DemoRow("mild", _setting(1.1, 1.2, 0.9, 0.9)),
)


def high_frequency_share(images: torch.Tensor) -> torch.Tensor:
    """Per image, the fraction of its (mean-removed) power at radial frequencies above half the Nyquist frequency.

    Uses :func:`freeu.demo.metrics.radial_power_spectrum` (mean power per integer radius ``1..min(H, W)//2``),
    weighted by the number of Fourier bins on each ring (``2 pi r``), so the share is one of total power.
    """
    spectrum = radial_power_spectrum(images)
    radius = torch.arange(1, spectrum.shape[1] + 1, dtype=torch.float64)
    power = spectrum * radius
    high = radius > spectrum.shape[1] / 2
    return power[:, high].sum(dim=1) / power.sum(dim=1).clamp_min(1e-30)


def _reference_patches(count: int) -> torch.Tensor | None:
    """Held-out real patches (``[0, 1]``), or ``None`` where scikit-image is not installed."""
    try:
        sampler = PatchSampler(HELD_OUT_IMAGES, seed=HELD_OUT_SEED, allow_held_out=True)
    except ImportError:
        logger.warning("scikit-image is missing: no held-out reference (pip install 'freeu[demo]')")
        return None
    return sampler.sample(0, count)[0]


def _figures(images: torch.Tensor, baseline: torch.Tensor, reference: torch.Tensor | None) -> dict[str, Any]:
    to8 = lambda x: (x * 255).round()  # noqa: E731 - the grey levels the PNG holds
    out = {
        "change_vs_off_grey_levels": float((to8(images) - to8(baseline)).abs().mean()),
        "high_frequency_share": float(high_frequency_share(images).mean()),
    }
    if reference is not None:
        out["swd_to_held_out"] = float(swd_laplacian(images, reference).mean())
        out["rapsd_to_held_out"] = float(rapsd_distance(images, reference))
    return out


def _to_pil(image: torch.Tensor):
    from PIL import Image

    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(array)


def _plot_spectra(path: Path, rows: Sequence[DemoRow], spectra: list[torch.Tensor], reference, title: str) -> None:
    from matplotlib.figure import Figure

    radius = torch.arange(1, spectra[0].shape[0] + 1).numpy()
    fig = Figure(figsize=(11, 4.2), dpi=110)
    left, right = fig.subplots(1, 2)
    for row, spectrum in zip(rows, spectra, strict=True):
        style = dict(color="black", linewidth=2.2) if row.settings is None else dict(linewidth=1.4)
        left.semilogy(radius, spectrum.numpy(), label=row.label, **style)
        right.semilogy(radius, (spectrum / spectra[0]).numpy(), label=row.label, **style)
    if reference is not None:
        left.semilogy(radius, reference.numpy(), "k--", linewidth=1, label="held-out real patches")
    left.set(xlabel="radial frequency (cycles per 32 px)", ylabel="mean power", title="radially averaged power")
    right.axhline(1.0, color="grey", linewidth=0.8)
    right.set(xlabel="radial frequency (cycles per 32 px)", ylabel="power / power with FreeU off (log)",
              title="relative to FreeU off")  # fmt: skip
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


def run_demo(
    out: str | Path = "freeu-demo",
    *,
    seeds: Sequence[int] = tuple(range(8)),
    steps: int = 25,
    rows: Sequence[DemoRow] = DEFAULT_ROWS,
    weights: str | Path = WEIGHTS_DIR,
    progress: bool = True,
) -> dict[str, Any]:
    """Sample ``seeds`` with every row's setting, write the grid, the spectrum plot and the JSON into ``out``.

    Returns the JSON's content, whose ``"files"`` names what was written. The first row should be FreeU off: the
    change and the spectrum ratios are taken against it.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if not rows or rows[0].settings is not None:
        raise ValueError("rows must start with the FreeU-off row (settings=None): the others are compared with it")
    for row in rows[1:]:  # validate every setting before the long part
        freeu.FreeUConfig(**row.settings)
    started = time.perf_counter()
    unet, config = load_exported(weights)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    from tqdm.auto import tqdm

    samples: list[torch.Tensor] = []
    with tqdm(total=len(rows) * steps, desc="demo sampling", unit="step", disable=not progress) as bar:
        for row in rows:
            bar.set_postfix_str(row.label)
            if row.settings is None:
                images = sample_ddim(unet, seeds, steps, scheduler_config=config["scheduler"], on_step=bar.update)
            else:
                with freeu.apply(unet, **row.settings):
                    images = sample_ddim(unet, seeds, steps, scheduler_config=config["scheduler"], on_step=bar.update)
            samples.append(images)

    reference = _reference_patches(REFERENCE_PATCHES)
    training = config.get("training", {})
    sampler = f"DDIM {steps} steps, eta 0"
    title = (
        f"FreeU on the bundled demo model (32x32 pixel U-Net, {training.get('parameters', 0) / 1e6:.1f}M parameters), "
        f"{sampler}; convention official, version 2 unless marked v1"
    )
    record_rows = []
    for row, images in zip(rows, samples, strict=True):
        record_rows.append(
            {"label": row.label, "freeu": row.settings, "figures": _figures(images, samples[0], reference)}
        )
    record: dict[str, Any] = {
        "model": "bundled demo model (freeu.demo)",
        "weights": str(weights),
        "ema_step": training.get("ema_step"),
        "seeds": seeds,
        "sampler": sampler,
        "rows": record_rows,
        "reference": f"{REFERENCE_PATCHES} held-out patches of {', '.join(HELD_OUT_IMAGES)}" if reference is not None
        else None,
        "notes": {
            "change_vs_off_grey_levels": "mean |image - image with FreeU off| over pixels and channels, 0-255 scale",
            "high_frequency_share": "power above half the Nyquist frequency / total power (mean removed), mean over "
            "seeds",
            "swd_to_held_out": "Laplacian-pyramid sliced Wasserstein distance to held-out patches (lower is closer; "
            f"noisy with {len(seeds)} samples)",
            "rapsd_to_held_out": "RMS log10 ratio of radially averaged power spectra to held-out patches",
        },
    }  # fmt: skip

    from freeu.imaging import grid, save_png

    picture = grid(
        [[_to_pil(image) for image in images] for images in samples],
        row_labels=[row.describe() for row in rows],
        col_labels=[f"seed {s}" for s in seeds],
        title=title,
        footer="Same noise in every column. Official convention: stage 1 at the 128-wide joins, stage 2 at the "
        "64-wide ones. Figures: demo.json.",
        min_cell=96,
    )
    files = {"grid": out / "demo-grid.png", "spectra": out / "demo-spectra.png", "json": out / "demo.json"}
    save_png(picture, files["grid"], {k: v for k, v in record.items() if k != "notes"})
    spectra = [radial_power_spectrum(images).mean(dim=0) for images in samples]
    reference_spectrum = radial_power_spectrum(reference).mean(dim=0) if reference is not None else None
    _plot_spectra(files["spectra"], rows, spectra, reference_spectrum, title)
    record["spectra"] = {row.label: [float(v) for v in s] for row, s in zip(rows, spectra, strict=True)}
    if reference_spectrum is not None:
        record["spectra"]["held-out real patches"] = [float(v) for v in reference_spectrum]
    record["seconds"] = round(time.perf_counter() - started, 1)
    record["files"] = {k: str(v) for k, v in files.items()}
    files["json"].write_text(json.dumps(record, indent=2) + "\n")
    return record


def summary(record: dict[str, Any]) -> str:
    """A few lines for the terminal: each row's figures and where the files are."""
    lines = [f"{record['sampler']}, seeds {record['seeds']}, {record['seconds']} s"]
    for row in record["rows"]:
        f = row["figures"]
        swd = f" | SWD to held-out {f['swd_to_held_out']:.3f}" if "swd_to_held_out" in f else ""
        lines.append(
            f"  {row['label']:10s} change {f['change_vs_off_grey_levels']:5.1f} grey levels | "
            f"high-frequency share {f['high_frequency_share']:.3f}{swd}"
        )
    lines += [f"wrote {path}" for path in record["files"].values()]
    return "\n".join(lines)
