"""``freeu eval`` / ``python -m freeu eval`` / ``accelerate launch -m freeu eval``: the command line and
the run from generation to report."""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import math
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from freeu import __version__

from .. import options
from ..errors import run_command
from ..runtime import DEFAULT_MODEL, MODEL_HELP, Model
from .configs import (
    BASELINE,
    EvalConfig,
    expand_spec,
    guidance_baselines,
    load_config_file,
    parse_config_arg,
    resolve_auto,
    with_baseline,
)

__all__ = ["build_parser", "main", "process_state", "register", "run"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


_positive_int = options.positive_int
_count = options.non_negative_int


def confidence_level(text: str) -> float:
    """An argparse type: ``--confidence``, a level in (0, 1)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a confidence level in (0, 1) like 0.95, got {text!r}")
    return value


#: ``--guidance-baselines auto``: FreeU off at each configuration's equivalent guidance scale (the guidance meter).
AUTO = "auto"


def guidance_baselines_arg(text: str) -> list[float | str]:
    """An argparse type: ``--guidance-baselines``, scales >= 0 and ``auto``, comma-separated."""
    return [AUTO if v.strip() == AUTO else options.non_negative(v) for v in text.split(",") if v.strip()]


#: ``--seeds`` when not given: per prompt, and per class of a class-conditional demo model (15 classes: 240 units).
DEFAULT_SEEDS, DEFAULT_CLASS_SEEDS = 256, 16


def eval_size_arg(text: str) -> options.Size:
    """An argparse type: ``--eval-size``, a size of at least 8 pixels."""
    return options.size(text, minimum=8)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``freeu eval``."""
    g = p.add_argument_group("model and protocol")
    g.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"{MODEL_HELP}; default {DEFAULT_MODEL}",
    )
    g.add_argument(
        "--seeds",
        type=_positive_int,
        default=None,
        help=f"seeds per prompt (default {DEFAULT_SEEDS}; "
        f"{DEFAULT_CLASS_SEEDS} per class on a class-conditional demo model, whose every class is a prompt)",
    )
    g.add_argument("--first-seed", type=options.seed, default=0, help="the first seed (default 0)")
    g.add_argument("--steps", type=_positive_int, default=25, help="denoising steps (default 25)")
    g.add_argument("--prompt", action="append", default=None, help="a prompt (repeat for several); pipelines only")
    g.add_argument("--prompts", default=None, help="a text file with one prompt per line")
    g.add_argument("--negative-prompt", default=None, help="the negative prompt (pipelines)")
    g.add_argument(
        "--guidance",
        type=options.non_negative,
        default=None,
        help="guidance scale of every configuration unless it sets its own (guided models; default: the model's, "
        "7.5 for pipelines, the class-conditional demo model's own)",
    )
    g.add_argument("--size", type=options.vae_size, default=None, help="size SIZE or WIDTHxHEIGHT (pipelines)")
    g.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32", help="default float32")
    g.add_argument(
        "--device",
        type=options.device,
        default=None,
        help="torch device (default: this process's accelerator, else cpu)",
    )
    g.add_argument("--batch-size", type=_positive_int, default=64, help="images per batch (default 64)")
    c = p.add_argument_group("configurations (FreeU off is always included, as 'off')")
    c.add_argument(
        "--config",
        action="append",
        default=None,
        metavar="NAME:SPEC",
        help="a configuration: 'off', a preset ('sd15'), 'auto', factors 'b1=1.1 b2=1.2 s1=0.9 s2=0.9', "
        "overrides 'sd15 version=1 start=0.5'; lists or ranges make grids: 'g:sd15 b1=1.0:1.6:0.2'",
    )
    c.add_argument("--configs", default=None, metavar="FILE", help="configurations from a JSON or TOML file")
    c.add_argument(
        "--max-configs", type=_positive_int, default=options.MAX_CELLS,
        help=f"refuse more configurations than this, after grids expand (default {options.MAX_CELLS})",
    )  # fmt: skip
    c.add_argument(
        "--guidance-baselines",
        type=guidance_baselines_arg,
        default=None,
        metavar="G1,G2",
        help="also FreeU off at these stronger guidance scales (guided pipelines), to tell a FreeU gain "
        "from a guidance gain; 'auto' adds, for each FreeU configuration, FreeU off at the guidance scale that the "
        "guidance meter measures as its equivalent (e.g. 'auto' or 'auto,12')",
    )
    c.add_argument(
        "--guidance-units", type=_positive_int, default=4,
        help="units the guidance meter samples per configuration for --guidance-baselines auto (default 4)",
    )  # fmt: skip
    m = p.add_argument_group("metrics")
    m.add_argument(
        "--reference",
        default=None,
        metavar="DIR",
        help="reference images (default for the demo model: held-out patches of coffee, gravel, camera)",
    )
    m.add_argument("--reference-count", type=_positive_int, default=1024, help="reference images used (default 1024)")
    m.add_argument(
        "--eval-size",
        type=eval_size_arg,
        default=None,
        help="resize every image, generated and reference, "
        "to SIZE or WIDTHxHEIGHT (cover, centre crop) before scoring (default: the generated size)",
    )
    m.add_argument(
        "--fid-features",
        default="auto",
        help="auto, none, inception:PATH, export:PATH (torch.export) or torchscript:PATH: the FID/KID feature network",
    )
    m.add_argument("--clip", default="auto", help="auto, none, or a local CLIP folder / cached hub id (CLIP score)")
    m.add_argument("--swd-levels", type=_positive_int, default=3, help="Laplacian levels (default 3)")
    m.add_argument("--swd-patches", type=_positive_int, default=64, help="7x7 patches per image and level (64)")
    m.add_argument("--swd-projections", type=_positive_int, default=512, help="random directions (default 512)")
    s = p.add_argument_group("statistics")
    s.add_argument("--bootstrap", type=_count, default=2000, help="replicates for per-image means (default 2000)")
    s.add_argument("--set-bootstrap", type=_count, default=1000, help="replicates for set-level metrics (default 1000)")
    s.add_argument("--swd-replicates", choices=["linear", "exact"], default="linear",
                   help="set-level SWD replicates: first-order expansion in the unit weights (default; fast) or "
                   "recomputed per replicate (one sort per level and replicate: for GPUs or small runs)")  # fmt: skip
    s.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the resampling (default 0)")
    s.add_argument("--confidence", type=confidence_level, default=0.95, help="interval level (default 0.95)")
    o = p.add_argument_group("output")
    o.add_argument("--out", default="freeu-eval", help="report folder; rerunning into it resumes (default freeu-eval)")
    o.add_argument("--grid-units", type=_count, default=8, help="units shown in samples.png (default 8)")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``eval`` to the ``freeu`` command line; returns its parser."""
    p = subparsers.add_parser(
        "eval", help="evaluate FreeU settings under one protocol: weight-free metrics, paired bootstrap intervals"
    )
    add_arguments(p)
    p.set_defaults(handler=run)
    return p


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="freeu eval",
        description="Evaluate FreeU settings under one protocol (same units, same noise, same resize) with paired "
        "bootstrap intervals; shards over processes with accelerate launch; resumes from the report folder.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log what the library does")
    add_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    args.argv = ["eval", *argv] if argv is not None else None
    return run_command("eval", run, args)


# --- the run -----------------------------------------------------------------------------------------------------


class _SingleProcess:
    """Stands in for accelerate's PartialState when accelerate is not installed."""

    process_index, num_processes, is_main_process = 0, 1, True
    device = torch.device("cpu")

    def wait_for_everyone(self) -> None:
        pass


def process_state(device: str | None) -> Any:
    """This process's place among the processes ``accelerate launch`` started (one process without accelerate)."""
    try:
        from accelerate import PartialState
    except ImportError:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("several processes need accelerate: pip install 'freeu[eval]'") from None
        return _SingleProcess()
    cpu = (device is not None and device.startswith("cpu")) or not torch.cuda.is_available()
    # cpu=True makes accelerate use gloo (MULTI_CPU) when the launcher started several processes on CPUs
    return PartialState(cpu=cpu)


def _default_configs(demo: bool) -> list[EvalConfig]:
    if not demo:
        return [EvalConfig(BASELINE), *expand_spec("auto", "auto")]
    from freeu.config import FreeUConfig

    from ..demo.showcase import DEFAULT_ROWS

    return [EvalConfig(BASELINE)] + [EvalConfig(r.label, FreeUConfig(**r.settings)) for r in DEFAULT_ROWS[1:]]


def read_prompts(args: argparse.Namespace) -> list[str]:
    """The prompts of ``--prompt`` (repeatable) and then of ``--prompts FILE`` (one per line, blank lines skipped)."""
    prompts = list(args.prompt or [])
    if args.prompts:
        try:
            lines = Path(args.prompts).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"--prompts {args.prompts}: cannot read it as text ({error})") from None
        prompts += [line.strip() for line in lines if line.strip()]
    return prompts


def _configs(args: argparse.Namespace, demo: bool) -> list[EvalConfig]:
    configs: list[EvalConfig] = []
    baselines = list(args.guidance_baselines or [])
    if args.configs:
        from_file, more = load_config_file(args.configs)
        configs += from_file
        baselines += more
    for text in args.config or []:
        configs += parse_config_arg(text)
    if not configs:
        configs = _default_configs(demo)
    args.auto_guidance = AUTO in baselines
    configs += guidance_baselines(sorted({float(v) for v in baselines if v != AUTO}))
    return with_baseline(configs)


def _reference_fingerprint(files: list[Path]) -> str:
    h = hashlib.sha1()
    for f in files:
        stat = f.stat()
        h.update(f"{f.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return h.hexdigest()[:12]


def _reference(args: argparse.Namespace, demo: bool, size: tuple[int, int]) -> tuple[torch.Tensor | None, str]:
    """``(uint8 reference images at the evaluation size or None, a description that also fingerprints them)``."""
    from .generation import load_png
    from .metrics import fit_size

    if args.reference:
        folder = Path(args.reference).expanduser()
        if not folder.is_dir():
            raise ValueError(f"--reference {args.reference}: not a folder")
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)[: args.reference_count]
        if len(files) < 2:
            raise ValueError(
                f"--reference {folder}: needs at least 2 images ({', '.join(IMAGE_SUFFIXES)}), found {len(files)}"
            )
        images = torch.stack([fit_size(load_png(f)[None], size)[0] for f in files])
        return images, f"{len(files)} images of {folder} (fingerprint {_reference_fingerprint(files)})"
    if not demo:
        return None, "none (give --reference DIR for SWD, RAPSD, FID, KID)"
    from ..demo.data import HELD_OUT_IMAGES, HELD_OUT_SEED, PatchSampler

    sampler = PatchSampler(HELD_OUT_IMAGES, seed=HELD_OUT_SEED, size=max(size), allow_held_out=True)
    patches = sampler.sample(0, args.reference_count)[0]
    images = fit_size((patches * 255).round().to(torch.uint8), size)
    return images, (
        f"{args.reference_count} held-out {max(size)}x{max(size)} patches of {', '.join(HELD_OUT_IMAGES)} "
        f"(PatchSampler seed {HELD_OUT_SEED}, never seen in training), 8-bit"
    )


def _launcher() -> str | None:
    """The ``accelerate launch`` / ``torchrun`` command that started this process, if a parent is one."""
    pid = os.getppid()
    for _ in range(4):
        try:
            tokens = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            status = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        words = [t.decode(errors="replace") for t in tokens if t]
        for i, word in enumerate(words):
            name = os.path.basename(word)
            if name in ("accelerate", "torchrun"):
                return shlex.join([name, *words[i + 1 :]])
            if word in ("accelerate.commands.launch", "torch.distributed.run", "torch.distributed.launch"):
                return shlex.join(["python", "-m", word, *words[i + 1 :]])
        pid = int(status.rsplit(")", 1)[1].split()[1])
        if pid <= 1:
            return None
    return None


def _command(args: argparse.Namespace, world: int) -> str:
    argv = getattr(args, "argv", None)
    script = sys.argv[0] if sys.argv else "freeu"
    if argv is not None:
        process = shlex.join(["python", "-m", "freeu", *argv])
    elif script.endswith(os.path.join("evaluate", "__main__.py")):
        process = shlex.join(["python", "-m", "freeu", "eval", *sys.argv[1:]])
    elif script.endswith(os.path.join("freeu", "__main__.py")):
        process = shlex.join(["python", "-m", "freeu", *sys.argv[1:]])
    else:
        process = shlex.join([os.path.basename(script), *sys.argv[1:]])
    stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    lines = [f"# {stamp}: freeu {__version__}, torch {torch.__version__}, {world} process(es), in {os.getcwd()}"]
    launcher = _launcher()
    if launcher:
        lines += [launcher, f"# each of the {world} processes ran: {process}"]
    else:
        lines.append(process)
    return "\n".join(lines) + "\n"


def _bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit="step" if "generat" in desc else "image", disable=not enabled, dynamic_ncols=True
    )


def _matched_guidance(
    args: argparse.Namespace, model: Model, request: Any, configs: list[EvalConfig], units: list[Any], state: Any,
    show: bool,
) -> list[EvalConfig]:  # fmt: skip
    """FreeU off at the equivalent guidance scale of each FreeU configuration (the guidance meter on
    ``--guidance-units`` units: the first seed of every prompt, then the second, ...; each prompt's seeds in one
    batch), rounded to 2 digits. The main process measures
    and writes ``guidance.json`` (and per-step CSVs and figures under ``guidance/``); every process reads it back,
    so all sample the same configurations. A configuration measured before with the same settings, model, steps,
    guidance and units is not measured again."""
    from ..guidance import measure_guidance

    out = Path(args.out)
    path = out / "guidance.json"
    measured = [c for c in configs if c.freeu is not None and c.guidance is None]
    if not measured:
        raise ValueError("--guidance-baselines auto: no FreeU configuration to measure (give --config ...)")
    # the first seed of every prompt, then the second, ...: the meter sees every prompt before a second seed of one
    shown = sorted(units, key=lambda u: (u.seed, u.prompt_index or 0))[: args.guidance_units]
    common = {
        "model": model.fingerprint, "steps": request.steps, "guidance": request.guidance, "size": list(request.size),
        "negative_prompt": request.negative_prompt, "units": [[u.seed, u.prompt] for u in shown],
    }  # fmt: skip

    def key(config: EvalConfig) -> str:
        text = json.dumps({**common, "freeu": config.settings()}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    if state.is_main_process:
        data = json.loads(path.read_text()) if path.is_file() else {}
        data.setdefault("configs", {})
        data["units"] = [u.stem for u in shown]
        todo = [c for c in measured if data["configs"].get(c.name, {}).get("key") != key(c)]
        with _bar(len(todo) * len(shown) * request.steps, "guidance meter", show) as bar:
            for config in todo:
                traces = []
                for prompt in dict.fromkeys(u.prompt for u in shown):
                    group = [u.seed for u in shown if u.prompt == prompt]
                    run = replace(request, prompt=prompt)
                    count = len(group)
                    trace = measure_guidance(model, group, run, config.freeu,
                                             on_step=lambda n, k=count: bar.update(k))  # fmt: skip
                    traces.append((len(group), trace))
                total = sum(n for n, _ in traces)
                steps = [t.as_dict() for _, t in traces]
                equivalent = sum(n * t.equivalent for n, t in traces) / total
                share = sum(n * t.orthogonal_share for n, t in traces) / total
                data["configs"][config.name] = {
                    "key": key(config), "freeu": config.settings(), "scale": request.guidance,
                    "equivalent": equivalent, "orthogonal_share": share, "baseline": f"{BASELINE}@{config.name}",
                    "baseline_guidance": round(equivalent, 2), "runs": steps,
                }  # fmt: skip
                _write_meter_files(out, config.name, traces, model.name)
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_text(json.dumps(data, indent=2) + "\n")
                os.replace(tmp, path)
    state.wait_for_everyone()
    data = json.loads(path.read_text())
    entries = {c.name: data["configs"][c.name] for c in measured}
    args.guidance_meter = {n: {k: v for k, v in e.items() if k not in ("runs", "key")} for n, e in entries.items()}
    for name, entry in entries.items():
        if not math.isfinite(entry["equivalent"]) or entry["baseline_guidance"] < 0:
            raise ValueError(f"--guidance-baselines auto: {name}'s equivalent guidance is {entry['equivalent']}, "
                             "not a scale FreeU off can sample at")  # fmt: skip
        if state.is_main_process:
            print(f"guidance meter: {name} acts like guidance {entry['equivalent']:.3f} (the run's {request.guidance:g}"
                  f"), {entry['orthogonal_share']:.0%} of its change orthogonal; adds {entry['baseline']} at "
                  f"{entry['baseline_guidance']:g}")  # fmt: skip
    return [
        EvalConfig(entries[c.name]["baseline"], None, float(entries[c.name]["baseline_guidance"])) for c in measured
    ]


def _write_meter_files(out: Path, name: str, traces: list[tuple[int, Any]], model: str) -> None:
    """``guidance/NAME.csv`` (every run's steps) and ``guidance/NAME.png`` (the first run's figure)."""
    from .generation import _slug

    folder = out / "guidance"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (_, trace) in enumerate(traces):
        lines = trace.csv().splitlines()
        rows += (["run," + lines[0]] if i == 0 else []) + [f"{i},{line}" for line in lines[1:]]
    (folder / f"{_slug(name)}.csv").write_text("\n".join(rows) + "\n")
    from ..analyze.plots import plot_guidance

    try:
        plot_guidance(traces[0][1].as_dict(), folder, model, filename=f"{_slug(name)}.png")
    except ImportError:  # matplotlib, imported when the figure is drawn
        logger.warning("matplotlib is missing: no guidance figure (pip install 'freeu[eval]')")


def run(args: argparse.Namespace, model: Model | None = None) -> int:
    """Generate (sharded, resumable), analyse (sharded), then on the main process: metrics, statistics, report.
    ``model``: the model ``args.model`` names, already loaded (``freeu tune`` evaluates one model many times)."""
    from ..runtime import Request, is_demo_folder, load_model, peek_classes, peek_takes_prompt
    from .generation import Store, analyze_shard, generate_shard, image_keys, make_units

    demo_dir = is_demo_folder(args.model)
    prompts = read_prompts(args)
    configs = _configs(args, demo_dir is not None)
    if len(configs) > args.max_configs:
        raise ValueError(
            f"{len(configs)} configurations (grids expand), more than --max-configs {args.max_configs}: use fewer "
            "values or raise --max-configs"
        )
    options.writable_folder("--out", args.out)
    conditional = peek_takes_prompt(args.model)
    if conditional and not prompts and demo_dir is not None:
        prompts = peek_classes(args.model) or []  # a class-conditional demo model: every class by default
    if args.seeds is None:
        args.seeds = DEFAULT_CLASS_SEEDS if conditional and demo_dir is not None else DEFAULT_SEEDS
    if args.first_seed + args.seeds > 2**63:
        raise ValueError(f"--first-seed {args.first_seed} --seeds {args.seeds}: the seeds must stay below 2**63")
    if not conditional and (prompts or args.negative_prompt):
        what = "the demo model" if demo_dir is not None else args.model
        raise ValueError(f"{what} is unconditional: --prompt, --prompts and --negative-prompt need a text pipeline")
    if conditional and not prompts:
        raise ValueError("a text-to-image pipeline needs prompts: --prompt TEXT (repeatable) or --prompts FILE")
    if (
        not conditional
        and demo_dir is not None
        and (any(c.guidance is not None for c in configs) or args.auto_guidance)
    ):
        raise ValueError("the demo model is unconditional: no guidance scales (--guidance-baselines, guidance=)")
    state = process_state(args.device)
    main_process = state.is_main_process
    rank, world = state.process_index, state.num_processes
    show = main_process and not args.no_progress
    device = torch.device(args.device) if args.device else state.device
    if model is None:
        model = load_model(args.model, device=str(device), dtype=args.dtype)
    if model.video:
        raise ValueError("freeu eval scores still images; video pipelines are not supported")
    if model.takes_prompt and not prompts:
        raise ValueError("a text-to-image pipeline needs prompts: --prompt TEXT (repeatable) or --prompts FILE")
    request = model.check(Request(
        steps=args.steps, prompt=prompts[0] if model.takes_prompt else None,
        negative_prompt=args.negative_prompt if model.takes_prompt else None,
        guidance=args.guidance if model.guided else None, size=args.size,
    ))  # fmt: skip
    if any(c.preset == "auto" for c in configs):
        preset, evidence = model.preset()
        if main_process:
            print(f"auto: preset {preset!r} ({evidence})")
        configs = [resolve_auto(c, preset) for c in configs]
    if not model.guided and (any(c.guidance is not None for c in configs) or args.auto_guidance):
        raise ValueError(f"{args.model} takes no guidance scale: --guidance-baselines and guidance= do not apply")

    seeds = range(args.first_seed, args.first_seed + args.seeds)
    units = make_units(seeds, prompts if model.takes_prompt else None)
    if args.auto_guidance:
        options.writable_folder("--out", args.out)
        meter = _matched_guidance(args, model, request, configs, units, state, show)
        configs = with_baseline([*configs, *meter])
        if len(configs) > args.max_configs:
            raise ValueError(f"{len(configs)} configurations with the matched guidance baselines, more than "
                             f"--max-configs {args.max_configs}: raise --max-configs")  # fmt: skip
    eval_size = args.eval_size or request.size
    from ..demo.metrics import gaussian_pyramid

    try:  # the pyramid the SWD builds, on an empty image of the evaluation size: refused now, not after generating
        gaussian_pyramid(torch.zeros(1, 1, *eval_size), args.swd_levels)
    except ValueError as error:
        raise ValueError(f"--swd-levels {args.swd_levels}: {error}") from None
    # everything the analysis needs is checked before the long part: an explicit path that does not work fails now
    from .features import Skipped, load_clip, load_feature_net
    from .generation import Analyzer

    reference, reference_text = _reference(args, demo_dir is not None, eval_size)
    if reference is not None:
        feature_net = load_feature_net(args.fid_features, device)
    else:
        feature_net = Skipped("FID, KID: skipped, they need a reference (--reference DIR)")
    if model.takes_prompt:
        clip = load_clip(args.clip, device)
    else:
        clip = Skipped("CLIP score: not applicable, the model takes no prompts")
    skipped = [m for m in (feature_net, clip) if isinstance(m, Skipped)]
    if reference is None:
        skipped.insert(0, "SWD, RAPSD: skipped, they need a reference (--reference DIR)")
    feature_net = None if isinstance(feature_net, Skipped) else feature_net
    clip = None if isinstance(clip, Skipped) else clip

    store = Store(args.out, rank, world)
    if main_process:
        store.out.mkdir(parents=True, exist_ok=True)
        with (store.out / "command.txt").open("a") as handle:
            handle.write(_command(args, world))
    sampler = model.sampler_name(args.steps)
    base = {
        "model": model.fingerprint, "sampler": sampler, "steps": args.steps, "height": request.size.height,
        "width": request.size.width, "dtype": args.dtype, "device": device.type,
        "negative_prompt": args.negative_prompt,
    }  # fmt: skip
    keys = image_keys(model, request, configs, units, base)
    mine = len(units[rank::world])
    with _bar(len(configs) * mine * args.steps, f"generating ({world} process{'es' * (world > 1)})", show) as bar:
        summary = generate_shard(model, request, configs, units, store, base, keys, bar.update, args.batch_size)
    logger.info("process %d: generated %d images, reused %d", rank, summary.generated, summary.reused)
    state.wait_for_everyone()

    # per-image analysis, sharded the same way
    swd_params = dict(levels=args.swd_levels, patch_size=7, per_image=args.swd_patches,
                      projections=args.swd_projections, seed=0)  # fmt: skip
    fingerprint = hashlib.sha1(json.dumps({
        "base": base, "reference": reference_text, "eval_size": eval_size, "swd": swd_params,
        "features": feature_net.ident if feature_net else None, "clip": clip.ident if clip else None, "version": 1,
    }, sort_keys=True).encode()).hexdigest()[:12]  # fmt: skip
    analyzer = Analyzer(reference, eval_size, {**swd_params, "generated_count": len(units) if main_process else None},
                        feature_net, clip, fingerprint)  # fmt: skip
    records = store.records()
    with _bar(len(configs) * mine, "analysing", show) as bar:
        analyze_shard(analyzer, configs, units, store, keys, records, args.batch_size, on_image=bar.update)
    state.wait_for_everyone()
    if not main_process:
        return 0
    guided = f", guidance {request.guidance:g}" if model.guided else ""
    header = {
        "model": f"{model.description}, {request.size} pixels, {sampler}{guided}",
        "units": f"{len(seeds)} seeds {seeds.start}..{seeds.stop - 1}"
        + (f" x {len(prompts)} prompts" if model.takes_prompt else ""),
        "reference": reference_text,
        "eval_size": eval_size,
        "level": args.confidence,
        "replicates": args.bootstrap,
        "set_replicates": args.set_bootstrap,
        "world": world,
    }
    if getattr(args, "guidance_meter", None):
        header["guidance_meter"] = args.guidance_meter
        header["guidance_units"] = min(args.guidance_units, len(units))
    return _finish(args, store, configs, units, keys, analyzer, header, skipped, summary)


def _finish(args, store, configs, units, keys, analyzer, header, skipped, summary) -> int:  # noqa: ANN001
    """Main process: gather every record and analysis from disk, compute, write the report folder."""
    from .generation import load_analysis, load_png
    from .metrics import FeatureDistances, fit_size
    from .report import markdown, plot_metrics, sample_grid
    from .results import compute_results
    from .stats import resample

    records = store.records()
    analysis = load_analysis(store, analyzer.fingerprint)
    missing = [name for name, unit in keys if keys[name, unit] not in records]
    unanalysed = [name for (name, unit), key in keys.items() if f"{key}@{unit}" not in analysis]
    if missing or unanalysed:
        print(
            f"freeu eval: {len(missing)} images and {len(unanalysed)} analyses are missing after every process "
            f"finished (did one fail?); rerun the same command to resume",
            file=sys.stderr,
        )
        return 1
    n = len(units)
    entries = {c.name: [analysis[f"{keys[c.name, u.index]}@{u.index}"] for u in units] for c in configs}
    scalars = {
        name: {k: torch.tensor([e["scalars"][k] for e in rows], dtype=torch.float64) for k in rows[0]["scalars"]}
        for name, rows in entries.items()
    }
    spectra = {name: torch.stack([e["spectrum"] for e in rows]) for name, rows in entries.items()}
    features = None
    distances = None
    if analyzer.feature_net is not None:
        features = {name: torch.stack([e["features"] for e in rows]) for name, rows in entries.items()}
        cache = store.out / "analysis" / analyzer.fingerprint / "reference-features.pt"
        if cache.is_file():
            reference_features = torch.load(cache, weights_only=True)
        else:
            reference_features = analyzer.feature_net(analyzer.reference, args.batch_size)
            torch.save(reference_features, cache)
        distances = FeatureDistances(reference_features)

    def load_images(name: str) -> torch.Tensor:
        paths = [store.out / records[keys[name, u.index]]["image"] for u in units]
        return fit_size(torch.stack([load_png(p) for p in paths]), analyzer.eval_size)

    rows = resample(n, max(args.bootstrap, args.set_bootstrap), args.bootstrap_seed)
    show = not args.no_progress
    with _bar(len(configs), "scoring", show) as bar:
        results = compute_results(
            configs,
            n,
            scalars,
            spectra,
            features,
            load_images,
            analyzer.swd,
            analyzer.spectrum,
            distances,
            rows[: args.bootstrap],
            rows[: args.set_bootstrap],
            args.confidence,
            swd_method=args.swd_replicates,
            on_config=lambda name: (bar.set_postfix_str(name), bar.update(0 if name == configs[0].name else 1)),
            matched={name: entry["baseline"] for name, entry in (header.get("guidance_meter") or {}).items()},
        )
        bar.update(1)
    out = store.out
    with (out / "records.jsonl").open("w") as handle:
        for config in configs:
            for unit, entry in zip(units, entries[config.name], strict=True):
                record = dict(records[keys[config.name, unit.index]])
                record.update(config=config.name, unit=unit.index, metrics=entry["scalars"])
                handle.write(json.dumps(record, sort_keys=True) + "\n")
    summary_json = {
        "header": {k: list(v) if isinstance(v, tuple) else v for k, v in header.items()},
        "configs": [r.as_dict() for r in results],
        "skipped": list(skipped),
        "units": [{"index": u.index, "seed": u.seed, "prompt": u.prompt} for u in units],
    }
    (out / "metrics.json").write_text(json.dumps(summary_json, indent=2) + "\n")
    report = markdown(results, header, skipped)
    (out / "report.md").write_text(report)
    plot_metrics(out / "metrics.png", results)
    shown = units[: args.grid_units]
    if shown:
        grid_rows = [
            (c.name, [load_png(out / records[keys[c.name, u.index]]["image"]) for u in shown]) for c in configs
        ]
        sample_grid(
            out / "samples.png",
            grid_rows,
            [u.stem for u in shown],
            title=f"freeu eval: {header['model']}",
            footer="Same noise in every column.",
        )
    for message in skipped:
        print(message)
    print(f"this process generated {summary.generated} images and reused {summary.reused} already on disk")
    print(f"wrote {out / 'report.md'}")
    return 0
