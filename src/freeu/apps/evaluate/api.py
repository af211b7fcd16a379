"""``freeu eval`` as one Python call: :func:`evaluate` takes an :class:`~.request.EvalRequest` and returns an
:class:`~.results.EvalResult`, writing the report folder on the way (the same files as the command line, which is a
thin wrapper around it).

The run: checks that need no model (configurations, seeds, prompts, the output folder), the model, the guidance
meter where asked, the scoring networks (an explicit path that does not work fails before anything is sampled),
generation and per-image analysis sharded over the processes (``accelerate launch``) and resumed from the folder,
then, on the main process, the statistics and the report; every process returns the main process's result.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .. import options
from ..runtime import Model, Request, Size
from .configs import BASELINE, EvalConfig, expand_spec, resolve_auto, with_baseline
from .features import Skipped
from .generation import Analyzer, ImagePlan, ShardSummary, Store, Unit
from .meter import GuidanceMatch, measure_matched_guidance
from .processes import command_text, process_command, process_state, progress_bar, share
from .request import DEFAULT_CLASS_SEEDS, DEFAULT_SEEDS, EvalRequest
from .results import ConfigResult, EvalHeader, EvalResult, Measurements, Resampling, Scorers

__all__ = ["IMAGE_SUFFIXES", "EvalIncomplete", "default_configs", "evaluate"]

logger = logging.getLogger(__name__)

#: The files a ``--reference`` folder contributes.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

Notes = Callable[[str], None]


class EvalIncomplete(RuntimeError):
    """Images or analyses are missing after every process finished (one of them failed); the same request again
    resumes from what is on disk."""


def default_configs(demo: bool) -> list[EvalConfig]:
    """The configurations of a request that names none: on a demo model its showcase rows, else FreeU off and
    ``auto`` (the preset matching the U-Net)."""
    if not demo:
        return [EvalConfig(BASELINE), *expand_spec("auto", "auto")]
    from freeu.config import FreeUConfig

    from ..demo_model import DEFAULT_ROWS

    return [EvalConfig(BASELINE)] + [EvalConfig(r.label, FreeUConfig(**r.settings)) for r in DEFAULT_ROWS[1:]]


@dataclass(frozen=True)
class _Setup:
    """What is settled before the model loads: a demo model or not, whether it takes prompts, the prompts, the
    seeds and the configurations (with their baselines)."""

    demo: bool
    conditional: bool
    prompts: tuple[str, ...]
    seeds: range
    configs: tuple[EvalConfig, ...]


def _setup(request: EvalRequest) -> _Setup:
    """Everything that can be refused without loading the model, refused in the order the command line always
    refused it."""
    from ..runtime import is_demo_folder, peek_classes, peek_takes_prompt

    demo = is_demo_folder(request.model) is not None
    configs = request.config_set(default_configs(demo))
    if len(configs) > request.max_configs:
        raise ValueError(
            f"{len(configs)} configurations (grids expand), more than --max-configs {request.max_configs}: use fewer "
            "values or raise --max-configs"
        )
    options.writable_folder("--out", request.out)
    conditional = peek_takes_prompt(request.model)
    prompts = list(request.prompts)
    if conditional and not prompts and demo:
        prompts = peek_classes(request.model) or []  # a class-conditional demo model: every class by default
    count = request.seeds or (DEFAULT_CLASS_SEEDS if conditional and demo else DEFAULT_SEEDS)
    if request.first_seed + count > 2**63:
        raise ValueError(f"--first-seed {request.first_seed} --seeds {count}: the seeds must stay below 2**63")
    if not conditional and (prompts or request.negative_prompt):
        what = "the demo model" if demo else request.model
        raise ValueError(f"{what} is unconditional: --prompt, --prompts and --negative-prompt need a text pipeline")
    if conditional and not prompts:
        raise ValueError("a text-to-image pipeline needs prompts: --prompt TEXT (repeatable) or --prompts FILE")
    if not conditional and demo and (any(c.guidance is not None or c.compensate is not None for c in configs)
                                     or request.matched_guidance):  # fmt: skip
        raise ValueError("the demo model is unconditional: no guidance scales (--guidance-baselines, guidance=, "
                         "compensate=)")  # fmt: skip
    seeds = range(request.first_seed, request.first_seed + count)
    return _Setup(demo, conditional, tuple(prompts), seeds, tuple(configs))


def _sampling(request: EvalRequest, setup: _Setup, model: Model, notes: Notes) -> tuple[Request, list[EvalConfig]]:
    """The sampling settings the model accepts, and the configurations with ``auto`` resolved for this model."""
    if model.video:
        raise ValueError("freeu eval scores still images; video pipelines are not supported")
    if model.takes_prompt and not setup.prompts:
        raise ValueError("a text-to-image pipeline needs prompts: --prompt TEXT (repeatable) or --prompts FILE")
    sampling = model.check(Request(
        steps=request.steps, prompt=setup.prompts[0] if model.takes_prompt else None,
        negative_prompt=request.negative_prompt if model.takes_prompt else None,
        guidance=request.guidance if model.guided else None, size=request.size,
    ))  # fmt: skip
    configs = list(setup.configs)
    if any(c.preset == "auto" for c in configs):
        preset, evidence = model.preset()
        notes(f"auto: preset {preset!r} ({evidence})")
        configs = [resolve_auto(c, preset) for c in configs]
    if not model.guided and (any(c.guidance is not None or c.compensate is not None for c in configs)
                             or request.matched_guidance):  # fmt: skip
        raise ValueError(f"{request.model} takes no guidance scale: --guidance-baselines, guidance= and compensate= "
                         "do not apply")  # fmt: skip
    if any(c.compensate is not None for c in configs) and not (sampling.guidance or 0) > 1:
        raise ValueError(f"compensate= needs a guidance scale above 1 (the guidance meter's), got --guidance "
                         f"{sampling.guidance:g}")  # fmt: skip
    return sampling, configs


def _reference_fingerprint(files: list[Path]) -> str:
    h = hashlib.sha1()
    for f in files:
        stat = f.stat()
        h.update(f"{f.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return h.hexdigest()[:12]


def _reference(request: EvalRequest, demo: bool, size: tuple[int, int]) -> tuple[torch.Tensor | None, str]:
    """``(uint8 reference images at the evaluation size or None, a description that also fingerprints them)``."""
    from .generation import load_png
    from .metrics import fit_size

    metrics = request.metrics
    if metrics.reference:
        folder = Path(metrics.reference).expanduser()
        if not folder.is_dir():
            raise ValueError(f"--reference {metrics.reference}: not a folder")
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)[: metrics.reference_count]
        if len(files) < 2:
            raise ValueError(
                f"--reference {folder}: needs at least 2 images ({', '.join(IMAGE_SUFFIXES)}), found {len(files)}"
            )
        images = torch.stack([fit_size(load_png(f)[None], size)[0] for f in files])
        return images, f"{len(files)} images of {folder} (fingerprint {_reference_fingerprint(files)})"
    if not demo:
        return None, "none (give --reference DIR for SWD, RAPSD, FID, KID)"
    from ..demo_data import HELD_OUT_IMAGES, HELD_OUT_SEED, PatchSampler

    count, side = metrics.reference_count, max(size)
    patches = PatchSampler(HELD_OUT_IMAGES, seed=HELD_OUT_SEED, size=side, allow_held_out=True).sample(0, count)[0]
    images = fit_size((patches * 255).round().to(torch.uint8), size)
    return images, (
        f"{count} held-out {side}x{side} patches of {', '.join(HELD_OUT_IMAGES)} "
        f"(PatchSampler seed {HELD_OUT_SEED}, never seen in training), 8-bit"
    )


@dataclass(frozen=True)
class _Scoring:
    """What the analysis scores with: the evaluation size, the reference (``None``: none) and its description, the
    feature network and the CLIP scorer (``None`` where skipped), and why metrics are skipped."""

    eval_size: Size
    reference: torch.Tensor | None
    reference_text: str
    feature_net: Any
    clip: Any
    skipped: tuple[str, ...]


def _scoring(request: EvalRequest, demo: bool, model: Model, size: Size, device: torch.device) -> _Scoring:
    """The scoring tools, checked before the long part: an explicit path that does not work fails now."""
    from ..measures import gaussian_pyramid
    from .features import load_clip, load_feature_net

    metrics = request.metrics
    eval_size = metrics.eval_size or size
    try:  # the pyramid the SWD builds, on an empty image of the evaluation size: refused now, not after generating
        gaussian_pyramid(torch.zeros(1, 1, *eval_size), metrics.swd_levels)
    except ValueError as error:
        raise ValueError(f"--swd-levels {metrics.swd_levels}: {error}") from None
    reference, reference_text = _reference(request, demo, eval_size)
    if reference is not None:
        feature_net = load_feature_net(metrics.fid_features, device)
    else:
        feature_net = Skipped("FID, KID: skipped, they need a reference (--reference DIR)")
    if model.takes_prompt:
        clip = load_clip(metrics.clip, device)
    else:
        clip = Skipped("CLIP score: not applicable, the model takes no prompts")
    skipped = [m for m in (feature_net, clip) if isinstance(m, Skipped)]
    if reference is None:
        skipped.insert(0, "SWD, RAPSD: skipped, they need a reference (--reference DIR)")
    return _Scoring(
        eval_size, reference, reference_text, None if isinstance(feature_net, Skipped) else feature_net,
        None if isinstance(clip, Skipped) else clip, tuple(str(s) for s in skipped),
    )  # fmt: skip


@dataclass(frozen=True)
class _Run:
    """Everything the main process needs once every process has generated and analysed: the request, the folder,
    the images (configurations, units, keys), the analyser, the protocol header, the guidance meter's readings,
    the skipped metrics and what this process generated."""

    request: EvalRequest
    store: Store
    plan: ImagePlan
    analyzer: Analyzer
    header: EvalHeader
    meter: Mapping[str, GuidanceMatch]
    skipped: tuple[str, ...]
    summary: ShardSummary


def evaluate(request: EvalRequest, model: Model | None = None, notes: Notes | None = None) -> EvalResult:
    """Run ``request``: generate (sharded over the processes, resumed from ``request.out``), analyse, and on the
    main process compute the statistics and write the report folder (``records.jsonl``, ``metrics.json``,
    ``report.md``, ``metrics.png``, ``samples.png``, ``command.txt``, ``images/``, ...). Every process returns the
    main process's :class:`EvalResult`.

    ``model``: the model ``request.model`` names, already loaded (``freeu tune`` evaluates one model many times);
    ``notes``: where the main process's progress lines go (the chosen ``auto`` preset, the guidance meter's
    readings, skipped metrics, what was written), e.g. ``print``; by default the log. ``ValueError`` for a request
    that cannot run (before any image is made where it can be known then); :class:`EvalIncomplete` when a process
    failed to make its share."""
    from ..runtime import load_model
    from .generation import make_units

    setup = _setup(request)
    state = process_state(request.device)
    say: Notes = (notes or logger.info) if state.is_main_process else (lambda text: None)
    device = torch.device(request.device) if request.device else state.device
    if model is None:
        model = load_model(request.model, device=str(device), dtype=request.dtype)
    sampling, configs = _sampling(request, setup, model, say)
    units = make_units(setup.seeds, setup.prompts if model.takes_prompt else None)
    meter: dict[str, GuidanceMatch] = {}
    if request.matched_guidance or any(c.compensate is not None for c in configs):
        options.writable_folder("--out", request.out)
        meter = measure_matched_guidance(request, model, sampling, configs, units, state, say)
        configs = [meter[c.name].compensated(c) if c.compensate is not None else c for c in configs]
        baselines = [match.baseline_config() for match in meter.values() if match.baseline is not None]
        configs = with_baseline([*configs, *baselines])
        if len(configs) > request.max_configs:
            raise ValueError(f"{len(configs)} configurations with the matched guidance baselines, more than "
                             f"--max-configs {request.max_configs}: raise --max-configs")  # fmt: skip
    scoring = _scoring(request, setup.demo, model, sampling.size, device)
    store, plan, analyzer, summary = _generate_and_analyse(request, model, sampling, configs, units, scoring, state)
    header = _header(request, setup, model, sampling, scoring, state.num_processes, len(units) if meter else None)
    run = _Run(request, store, plan, analyzer, header, meter, scoring.skipped, summary)
    outcome: EvalResult | Exception | None = None
    if state.is_main_process:
        try:
            outcome = _finish(run, say)
        except Exception as error:  # handed to the other processes, which would otherwise wait for the result
            if state.num_processes <= 1:
                raise
            outcome = error
    outcome = share(state, outcome)
    if isinstance(outcome, Exception):
        raise outcome
    assert outcome is not None
    return outcome


def _header(
    request: EvalRequest, setup: _Setup, model: Model, sampling: Request, scoring: _Scoring, world: int,
    meter_units: int | None,
) -> EvalHeader:  # fmt: skip
    """The protocol as the report states it (``meter_units``: the units available to the guidance meter, ``None``
    without it)."""
    guided = f", guidance {sampling.guidance:g}" if model.guided else ""
    stats = request.statistics
    return EvalHeader(
        model=f"{model.description}, {sampling.size} pixels, {model.sampler_name(request.steps)}{guided}",
        units=f"{len(setup.seeds)} seeds {setup.seeds.start}..{setup.seeds.stop - 1}"
        + (f" x {len(setup.prompts)} prompts" if model.takes_prompt else ""),
        reference=scoring.reference_text, eval_size=scoring.eval_size, level=stats.confidence,
        replicates=stats.bootstrap, set_replicates=stats.set_bootstrap, world=world,
        swd_replicates=stats.swd_replicates,
        guidance_units=None if meter_units is None else min(request.guidance_units, meter_units),
    )  # fmt: skip


def _generate_and_analyse(
    request: EvalRequest, model: Model, sampling: Request, configs: Sequence[EvalConfig], units: Sequence[Unit],
    scoring: _Scoring, state: Any,
) -> tuple[Store, ImagePlan, Analyzer, ShardSummary]:  # fmt: skip
    """This process's share of the images and of their analysis (what is on disk is reused), then a wait for the
    others: the folder, the images, the analyser and what this process generated."""
    from .generation import analyze_shard, generate_shard

    rank, world, main = state.process_index, state.num_processes, state.is_main_process
    show = main and request.progress
    device = torch.device(request.device) if request.device else state.device
    store = Store(request.out, rank, world)
    if main:
        store.out.mkdir(parents=True, exist_ok=True)
        command = request.command or process_command(["eval", *request.argv()])
        with (store.out / "command.txt").open("a") as handle:
            handle.write(command_text(command, world))
    base = {
        "model": model.fingerprint, "sampler": model.sampler_name(request.steps), "steps": request.steps,
        "height": sampling.size.height, "width": sampling.size.width, "dtype": request.dtype, "device": device.type,
        "negative_prompt": request.negative_prompt,
    }  # fmt: skip
    plan = ImagePlan.build(model, sampling, configs, units, base)
    mine = len(plan.mine(store))
    with progress_bar(len(configs) * mine * request.steps, f"generating ({world} process{'es' * (world > 1)})",
                      show) as bar:  # fmt: skip
        summary = generate_shard(model, sampling, plan, store, bar.update, request.batch_size)
    logger.info("process %d: generated %d images, reused %d", rank, summary.generated, summary.reused)
    state.wait_for_everyone()
    metrics = request.metrics
    swd_params = dict(levels=metrics.swd_levels, patch_size=7, per_image=metrics.swd_patches,
                      projections=metrics.swd_projections, seed=0)  # fmt: skip
    net, clip = scoring.feature_net, scoring.clip
    fingerprint = hashlib.sha1(json.dumps({
        "base": base, "reference": scoring.reference_text, "eval_size": scoring.eval_size, "swd": swd_params,
        "features": net.ident if net else None, "clip": clip.ident if clip else None, "version": 1,
    }, sort_keys=True).encode()).hexdigest()[:12]  # fmt: skip
    analyzer = Analyzer(scoring.reference, scoring.eval_size,
                        {**swd_params, "generated_count": len(units) if main else None}, net, clip,
                        fingerprint)  # fmt: skip
    records = store.records()
    with progress_bar(len(configs) * mine, "analysing", show) as bar:
        analyze_shard(analyzer, plan, store, records, request.batch_size, on_image=bar.update)
    state.wait_for_everyone()
    return store, plan, analyzer, summary


def _finish(run: _Run, notes: Notes) -> EvalResult:
    """Main process: gather every record and analysis from disk, compute the statistics, write the report folder."""
    from .generation import load_analysis

    records = run.store.records()
    analysis = load_analysis(run.store, run.analyzer.fingerprint)
    keys, units = run.plan.keys, run.plan.units
    missing = [name for name, unit in keys if keys[name, unit] not in records]
    unanalysed = [name for (name, unit), key in keys.items() if f"{key}@{unit}" not in analysis]
    if missing or unanalysed:
        raise EvalIncomplete(
            f"{len(missing)} images and {len(unanalysed)} analyses are missing after every process finished (did "
            "one fail?); rerun the same command to resume"
        )
    entries = {c.name: [analysis[f"{keys[c.name, u.index]}@{u.index}"] for u in units] for c in run.plan.configs}
    data, distances = _measurements(run, entries, records)
    results = _score(run, data, distances)
    result = EvalResult(
        out=run.store.out, header=run.header, configs=tuple(results), units=run.plan.units,
        per_image={name: dict(values) for name, values in data.scalars.items()}, guidance_meter=dict(run.meter),
        skipped=run.skipped, generated=run.summary.generated, reused=run.summary.reused,
    )  # fmt: skip
    files = _write_folder(run, result, entries, records)
    for message in run.skipped:
        notes(message)
    notes(f"this process generated {run.summary.generated} images and reused {run.summary.reused} already on disk")
    notes(f"wrote {run.store.out / 'report.md'}")
    return replace(result, files=files)


def _measurements(
    run: _Run, entries: Mapping[str, list[dict[str, Any]]], records: Mapping[str, Mapping[str, Any]]
) -> tuple[Measurements, Any]:
    """The analysis in unit order per configuration, and the FID/KID distances to the reference features (``None``
    without a feature network; the reference's features are cached in the analysis folder)."""
    from .generation import load_png
    from .metrics import FeatureDistances, fit_size

    analyzer, store, keys, units = run.analyzer, run.store, run.plan.keys, run.plan.units
    scalars = {
        name: {k: torch.tensor([e["scalars"][k] for e in rows], dtype=torch.float64) for k in rows[0]["scalars"]}
        for name, rows in entries.items()
    }
    spectra = {name: torch.stack([e["spectrum"] for e in rows]) for name, rows in entries.items()}
    features = distances = None
    if analyzer.feature_net is not None:
        features = {name: torch.stack([e["features"] for e in rows]) for name, rows in entries.items()}
        cache = store.out / "analysis" / analyzer.fingerprint / "reference-features.pt"
        if cache.is_file():
            reference_features = torch.load(cache, weights_only=True)
        else:
            reference_features = analyzer.feature_net(analyzer.reference, run.request.batch_size)
            torch.save(reference_features, cache)
        distances = FeatureDistances(reference_features)

    def load_images(name: str) -> torch.Tensor:
        paths = [store.out / records[keys[name, u.index]]["image"] for u in units]
        return fit_size(torch.stack([load_png(p) for p in paths]), analyzer.eval_size)

    return Measurements(len(units), scalars, spectra, features, load_images), distances


def _score(run: _Run, data: Measurements, distances: Any) -> list[ConfigResult]:
    """Every configuration's numbers with paired bootstrap intervals (:func:`~.results.compute_results`)."""
    from .results import compute_results
    from .stats import resample

    stats, configs = run.request.statistics, run.plan.configs
    rows = resample(data.n, max(stats.bootstrap, stats.set_bootstrap), stats.bootstrap_seed)
    resampling = Resampling(rows[: stats.bootstrap], rows[: stats.set_bootstrap], stats.confidence,
                            stats.swd_replicates)  # fmt: skip
    scorers = Scorers(run.analyzer.swd, run.analyzer.spectrum, distances)
    matched = {name: match.baseline for name, match in run.meter.items() if match.baseline is not None}
    with progress_bar(len(configs), "scoring", run.request.progress) as bar:

        def started(name: str) -> None:
            bar.set_postfix_str(name)
            bar.update(0 if name == configs[0].name else 1)

        results = compute_results(configs, data, scorers, resampling, matched, on_config=started)
        bar.update(1)
    return results


def _write_folder(
    run: _Run, result: EvalResult, entries: Mapping[str, list[dict[str, Any]]], records: Mapping[str, Any]
) -> tuple[Path, ...]:
    """``records.jsonl``, ``metrics.json``, ``report.md``, ``metrics.png`` and ``samples.png``; the paths written."""
    from .generation import load_png
    from .report import markdown, plot_metrics, sample_grid

    out, keys, units, configs = run.store.out, run.plan.keys, run.plan.units, run.plan.configs
    with (out / "records.jsonl").open("w") as handle:
        for config in configs:
            for unit, entry in zip(units, entries[config.name], strict=True):
                record = dict(records[keys[config.name, unit.index]])
                record.update(config=config.name, unit=unit.index, metrics=entry["scalars"])
                handle.write(json.dumps(record, sort_keys=True) + "\n")
    (out / "metrics.json").write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    (out / "report.md").write_text(markdown(result))
    written = [out / "records.jsonl", out / "metrics.json", out / "report.md"]
    if plot_metrics(out / "metrics.png", result.configs):
        written.append(out / "metrics.png")
    shown = units[: run.request.grid_units]
    if shown:
        grid_rows = [
            (c.name, [load_png(out / records[keys[c.name, u.index]]["image"]) for u in shown]) for c in configs
        ]
        sample_grid(out / "samples.png", grid_rows, [u.stem for u in shown],
                    title=f"freeu eval: {run.header.model}", footer="Same noise in every column.")  # fmt: skip
        written.append(out / "samples.png")
    return tuple(written)
