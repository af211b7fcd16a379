"""``freeu tune``: search FreeU's settings for one model with successive halving on ``freeu eval``, confirm the winner
on seeds the search never saw, and write it as a preset file. This module is the command line: it turns the flags
into :class:`~.settings.TuneSettings` once and runs :func:`~.runner.run_tune`, which calls
:func:`freeu.apps.evaluate.evaluate` for every rung (see :mod:`.runner`, ``docs/tune.md``)."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import options
from ..evaluate.cli import confidence_level, eval_size_arg, guidance_baselines_arg, read_prompts, split_baselines
from ..evaluate.configs import COMPENSATIONS
from ..evaluate.request import MetricOptions, StatisticsOptions
from ..runtime import DEMO, MODEL_HELP
from .runner import EvalFailed, run_tune
from .search import DEFAULT_SPACE, KEYS, schedule_for_budget
from .settings import METRICS, TuneSettings

__all__ = ["METRICS", "add_arguments", "build_parser", "main", "register", "run", "settings_from_args"]

logger = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``freeu tune``, by group."""
    _protocol_arguments(p.add_argument_group("model and protocol (as in freeu eval)"))
    _search_arguments(p.add_argument_group("search"))
    _confirmation_arguments(p.add_argument_group("confirmation"))
    _metric_arguments(p.add_argument_group("metrics (as in freeu eval)"))
    _output_arguments(p.add_argument_group("output"))


def _protocol_arguments(g: Any) -> None:
    g.add_argument("--model", default=DEMO, help=f"{MODEL_HELP}; default {DEMO}, the quickest to tune (a guided "
                   "model's candidates are also measured against FreeU off at their equivalent guidance)")  # fmt: skip
    g.add_argument("--steps", type=options.positive_int, default=25, help="denoising steps (default 25)")
    g.add_argument("--prompt", action="append", default=None, help="a prompt (repeat for several); pipelines only")
    g.add_argument("--prompts", default=None, help="a text file with one prompt per line")
    g.add_argument("--negative-prompt", default=None, help="the negative prompt (pipelines)")
    g.add_argument("--guidance", type=options.non_negative, default=None, help="guidance scale (guided models; "
                   "default: the model's own, e.g. 7.5 for SD 1.5)")  # fmt: skip
    g.add_argument("--size", type=options.vae_size, default=None, help="size SIZE or WIDTHxHEIGHT (pipelines)")
    g.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32", help="default float32")
    g.add_argument("--device", type=options.device, default=None, help="torch device (default: this process's "
                   "accelerator, else cpu)")  # fmt: skip
    g.add_argument("--batch-size", type=options.positive_int, default=64, help="images per batch (default 64)")


def _first_rung(per_candidate: int) -> int:
    """The candidates the default budget gives (704 images, 64 seeds, eta 2, 16 seeds at least)."""
    return schedule_for_budget(704, 64, 2, 16, per_candidate)[0].candidates


def _search_arguments(s: Any) -> None:
    s.add_argument("--seeds", type=options.positive_int, default=64, help="search seeds per prompt: the last rung "
                   "scores its candidates on all of them (default 64)")  # fmt: skip
    s.add_argument("--first-seed", type=options.seed, default=0, help="the first search seed (default 0)")
    s.add_argument(
        "--budget",
        type=options.positive_int,
        default=704,
        help="images the search may make, FreeU off included, per prompt; it sets the number of candidates (default "
        f"704: {_first_rung(1)} candidates at 64 seeds, {_first_rung(2)} where each is scored against FreeU off at its "
        "own matched guidance)",
    )
    s.add_argument("--eta", type=int, choices=[2, 3, 4], default=2, help="each rung keeps 1/eta of its candidates "
                   "and the next has eta times the seeds (default 2)")  # fmt: skip
    s.add_argument("--min-seeds", type=options.positive_int, default=16, help="seeds of the first rungs at least "
                   "(default 16)")  # fmt: skip
    s.add_argument("--space", action="append", default=None, metavar="KEY=RANGE", help=f"what to search, on top of "
                   f"'{DEFAULT_SPACE}': KEY=LOW:HIGH, KEY=A,B (choices) or KEY=VALUE (fixed), KEY one of "
                   f"{', '.join(KEYS)}; e.g. 'version=1,2' or 'start=0:0.5' (repeatable)")  # fmt: skip
    s.add_argument("--version", type=int, choices=[1, 2], default=2, help="FreeU version unless --space varies it "
                   "(default 2)")  # fmt: skip
    s.add_argument("--convention", choices=["official", "diffusers"], default="official",
                   help="stage convention unless --space varies it (default official)")  # fmt: skip
    s.add_argument("--search-seed", type=int, default=0, help="seed of the candidates' quasi-random draw (default 0)")
    s.add_argument(
        "--metric",
        choices=list(METRICS),
        default="swd",
        help="the objective: swd (default), rapsd "
        "(weight-free, against the reference), fid, kid (feature weights on disk), clip (pipelines)",
    )
    s.add_argument("--no-matched-guidance", action="store_true", help="guided pipelines: score each candidate "
                   "against FreeU off, not against FreeU off at the candidate's own equivalent guidance")  # fmt: skip
    s.add_argument("--guidance-units", type=options.positive_int, default=None, help="units the guidance meter "
                   "samples per candidate (guided pipelines; default: one per prompt, so that every prompt is "
                   "measured and matched with its own scale)")  # fmt: skip
    s.add_argument("--compensate", choices=list(COMPENSATIONS), default=None, help="guided pipelines: sample every "
                   "candidate (and the confirmation's tuned setting and preset) with the extra guidance the meter "
                   "measures for it taken back, on every frequency (global) or on the low band only (low), and score "
                   "it against FreeU off: FreeU's part that is not guidance, searched alone")  # fmt: skip


def _confirmation_arguments(c: Any) -> None:
    c.add_argument("--confirm-seeds", type=options.positive_int, default=256, help="confirmation seeds per prompt "
                   "(default 256)")  # fmt: skip
    c.add_argument("--confirm-first-seed", type=options.seed, default=None, help="the first confirmation seed "
                   "(default: right after the search seeds); the two sets must not overlap")  # fmt: skip
    c.add_argument("--guidance-baselines", type=guidance_baselines_arg, default=None, metavar="G1,G2",
                   help="also FreeU off at these stronger guidance scales in the confirmation (guided pipelines), "
                   "to tell a FreeU gain from a guidance gain; 'auto': at the tuned setting's (and the preset's) "
                   "equivalent guidance, measured by the guidance meter")  # fmt: skip
    c.add_argument("--bootstrap", type=options.non_negative_int, default=2000, help="replicates for per-image "
                   "means (default 2000)")  # fmt: skip
    c.add_argument("--set-bootstrap", type=options.non_negative_int, default=1000, help="replicates for set-level "
                   "metrics (default 1000)")  # fmt: skip
    c.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the resampling (default 0)")
    c.add_argument("--confidence", type=confidence_level, default=0.95, help="interval level (default 0.95)")


def _metric_arguments(m: Any) -> None:
    m.add_argument("--reference", default=None, metavar="DIR", help="reference images (default for the demo "
                   "model: its held-out patches)")  # fmt: skip
    m.add_argument("--reference-count", type=options.positive_int, default=1024, help="reference images used")
    m.add_argument("--eval-size", type=eval_size_arg, default=None, help="resize before scoring")
    m.add_argument("--fid-features", default="auto", help="FID/KID feature network (as in freeu eval)")
    m.add_argument("--clip", default="auto", help="CLIP folder / cached hub id (as in freeu eval)")
    m.add_argument("--swd-levels", type=options.positive_int, default=3, help="Laplacian levels (default 3)")
    m.add_argument("--swd-patches", type=options.positive_int, default=64, help="patches per image and level (64)")
    m.add_argument("--swd-projections", type=options.positive_int, default=512, help="random directions (512)")


def _output_arguments(o: Any) -> None:
    o.add_argument("--out", default="freeu-tune", help="output folder; rerunning into it resumes (default "
                   "freeu-tune)")  # fmt: skip
    o.add_argument("--name", default=None, help="the preset's name (default: tuned-MODEL)")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``tune`` to the ``freeu`` command line."""
    p = subparsers.add_parser(
        "tune", help="search FreeU's factors for one model, confirm on unseen seeds, write a preset file",
        description="Successive halving over FreeU settings on freeu eval's metrics; the winner is confirmed "
        "against FreeU off and the model's preset on seeds the search never saw, and written as a preset file "
        "that --preset accepts everywhere.",
    )  # fmt: skip
    add_arguments(p)
    p.set_defaults(handler=run)
    return p


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``freeu tune`` on its own (its arguments and ``--verbose``)."""
    p = argparse.ArgumentParser(prog="freeu tune", description="Search FreeU's settings for one model.")
    p.add_argument("-v", "--verbose", action="store_true", help="log what the library does")
    add_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``freeu tune ARGV``; returns the exit code."""
    from ..errors import run_command

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    words = ["tune", *(argv if argv is not None else sys.argv[1:])]
    return run_command("tune", functools.partial(run, argv=words), args)


def settings_from_args(args: argparse.Namespace, argv: Sequence[str] | None = None) -> TuneSettings:
    """The settings that ``freeu tune``'s parsed flags make (``argv``: the command from ``tune`` on, for the
    report). Reads the ``--prompts`` file."""
    scales, auto = split_baselines(args.guidance_baselines or [])
    metrics = MetricOptions(
        reference=args.reference, reference_count=args.reference_count, eval_size=args.eval_size,
        fid_features=args.fid_features, clip=args.clip, swd_levels=args.swd_levels, swd_patches=args.swd_patches,
        swd_projections=args.swd_projections,
    )  # fmt: skip
    statistics = StatisticsOptions(bootstrap=args.bootstrap, set_bootstrap=args.set_bootstrap,
                                   bootstrap_seed=args.bootstrap_seed, confidence=args.confidence)  # fmt: skip
    return TuneSettings(
        model=args.model, steps=args.steps, prompts=tuple(read_prompts(args.prompt, args.prompts)),
        negative_prompt=args.negative_prompt, guidance=args.guidance, size=args.size, dtype=args.dtype,
        device=args.device, batch_size=args.batch_size, seeds=args.seeds, first_seed=args.first_seed,
        budget=args.budget, eta=args.eta, min_seeds=args.min_seeds, space=tuple(args.space or ()),
        version=args.version, convention=args.convention, search_seed=args.search_seed, metric=args.metric,
        matched_guidance=not args.no_matched_guidance, guidance_units=args.guidance_units, compensate=args.compensate,
        confirm_seeds=args.confirm_seeds, confirm_first_seed=args.confirm_first_seed, guidance_baselines=scales,
        auto_guidance_baselines=auto, metrics=metrics, statistics=statistics, out=Path(args.out), name=args.name,
        progress=not args.no_progress, argv=None if argv is None else tuple(argv),
    )  # fmt: skip


def run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    """The ``tune`` handler: search, confirm, write ``preset.toml``, ``report.md``, ``search.png``; resumable. 1
    when an evaluation lost images (rerun to resume). ``argv``: the command from ``tune`` on (default: what
    ``freeu``'s own ``main`` kept, else this process's command line)."""
    words = argv if argv is not None else getattr(args, "argv", None)
    try:
        run_tune(settings_from_args(args, words), notes=functools.partial(print, flush=True))
    except EvalFailed as error:
        print(f"freeu tune: {error}", file=sys.stderr)
        return 1
    return 0
