"""What ``freeu generate``, ``freeu sweep`` and ``freeu info`` do, on the public API like a user's script would."""

from __future__ import annotations

import itertools
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .config import FreeUConfig, get_preset
from .hooks import apply
from .imaging import grid, read_settings, save_gif, save_png, side_by_side
from .pipelines import detect_preset, downsampling, is_video, load_pipeline, render

__all__ = ["FACTORS", "SweepAxis", "freeu_settings", "generate", "info", "parse_values", "sweep"]

logger = logging.getLogger(__name__)

FACTORS = ("b1", "b2", "s1", "s2")
FREEU_FIELDS = ("version", "convention", "threshold", "start", "stop", "ramp")


def parse_values(name: str, text: str) -> list[float]:
    """``"1.2"``, ``"0.2,0.6,1.0"`` or ``"1.0:1.6:0.2"`` (start:stop:step, stop included) as a list of numbers."""
    try:
        if ":" in text:
            start, stop, step = (float(v) for v in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            count = int(round((stop - start) / step)) + 1
            return [round(start + i * step, 10) for i in range(count)]
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(
            f"--{name} must be a number, a list like 0.2,0.6,1.0 or a range start:stop:step like 1.0:1.6:0.2 "
            f"(step > 0, stop >= start), got {text!r}"
        ) from None


def freeu_settings(config: FreeUConfig) -> dict[str, Any]:
    return {k: v for k, v in asdict(config).items() if k != "num_train_timesteps"}


def _label(config: FreeUConfig) -> str:
    window = f", steps {config.start:g}-{config.stop:g}" if config.windowed else ""
    return (
        f"FreeU b1={config.b1:g} b2={config.b2:g} s1={config.s1:g} s2={config.s2:g}\n"
        f"(version {config.version}, {config.convention} convention{window})"
    )


def _resolve(pipe: Any, preset: str | None, overrides: dict[str, Any]) -> tuple[FreeUConfig, str | None, str]:
    """The FreeU config for this pipeline: ``preset`` (``auto``: from the U-Net's layout) plus explicit values."""
    note = ""
    if preset == "auto":
        preset, evidence = detect_preset(pipe)
        note = f"--preset auto chose {preset!r}: {evidence}"
    given = {k: v for k, v in overrides.items() if v is not None}
    if preset is not None:
        return get_preset(preset).config.replace(**given), preset, note
    return FreeUConfig(**given), None, note


def _load(args: Any):
    print(f"loading {args.model} ({args.dtype}, {args.device}) ...", flush=True)
    pipe = load_pipeline(args.model, args.dtype, args.device)
    pipe.set_progress_bar_config(desc="denoising", leave=False)
    return pipe


def resolve_size(pipe: Any, size: tuple[int, int] | None) -> tuple[int, int]:
    """``(width, height)``: ``size``, or the model's own; ``ValueError`` unless the model's downsampling divides it."""
    if size is None:
        sample = pipe.unet.config.sample_size
        sample = sample if isinstance(sample, int) else sample[0]
        size = (sample * pipe.vae_scale_factor, sample * pipe.vae_scale_factor)
    width, height = size
    step = downsampling(pipe)
    if width % step or height % step:
        raise ValueError(f"--size {width}x{height} must be a multiple of {step} for this model (its downsampling)")
    return width, height


def _base_settings(args: Any, width: int, height: int, frames: int | None) -> dict[str, Any]:
    return {
        "model": args.model, "prompt": args.prompt, "negative_prompt": args.negative_prompt, "seed": args.seed,
        "steps": args.steps, "guidance": args.guidance, "width": width, "height": height, "frames": frames,
        "dtype": args.dtype, "freeu_package": __version__,
    }  # fmt: skip


def generate(args: Any, overrides: dict[str, Any]) -> list[Path]:
    """The same seed with FreeU off and on; both images and a labelled side-by-side (GIFs for video)."""
    pipe = _load(args)
    config, preset, note = _resolve(pipe, args.preset, overrides)
    if note:
        print(note)
    width, height = resolve_size(pipe, args.size)
    video = is_video(pipe)
    frames = args.frames if video else None
    common = dict(
        prompt=args.prompt, negative_prompt=args.negative_prompt, seed=args.seed, count=1, steps=args.steps,
        guidance=args.guidance, height=height, width=width, frames=frames,
    )  # fmt: skip
    print("FreeU off ...", flush=True)
    baseline = render(pipe, **common)[0]
    print(f"{_label(config).replace(chr(10), ' ')} ...", flush=True)
    with apply(pipe, config):
        patched = render(pipe, **common)[0]
    settings = {**_base_settings(args, width, height, frames), "preset": preset, "freeu": freeu_settings(config)}
    out, stem = Path(args.out), args.name or f"seed{args.seed}"
    labels = ["FreeU off", _label(config)]
    footer = f"{args.model} | seed {args.seed} | {args.steps} steps | guidance {args.guidance:g} | {args.prompt!r}"
    written: list[Path] = []
    if video:
        compare = [side_by_side([a, b], labels, footer) for a, b in zip(baseline, patched, strict=True)]
        for role, clip in (("baseline", baseline), ("freeu", patched), ("compare", compare)):
            written.append(save_gif(clip, out / f"{stem}-{role}.gif", {**settings, "role": role}))
    else:
        compare = side_by_side([baseline, patched], labels, footer)
        for role, image in (("baseline", baseline), ("freeu", patched), ("compare", compare)):
            written.append(save_png(image, out / f"{stem}-{role}.png", {**settings, "role": role}))
    return written


class SweepAxis:
    """One swept factor and its values."""

    def __init__(self, name: str, values: list[float]):
        self.name, self.values = name, values

    def label(self, value: float) -> str:
        return f"{self.name}={value:g}"


def sweep(args: Any, fixed: dict[str, Any], rows: SweepAxis, cols: SweepAxis) -> tuple[Path, dict[str, float]]:
    """The paper's Fig. 5: a grid over two factors, one seed, every cell from the same noise, run as few batches."""
    from tqdm.auto import tqdm

    pipe = _load(args)
    base, preset, note = _resolve(pipe, args.preset, fixed)
    if note:
        print(note)
    width, height = resolve_size(pipe, args.size)
    if is_video(pipe):
        raise ValueError("freeu sweep renders still images; use freeu generate for video pipelines")
    cells = list(itertools.product(rows.values, cols.values))
    configs = [base.replace(**{rows.name: r, cols.name: c}) for r, c in cells]  # validates every cell
    batch = args.batch_size or len(cells)
    common = dict(
        prompt=args.prompt, negative_prompt=args.negative_prompt, seed=args.seed, steps=args.steps,
        guidance=args.guidance, height=height, width=width,
    )  # fmt: skip
    images: list[Any] = []
    start = time.perf_counter()
    for i in tqdm(range(0, len(cells), batch), desc="sweep batches", unit="batch"):
        chunk = configs[i : i + batch]
        per_sample = {k: [getattr(c, k) for c in chunk] for k in FACTORS}
        with apply(pipe, base, **per_sample):
            images.extend(render(pipe, count=len(chunk), **common))
    batched_s = time.perf_counter() - start
    timings = {"batched_s": batched_s}
    if args.measure_speedup:
        start = time.perf_counter()
        for config in tqdm(configs, desc="one run per cell", unit="cell"):
            with apply(pipe, config):
                render(pipe, count=1, **common)
        timings["per_cell_s"] = time.perf_counter() - start
        timings["speedup"] = timings["per_cell_s"] / batched_s
        print(
            f"{len(cells)} cells in batches of {batch}: {batched_s:.1f} s; one run per cell: "
            f"{timings['per_cell_s']:.1f} s; batching is {timings['speedup']:.2f}x faster"
        )
    table = [images[r * len(cols.values) : (r + 1) * len(cols.values)] for r in range(len(rows.values))]
    fixed_text = ", ".join(f"{k}={getattr(base, k):g}" for k in FACTORS if k not in (rows.name, cols.name))
    title = (
        f"FreeU sweep: rows {rows.name}, columns {cols.name}\n"
        f"fixed {fixed_text}; version {base.version}, {base.convention} convention"
    )
    footer = f"{args.model} | seed {args.seed} (same noise in every cell) | {args.steps} steps | {args.prompt!r}"
    picture = grid(
        table,
        row_labels=[rows.label(v) for v in rows.values],
        col_labels=[cols.label(v) for v in cols.values],
        title=title,
        footer=footer,
    )
    settings = {
        **_base_settings(args, width, height, None),
        "preset": preset,
        "freeu": freeu_settings(base),
        "sweep": {"rows": [rows.name, rows.values], "cols": [cols.name, cols.values]},
        "role": "sweep",
        "timings": timings,
    }
    path = save_png(picture, Path(args.out) / f"{args.name or f'sweep-seed{args.seed}'}.png", settings)
    return path, timings


def info(path: str) -> dict[str, Any]:
    settings = read_settings(path)
    print(json.dumps(settings, indent=2, sort_keys=True))
    return settings


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"
