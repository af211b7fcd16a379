"""``freeu eval`` / ``python -m freeu eval`` / ``accelerate launch -m freeu eval``: the command line. It turns the
flags into an :class:`~.request.EvalRequest` once, here at the edge (reading ``--prompts`` and ``--configs`` files,
filling no default into the parsed arguments), runs :func:`~.api.evaluate` and prints what it says."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import options
from ..errors import run_command
from ..runtime import DEFAULT_MODEL, MODEL_HELP
from .api import EvalIncomplete, evaluate
from .configs import EvalConfig, load_config_file, parse_config_arg
from .processes import process_command
from .request import (
    DEFAULT_CLASS_SEEDS,
    DEFAULT_SEEDS,
    DTYPES,
    GUIDANCE_MATCHES,
    EvalRequest,
    MetricOptions,
    StatisticsOptions,
)

__all__ = [
    "AUTO",
    "add_arguments",
    "build_parser",
    "confidence_level",
    "eval_size_arg",
    "guidance_baselines_arg",
    "main",
    "read_prompts",
    "register",
    "request_from_args",
    "run",
    "split_baselines",
]

logger = logging.getLogger(__name__)

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


def split_baselines(values: Sequence[float | str]) -> tuple[tuple[float, ...], bool]:
    """``--guidance-baselines`` values as ``(the scales, whether 'auto' is among them)``."""
    return tuple(float(v) for v in values if v != AUTO), AUTO in values


def eval_size_arg(text: str) -> options.Size:
    """An argparse type: ``--eval-size``, a size of at least 8 pixels."""
    return options.size(text, minimum=8)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``freeu eval``, by group."""
    _protocol_arguments(p.add_argument_group("model and protocol"))
    _config_arguments(p.add_argument_group("configurations (FreeU off is always included, as 'off')"))
    _metric_arguments(p.add_argument_group("metrics"))
    _statistics_arguments(p.add_argument_group("statistics"))
    o = p.add_argument_group("output")
    o.add_argument("--out", default="freeu-eval", help="report folder; rerunning into it resumes (default freeu-eval)")
    o.add_argument("--grid-units", type=_count, default=8, help="units shown in samples.png (default 8)")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")


def _protocol_arguments(g: Any) -> None:
    g.add_argument("--model", default=DEFAULT_MODEL, help=f"{MODEL_HELP}; default {DEFAULT_MODEL}")
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
        "e.g. 7.5 for SD 1.5 pipelines, 2 for the class-conditional demo model)",
    )
    g.add_argument("--size", type=options.vae_size, default=None, help="size SIZE or WIDTHxHEIGHT (pipelines)")
    g.add_argument("--dtype", choices=list(DTYPES), default="float32", help="default float32")
    g.add_argument(
        "--device",
        type=options.device,
        default=None,
        help="torch device (default: this process's accelerator, else cpu)",
    )
    g.add_argument("--batch-size", type=_positive_int, default=64, help="images per batch (default 64)")


def _config_arguments(c: Any) -> None:
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
        help="units the guidance meter samples per configuration for --guidance-baselines auto and compensate= "
        "(default 4; the first seed of every prompt first)",
    )  # fmt: skip
    c.add_argument(
        "--guidance-match", choices=GUIDANCE_MATCHES, default="auto",
        help="how --guidance-baselines auto and compensate= follow the meter: 'prompt', each prompt's own "
        "equivalent scale (as GA-Eval matches); 'global', one scale for every prompt; 'steps', each prompt's "
        "guidance curve step by step; 'auto' (default): 'prompt' where the meter's units hold every prompt, else "
        "'global'",
    )  # fmt: skip


def _metric_arguments(m: Any) -> None:
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
        help="auto, none, inception:PATH (torch-fidelity's weights) or onnx:PATH (any network, as ONNX): the FID/KID "
        "feature network",
    )
    m.add_argument("--clip", default="auto", help="auto, none, or a local CLIP folder / cached hub id (CLIP score)")
    m.add_argument("--swd-levels", type=_positive_int, default=3, help="Laplacian levels (default 3)")
    m.add_argument("--swd-patches", type=_positive_int, default=64, help="7x7 patches per image and level (64)")
    m.add_argument("--swd-projections", type=_positive_int, default=512, help="random directions (default 512)")


def _statistics_arguments(s: Any) -> None:
    s.add_argument("--bootstrap", type=_count, default=2000, help="replicates for per-image means (default 2000)")
    s.add_argument("--set-bootstrap", type=_count, default=1000, help="replicates for set-level metrics (default 1000)")
    s.add_argument("--swd-replicates", choices=["linear", "exact"], default="linear",
                   help="set-level SWD replicates: first-order expansion in the unit weights (default; fast) or "
                   "recomputed per replicate (one sort per level and replicate: for GPUs or small runs)")  # fmt: skip
    s.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the resampling (default 0)")
    s.add_argument("--confidence", type=confidence_level, default=0.95, help="interval level (default 0.95)")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``eval`` to the ``freeu`` command line; returns its parser."""
    p = subparsers.add_parser(
        "eval", help="evaluate FreeU settings under one protocol: weight-free metrics, paired bootstrap intervals"
    )
    add_arguments(p)
    p.set_defaults(handler=run)
    return p


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m freeu.apps.evaluate`` (``freeu eval``'s arguments and ``--verbose``)."""
    p = argparse.ArgumentParser(
        prog="freeu eval",
        description="Evaluate FreeU settings under one protocol (same units, same noise, same resize) with paired "
        "bootstrap intervals; shards over processes with accelerate launch; resumes from the report folder.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log what the library does")
    add_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``freeu eval ARGV``; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    words = ["eval", *argv] if argv is not None else None
    return run_command("eval", functools.partial(run, argv=words), args)


# --- from the flags to a request, once ------------------------------------------------------------------------------


def read_prompts(prompt: Sequence[str] | None, prompts_file: str | None) -> list[str]:
    """The prompts of ``--prompt`` (repeatable) and then of ``--prompts FILE`` (one per line, blank lines skipped)."""
    prompts = list(prompt or [])
    if prompts_file:
        try:
            lines = Path(prompts_file).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"--prompts {prompts_file}: cannot read it as text ({error})") from None
        prompts += [line.strip() for line in lines if line.strip()]
    return prompts


def _configs(args: argparse.Namespace) -> tuple[list[EvalConfig], list[float | str]]:
    """The configurations of ``--configs FILE`` then ``--config`` (in that order), and every guidance baseline of
    the flag and the file."""
    configs: list[EvalConfig] = []
    baselines = list(args.guidance_baselines or [])
    if args.configs:
        from_file, more = load_config_file(args.configs)
        configs += from_file
        baselines += more
    for text in args.config or []:
        configs += parse_config_arg(text)
    return configs, baselines


def request_from_args(args: argparse.Namespace, argv: Sequence[str] | None = None) -> EvalRequest:
    """The request that ``freeu eval``'s parsed flags make (``argv``: the arguments from ``eval`` on, for
    ``command.txt``; ``None``: this process's command line). Reads the ``--prompts`` and ``--configs`` files."""
    prompts = read_prompts(args.prompt, args.prompts)
    configs, baselines = _configs(args)
    scales, matched = split_baselines(baselines)
    metrics = MetricOptions(
        reference=args.reference, reference_count=args.reference_count, eval_size=args.eval_size,
        fid_features=args.fid_features, clip=args.clip, swd_levels=args.swd_levels, swd_patches=args.swd_patches,
        swd_projections=args.swd_projections,
    )  # fmt: skip
    statistics = StatisticsOptions(
        bootstrap=args.bootstrap, set_bootstrap=args.set_bootstrap, swd_replicates=args.swd_replicates,
        bootstrap_seed=args.bootstrap_seed, confidence=args.confidence,
    )  # fmt: skip
    return EvalRequest(
        model=args.model, configs=tuple(configs), prompts=tuple(prompts), seeds=args.seeds,
        first_seed=args.first_seed, steps=args.steps, negative_prompt=args.negative_prompt, guidance=args.guidance,
        size=args.size, dtype=args.dtype, device=args.device, batch_size=args.batch_size, guidance_baselines=scales,
        matched_guidance=matched, guidance_units=args.guidance_units, guidance_match=args.guidance_match,
        max_configs=args.max_configs, metrics=metrics,
        statistics=statistics, out=Path(args.out), grid_units=args.grid_units, progress=not args.no_progress,
        command=process_command(argv),
    )  # fmt: skip


def run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    """The ``eval`` handler: build the request, evaluate it, print what it says; 1 when a process failed to make its
    share (rerun to resume). ``argv``: the arguments from ``eval`` on (default: what ``freeu``'s own ``main`` kept,
    else this process's command line)."""
    words = argv if argv is not None else getattr(args, "argv", None)
    request = request_from_args(args, words)
    try:
        evaluate(request, notes=print)
    except EvalIncomplete as error:
        print(f"freeu eval: {error}", file=sys.stderr)
        return 1
    return 0
