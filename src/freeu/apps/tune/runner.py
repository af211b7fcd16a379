"""The run of ``freeu tune``: successive halving on ``freeu eval``'s numbers, the confirmation on other seeds, the
outputs.

Every rung of the search is one evaluation (:func:`freeu.apps.evaluate.evaluate`, in this process, on the model
loaded once) into ``OUT/search``: the same units, noise, resize and metrics as any evaluation, with the rung's
candidates sampled together through per-sample factors. Images are keyed by settings and seed, so a rung reuses the
images of the rungs before it, and a run that was interrupted resumes from what is on disk; ``OUT/tune.json``
records each finished rung's scores, so a rerun of the same settings skips them. The confirmation is one more
evaluation, into ``OUT/confirm``, of FreeU off, the winner and the model's preset (or the published preset nearest
the winner) on the confirmation seeds, with paired bootstrap intervals. The evaluations' numbers come back as
:class:`~freeu.apps.evaluate.EvalResult` values; each evaluation's equivalent ``freeu eval`` command and what it
says go to ``OUT/log.txt``.
"""

from __future__ import annotations

import json
import math
import os
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from freeu import __version__
from freeu.config import FreeUConfig

from .. import options
from ..evaluate.api import EvalIncomplete, evaluate
from ..evaluate.configs import BASELINE, EvalConfig, expand_spec
from ..evaluate.processes import process_state
from ..evaluate.request import EvalRequest, StatisticsOptions
from ..evaluate.results import EvalResult
from ..files import read_json
from ..runtime import Model
from .report import TuneOutcome, nearest_preset, write_outputs
from .search import Rung, SearchSpace, draw_candidates, parse_space, rung_cost, schedule_for_budget, successive_halving
from .settings import METRICS, TuneSettings, metric_value

__all__ = ["STATE", "EvalFailed", "Evaluations", "candidate_config", "matched_guidance", "run_tune"]

#: The file that records a tune's candidates and finished rungs (a rerun resumes from it).
STATE = "tune.json"

Notes = Callable[[str], None]


class EvalFailed(RuntimeError):
    """An evaluation of the search or the confirmation ended with missing images (exit 1 of ``freeu tune``)."""


def candidate_config(name: str, settings: Mapping[str, Any], compensate: str | None = None) -> EvalConfig:
    """A candidate's settings as the configuration an evaluation compares (``compensate``: sampled with the extra
    guidance the meter measures taken back)."""
    return EvalConfig(name, FreeUConfig(**settings), compensate=compensate)


def _atomic_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


class Evaluations:
    """Evaluations of one model in this process: ``base`` with each call's folder, configurations and changes.
    Each writes its report folder and returns its result; its command and notes go to ``log``."""

    def __init__(self, base: EvalRequest, model: Model, log: Path, main_process: bool) -> None:
        self.base, self.model, self.log, self.main_process = base, model, log, main_process

    def note(self, text: str) -> None:
        """One line of ``log``."""
        with self.log.open("a") as handle:
            handle.write(text + "\n")

    def __call__(self, out: Path, configs: Sequence[EvalConfig], **changes: Any) -> EvalResult:
        """Evaluate ``configs`` into ``out`` (``changes``: fields of :class:`EvalRequest` other than ``base``'s)."""
        request = replace(self.base, out=out, configs=tuple(configs), max_configs=2 * len(configs) + 16, **changes)
        if self.main_process:
            self.note(f"# freeu eval {shlex.join(request.argv())}")
        try:
            return evaluate(request, model=self.model, notes=self.note)
        except EvalIncomplete as error:
            raise EvalFailed(f"freeu eval into {out} failed ({error}); see {self.log}; rerun to resume") from None


def matched_guidance(settings: TuneSettings) -> bool:
    """Whether the search scores each candidate against FreeU off at its own equivalent guidance: guided pipelines
    (read from the model's files, before it loads) sampled above guidance 1, unless ``matched_guidance`` is off."""
    from ..runtime import peek_takes_prompt

    scale = settings.guidance if settings.guidance is not None else 2.0  # every model's default is above 1
    if settings.compensate is not None:  # the extra guidance is taken back: each candidate against FreeU off
        if not peek_takes_prompt(settings.model) or scale <= 1:
            raise ValueError(f"--compensate {settings.compensate}: it takes back guidance that the meter measures, so "
                             "it needs a guided model sampled above guidance 1 (--guidance)")  # fmt: skip
        return False
    return settings.matched_guidance and peek_takes_prompt(settings.model) and scale > 1


@dataclass(frozen=True)
class _Plan:
    """What is settled before the model loads: the prompts, the space, the rungs, the candidates by name, whether
    candidates are scored against matched guidance, and the state on record (``{}`` for a new tune)."""

    prompts: tuple[str, ...]
    space: SearchSpace
    schedule: tuple[Rung, ...]
    candidates: dict[str, dict[str, Any]]
    matched: bool
    record: dict[str, Any]


def _plan(settings: TuneSettings) -> _Plan:
    """Every refusal that needs no model, in the order the command has always made them."""
    from ..runtime import peek_classes

    prompts = tuple(settings.prompts or peek_classes(settings.model) or ())  # a class demo model: every class
    space = parse_space(settings.space, settings.version, settings.convention)
    settings.check_seeds()
    if settings.metric == "clip" and not prompts:
        raise ValueError("--metric clip needs a text-to-image pipeline and prompts (--prompt or --prompts)")
    if settings.metric in ("fid", "kid") and settings.metrics.fid_features == "none":
        raise ValueError(f"--metric {settings.metric} needs --fid-features (auto or a path), not none")
    matched = matched_guidance(settings)
    schedule = schedule_for_budget(
        settings.budget, settings.seeds, settings.eta, settings.min_seeds, 2 if matched else 1
    )
    out = options.writable_folder("--out", settings.out)
    fingerprint = settings.fingerprint(space.describe(), prompts, matched)
    record: dict[str, Any] = {}
    if (out / STATE).exists() or (out / STATE).is_symlink():
        record = _record_on_disk(out / STATE, settings.out, fingerprint, schedule)
    if record:  # a resumed tune: its candidates as recorded (the draw is deterministic, the record is the truth)
        candidates = {name: dict(values) for name, values in record["candidates"].items()}
    else:
        drawn = draw_candidates(space, schedule[0].candidates, settings.search_seed)
        candidates = {f"c{i:02d}": values for i, values in enumerate(drawn)}
        record = {"fingerprint": fingerprint, "freeu_package": __version__, "candidates": candidates, "rungs": []}
    return _Plan(prompts, space, tuple(schedule), candidates, matched, record)


def _record_on_disk(path: Path, out: str | Path, fingerprint: Mapping[str, Any], schedule: Sequence[Rung]) -> dict:
    """The record of the tune in ``--out`` to resume, checked like any other input: a hand-edited or damaged
    ``tune.json`` is refused naming what is wrong, before any sampling."""
    record = read_json(path, "tune record")

    def refuse(why: str) -> ValueError:
        return ValueError(f"{path}: {why}, so it is not a tune this version can resume; move it away (or give another "
                          "--out) to start the tune again")  # fmt: skip

    if not isinstance(record, dict):
        raise refuse(f"it holds a JSON {type(record).__name__}, not a tune record")
    if record.get("fingerprint") != fingerprint:
        on_record = record.get("fingerprint")
        on_record = on_record if isinstance(on_record, dict) else {}
        changed = sorted(k for k in fingerprint if on_record.get(k) != fingerprint[k])
        raise ValueError(f"--out {out}: it holds a tune of other settings (differs in {', '.join(changed)}); rerun "
                         "with those settings to resume it, or give another --out")  # fmt: skip
    candidates, rungs = record.get("candidates"), record.get("rungs")
    names = [f"c{i:02d}" for i in range(schedule[0].candidates)]
    if not isinstance(candidates, dict) or list(candidates) != names:
        raise refuse(f"'candidates' must map the names {names[0]}..{names[-1]} to settings")
    for name, values in candidates.items():
        try:
            candidate_config(name, values)
        except (TypeError, ValueError) as error:
            raise refuse(f"candidate {name}: {error}") from None
    if not isinstance(rungs, list) or len(rungs) > len(schedule):
        raise refuse(f"'rungs' must be a list of at most {len(schedule)} finished rungs")
    for i, (entry, rung) in enumerate(zip(rungs, schedule[: len(rungs)], strict=True)):
        scores = entry.get("scores") if isinstance(entry, dict) else None
        if (
            not isinstance(scores, dict) or len(scores) != rung.candidates or not set(scores) <= set(names)
            or entry.get("seeds") != rung.seeds or not all(_number(v) for v in (entry.get("off"), *scores.values()))
        ):  # fmt: skip
            raise refuse(f"rung {i + 1} must hold 'seeds' {rung.seeds}, a number 'off' and 'scores' for "
                         f"{rung.candidates} candidates")  # fmt: skip
    return record


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _base_request(settings: TuneSettings, prompts: Sequence[str]) -> EvalRequest:
    """What every evaluation of the tune shares: the model and protocol, the metrics, progress bars."""
    return EvalRequest(
        model=settings.model, prompts=tuple(prompts), steps=settings.steps, negative_prompt=settings.negative_prompt,
        guidance=settings.guidance, size=settings.size, dtype=settings.dtype, device=settings.device,
        batch_size=settings.batch_size, metrics=settings.metrics, progress=settings.progress,
        guidance_units=settings.guidance_units or max(1, len(prompts)),  # default: every prompt's first seed
    )  # fmt: skip


def run_tune(settings: TuneSettings, notes: Notes = print) -> TuneOutcome | None:
    """Search, confirm, write ``preset.toml``, ``report.md``, ``search.png``; resumable. ``notes`` gets the tune's
    progress lines (main process). Returns the outcome on the main process, ``None`` on the others; ``ValueError``
    for settings that cannot run, :class:`EvalFailed` when an evaluation lost images."""
    from ..runtime import load_model

    plan = _plan(settings)
    state = process_state(settings.device)
    model = load_model(settings.model, device=settings.device or str(state.device), dtype=settings.dtype)
    if not model.guided and (settings.guidance_baselines or settings.auto_guidance_baselines):
        # the confirmation would refuse them after the whole search: refuse them before any sampling
        raise ValueError(f"--guidance-baselines: {settings.model} takes no guidance scale (it is not a guided "
                         "model); leave --guidance-baselines out")  # fmt: skip
    main = state.is_main_process
    say: Notes = notes if main else (lambda text: None)
    out = Path(settings.out)
    evaluations = Evaluations(_base_request(settings, plan.prompts), model, out / "log.txt", main)
    record = plan.record
    if main:
        _atomic_json(out / STATE, record)
    schedule = list(plan.schedule)
    say(
        f"freeu tune: {len(plan.candidates)} candidates from {plan.space.describe()}; {len(schedule)} rungs "
        f"({', '.join(f'{r.candidates} on {r.seeds} seeds' for r in schedule)}): "
        f"{rung_cost(schedule, 2 if plan.matched else 1)} images per prompt, FreeU off included"
        + (", each candidate scored against FreeU off at its own equivalent guidance" if plan.matched else "")
        + (
            f", each candidate sampled with its extra guidance taken back ({settings.compensate})"
            if settings.compensate
            else ""
        )
    )
    rung = _RungEvaluation(settings, plan, evaluations, say, main)
    done = [r["scores"] for r in record["rungs"]]
    winner, history = successive_halving(list(plan.candidates), schedule, rung, METRICS[settings.metric][1], done)
    record["winner"] = winner
    preset, preset_note, confirmation = _confirm(settings, plan, evaluations, model, winner, say)
    if not main:
        return None
    record.update(confirmed=True, preset=preset)
    _atomic_json(out / STATE, record)
    offs = [math.nan] * len(history)
    for i, entry in enumerate(record["rungs"][: len(history)]):
        offs[i] = entry["off"]
    outcome = TuneOutcome(
        settings=settings, model=f"{model.description} ({model.fingerprint})", space=plan.space,
        schedule=plan.schedule, candidates=plan.candidates, history=tuple(history), offs=tuple(offs), winner=winner,
        preset=preset, preset_note=preset_note, confirmation=confirmation, prompts=plan.prompts, matched=plan.matched,
    )  # fmt: skip
    say(write_outputs(outcome))
    return outcome


class _RungEvaluation:
    """Scores one rung's candidates (``successive_halving``'s evaluation): their objective on the rung's seeds,
    minus that of FreeU off at their own equivalent guidance where the tune is matched; each finished rung is
    recorded in ``tune.json``."""

    def __init__(self, settings: TuneSettings, plan: _Plan, evaluations: Evaluations, say: Notes, main: bool) -> None:
        self.settings, self.plan, self.evaluations, self.say, self.main = settings, plan, evaluations, say, main
        metric = settings.metric
        # only the objective's networks run during the search
        metrics = replace(settings.metrics, fid_features=settings.metrics.fid_features if metric in ("fid", "kid")
                          else "none", clip=settings.metrics.clip if metric == "clip" else "none")  # fmt: skip
        self.changes: dict[str, Any] = dict(
            first_seed=settings.first_seed, statistics=StatisticsOptions(bootstrap=0, set_bootstrap=0), grid_units=0,
            metrics=metrics, matched_guidance=plan.matched,
        )  # fmt: skip
        if plan.matched or settings.compensate:
            self.changes["guidance_units"] = settings.guidance_units or max(1, len(plan.prompts))  # every prompt

    def __call__(self, index: int, alive: Sequence[str], seeds: int) -> dict[str, float]:
        plan, metric, matched = self.plan, self.settings.metric, self.plan.matched
        self.say(f"rung {index + 1}/{len(plan.schedule)}: {len(alive)} candidates on {seeds} seeds")
        configs = [EvalConfig(BASELINE),
                   *(candidate_config(n, plan.candidates[n], self.settings.compensate) for n in alive)]  # fmt: skip
        result = self.evaluations(Path(self.settings.out) / "search", configs, seeds=seeds, **self.changes)
        values = {r.config.name: metric_value(r, metric) for r in result.configs}
        if math.isnan(values[BASELINE]):
            skipped = "; ".join(result.skipped) or "no reference"
            raise ValueError(f"--metric {metric}: freeu eval did not compute it ({skipped})")
        # matched: a candidate's score is its metric minus that of FreeU off at its own equivalent guidance
        scores = {n: values[n] - values[f"{BASELINE}@{n}"] if matched else values[n] for n in alive}
        entry: dict[str, Any] = {"seeds": seeds, "off": values[BASELINE], "scores": scores}
        if matched:
            entry["values"] = {n: values[n] for n in alive}
            entry["matched"] = {n: values[f"{BASELINE}@{n}"] for n in alive}
        plan.record["rungs"].append(entry)
        if self.main:
            _atomic_json(Path(self.settings.out) / STATE, plan.record)
        return scores


def _confirm(
    settings: TuneSettings, plan: _Plan, evaluations: Evaluations, model: Model, winner: str, say: Notes
) -> tuple[str, str, EvalResult]:
    """FreeU off, the winner and the model's preset (or the published one nearest the winner) on the confirmation
    seeds: ``(preset, why that preset, the evaluation's result)``."""
    tuned = FreeUConfig(**plan.candidates[winner])
    try:
        preset, why = model.preset()
        note = f"the model's preset ({why})"
    except ValueError:
        preset = nearest_preset(tuned)
        note = "the published preset nearest the tuned factors (the model has no preset of its own)"
    say(f"confirming {winner} ({tuned.label()}) against FreeU off and {preset} on {settings.confirm_seeds} other "
        "seeds")  # fmt: skip
    configs = [EvalConfig(BASELINE), candidate_config("tuned", plan.candidates[winner], settings.compensate),
               *(replace(c, compensate=settings.compensate) for c in expand_spec(preset, preset))]  # fmt: skip
    result = evaluations(
        Path(settings.out) / "confirm", configs, seeds=settings.confirm_seeds, first_seed=settings.confirm_start,
        statistics=settings.statistics, metrics=settings.metrics, guidance_baselines=settings.guidance_baselines,
        matched_guidance=plan.matched or settings.auto_guidance_baselines,
    )  # fmt: skip
    return preset, note, result
