"""``freeu demo``: FreeU on a bundled demo model, offline, on a CPU, in well under two minutes.

By default the model is the class-conditional demo model (``--model demo-classes``: guided, its class is the
prompt); ``--model demo`` is the unconditional one. The same seeds (on the class model: the same classes and seeds)
are sampled with FreeU off and at a few settings (a b-only row, an s-only row, the full setting in version 2 and in
version 1, a mild one), all through the public API, and written into one folder:

- ``demo-guidance.png`` and ``demo-guidance.json`` (guided models): how much of FreeU is stronger guidance. For the
  same classes and seeds, FreeU off at the model's guidance, FreeU on, and FreeU off at FreeU's equivalent guidance
  as the guidance meter (``freeu.apps.guidance``) measures it on these samples, with the numbers.
- ``demo-grid.png``: rows are settings, columns are seeds (classes and seeds), every cell from the same noise as the
  cells above it; the title states the sampler, the convention and the version. The PNG carries all settings in its
  ``freeu`` text chunk.
- ``demo-spectra.png``: the radially averaged power spectrum of each row's images (mean over seeds and channels),
  with held-out real patches for reference, and each row's spectrum divided by FreeU off.
- ``demo.json``: settings, seeds, sampler, and per row: the mean absolute change from FreeU off (in 8-bit grey
  levels), the share of power above half the Nyquist frequency, and the distances to held-out patches (Laplacian
  SWD and radial power spectrum distance; with a handful of seeds these are noisy: the model cards have figures on
  hundreds of samples).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

import freeu

from ..demo_data import HELD_OUT_IMAGES, HELD_OUT_SEED, PatchSampler
from ..demo_model import CLASSES_WEIGHTS_DIR, DEFAULT_ROWS, DemoRow
from ..errors import require
from ..imaging import grid, save_png
from ..measures import high_frequency_share, radial_power_spectrum, rapsd_distance, swd_laplacian
from ..options import device, positive_int, seed, writable_folder
from ..runtime import (
    DEFAULT_MODEL,
    DEMO,
    DEMO_CLASSES,
    Request,
    UNetModel,
    default_device,
    is_demo_folder,
    load_demo,
    load_model,
    to_pil,
    to_unit_range,
)

if TYPE_CHECKING:
    from ..guidance import GuidanceTrace

__all__ = [
    "GUIDED_CLASSES",
    "DemoOptions",
    "guided_summary",
    "load_demo_model",
    "register",
    "run",
    "run_demo",
    "run_guided_demo",
    "summary",
]

logger = logging.getLogger(__name__)

#: Held-out patches drawn for the reference spectrum and distances (fixed seed, so every run compares alike).
REFERENCE_PATCHES = 256


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


#: The classes of the demo on a class-conditional model (columns: each class with every seed), and the setting of
#: its guided comparison (the SD 1.5 factors, version 2).
GUIDED_CLASSES: tuple[str, ...] = ("brick", "coins", "grass", "text")
GUIDED_SETTING = dict(b1=1.5, b2=1.6, s1=0.9, s2=0.2, version=2, convention="official")


#: Samples already made in one ``freeu demo`` run, by (seeds, request, FreeU settings): the guided comparison's FreeU
#: off and FreeU rows are the grid's first and fourth, sampled once.
SampleCache = dict[tuple[Any, ...], torch.Tensor]
#: The guided comparison's rows by name (``"off"``, ``"on"``, ``"matched"``): every class's samples, one after another.
Rows = dict[str, torch.Tensor]


def _sample(model: UNetModel, seeds: Sequence[int], request: Request, setting: freeu.FreeUConfig | None,
            tick: Any, cache: SampleCache | None) -> torch.Tensor:  # fmt: skip
    """``model``'s samples in ``[0, 1]`` (taken from ``cache`` when they are there); ``tick()`` once per step."""
    request = model.check(request)
    key = (tuple(int(s) for s in seeds), request, None if setting is None else json.dumps(setting.to_dict()))
    if cache is not None and key in cache:
        for _ in range(request.steps):
            tick()
        return cache[key]
    final = model.sample(list(seeds), request, freeu=setting, on_step=lambda _: tick(), output="tensor",
                         batch_size=64)  # fmt: skip
    images = to_unit_range(final)
    if cache is not None:
        cache[key] = images
    return images


def load_demo_model(weights: str | Path | None = None, device: str = "cpu") -> UNetModel:
    """The demo model ``weights`` names: ``None`` or ``"demo-classes"`` the bundled class-conditional one, ``"demo"``
    the unconditional one, else a folder of exported demo weights (``FileNotFoundError`` naming what is missing)."""
    name = DEFAULT_MODEL if weights is None else str(weights)
    if is_demo_folder(name) is None:
        return load_demo(Path(name), device=device)  # not a demo folder: load_demo names the file that is missing
    model = load_model(name, device=device)
    assert isinstance(model, UNetModel)
    return model


def _columns(model: UNetModel, seeds: Sequence[int], classes: Sequence[str] | None) -> list[tuple[str | None, int]]:
    """The grid's columns: ``(class, seed)`` for every class and seed on a class-conditional model, else
    ``(None, seed)``; refuses classes the model does not have."""
    if model.classes is None:
        if classes is not None:
            raise ValueError(f"classes: {model.name} is unconditional; leave the classes out")
        return [(None, s) for s in seeds]
    classes = list(GUIDED_CLASSES if classes is None else classes)
    unknown = [c for c in classes if c not in model.classes]
    if not classes or unknown:
        raise ValueError(f"classes must be a non-empty list of the model's classes {list(model.classes)}, got "
                         f"{classes}")  # fmt: skip
    return [(c, s) for c in classes for s in seeds]


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    """What ``freeu demo`` samples and how: both its parts (:func:`run_demo`, :func:`run_guided_demo`) take one.

    ``seeds``: default 0..7 on an unconditional model, 0 and 1 on a class-conditional one, whose every class of
    ``classes`` (default :data:`GUIDED_CLASSES`) is sampled with every seed. ``steps``: DDIM steps. ``weights``: the
    model (see :func:`load_demo_model`; default the class-conditional one), loaded on ``device`` where no loaded model
    is given. ``progress``: a progress bar.
    """

    seeds: Sequence[int] | None = None
    classes: Sequence[str] | None = None
    steps: int = 25
    weights: str | Path | None = None
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {self.steps!r}")
        for name in ("seeds", "classes"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(getattr(self, name)))


def run_demo(
    out: str | Path = "freeu-demo",
    options: DemoOptions = DemoOptions(),
    *,
    rows: Sequence[DemoRow] = DEFAULT_ROWS,
    model: UNetModel | None = None,
    cache: SampleCache | None = None,
) -> dict[str, Any]:
    """Sample the seeds (and classes) of ``options`` with every row's setting, write the grid, the spectrum plot and
    the JSON into ``out``.

    ``model`` is sampled where given, else the one ``options`` names. On a class-conditional model every class is
    sampled with every seed at the model's guidance. Sampling runs on the model's device; the initial noise is drawn
    on the CPU per seed, so the seeds give the same noise on every device. Returns the JSON's content, whose
    ``"files"`` names what was written. The first row should be FreeU off: the change and the spectrum ratios are
    taken against it.
    """
    if not rows or rows[0].settings is not None:
        raise ValueError("rows must start with the FreeU-off row (settings=None): the others are compared with it")
    configs = [None if row.settings is None else freeu.FreeUConfig(**row.settings) for row in rows]  # validated
    started = time.perf_counter()
    model = model if model is not None else load_demo_model(options.weights, device=options.device)
    seeds = options.seeds if options.seeds is not None else range(8) if model.classes is None else range(2)
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    columns = _columns(model, seeds, options.classes)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    samples = _sample_rows(model, seeds, columns, list(zip(rows, configs, strict=True)), options, cache)
    reference = _reference_patches(REFERENCE_PATCHES)
    sampler = f"DDIM {options.steps} steps, eta 0"
    record = _grid_record(model, seeds, columns, rows, samples, reference, sampler)
    title = _grid_title(model, sampler)
    files = {"grid": out / "demo-grid.png", "spectra": out / "demo-spectra.png", "json": out / "demo.json"}
    picture = grid(
        [[to_pil(image) for image in images] for images in samples],
        row_labels=[row.describe() for row in rows],
        col_labels=[f"seed {s}" if c is None else f"{c}, seed {s}" for c, s in columns],
        title=title,
        footer="Same noise in every column. Official convention: stage 1 at the 128-wide joins, stage 2 at the "
        "64-wide ones. Figures: demo.json.",
        min_cell=96,
    )
    save_png(picture, files["grid"], {k: v for k, v in record.items() if k != "notes"})
    record["spectra"] = _spectra(files["spectra"], rows, samples, reference, title)
    record["seconds"] = round(time.perf_counter() - started, 1)
    record["files"] = {k: str(v) for k, v in files.items()}
    files["json"].write_text(json.dumps(record, indent=2) + "\n")
    return record


def _groups(columns: Sequence[tuple[str | None, int]]) -> list[str | None]:
    """The classes of the grid's columns in order, one batch each (``[None]`` for an unconditional model)."""
    return list(dict.fromkeys(c for c, _ in columns))


def _sample_rows(model: UNetModel, seeds: Sequence[int], columns: Sequence[tuple[str | None, int]],
                 rows: Sequence[tuple[DemoRow, freeu.FreeUConfig | None]], options: DemoOptions,
                 cache: SampleCache | None) -> list[torch.Tensor]:  # fmt: skip
    """Every row's samples in ``[0, 1]``, in the order of ``columns``: one batch of ``seeds`` per class."""
    from tqdm.auto import tqdm

    groups = _groups(columns)
    samples: list[torch.Tensor] = []
    total = len(rows) * len(groups) * options.steps
    with tqdm(total=total, desc="demo sampling", unit="step", disable=not options.progress) as bar:
        for row, setting in rows:
            bar.set_postfix_str(row.label)
            parts = []
            for group in groups:
                request = Request(steps=options.steps, prompt=group)
                parts.append(_sample(model, seeds, request, setting, bar.update, cache))
            samples.append(torch.cat(parts))
    return samples


def _grid_title(model: UNetModel, sampler: str) -> str:
    """The title of the grid and the spectra: the model, its size, the sampler, the guidance, the convention."""
    training = model.config.get("training", {})
    guided = model.classes is not None
    what = f"the {'class-conditional ' if guided else ''}demo model"
    return (
        f"FreeU on {what} (32x32 pixel U-Net, {training.get('parameters', 0) / 1e6:.1f}M parameters), {sampler}"
        + (f", guidance {model.default_guidance:g}" if guided else "")
        + "; convention official, version 2 unless marked v1"
    )


def _grid_record(model: UNetModel, seeds: list[int], columns: Sequence[tuple[str | None, int]],
                 rows: Sequence[DemoRow], samples: list[torch.Tensor], reference: torch.Tensor | None,
                 sampler: str) -> dict[str, Any]:  # fmt: skip
    """``demo.json``'s content but the spectra, the time and the files: the run and every row's figures."""
    training = model.config.get("training", {})
    guided = model.classes is not None
    record_rows = []
    for row, images in zip(rows, samples, strict=True):
        record_rows.append(
            {"label": row.label, "freeu": row.settings, "figures": _figures(images, samples[0], reference)}
        )
    return {
        "model": model.description,
        "weights": model.name,
        "ema_step": training.get("ema_step"),
        "seeds": seeds,
        "classes": _groups(columns) if guided else None,
        "guidance": model.default_guidance if guided else None,
        "sampler": sampler,
        "rows": record_rows,
        "reference": f"{REFERENCE_PATCHES} held-out patches of {', '.join(HELD_OUT_IMAGES)}" if reference is not None
        else None,
        "notes": {
            "change_vs_off_grey_levels": "mean |image - image with FreeU off| over pixels and channels, 0-255 scale",
            "high_frequency_share": "power above half the Nyquist frequency / total power (mean removed), mean over "
            "seeds",
            "swd_to_held_out": "Laplacian-pyramid sliced Wasserstein distance to held-out patches (lower is closer; "
            f"noisy with {len(columns)} samples)",
            "rapsd_to_held_out": "RMS log10 ratio of radially averaged power spectra to held-out patches",
        },
    }  # fmt: skip


def _spectra(path: Path, rows: Sequence[DemoRow], samples: list[torch.Tensor], reference: torch.Tensor | None,
             title: str) -> dict[str, list[float]]:  # fmt: skip
    """Each row's mean radial power spectrum (and the held-out patches'), plotted into ``path``."""
    spectra = [radial_power_spectrum(images).mean(dim=0) for images in samples]
    reference_spectrum = radial_power_spectrum(reference).mean(dim=0) if reference is not None else None
    _plot_spectra(path, rows, spectra, reference_spectrum, title)
    numbers = {row.label: [float(v) for v in s] for row, s in zip(rows, spectra, strict=True)}
    if reference_spectrum is not None:
        numbers["held-out real patches"] = [float(v) for v in reference_spectrum]
    return numbers


def run_guided_demo(
    out: str | Path = "freeu-demo",
    options: DemoOptions = DemoOptions(),
    *,
    setting: dict[str, Any] = GUIDED_SETTING,
    model: UNetModel | None = None,
    cache: SampleCache | None = None,
) -> dict[str, Any] | None:
    """How much of FreeU is stronger guidance, on a class-conditional demo model (``model``, else the one
    ``options`` names, default the bundled one): for the same classes and seeds (default :data:`GUIDED_CLASSES`,
    seeds 0 and 1), FreeU off at the model's guidance, FreeU on, and FreeU off at FreeU's equivalent guidance (the
    guidance meter on these samples; each class at its own, as ``freeu eval --guidance-match prompt`` matches). The
    record states the equivalent scale as the mean over steps and weighted by step, and per frequency band. Writes
    ``demo-guidance.png`` and ``demo-guidance.json``; ``None`` where the weights are not installed."""
    if model is None:
        folder = Path(options.weights) if options.weights is not None else CLASSES_WEIGHTS_DIR
        if not (folder / "unet.safetensors").is_file():
            logger.warning("no class-conditional demo weights in %s: no guided demo", folder)
            return None
        model = load_demo_model(options.weights, device=options.device)
    seeds = (0, 1) if options.seeds is None else options.seeds
    classes = GUIDED_CLASSES if options.classes is None else options.classes
    if model.classes is None:
        raise ValueError(f"{model.name} is an unconditional model; the guided demo needs a class-conditional one")
    unknown = [c for c in classes if c not in model.classes]
    if unknown:
        raise ValueError(f"classes {unknown} are not the model's; it has {list(model.classes)}")
    config = freeu.FreeUConfig(**setting)
    scale = model.default_guidance
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    traces, images = _guided_samples(model, seeds, classes, config, options, cache)
    equivalent = _mean_equivalent(traces)
    share = sum(t.orthogonal_share for t in traces) / len(traces)
    matched = {c: round(t.equivalent, 2) for c, t in zip(classes, traces, strict=True)}
    figures = {k: _figures(v, images["off"], None) for k, v in images.items()}
    shown = f"{min(matched.values()):g}" if len(set(matched.values())) == 1 else (
        f"{min(matched.values()):g} to {max(matched.values()):g}")  # fmt: skip
    labels = {
        "off": f"FreeU off\nguidance {scale:g}",
        "on": f"FreeU\n{config.label().split(' (')[0]}\nguidance {scale:g}",
        "matched": f"FreeU off at each\nclass's equivalent\nguidance ({shown})",
    }
    picture = grid(
        [[to_pil(image) for image in images[k]] for k in labels],
        row_labels=list(labels.values()),
        col_labels=[f"{c}, seed {int(s)}" for c in classes for s in seeds],
        title=f"How much of FreeU is stronger guidance? The class-conditional demo model, DDIM {options.steps} steps; "
        f"FreeU acts like guidance {equivalent:.2f} instead of {scale:g}, {share:.0%} of its change is orthogonal to "
        "the guidance direction",
        footer="Same noise in every column. The guidance meter: docs/eval.md. Figures: demo-guidance.json.",
        min_cell=96,
    )  # fmt: skip
    record: dict[str, Any] = {
        "model": model.description, "classes": list(classes), "seeds": [int(s) for s in seeds],
        "sampler": f"DDIM {options.steps} steps, eta 0", "guidance": scale, "freeu": config.to_dict(),
        "equivalent_guidance": equivalent,
        "equivalent_weighted": sum(t.equivalent_weighted for t in traces) / len(traces),
        "equivalent_low": sum(t.band_equivalent("low") for t in traces) / len(traces),
        "equivalent_high": sum(t.band_equivalent("high") for t in traces) / len(traces),
        "orthogonal_share": share, "matched_guidance": matched,
        "per_class": {c: {"equivalent": t.equivalent, "equivalent_weighted": t.equivalent_weighted,
                          "equivalent_low": t.band_equivalent("low"), "orthogonal_share": t.orthogonal_share}
                      for c, t in zip(classes, traces, strict=True)},
        "change_vs_off_grey_levels": {k: f["change_vs_off_grey_levels"] for k, f in figures.items()},
        "change_freeu_vs_matched_grey_levels": float(((images["on"] - images["matched"]) * 255).round().abs().mean()),
    }  # fmt: skip
    files = {"guided_grid": out / "demo-guidance.png", "guided_json": out / "demo-guidance.json"}
    save_png(picture, files["guided_grid"], {k: v for k, v in record.items() if k != "per_class"})
    record["seconds"] = round(time.perf_counter() - started, 1)
    record["files"] = {k: str(v) for k, v in files.items()}
    files["guided_json"].write_text(json.dumps(record, indent=2) + "\n")
    return record


def _mean_equivalent(traces: Sequence[GuidanceTrace]) -> float:
    """FreeU's equivalent guidance scale, the mean over the classes' guidance-meter traces."""
    return sum(t.equivalent for t in traces) / len(traces)


def _guided_samples(model: UNetModel, seeds: Sequence[int], classes: Sequence[str], config: freeu.FreeUConfig,
                    options: DemoOptions, cache: SampleCache | None) -> tuple[list[GuidanceTrace], Rows]:  # fmt: skip
    """Per class, the guidance meter's trace of ``config`` and the samples with FreeU off and on at the model's
    guidance; then FreeU off at each class's equivalent guidance (rounded to 0.01). Returns the traces and the three
    rows (``"off"``, ``"on"``, ``"matched"``), classes one after the other."""
    from tqdm.auto import tqdm

    from ..guidance import measure_guidance

    traces = []
    rows: dict[str, list[torch.Tensor]] = {"off": [], "on": [], "matched": []}
    total = len(classes) * options.steps * 5
    with tqdm(total=total, desc="guided demo", unit="step", disable=not options.progress) as bar:
        for name in classes:
            request = Request(steps=options.steps, prompt=name, guidance=model.default_guidance)
            trace = measure_guidance(model, list(seeds), request, config, on_step=lambda n: bar.update(2))
            traces.append(trace)
            for key, freeu_setting in (("off", None), ("on", config)):
                rows[key].append(_sample(model, seeds, request, freeu_setting, bar.update, cache))
        for name, trace in zip(classes, traces, strict=True):
            request = Request(steps=options.steps, prompt=name, guidance=round(trace.equivalent, 2))
            rows["matched"].append(_sample(model, seeds, request, None, bar.update, cache))
    return traces, {k: torch.cat(v) for k, v in rows.items()}


def guided_summary(record: dict[str, Any]) -> str:
    lines = [
        f"guided (class-conditional demo model, classes {', '.join(record['classes'])}): FreeU acts like guidance "
        f"{record['equivalent_guidance']:.2f} instead of {record['guidance']:g} (the mean over steps; "
        f"{record['equivalent_weighted']:.2f} weighted by step; low band {record['equivalent_low']:.2f}, high band "
        f"{record['equivalent_high']:.2f}); {record['orthogonal_share']:.0%} of its change is orthogonal to the "
        "guidance direction",
        "  per class: " + ", ".join(f"{c} {v:g}" for c, v in record["matched_guidance"].items()),
        f"  change from FreeU off: FreeU {record['change_vs_off_grey_levels']['on']:.1f} grey levels, FreeU off at "
        f"each class's equivalent {record['change_vs_off_grey_levels']['matched']:.1f}; FreeU vs "
        f"that: {record['change_freeu_vs_matched_grey_levels']:.1f}",
    ]
    return "\n".join(lines + [f"wrote {path}" for path in record["files"].values()])


def summary(record: dict[str, Any]) -> str:
    """A few lines for the terminal: each row's figures and where the files are."""
    classes = f"classes {', '.join(record['classes'])} x " if record.get("classes") else ""
    guidance = f", guidance {record['guidance']:g}" if record.get("guidance") is not None else ""
    lines = [f"grid: {record['sampler']}{guidance}, {classes}seeds {record['seeds']}, {record['seconds']} s"]
    for row in record["rows"]:
        f = row["figures"]
        swd = f" | SWD to held-out {f['swd_to_held_out']:.3f}" if "swd_to_held_out" in f else ""
        lines.append(
            f"  {row['label']:10s} change {f['change_vs_off_grey_levels']:5.1f} grey levels | "
            f"high-frequency share {f['high_frequency_share']:.3f}{swd}"
        )
    lines += [f"wrote {path}" for path in record["files"].values()]
    return "\n".join(lines)


# -- command line ---------------------------------------------------------------------------------------------------


def _seed_count(text: str) -> int:
    value = positive_int(text)
    if value > 64:
        raise argparse.ArgumentTypeError(f"must be between 1 and 64 (one grid column per seed), got {text!r}")
    return value


def _class_list(text: str) -> list[str]:
    names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"must be a comma-separated list of class names, got {text!r}")
    return names


def register(subparsers: Any) -> None:
    """Add ``demo`` to the ``freeu`` command line."""
    p = subparsers.add_parser("demo", help="FreeU on a bundled demo model: how much is guidance, grid, spectra, "
                              "figures (offline, CPU)")  # fmt: skip
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"{DEMO_CLASSES} (the class-conditional demo model, "
                   f"default), {DEMO} (the unconditional one), or a folder of exported demo weights")  # fmt: skip
    p.add_argument("--out", default="freeu-demo", help="output folder (default freeu-demo)")
    p.add_argument("--seeds", type=_seed_count, default=None, help="how many seeds (1-64; default 2 per class on a "
                   "class-conditional model, 8 on an unconditional one); one grid column each, per class")  # fmt: skip
    p.add_argument("--classes", type=_class_list, default=None, help="comma-separated classes of a class-conditional "
                   f"model (default {','.join(GUIDED_CLASSES)})")  # fmt: skip
    p.add_argument("--first-seed", type=seed, default=0, help="the first seed (default 0)")
    p.add_argument("--steps", type=positive_int, default=25, help="DDIM steps (default 25)")
    p.add_argument("--device", type=device, default=None, help=f"torch device (default: cuda, else mps, else cpu; here "
                   f"{default_device()})")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """``freeu demo``: on a class-conditional model the guidance comparison first; the grid, the spectra and the
    JSON; prints a summary."""
    require("diffusers", "demo", "freeu demo")
    writable_folder("--out", args.out)
    device_name = args.device or default_device()
    if args.model not in (DEMO, DEMO_CLASSES) and is_demo_folder(args.model) is None:
        raise ValueError(f"--model {args.model!r}: freeu demo runs {DEMO_CLASSES}, {DEMO} or a folder of exported "
                         "demo weights (unet.safetensors and config.json); for pipelines use freeu generate, analyze "
                         "or eval")  # fmt: skip
    model = load_demo_model(args.model, device=device_name)
    count = args.seeds or (8 if model.classes is None else 2)
    seeds = range(args.first_seed, args.first_seed + count)
    if seeds[-1] >= 2**63:
        raise ValueError(f"--first-seed {args.first_seed}: the seeds must stay below 2**63")
    if model.classes is None and args.classes is not None:
        raise ValueError(f"--classes: {args.model} is unconditional; leave --classes out")
    classes = args.classes or (list(GUIDED_CLASSES) if model.classes is not None else None)
    if classes is not None:
        unknown = [c for c in classes if c not in model.classes]  # type: ignore[operator]
        if unknown:
            raise ValueError(f"--classes: {unknown} are not classes of {args.model}; it has "
                             f"{', '.join(model.classes)}")  # type: ignore[arg-type]  # fmt: skip
        if len(classes) * count > 64:
            raise ValueError(f"--classes and --seeds: {len(classes)} classes x {count} seeds = "
                             f"{len(classes) * count} columns, more than 64")  # fmt: skip
    options = DemoOptions(seeds=seeds, classes=classes, steps=args.steps, progress=not args.no_progress)
    cache: SampleCache = {}  # the grid's FreeU off and FreeU rows are the guided comparison's first two
    if model.classes is not None:
        guided = run_guided_demo(args.out, options, model=model, cache=cache)
        assert guided is not None
        print(guided_summary(guided))
    record = run_demo(args.out, options, model=model, cache=cache)
    print(summary(record))
    return 0
