"""``freeu generate``, ``freeu sweep`` and ``freeu info``: pictures of FreeU off and on, grids of settings, and the
settings a picture carries. They run on the shared runtime and use the public API like a user's script would."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time
from pathlib import Path
from typing import Any

from freeu import __version__
from freeu.settings import Settings

from .imaging import grid, read_settings, save_gif, save_png, side_by_side
from .options import (
    FACTORS,
    MAX_CELLS,
    add_freeu_options,
    add_model_options,
    choice,
    file_stem,
    freeu_settings,
    grid_factors,
    non_negative,
    positive_int,
    resolve_freeu,
    seed,
    vae_size,
    writable_folder,
)
from .runtime import (
    DTYPES,
    MODEL_HELP,
    Model,
    Request,
    Size,
    is_demo_folder,
    load_model,
    peek_downsampling,
    peek_takes_prompt,
)

__all__ = ["Job", "SweepAxis", "SweepOptions", "generate", "info", "job_of", "register", "sweep"]

#: What a sampling flag means when neither it nor ``--from IMAGE`` gives it.
DEFAULTS = {"seed": 0, "steps": 25, "dtype": "float32"}


def register(subparsers: Any) -> None:
    """Add ``generate``, ``sweep`` and ``info`` to the ``freeu`` command line."""
    gen = subparsers.add_parser("generate", help="the same seed with FreeU off and on, and a side-by-side")
    _add_sampling(gen)
    add_freeu_options(gen)
    gen.add_argument("--from", dest="from_image", default=None, help="re-run the settings stored in this image")
    gen.set_defaults(handler=run_generate)

    sw = subparsers.add_parser("sweep", help="a grid over two FreeU factors from one seed (the paper's Fig. 5)")
    _add_sampling(sw)
    add_freeu_options(sw, grid=True)
    sw.add_argument("--batch-size", type=positive_int, default=None, help="cells per batch (default: all)")
    sw.add_argument(
        "--max-cells", type=positive_int, default=MAX_CELLS, help=f"refuse larger grids (default {MAX_CELLS})"
    )
    sw.add_argument("--measure-speedup", action="store_true", help="also run one cell at a time and compare")
    sw.set_defaults(handler=run_sweep, from_image=None)

    inf = subparsers.add_parser("info", help="print the settings stored in an image written by freeu")
    inf.add_argument("image")
    inf.set_defaults(handler=lambda args: info(args.image) is not None and 0)


def _add_sampling(p: argparse.ArgumentParser) -> None:
    g = add_model_options(p, model_help=MODEL_HELP, title="sampling")
    g.add_argument("--prompt", help="the text prompt (text-to-image pipelines)")
    g.add_argument("--negative-prompt", default=None, help="the negative prompt")
    g.add_argument("--seed", type=seed, default=None, help="noise seed, the same for every setting (default 0)")
    g.add_argument("--steps", type=positive_int, default=None, help="denoising steps (default 25)")
    g.add_argument("--guidance", type=non_negative, default=None, help="classifier-free guidance scale "
                   "(default: the pipeline's own, 7.5 for SD 1.5)")  # fmt: skip
    g.add_argument("--size", type=vae_size, default=None, help="SIZE or WIDTHxHEIGHT (default: the model's own)")
    g.add_argument("--frames", type=positive_int, default=None, help="frames per clip, video pipelines (default 8)")
    g.add_argument("--out", default="freeu-out", help="output folder (default freeu-out)")
    g.add_argument("--name", type=file_stem, default=None, help="file name stem, no folder (default from the seed)")


def job_of(args: argparse.Namespace, settings: dict[str, Any] | None) -> Job:
    """The :class:`Job` of the flags: explicit flags win, then the settings of ``--from IMAGE``, then the defaults.
    Checks what can be checked before any weights load (the model named, a prompt for a pipeline, the size against
    its config files)."""
    settings = settings or {}
    keys = ("model", "prompt", "negative_prompt", "seed", "steps", "guidance", "frames", "dtype", "size")
    values = {k: getattr(args, k) if getattr(args, k, None) is not None else settings.get(k) for k in keys}
    values.update({k: v for k, v in DEFAULTS.items() if values[k] is None})
    if values["model"] is None:
        raise ValueError("--model is required (or --from IMAGE)")
    job = Job(**values, out=Path(args.out).expanduser(), device=args.device, name=args.name)
    conditional = peek_takes_prompt(job.model)
    if job.prompt is None and conditional:
        raise ValueError("--prompt is required for a text-to-image pipeline (or --from IMAGE)")
    if job.prompt is not None and not conditional:
        raise ValueError(f"--prompt: {job.model} is unconditional (it has no text encoder); leave --prompt out")
    writable_folder("--out", job.out)
    if job.size is not None and is_demo_folder(job.model) is None:
        step = peek_downsampling(job.model)
        if step is not None and (job.size.width % step or job.size.height % step):
            raise ValueError(f"--size {job.size} must be a multiple of {step} for this model (its downsampling)")
    return job


@dataclasses.dataclass(frozen=True)
class Job:
    """What ``generate`` and ``sweep`` run: the sampling settings, from the flags, then ``--from IMAGE``, then the
    defaults (:func:`job_of`), and where the files go. ``guidance``, ``frames`` and ``size`` ``None``: the model's
    own."""

    model: str
    seed: int
    steps: int
    dtype: str
    out: Path
    device: str | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    guidance: float | None = None
    frames: int | None = None
    size: Size | None = None
    name: str | None = None


def _load(job: Job) -> tuple[Model, Request]:
    print(f"loading {job.model} ({job.dtype}, {job.device or 'default device'}) ...", flush=True)
    model = load_model(job.model, device=job.device, dtype=job.dtype)
    request = model.check(Request(
        steps=job.steps, prompt=job.prompt, negative_prompt=job.negative_prompt, guidance=job.guidance,
        size=job.size, frames=job.frames,
    ))  # fmt: skip
    return model, request


def _settings(job: Job, request: Request) -> dict[str, Any]:
    assert request.size is not None
    return {
        "model": job.model, "prompt": request.prompt, "negative_prompt": request.negative_prompt, "seed": job.seed,
        "steps": request.steps, "guidance": request.guidance, "width": request.size.width,
        "height": request.size.height, "frames": request.frames, "dtype": job.dtype, "freeu_package": __version__,
    }  # fmt: skip


def _footer(job: Job, request: Request, what: str = "") -> str:
    guidance = f" | guidance {request.guidance:g}" if request.guidance is not None else ""
    prompt = f" | {request.prompt!r}" if request.prompt is not None else ""
    return f"{job.model} | seed {job.seed}{what} | {request.steps} steps{guidance}{prompt}"


#: The settings ``--from IMAGE`` reads, each checked by the parser of the flag it stands for.
CARRIED: dict[str, tuple[str, Any]] = {
    "model": ("--model", str),
    "prompt": ("--prompt", str),
    "negative_prompt": ("--negative-prompt", str),
    "seed": ("--seed", seed),
    "steps": ("--steps", positive_int),
    "guidance": ("--guidance", non_negative),
    "frames": ("--frames", positive_int),
    "dtype": ("--dtype", choice(list(DTYPES))),
}


def carried_settings(path: str) -> dict[str, Any]:
    """The settings an image carries, each refused exactly as its flag would refuse it (``ValueError``)."""
    try:
        settings = read_settings(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"--from {path}: {error}") from None
    if not isinstance(settings, dict):
        raise ValueError(f"--from {path}: its freeu settings are {type(settings).__name__}, not a JSON object")
    checked: dict[str, Any] = {}
    for key, (flag, parse) in CARRIED.items():
        value = settings.get(key)
        if value is None:
            continue
        wrong_type = isinstance(value, bool) or not isinstance(value, str if parse is str else (int, float, str))
        try:
            if wrong_type:
                raise argparse.ArgumentTypeError(f"must be given as {'text' if parse is str else 'a number'}")
            checked[key] = parse(value) if parse is str else parse(str(value))
        except argparse.ArgumentTypeError as error:
            raise ValueError(f"--from {path}: {key} {value!r} is refused as {flag} would refuse it: {error}") from None
    width, height = settings.get("width"), settings.get("height")
    if width is not None or height is not None:
        try:
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (width, height)):
                raise argparse.ArgumentTypeError("must be whole numbers")
            checked["size"] = vae_size(f"{width}x{height}")
        except argparse.ArgumentTypeError as error:
            raise ValueError(
                f"--from {path}: width/height {width!r}x{height!r} refused as --size would: {error}"
            ) from None
    freeu = settings.get("freeu")
    if freeu is not None and not isinstance(freeu, dict):
        raise ValueError(f"--from {path}: its freeu factors are {type(freeu).__name__}, not a JSON object")
    checked["freeu"] = freeu
    return checked


def run_generate(args: argparse.Namespace) -> int:
    settings = carried_settings(args.from_image) if args.from_image else None
    try:
        freeu = freeu_settings(args, carried=(settings or {}).get("freeu"))
    except ValueError as error:
        if settings is None or args.preset is not None:
            raise
        raise ValueError(f"--from {args.from_image}: {error}") from None
    for path in generate(job_of(args, settings), freeu, announce=args.preset == "auto"):
        print(f"wrote {path}")
    return 0


def generate(job: Job, freeu: Settings, *, announce: bool = False) -> list[Path]:
    """The same seed with FreeU off and on; both images and a labelled side-by-side (GIFs for video). ``announce``:
    print where the FreeU settings came from (``--preset auto``'s choice)."""
    model, request = _load(job)
    resolved = resolve_freeu(model, freeu)
    config, preset = resolved.config, resolved.preset
    if announce:
        print(resolved.source)
    label = f"FreeU {config.label()}"
    print("FreeU off ...", flush=True)
    baseline = model.sample([job.seed], request)[0]
    print(f"{label} ...", flush=True)
    patched = model.sample([job.seed], request, freeu=config)[0]
    settings = {**_settings(job, request), "preset": preset, "freeu": config.to_dict()}
    out, stem = job.out, job.name or f"seed{job.seed}"
    labels = ["FreeU off", label]
    footer = _footer(job, request)
    written: list[Path] = []
    if model.video:
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


def run_sweep(args: argparse.Namespace) -> int:
    freeu = freeu_settings(args, grid=True)
    axes = grid_factors(args)
    swept = list(axes)
    if len(swept) != 2:
        raise ValueError(
            f"freeu sweep needs exactly two factors with several values (rows, columns); got {swept or 'none'}"
        )
    cells = len(axes[swept[0]]) * len(axes[swept[1]])
    if cells > args.max_cells:
        raise ValueError(
            f"--{swept[0]} and --{swept[1]} make a grid of {cells} cells, more than --max-cells {args.max_cells}; "
            "use fewer values or raise --max-cells"
        )
    job = job_of(args, None)
    rows, cols = (SweepAxis(k, axes[k]) for k in swept)
    options = SweepOptions(batch_size=args.batch_size, measure_speedup=args.measure_speedup,
                           announce=args.preset == "auto")  # fmt: skip
    print(f"wrote {sweep(job, freeu, rows, cols, options)[0]}")
    return 0


@dataclasses.dataclass(frozen=True)
class SweepOptions:
    """How a sweep runs: cells per batch (``None``: all), whether to time one run per cell too, whether to print
    where the settings came from."""

    batch_size: int | None = None
    measure_speedup: bool = False
    announce: bool = False


def sweep(
    job: Job, freeu: Settings, rows: SweepAxis, cols: SweepAxis, options: SweepOptions = SweepOptions()
) -> tuple[Path, dict[str, float]]:
    """The paper's Fig. 5: a grid over two factors, one seed, every cell from the same noise, run as few batches."""
    from tqdm.auto import tqdm

    model, request = _load(job)
    if model.video:
        raise ValueError("freeu sweep renders still images; use freeu generate for video pipelines")
    resolved = resolve_freeu(model, freeu)  # the settings hold each axis's first value
    base, preset = resolved.config, resolved.preset
    if options.announce:
        print(resolved.source)
    cells = list(itertools.product(rows.values, cols.values))
    configs = [base.replace(**{rows.name: r, cols.name: c}) for r, c in cells]  # validates every cell
    batch = options.batch_size or len(cells)
    images: list[Any] = []
    start = time.perf_counter()
    for i in tqdm(range(0, len(cells), batch), desc="sweep batches", unit="batch"):
        chunk = configs[i : i + batch]
        per_sample = base.replace(**{k: tuple(getattr(c, k) for c in chunk) for k in FACTORS})
        images.extend(model.sample([job.seed] * len(chunk), request, freeu=per_sample))
    batched_s = time.perf_counter() - start
    timings = {"batched_s": batched_s}
    if options.measure_speedup:
        start = time.perf_counter()
        for config in tqdm(configs, desc="one run per cell", unit="cell"):
            model.sample([job.seed], request, freeu=config)
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
    picture = grid(
        table,
        row_labels=[rows.label(v) for v in rows.values],
        col_labels=[cols.label(v) for v in cols.values],
        title=title,
        footer=_footer(job, request, " (same noise in every cell)"),
    )
    settings = {
        **_settings(job, request),
        "preset": preset,
        "freeu": base.to_dict(),
        "sweep": {"rows": [rows.name, rows.values], "cols": [cols.name, cols.values]},
        "role": "sweep",
        "timings": timings,
    }
    path = save_png(picture, job.out / f"{job.name or f'sweep-seed{job.seed}'}.png", settings)
    return path, timings


def info(path: str) -> dict[str, Any]:
    """Print the settings a picture written by ``freeu`` carries (and return them)."""
    settings = read_settings(path)
    print(json.dumps(settings, indent=2, sort_keys=True))
    return settings
