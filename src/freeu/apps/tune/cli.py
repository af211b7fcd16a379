"""``freeu tune``: search FreeU's settings for one model with successive halving on ``freeu eval``, confirm the winner
on seeds the search never saw, and write it as a preset file.

Every rung of the search is one ``freeu eval`` run (in this process, on the model loaded once) into ``OUT/search``:
the same units, noise, resize and metrics as any evaluation, with the rung's candidates sampled together through
per-sample factors. Images are keyed by settings and seed, so a rung reuses the images of the rungs before it, and a
run that was interrupted resumes from what is on disk; ``OUT/tune.json`` records each finished rung's scores, so a
rerun of the same command skips them. The confirmation is one more ``freeu eval`` run, into ``OUT/confirm``, of
FreeU off, the winner and the model's preset (or the published preset nearest the winner) on the confirmation
seeds, with paired bootstrap intervals. See ``docs/tune.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from freeu import __version__
from freeu.config import FreeUConfig

from .. import options
from ..evaluate import cli as evaluate
from ..evaluate.configs import BASELINE
from ..runtime import DEMO, MODEL_HELP, Model
from .search import (
    DEFAULT_SPACE,
    KEYS,
    draw_candidates,
    parse_space,
    rung_cost,
    schedule_for_budget,
    successive_halving,
)

__all__ = ["METRICS", "build_parser", "main", "register", "run"]

logger = logging.getLogger(__name__)

#: The objectives: metric -> (where ``freeu eval`` reports it, lower is better).
METRICS: dict[str, tuple[str, bool]] = {
    "swd": ("set_level", True),
    "rapsd": ("set_level", True),
    "fid": ("set_level", True),
    "kid": ("set_level", True),
    "clip": ("per_image_mean", False),
}
STATE = "tune.json"
#: Flags passed to every ``freeu eval`` run unchanged (same names there).
SHARED_FLAGS = (
    "model", "steps", "negative_prompt", "guidance", "size", "dtype", "device", "batch_size", "reference",
    "reference_count", "eval_size", "swd_levels", "swd_patches", "swd_projections",
)  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and protocol (as in freeu eval)")
    g.add_argument("--model", default=DEMO, help=f"{MODEL_HELP}; default {DEMO}, the quickest to tune (a guided "
                   "model's candidates are also measured against FreeU off at their equivalent guidance)")  # fmt: skip
    g.add_argument("--steps", type=options.positive_int, default=25, help="denoising steps (default 25)")
    g.add_argument("--prompt", action="append", default=None, help="a prompt (repeat for several); pipelines only")
    g.add_argument("--prompts", default=None, help="a text file with one prompt per line")
    g.add_argument("--negative-prompt", default=None, help="the negative prompt (pipelines)")
    g.add_argument("--guidance", type=options.non_negative, default=None, help="guidance scale (guided models; "
                   "default: the model's, 7.5 for pipelines)")  # fmt: skip
    g.add_argument("--size", type=options.vae_size, default=None, help="size SIZE or WIDTHxHEIGHT (pipelines)")
    g.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32", help="default float32")
    g.add_argument("--device", type=options.device, default=None, help="torch device (default: this process's "
                   "accelerator, else cpu)")  # fmt: skip
    g.add_argument("--batch-size", type=options.positive_int, default=64, help="images per batch (default 64)")
    s = p.add_argument_group("search")
    s.add_argument("--seeds", type=options.positive_int, default=64, help="search seeds per prompt: the last rung "
                   "scores its candidates on all of them (default 64)")  # fmt: skip
    s.add_argument("--first-seed", type=options.seed, default=0, help="the first search seed (default 0)")
    s.add_argument(
        "--budget",
        type=options.positive_int,
        default=704,
        help="images the search may make, FreeU off "
        "included, per prompt; it sets the number of candidates (default 704: 32 candidates at 64 seeds)",
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
    s.add_argument("--guidance-units", type=options.positive_int, default=2, help="units the guidance meter samples "
                   "per candidate (guided pipelines; default 2)")  # fmt: skip
    c = p.add_argument_group("confirmation")
    c.add_argument("--confirm-seeds", type=options.positive_int, default=256, help="confirmation seeds per prompt "
                   "(default 256)")  # fmt: skip
    c.add_argument("--confirm-first-seed", type=options.seed, default=None, help="the first confirmation seed "
                   "(default: right after the search seeds); the two sets must not overlap")  # fmt: skip
    c.add_argument("--guidance-baselines", type=evaluate.guidance_baselines_arg, default=None, metavar="G1,G2",
                   help="also FreeU off at these stronger guidance scales in the confirmation (guided pipelines), "
                   "to tell a FreeU gain from a guidance gain; 'auto': at the tuned setting's (and the preset's) "
                   "equivalent guidance, measured by the guidance meter")  # fmt: skip
    c.add_argument("--bootstrap", type=options.non_negative_int, default=2000, help="replicates for per-image "
                   "means (default 2000)")  # fmt: skip
    c.add_argument("--set-bootstrap", type=options.non_negative_int, default=1000, help="replicates for set-level "
                   "metrics (default 1000)")  # fmt: skip
    c.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the resampling (default 0)")
    c.add_argument("--confidence", type=evaluate.confidence_level, default=0.95, help="interval level (default 0.95)")
    m = p.add_argument_group("metrics (as in freeu eval)")
    m.add_argument("--reference", default=None, metavar="DIR", help="reference images (default for the demo "
                   "model: its held-out patches)")  # fmt: skip
    m.add_argument("--reference-count", type=options.positive_int, default=1024, help="reference images used")
    m.add_argument("--eval-size", type=evaluate.eval_size_arg, default=None, help="resize before scoring")
    m.add_argument("--fid-features", default="auto", help="FID/KID feature network (as in freeu eval)")
    m.add_argument("--clip", default="auto", help="CLIP folder / cached hub id (as in freeu eval)")
    m.add_argument("--swd-levels", type=options.positive_int, default=3, help="Laplacian levels (default 3)")
    m.add_argument("--swd-patches", type=options.positive_int, default=64, help="patches per image and level (64)")
    m.add_argument("--swd-projections", type=options.positive_int, default=512, help="random directions (512)")
    o = p.add_argument_group("output")
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
    p = argparse.ArgumentParser(prog="freeu tune", description="Search FreeU's settings for one model.")
    p.add_argument("-v", "--verbose", action="store_true", help="log what the library does")
    add_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from ..errors import run_command

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    args.argv = ["tune", *(argv if argv is not None else sys.argv[1:])]
    return run_command("tune", run, args)


# --- the run -----------------------------------------------------------------------------------------------------


def spec(settings: Mapping[str, Any]) -> str:
    """A candidate's settings as a ``freeu eval`` configuration spec: ``b1=1.2 b2=1.4 s1=0.9 s2=0.5 version=2``."""
    return " ".join(f"{k}={v}" for k, v in settings.items())


def _eval_argv(args: argparse.Namespace, **changes: Any) -> list[str]:
    """``freeu eval`` arguments: the shared flags as given, then ``changes`` (``None``: left out; ``True``: a bare
    flag)."""
    values = {name: getattr(args, name) for name in SHARED_FLAGS}
    values.update(prompt=args.prompt, prompts=args.prompts, no_progress=args.no_progress)
    values.update(changes)
    argv: list[str] = []
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, list):
            for item in value:
                argv += [flag, str(item)]
        elif name in ("size", "eval_size"):
            argv += [flag, f"{value[1]}x{value[0]}"]  # a Size (height, width), written WIDTHxHEIGHT
        else:
            argv += [flag, str(value)]
    return argv


def _metric_value(entry: Mapping[str, Any], metric: str) -> float:
    where, _ = METRICS[metric]
    table = entry.get(where, {})
    if metric not in table:
        return math.nan
    value = table[metric]["value"] if where == "set_level" else table[metric]
    return float(value["value"])


def _atomic_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


class EvalFailed(RuntimeError):
    """A ``freeu eval`` run of the search or the confirmation ended with an error (exit 1 of ``freeu tune``)."""


class Evaluations:
    """``freeu eval`` runs of one model, in this process: each writes its report folder and gives its metrics."""

    def __init__(self, args: argparse.Namespace, model: Model, log: Path) -> None:
        self.args, self.model, self.log = args, model, log
        self.state = evaluate.process_state(args.device)

    def __call__(self, out: Path, configs: Mapping[str, str], **changes: Any) -> dict[str, Any]:
        out.mkdir(parents=True, exist_ok=True)
        table = out / f"configs-{hashlib.sha1(json.dumps(configs).encode()).hexdigest()[:8]}.json"
        if self.state.is_main_process:
            _atomic_json(table, {"configs": dict(configs)})
        self.state.wait_for_everyone()
        argv = _eval_argv(self.args, configs=str(table), out=str(out), max_configs=2 * len(configs) + 16, **changes)
        eval_args = evaluate.build_parser().parse_args(argv)
        eval_args.argv = ["eval", *argv]
        with self.log.open("a") as handle, contextlib.redirect_stdout(handle):
            print(f"# freeu eval {' '.join(argv)}", flush=True)
            code = evaluate.run(eval_args, model=self.model)
        if code:
            raise EvalFailed(f"freeu eval into {out} failed (exit {code}); see {self.log}; rerun to resume")
        self.state.wait_for_everyone()
        return json.loads((out / "metrics.json").read_text())


def _fingerprint(args: argparse.Namespace, space: str, prompts: list[str]) -> dict[str, Any]:
    """What decides the search's result: a rerun into the same folder must have the same."""
    keys = ("model", "steps", "negative_prompt", "guidance", "size", "dtype", "seeds", "first_seed", "budget", "eta",
            "min_seeds", "search_seed", "metric", "reference", "reference_count", "eval_size", "swd_levels",
            "swd_patches", "swd_projections")  # fmt: skip
    out = {k: getattr(args, k) for k in keys}
    out.update(space=space, prompts=prompts, format=1, matched=_matched(args))
    if out["matched"]:
        out["guidance_units"] = args.guidance_units
    return json.loads(json.dumps(out))


def _check(args: argparse.Namespace, prompts: list[str]) -> None:
    confirm_first = args.first_seed + args.seeds if args.confirm_first_seed is None else args.confirm_first_seed
    search = range(args.first_seed, args.first_seed + args.seeds)
    confirm = range(confirm_first, confirm_first + args.confirm_seeds)
    if max(search.start, confirm.start) < min(search.stop, confirm.stop):
        raise ValueError(f"--confirm-first-seed {confirm_first}: the confirmation seeds {confirm.start}.."
                         f"{confirm.stop - 1} overlap the search seeds {search.start}..{search.stop - 1}; they must "
                         "be disjoint")  # fmt: skip
    if confirm.stop > 2**63:
        raise ValueError("--confirm-first-seed/--confirm-seeds: the seeds must stay below 2**63")
    if args.metric == "clip" and not prompts:
        raise ValueError("--metric clip needs a text-to-image pipeline and prompts (--prompt or --prompts)")
    if args.metric in ("fid", "kid") and args.fid_features == "none":
        raise ValueError(f"--metric {args.metric} needs --fid-features (auto or a path), not none")
    args.confirm_first_seed = confirm_first


def _matched(args: argparse.Namespace) -> bool:
    """Whether the search scores each candidate against FreeU off at its own equivalent guidance: guided pipelines
    (read from the model's files, before it loads) sampled above guidance 1, unless ``--no-matched-guidance``."""
    from ..runtime import peek_takes_prompt

    scale = args.guidance if args.guidance is not None else 2.0  # every model's default is above 1
    return not args.no_matched_guidance and peek_takes_prompt(args.model) and scale > 1


def run(args: argparse.Namespace) -> int:
    """Search, confirm, write ``preset.toml``, ``report.md``, ``search.png``; resumable."""
    try:
        return _run(args)
    except EvalFailed as error:
        print(f"freeu tune: {error}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    from ..runtime import load_model, peek_classes
    from .report import nearest_preset, write_outputs

    prompts = evaluate.read_prompts(args) or peek_classes(args.model) or []  # a class demo model: every class
    space = parse_space(args.space or (), args.version, args.convention)
    _check(args, prompts)
    matched = _matched(args)
    per_candidate = 2 if matched else 1
    schedule = schedule_for_budget(args.budget, args.seeds, args.eta, args.min_seeds, per_candidate)
    out = options.writable_folder("--out", args.out)
    fingerprint = _fingerprint(args, space.describe(), prompts)
    state_path = out / STATE
    record: dict[str, Any] = {}
    if state_path.is_file():
        record = json.loads(state_path.read_text())
        if record.get("fingerprint") != fingerprint:
            changed = sorted(k for k in fingerprint if record.get("fingerprint", {}).get(k) != fingerprint[k])
            raise ValueError(f"--out {args.out}: it holds a tune of other settings (differs in {', '.join(changed)}); "
                             "rerun with those settings to resume it, or give another --out")  # fmt: skip
    if record:  # a resumed tune: its candidates as recorded (the draw is deterministic, the record is the truth)
        by_name = {name: dict(settings) for name, settings in record["candidates"].items()}
    else:
        candidates = draw_candidates(space, schedule[0].candidates, args.search_seed)
        by_name = {f"c{i:02d}": settings for i, settings in enumerate(candidates)}
    names = list(by_name)
    state = evaluate.process_state(args.device)
    model = load_model(args.model, device=args.device or str(state.device), dtype=args.dtype)
    evaluations = Evaluations(args, model, out / "log.txt")
    main_process = state.is_main_process
    if not record:
        record = {"fingerprint": fingerprint, "freeu_package": __version__, "candidates": by_name, "rungs": []}
    if main_process:
        _atomic_json(state_path, record)
        print(f"freeu tune: {len(names)} candidates from {space.describe()}; {len(schedule)} rungs "
              f"({', '.join(f'{r.candidates} on {r.seeds} seeds' for r in schedule)}): "
              f"{rung_cost(schedule, per_candidate)} images per prompt, FreeU off included"
              + (", each candidate scored against FreeU off at its own equivalent guidance" if matched else ""),
              flush=True)  # fmt: skip
    lower = METRICS[args.metric][1]
    # only the objective's networks run during the search
    search_flags: dict[str, Any] = dict(
        first_seed=args.first_seed, bootstrap=0, set_bootstrap=0, grid_units=0,
        fid_features=args.fid_features if args.metric in ("fid", "kid") else "none",
        clip=args.clip if args.metric == "clip" else "none",
    )  # fmt: skip
    if matched:
        search_flags.update(guidance_baselines="auto", guidance_units=args.guidance_units)

    def evaluate_rung(index: int, alive: Sequence[str], seeds: int) -> dict[str, float]:
        if main_process:
            print(f"rung {index + 1}/{len(schedule)}: {len(alive)} candidates on {seeds} seeds", flush=True)
        metrics = evaluations(out / "search", {BASELINE: BASELINE, **{n: spec(by_name[n]) for n in alive}},
                              seeds=seeds, **search_flags)  # fmt: skip
        values = {c["name"]: _metric_value(c, args.metric) for c in metrics["configs"]}
        if math.isnan(values[BASELINE]):
            skipped = "; ".join(metrics.get("skipped", [])) or "no reference"
            raise ValueError(f"--metric {args.metric}: freeu eval did not compute it ({skipped})")
        # matched: a candidate's score is its metric minus that of FreeU off at its own equivalent guidance
        scores = {n: values[n] - values[f"{BASELINE}@{n}"] if matched else values[n] for n in alive}
        entry: dict[str, Any] = {"seeds": seeds, "off": values[BASELINE], "scores": scores}
        if matched:
            entry["values"] = {n: values[n] for n in alive}
            entry["matched"] = {n: values[f"{BASELINE}@{n}"] for n in alive}
        record["rungs"].append(entry)
        if main_process:
            _atomic_json(state_path, record)
        return scores

    done = [r["scores"] for r in record["rungs"]]
    winner, history = successive_halving(names, schedule, evaluate_rung, lower, done)
    record["winner"] = winner
    # confirmation: off, the winner, the model's preset or the published one nearest the winner
    tuned = FreeUConfig(**by_name[winner])
    try:
        preset, why = model.preset()
        preset_note = f"the model's preset ({why})"
    except ValueError:
        preset = nearest_preset(tuned)
        preset_note = "the published preset nearest the tuned factors (the model has no preset of its own)"
    if main_process:
        print(f"confirming {winner} ({tuned.label()}) against FreeU off and {preset} on {args.confirm_seeds} "
              f"other seeds", flush=True)  # fmt: skip
    baselines = [str(g) for g in args.guidance_baselines or []]
    if matched and "auto" not in baselines:
        baselines.insert(0, "auto")
    confirm = evaluations(
        out / "confirm",
        {BASELINE: BASELINE, "tuned": spec(by_name[winner]), preset: preset},
        seeds=args.confirm_seeds, first_seed=args.confirm_first_seed, bootstrap=args.bootstrap,
        set_bootstrap=args.set_bootstrap, bootstrap_seed=args.bootstrap_seed, confidence=args.confidence,
        fid_features=args.fid_features, clip=args.clip,
        guidance_baselines=",".join(baselines) or None,
    )  # fmt: skip
    if not main_process:
        return 0
    record.update(confirmed=True, preset=preset)
    _atomic_json(state_path, record)
    summary = write_outputs(
        args, out, model, space, schedule, by_name, history, winner, tuned, preset, preset_note, confirm, prompts,
        matched,
    )  # fmt: skip
    print(summary)
    return 0


def command_line(args: argparse.Namespace) -> str:
    """The command as a user would type it again, with a time stamp."""
    import shlex

    argv = getattr(args, "argv", None)
    words = ["freeu", *(argv if argv is not None else sys.argv[1:])]
    stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return f"{shlex.join(words)}  # {stamp}"
