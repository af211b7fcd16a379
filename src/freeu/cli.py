"""The ``freeu`` command line: ``demo``, ``generate``, ``sweep``, ``info``, ``analyze``, ``eval``, ``ui`` and ``plan``.

Commands use the public API like a user would. They need the ``diffusers`` extra (``pip install freeu[diffusers]``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import torch

import freeu
from freeu import argtypes
from freeu.config import PRESETS

logger = logging.getLogger(__name__)

# Full-size layouts, built on the meta device (no weights, no download): diffusers' UNet2DConditionModel kwargs.
LAYOUTS: dict[str, dict] = {
    "sd15": dict(cross_attention_dim=768),
    "sd21": dict(cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True),
    "sdxl": dict(
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    ),
}
LATENT = {"sd15": 64, "sd21": 96, "sdxl": 128}


def _require_diffusers():
    try:
        import diffusers
    except ImportError:
        sys.exit("freeu: this command needs diffusers; install it with: pip install 'freeu[diffusers]'")
    return diffusers


def _stage_name(stage: int | None) -> str:
    return "-" if stage is None else f"b{stage},s{stage}"


def plan_table(layout: str) -> str:
    """The FREEU.md section 2 table for a full-size layout, computed from the U-Net's structure."""
    diffusers = _require_diffusers()
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**LAYOUTS[layout])
    official = freeu.plan(unet, "official")
    by_index = freeu.plan(unet, "diffusers")
    levels = len(unet.up_blocks)
    lines = [
        f"{layout}: skip joins at {LATENT[layout] * 8} px ({LATENT[layout]}x{LATENT[layout]} latent)",
        f"{'join':24s} {'backbone':>8s} {'skip':>5s} {'size':>5s}  {'official':9s} {'diffusers':9s}",
    ]
    for a, b in zip(official, by_index, strict=True):
        j = a.join
        size = LATENT[layout] // 2 ** (levels - 1 - j.block)
        lines.append(
            f"{j.name:24s} {j.backbone_channels:8d} {j.skip_channels:5d} {size:5d}  "
            f"{_stage_name(a.stage):9s} {_stage_name(b.stage):9s}"
        )
    return "\n".join(lines)


def demo(args: argparse.Namespace) -> int:
    """FreeU on the bundled demo model: a labelled grid, a power-spectrum plot and a JSON (no network, CPU)."""
    _require_diffusers()
    from .demo.showcase import run_demo, summary

    seeds = range(args.first_seed, args.first_seed + args.seeds)
    try:
        record = run_demo(args.out, seeds=seeds, steps=args.steps, progress=not args.no_progress)
    except FileNotFoundError as error:
        print(f"freeu: {error}", file=sys.stderr)
        return 1
    print(summary(record))
    return 0


_size_arg = argtypes.vae_size
_positive_int = argtypes.positive_int
_guidance = argtypes.non_negative


def _seed_count(text: str) -> int:
    value = _positive_int(text)
    if value > 64:
        raise argparse.ArgumentTypeError(f"must be between 1 and 64 (one grid column per seed), got {text!r}")
    return value


FACTOR_HELP = {
    "b1": "backbone factor, stage 1 (deepest): amplifies the first half of the backbone channels; 1 = off",
    "b2": "backbone factor, stage 2",
    "s1": "skip factor, stage 1: gain of the skip feature's lowest frequencies; 1 = off, 0 removes them",
    "s2": "skip factor, stage 2",
}


def _add_sampling(p: argparse.ArgumentParser, required_model: bool = True) -> None:
    from .commands import default_device

    g = p.add_argument_group("sampling")
    g.add_argument("--model", required=required_model, help="a local diffusers pipeline folder or a cached hub id")
    g.add_argument("--prompt", help="the text prompt")
    g.add_argument("--negative-prompt", default=None, help="the negative prompt")
    g.add_argument("--seed", type=int, default=None, help="noise seed, the same for every setting (default 0)")
    g.add_argument("--steps", type=_positive_int, default=None, help="denoising steps (default 25)")
    g.add_argument("--guidance", type=_guidance, default=None, help="classifier-free guidance scale (default 7.5)")
    g.add_argument("--size", type=_size_arg, default=None, help="SIZE or WIDTHxHEIGHT (default: the model's own)")
    g.add_argument("--frames", type=_positive_int, default=None, help="frames per clip, video pipelines (default 8)")
    g.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None, help="default float32")
    g.add_argument("--device", default=None, help=f"torch device (default here: {default_device()})")
    g.add_argument("--out", default="freeu-out", help="output folder (default freeu-out)")
    g.add_argument("--name", default=None, help="file name stem (default from the seed)")


def _add_freeu(p: argparse.ArgumentParser, sweep: bool = False) -> None:
    g = p.add_argument_group("FreeU")
    g.add_argument(
        "--preset", default=None, help=f"auto (from the U-Net's layout) or one of: {', '.join(sorted(PRESETS))}"
    )
    for name, text in FACTOR_HELP.items():
        g.add_argument(
            f"--{name}", default=None, help=text + ("; a list a,b,c or range start:stop:step" if sweep else "")
        )
    g.add_argument(
        "--version", type=int, choices=[1, 2], default=None, help="1: constant b; 2: structure map (default)"
    )
    g.add_argument(
        "--convention",
        choices=["official", "diffusers"],
        default=None,
        help="stage by backbone width (authors, ComfyUI, A1111; default) or by up-block (diffusers)",
    )
    g.add_argument("--threshold", type=_positive_int, default=None, help="half-width of the damped square (default 1)")
    g.add_argument("--start", type=float, default=None, help="FreeU from this fraction of the trajectory (default 0)")
    g.add_argument("--stop", type=float, default=None, help="FreeU until this fraction (default 1)")
    g.add_argument("--ramp", type=float, default=None, help="linear fade at both window ends (default 0)")


SAMPLING_DEFAULTS = {"seed": 0, "steps": 25, "guidance": 7.5, "frames": 8, "dtype": "float32"}


def _fill_defaults(args: argparse.Namespace, settings: dict | None) -> None:
    """Explicit flags win, then the settings of ``--from IMAGE``, then the defaults."""
    from .commands import default_device

    settings = settings or {}
    for key in ("model", "prompt", "negative_prompt", "seed", "steps", "guidance", "frames", "dtype"):
        if getattr(args, key, None) is None and settings.get(key) is not None:
            setattr(args, key, settings[key])
    if args.size is None and settings.get("width"):
        args.size = (settings["width"], settings["height"])
    for key, value in SAMPLING_DEFAULTS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.device is None:
        args.device = default_device()


def _freeu_overrides(args: argparse.Namespace, settings: dict | None, parser, sweep: bool = False) -> dict:
    """FreeU fields from the command line, on top of those ``--from IMAGE`` carries (unless a --preset is given),
    validated before any model is loaded."""
    from .commands import FACTORS, FREEU_FIELDS, parse_values

    carried = dict((settings or {}).get("freeu") or {}) if args.preset is None else {}
    overrides: dict = {k: v for k, v in carried.items() if k in FACTORS + FREEU_FIELDS}
    for key in FACTORS:
        text = getattr(args, key)
        if text is None:
            continue
        try:
            values = parse_values(key, text)
        except ValueError as error:
            parser.error(str(error))
        if not sweep and len(values) != 1:
            parser.error(f"--{key} takes one number here (lists and ranges are for freeu sweep), got {text!r}")
        overrides[key] = values if sweep else values[0]
    for key in FREEU_FIELDS:
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    first = {k: (v[0] if isinstance(v, list) else v) for k, v in overrides.items()}
    try:
        if args.preset is None:
            missing = [f"--{k}" for k in FACTORS if k not in first]
            if missing:
                parser.error(f"give --preset (auto or a name) or all four factors; missing: {', '.join(missing)}")
            freeu.FreeUConfig(**first)
        elif args.preset != "auto":
            freeu.get_preset(args.preset).config.replace(**first)
        else:
            freeu.FreeUConfig(**{"b1": 1, "b2": 1, "s1": 1, "s2": 1, **first})
        for key, values in overrides.items():
            for value in values if isinstance(values, list) else []:
                freeu.FreeUConfig(1, 1, 1, 1).replace(**{key: value})
    except (ValueError, TypeError) as error:
        parser.error(str(error))
    return overrides


def _check_size_before_loading(args: argparse.Namespace, parser) -> None:
    """The model's own downsampling, read from its config files when they are on disk, before any weights load."""
    from .pipelines import peek_downsampling

    if args.size is None:
        return
    step = peek_downsampling(args.model)
    if step is not None and (args.size[0] % step or args.size[1] % step):
        parser.error(
            f"--size {args.size[0]}x{args.size[1]} must be a multiple of {step} for this model (its downsampling)"
        )


def _run(fn, *args):
    from .pipelines import ModelLoadError

    try:
        return fn(*args), 0
    except ModelLoadError as error:
        print(f"freeu: {error}", file=sys.stderr)
        return None, 1
    except ValueError as error:
        print(f"freeu: error: {error}", file=sys.stderr)
        return None, 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="freeu", description="FreeU for diffusion U-Nets.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the library does")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="show which skip join gets which FreeU stage under each convention")
    p.add_argument("layout", choices=sorted(LAYOUTS), help="a full-size U-Net layout (built without weights)")
    dm = sub.add_parser("demo", help="FreeU on the bundled demo model: grid, spectra, figures (offline, CPU)")
    dm.add_argument("--out", default="freeu-demo", help="output folder (default freeu-demo)")
    dm.add_argument("--seeds", type=_seed_count, default=8, help="how many seeds, one column each (1-64, default 8)")
    dm.add_argument("--first-seed", type=int, default=0, help="the first seed (default 0)")
    dm.add_argument("--steps", type=_positive_int, default=25, help="DDIM steps (default 25)")
    dm.add_argument("--no-progress", action="store_true", help="no progress bar")

    gen = sub.add_parser("generate", help="the same seed with FreeU off and on, and a side-by-side")
    _add_sampling(gen, required_model=False)
    _add_freeu(gen)
    gen.add_argument("--from", dest="from_image", default=None, help="re-run the settings stored in this image")

    sw = sub.add_parser("sweep", help="a grid over two FreeU factors from one seed (the paper's Fig. 5)")
    _add_sampling(sw)
    _add_freeu(sw, sweep=True)
    sw.add_argument("--batch-size", type=_positive_int, default=None, help="cells per batch (default: all)")
    sw.add_argument("--measure-speedup", action="store_true", help="also run one cell at a time and compare")

    inf = sub.add_parser("info", help="print the settings stored in an image written by freeu")
    inf.add_argument("image")

    from . import analyze, ui
    from .evaluate.cli import add_parser as add_eval_parser

    analyze.add_parser(sub)
    add_eval_parser(sub)
    ui.add_parser(sub)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    if args.command == "plan":
        print(plan_table(args.layout))
        return 0
    if args.command == "demo":
        return demo(args)
    if args.command == "analyze":
        return analyze.run(args)
    if args.command == "eval":
        return args.func(args)
    if args.command == "ui":
        return ui.run(args)
    from . import commands

    if args.command == "info":
        return _run(commands.info, args.image)[1]
    if args.command == "generate":
        settings = None
        if args.from_image:
            try:
                settings = commands.read_settings(args.from_image)
            except (OSError, ValueError) as error:
                parser.error(f"--from: {error}")
        overrides = _freeu_overrides(args, settings, gen)
        _fill_defaults(args, settings)
        if args.model is None or args.prompt is None:
            gen.error("--model and --prompt are required (or --from IMAGE)")
        _check_size_before_loading(args, gen)
        written, code = _run(commands.generate, args, overrides)
        for path in written or []:
            print(f"wrote {path}")
        return code
    overrides = _freeu_overrides(args, None, sw, sweep=True)
    swept = [k for k in commands.FACTORS if isinstance(overrides.get(k), list) and len(overrides[k]) > 1]
    if len(swept) != 2:
        sw.error(f"freeu sweep needs exactly two factors with several values (rows, columns); got {swept or 'none'}")
    _fill_defaults(args, None)
    if args.prompt is None:
        sw.error("--prompt is required")
    _check_size_before_loading(args, sw)
    fixed = {k: (v[0] if isinstance(v, list) else v) for k, v in overrides.items() if k not in swept}
    rows, cols = (commands.SweepAxis(k, overrides[k]) for k in swept)
    result, code = _run(commands.sweep, args, fixed, rows, cols)
    if result is not None:
        print(f"wrote {result[0]}")
    return code
