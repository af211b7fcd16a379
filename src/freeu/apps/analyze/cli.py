"""``freeu analyze``: the command line of the Fourier analyses; figures, ``analysis.json`` and a text summary."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from freeu.config import FACTORS, PRESETS, FreeUConfig, Preset
from freeu.settings import Settings

from ..errors import require
from ..options import (
    add_freeu_options,
    add_model_options,
    factor_values,
    freeu_settings,
    non_negative,
    positive_int,
    resolve_freeu,
    seed,
    size,
    writable_folder,
)
from ..plotting import plot_guidance, setting_label
from ..runtime import DEFAULT_MODEL, MODEL_HELP, Model, Request, Space, load_model
from .experiments import DEMO_SETTING, SPACES, SWEPT, Readout, b_sweep, features, trajectory
from .measures import PATHS
from .plots import plot_b_sweep, plot_features, plot_trajectory

__all__ = ["PARTS", "register", "run", "summary", "write_json"]

#: The analyses; ``guidance`` (the guidance meter, :mod:`freeu.apps.guidance`) needs a guided pipeline.
PARTS: tuple[str, ...] = ("trajectory", "b", "features", "guidance")


def _without_images(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_images(v) for k, v in value.items() if k != "images"}
    if isinstance(value, list):
        return [_without_images(v) for v in value]
    return value


def write_json(results: dict[str, Any], path: str | Path) -> Path:
    """Every number of ``results`` (the images under ``"images"`` left out) as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_without_images(results), indent=1, allow_nan=False) + "\n")
    return path


def _fmt(value: float | None, sign: bool = True) -> str:
    return "n/a" if value is None else f"{value:+.3f}" if sign else f"{value:.3f}"


def _change(before: float | None, after: float | None) -> str:
    return "n/a" if before is None or after is None else f"{after - before:+.3f}"


def summary(results: dict[str, Any]) -> list[str]:
    """Short lines of text on what the numbers of :func:`trajectory`, :func:`b_sweep` and :func:`features` say."""
    lines = []
    traj = results.get("trajectory")
    if traj is not None:
        for space, n in traj["spaces"].items():
            fractions = n["x0_high_fraction"]
            picks = sorted({0, len(fractions) // 2, len(fractions) - 1})
            shares = ", ".join(f"step {k + 1}: {fractions[k]:.3f}" for k in picks)
            lines.append(f"trajectory ({space}): high-frequency share of x0 (> {traj['cutoff']:g} x Nyquist) {shares}")
            if n["x0_low_change"]:
                low = sum(n["x0_low_change"]) / len(n["x0_low_change"])
                high = sum(n["x0_high_change"]) / len(n["x0_high_change"])
                lines.append(
                    f"trajectory ({space}): mean RMS change of x0 per step: low part {low:.4f}, high part {high:.4f}"
                )
    sweep = results.get("b")
    if sweep is not None:
        v = sweep["values"]
        for space, n in sweep["spaces"].items():
            at_pi, band = n["at_pi"], n["high_band"]
            lines.append(
                f"b sweep ({space}): {sweep['factor']} {v[0]:g} -> {v[-1]:g}: relative log amplitude at pi "
                f"{_fmt(at_pi[0])} -> {_fmt(at_pi[-1])} ({_change(at_pi[0], at_pi[-1])}), mean over pi/2..pi "
                f"{_fmt(band[0])} -> {_fmt(band[-1])} ({_change(band[0], band[-1])})"
            )
    meter = results.get("guidance")
    if meter is not None:
        lines.append(
            f"guidance: FreeU's change of the guided prediction equals guidance {meter['equivalent']:.3f} instead of "
            f"{meter['scale']:g} ({meter['extra']:+.3f}) along the guidance direction; "
            f"{meter['orthogonal_share']:.0%} of it (squared norm, mean over steps) is orthogonal to that direction"
        )
        if "equivalent_low" in meter:
            lines.append(
                f"guidance by step weight and band: {meter['equivalent_weighted']:.3f} with steps weighted by the "
                f"guidance direction's size; {meter['equivalent_low']:.3f} in the low band (cutoff "
                f"{meter['band_cutoff']:g} of the map), {meter['equivalent_high']:.3f} in the high band"
            )
    feats = results.get("features")
    if feats is not None:
        for stage, numbers in feats["stages"].items():
            off, on = numbers["off"], numbers["on"]
            name = "joins FreeU leaves alone" if stage == "none" else f"stage {stage} joins"
            lines.append(
                f"features, {name}, mean relative log amplitude over pi/2..pi (off -> on): "
                + ", ".join(f"{k} {_fmt(off[k])} -> {_fmt(on[k])}" for k in ("backbone_out", "skip_out", "fused"))
            )
    return lines


# -- command line ---------------------------------------------------------------------------------------------------


def _cutoff(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value < math.sqrt(2.0):
        raise argparse.ArgumentTypeError(f"must be a fraction of the Nyquist frequency in (0, 1.414), got {text!r}")
    return value


def _band_cutoff(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction of the map's half-size in [0, 1], got {text!r}")
    return value


def _only(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if not parts or unknown:
        raise argparse.ArgumentTypeError(f"must be a comma-separated subset of {','.join(PARTS)}, got {text!r}")
    return [p for p in PARTS if p in parts]


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``analyze`` to the ``freeu`` command line; returns its parser."""
    p = subparsers.add_parser(
        "analyze",
        help="the paper's Fourier analyses: denoising trajectory, b sweep, skip-join features",
        description="Reproduce FreeU's Fourier analyses (paper Fig. 3, 4, 6, 7) on the bundled demo model or a "
        "pipeline; writes PNG figures and analysis.json into --out and prints a summary.",
    )
    g = add_model_options(p, model_help=f"{MODEL_HELP}; default {DEFAULT_MODEL}", model_default=DEFAULT_MODEL,
                          title="model and sampling")  # fmt: skip
    g.add_argument("--prompt", default=None, help="text prompt (text-to-image pipelines), or the class of a "
                   "class-conditional demo model (default: its default class, brick for demo-classes)")  # fmt: skip
    g.add_argument("--guidance", type=non_negative, default=None, help="classifier-free guidance of guided models "
                   "(default: the model's own: 7.5 for SD 1.5 pipelines, 2 for demo-classes)")  # fmt: skip
    g.add_argument("--size", type=size, default=None, help="SIZE or WIDTHxHEIGHT, pipelines (default: the model's)")
    g.add_argument("--seed", type=seed, default=0, help="first seed; seeds are seed .. seed+count-1 (default 0)")
    g.add_argument("--count", type=positive_int, default=None,
                   help="samples per run (default 8 on the demo model, 2 on pipelines)")  # fmt: skip
    g.add_argument("--steps", type=positive_int, default=25, help="sampling steps (default 25)")
    a = p.add_argument_group("analysis")
    a.add_argument("--only", type=_only, default=None, help="subset of trajectory,b,features,guidance (default: "
                   "all; guidance only for guided pipelines, where it needs a guidance scale above 1)")  # fmt: skip
    a.add_argument("--path", choices=PATHS, default="diagonal",
                   help="diagonal: the paper's half-diagonal from DC (default); radial: mean over rings")  # fmt: skip
    a.add_argument("--bins", type=positive_int, default=None, help="rings for --path radial (default: as diagonal)")
    a.add_argument("--space", choices=[*SPACES, "both"], default=None,
                   help="latent, pixel or both (default: both where a VAE exists, else pixel)")  # fmt: skip
    a.add_argument("--cutoff", type=_cutoff, default=0.25,
                   help="low/high split radius, a fraction of Nyquist (default 0.25)")  # fmt: skip
    a.add_argument("--band-cutoff", type=_band_cutoff, default=0.0,
                   help="guidance: the low band's square of frequencies as a fraction of the map's half-size on each "
                   "axis (default 0: the 3 x 3 lowest, where FreeU's s acts)")  # fmt: skip
    a.add_argument("--noisy", action="store_true", help="trajectory: also analyse the noisy sample x_t")
    a.add_argument("--columns", type=positive_int, default=8, help="steps shown in the trajectory strip (default 8)")
    a.add_argument("--b-values", type=factor_values, default=[1.0, 1.2, 1.4, 1.6],
                   help="b values for the sweep: list or start:stop:step (default 1.0,1.2,1.4,1.6)")  # fmt: skip
    a.add_argument("--b-factor", choices=SWEPT, default="b1",
                   help="factor the sweep varies, all others 1 (default b1)")  # fmt: skip
    add_freeu_options(p, title="FreeU for the 'with FreeU' runs (default: demo model 1.3/1.4/0.9/0.2, pipelines the "
                      "preset of their layout; version/convention also for the sweep)")  # fmt: skip
    p.add_argument("--out", default="freeu-analysis", help="output folder (default freeu-analysis)")
    p.set_defaults(handler=run)
    return p


#: What the "with FreeU" runs start from where neither ``--preset`` nor a model default applies: the factors given.
IDENTITY = FreeUConfig(1.0, 1.0, 1.0, 1.0)


def _freeu_setting(model: Model, args: argparse.Namespace, freeu: Settings) -> tuple[FreeUConfig, str]:
    """The "with FreeU" setting: ``--preset``, else the model's default (the demo's, or the preset of a pipeline's
    layout), overridden by the flags given; all four factors are needed when there is neither and the features are
    analysed."""
    if args.preset is None:
        default: Preset | None = None
        if model.kind == "demo":
            default = Preset("the demo default", DEMO_SETTING, model.name, "official README SD 1.4 / SDXL values")
        else:
            try:
                name, evidence = model.preset()
                default = dataclasses.replace(PRESETS[name], source=evidence)
            except ValueError:
                default = None
        freeu = dataclasses.replace(freeu, preset=default)
        if default is None and "features" not in args.only:  # the factors given, 1 where not given
            freeu = dataclasses.replace(freeu, **{k: 1.0 for k in FACTORS if getattr(freeu, k) is None})
    resolved = resolve_freeu(model, freeu)
    return resolved.config, resolved.source


def _prepare(args: argparse.Namespace) -> tuple[Model, Request, list[Space], FreeUConfig, str]:
    """The model, the request, the spaces and the "with FreeU" setting ``args`` name, every flag checked (and
    ``args.only`` settled) before anything is sampled."""
    freeu = freeu_settings(args, default=IDENTITY)  # the flags checked before the model loads
    writable_folder("--out", args.out)
    print(f"loading {args.model or DEFAULT_MODEL} ...", flush=True)
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    if model.video:
        raise ValueError(f"{args.model}: freeu analyze handles image models; video pipelines are not supported yet")
    prompt = args.prompt
    if prompt is None and model.classes is not None:
        prompt = model.default_prompt
        print(f"class {prompt!r} (the model's default; --prompt names one of {', '.join(model.classes)})")
    request = model.check(Request(steps=args.steps, prompt=prompt, guidance=args.guidance, size=args.size))
    spaces = list(model.spaces) if args.space in (None, "both") else [args.space]
    if args.space == "both" and len(model.spaces) < 2:
        raise ValueError(f"--space both needs a VAE; {model.name} only has {model.spaces[0]} space")
    for space in spaces:
        model.check_space(space)
    if args.only is None:
        args.only = [p for p in PARTS if p != "guidance" or (model.guided and (request.guidance or 0) > 1)]
    elif "guidance" in args.only and not model.guided:
        raise ValueError(f"--only guidance: {model.name} takes no guidance scale (the guidance meter needs a guided "
                         "pipeline)")  # fmt: skip
    config, source = _freeu_setting(model, args, freeu)
    return model, request, spaces, config, source


def _measure(args: argparse.Namespace, model: Model, seeds: list[int], request: Request, readout: Readout,
             config: FreeUConfig) -> dict[str, Any]:  # fmt: skip
    """The numbers of every part of ``args.only``, under one progress bar; the guidance meter's CSV is written into
    ``args.out`` as it is measured."""
    from tqdm.auto import tqdm

    sweep_base = FreeUConfig(1.0, 1.0, 1.0, 1.0, version=config.version, convention=config.convention)
    runs = {"trajectory": 1, "b": len(args.b_values), "features": 2, "guidance": 2}
    total = sum(runs[p] for p in args.only) * args.steps
    results: dict[str, Any] = {}
    with tqdm(total=total, desc="sampling", unit="step", leave=False) as bar:
        tick = lambda: bar.update()  # noqa: E731
        if "trajectory" in args.only:
            bar.set_description("trajectory")
            results["trajectory"] = trajectory(model, seeds, request, readout=readout, progress=tick)
        if "b" in args.only:
            bar.set_description("b sweep")
            results["b"] = b_sweep(model, seeds, request, args.b_values, factor=args.b_factor, base=sweep_base,
                                   readout=readout, progress=tick)  # fmt: skip
        if "features" in args.only:
            bar.set_description("features")
            results["features"] = features(model, seeds, request, config, readout=readout, progress=tick)
        if "guidance" in args.only:
            from ..guidance import measure_guidance

            bar.set_description("guidance meter")
            trace = measure_guidance(model, seeds, request, config, on_step=lambda n: bar.update(2 * n),
                                     band_cutoff=args.band_cutoff)  # fmt: skip
            results["guidance"] = trace.as_dict()
            (Path(args.out) / "guidance.csv").write_text(trace.csv())
    return results


def _write(results: dict[str, Any], out: Path, model: str) -> list[Path]:
    """The figures of each part in ``results``, ``analysis.json`` and ``summary.txt`` (printed too) into ``out``;
    returns what was written."""
    written = [out / "guidance.csv"] if "guidance" in results else []
    if "trajectory" in results:
        written += plot_trajectory(results["trajectory"], out, model)
    if "b" in results:
        written += plot_b_sweep(results["b"], out, model)
    if "features" in results:
        written += plot_features(results["features"], out, model)
    if "guidance" in results:
        written += plot_guidance(results["guidance"], out, model)
    written.append(write_json(results, out / "analysis.json"))
    lines = summary(results)
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    written.append(out / "summary.txt")
    for line in lines:
        print(line)
    return written


def run(args: argparse.Namespace) -> int:
    """``freeu analyze``: every part of ``args.only`` into ``args.out``; prints a summary."""
    require("matplotlib", "plots", "freeu analyze's figures")
    readout = Readout(path=args.path, bins=args.bins, cutoff=args.cutoff, noisy=args.noisy, columns=args.columns)
    model, request, spaces, config, source = _prepare(args)
    readout = dataclasses.replace(readout, spaces=spaces)
    count = args.count or (2 if model.kind == "pipeline" else 8)
    seeds = list(range(args.seed, args.seed + count))
    print(f"with {setting_label(config.to_dict())}, from {source}")
    print(f"{len(seeds)} seeds ({seeds[0]}..{seeds[-1]}), {args.steps} steps, path {args.path}, spaces {spaces}")
    results: dict[str, Any] = {
        "model": model.name, "prompt": request.prompt, "guidance_scale": request.guidance, "freeu": config.to_dict(),
        "freeu_source": source, "seeds": seeds,
        "steps": args.steps, "path": args.path, "bins": args.bins, "spaces": spaces,
    }  # fmt: skip
    results.update(_measure(args, model, seeds, request, readout, config))
    for path in _write(results, Path(args.out), model.name):
        print(f"wrote {path}")
    return 0
