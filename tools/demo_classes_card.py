"""The figures and numbers of the class-conditional demo model's card:
``python tools/demo_classes_card.py --run runs/demo-classes``.

Writes into the weights folder (``packages/demo-weights/src/freeu_demo_weights/weights-classes`` by default):

- ``loss.png``: the run's training loss and evaluation metric;
- ``classes.png``: for every class, samples of the shipped weights (FreeU off, the default guidance) beside real
  crops of the class's source picture;
- ``card.json``: the distance to held-out patches of this model and of the unconditional demo model on the same
  seeds (the training evaluation's metric), and the FreeU tables: each setting's equivalent guidance (the guidance
  meter: mean over steps, weighted by step, per band, per class) and its metric differences from FreeU off at that
  guidance (matched per class and with one scale for all), and FreeU (the SD 1.5 factors) against FreeU off, against
  FreeU off matched three ways, and with its extra guidance taken back (every band, low band), set-level and per
  image, with paired bootstrap intervals and Holm-adjusted p-values over every difference of the card (three
  ``freeu eval --guidance-baselines auto`` runs into one folder, ``--eval-out``, which share their images).

``--table-only`` remakes the FreeU table alone (it needs the weights, not the training run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("GOMP_SPINCOUNT", "10000")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
from demo_card import evaluation_setup, plot_training  # noqa: E402

from freeu.apps.demo.train import score  # noqa: E402
from freeu.apps.demo_data import TRAIN_IMAGES, PatchSampler  # noqa: E402
from freeu.apps.demo_model import CLASSES_WEIGHTS_DIR, DEFAULT_ROWS  # noqa: E402
from freeu.apps.runtime import Request, load_demo, to_pil, to_unit_range  # noqa: E402

#: The rows of the FreeU table: the demo's settings (off is the baseline).
ROWS = [r for r in DEFAULT_ROWS if r.settings is not None and r.label != "FreeU v1"]


def class_sheet(model, path: Path, steps: int, per_class: int = 6, real: int = 4) -> None:  # noqa: ANN001
    """One row per class: ``per_class`` samples (FreeU off), a gap, ``real`` crops of the source picture."""
    from freeu.apps.imaging import grid

    rows = []
    for k, name in enumerate(model.classes):
        seeds = [1000 + k * per_class + i for i in range(per_class)]
        images = model.sample(seeds, Request(steps=steps, prompt=name), output="pil")
        crops = PatchSampler([name], seed=777).sample(0, real)[0]
        rows.append([*images, *[to_pil(c) for c in crops]])
    labels = [*(f"sample {i + 1}" for i in range(per_class)), *(f"real {i + 1}" for i in range(real))]
    picture = grid(rows, row_labels=list(model.classes), col_labels=labels, min_cell=40,
                   title=f"class-conditional demo model: samples (FreeU off, guidance {model.default_guidance:g}, "
                   f"DDIM {steps}) and real crops of each class's picture")  # fmt: skip
    picture.save(path)


#: The card's comparisons of FreeU (the SD 1.5 factors) with FreeU off, each ``(label, run, configuration,
#: baseline)``: the runs are ``freeu eval`` runs into one folder (``prompt``, ``global`` and ``steps`` matching).
COMPARISONS = [
    ("FreeU vs FreeU off", "prompt", "FreeU", "off"),
    ("FreeU vs FreeU off at one matched scale for all classes", "global", "FreeU", "off@FreeU"),
    ("FreeU vs FreeU off at each class's matched scale", "prompt", "FreeU", "off@FreeU"),
    ("FreeU vs FreeU off following each class's guidance curve", "steps", "FreeU", "off@FreeU"),
    ("FreeU, extra guidance taken back (every band), vs FreeU off", "prompt", "FreeU-compensated", "off"),
    ("FreeU, extra guidance taken back (low band), vs FreeU off", "prompt", "FreeU-compensated-low", "off"),
]
METRICS = ("swd", "rapsd")
#: Bootstrap replicates of the card's evals: the smallest p-value is 2 / (B + 1), which Holm's correction over ~56
#: differences multiplies by 56.
BOOTSTRAP = 4000


def _spec(row) -> str:  # noqa: ANN001
    s = row.settings
    return f"b1={s['b1']} b2={s['b2']} s1={s['s1']} s2={s['s2']} version={s['version']}"


def _eval(out: Path, common: list[str], mode: str, configs: list[str]) -> dict | None:
    """One ``freeu eval`` run into ``out`` with ``--guidance-match mode``: its ``metrics.json`` (``None`` if it
    failed). Runs into one folder share every image they have in common."""
    from freeu.apps.cli import main as freeu

    argv = [*common, "--guidance-match", mode]
    for config in configs:
        argv += ["--config", config]
    if freeu(argv) != 0:
        return None
    (out / f"metrics-{mode}.json").write_bytes((out / "metrics.json").read_bytes())
    (out / f"report-{mode}.md").write_bytes((out / "report.md").read_bytes())
    return json.loads((out / "metrics.json").read_text()) | {"argv": argv}


def _difference(metrics: dict, name: str, baseline: str) -> dict:
    """Set-level and per-image differences ``name - baseline`` with their intervals and p-values."""
    configs = {c["name"]: c for c in metrics["configs"]}
    entry = configs[name]
    out = {}
    for metric in METRICS:
        if baseline == "off":
            out[f"set_{metric}"] = entry["set_level"][metric]["difference_vs_off"]
            out[metric] = entry["per_image_paired_vs_off"][metric]["mean"] | {
                "better_share": entry["per_image_paired_vs_off"][metric]["better_share"]}  # fmt: skip
        else:
            versus = entry["versus_matched_guidance"]
            assert versus["baseline"] == baseline, (versus["baseline"], baseline)
            out[f"set_{metric}"] = versus["set_level_difference"][metric]
            out[metric] = versus["per_image_paired"][metric]["mean"] | {
                "better_share": versus["per_image_paired"][metric]["better_share"]}  # fmt: skip
        out[f"set_{metric}_value"] = entry["set_level"][metric]["value"]
        out[f"set_{metric}_baseline"] = configs[baseline]["set_level"][metric]["value"]
    return out


def _holm(table: list[dict], keys: list[str]) -> int:
    """Holm-adjusted p-values (``p_holm``) of every difference ``keys`` of the rows, in place; their number."""
    from freeu.apps.evaluate.stats import holm

    cells = [row[k] for row in table for k in keys]
    for cell, adjusted in zip(cells, holm([c.get("p_value", float("nan")) for c in cells]), strict=True):
        cell["p_holm"] = adjusted
    return len(cells)


def _common(weights: Path, out: Path, seeds: int, first: int, steps: int, classes: int, replicates: int) -> list[str]:
    """The arguments every ``freeu eval`` run of the card shares."""
    return ["eval", "--model", str(weights), "--seeds", str(seeds), "--first-seed", str(first),
            "--steps", str(steps), "--guidance-baselines", "auto", "--guidance-units", str(classes),
            "--fid-features", "none", "--out", str(out), "--no-progress",
            "--bootstrap", str(replicates), "--set-bootstrap", str(replicates)]  # fmt: skip


def _compensated(rows: dict) -> list[str]:
    """The two compensated FreeU configurations (every band, low band) of the SD 1.5 factors."""
    spec = _spec(rows["FreeU"])
    return [f"FreeU-compensated:{spec} compensate=global", f"FreeU-compensated-low:{spec} compensate=low"]


def freeu_table(weights: Path, out: Path, seeds: int, first: int, steps: int, classes: int) -> dict | None:
    """The FreeU tables: ``freeu eval`` of the demo's settings with FreeU off at each one's equivalent guidance
    (``--guidance-baselines auto``, measured on one seed of every class), matched per class, with one scale for all
    classes and per class and step, and FreeU with its extra guidance taken back; every difference with the eval's
    paired bootstrap interval and a Holm-adjusted p-value over all the differences of the card. ``None`` when an
    eval fails."""
    common = _common(weights, out, seeds, first, steps, classes, BOOTSTRAP)
    rows = {row.label.replace(" ", "-"): row for row in ROWS}
    settings = [f"{name}:{_spec(row)}" for name, row in rows.items()]
    runs = {
        "prompt": _eval(out, common, "prompt", [*settings, *_compensated(rows)]),
        "global": _eval(out, common, "global", settings),
        "steps": _eval(out, common, "steps", [f"FreeU:{_spec(rows['FreeU'])}"]),
    }  # fmt: skip
    if any(r is None for r in runs.values()):
        return None
    meter = runs["prompt"]["header"]["guidance_meter"]
    settings_rows = []
    for name, row in rows.items():
        reading = meter[name]
        entry = {"label": row.label, "freeu": row.settings, "equivalent_guidance": reading["equivalent"],
                 "equivalent_weighted": reading["equivalent_weighted"], "equivalent_low": reading["equivalent_low"],
                 "equivalent_high": reading["equivalent_high"], "orthogonal_share": reading["orthogonal_share"],
                 "per_class": {e["prompt"]: e["equivalent"] for e in reading["per_prompt"]},
                 "global_guidance": runs["global"]["header"]["guidance_meter"][name]["baseline_guidance"],
                 "vs_matched_per_class": _difference(runs["prompt"], name, f"off@{name}"),
                 "vs_matched_global": _difference(runs["global"], name, f"off@{name}"),
                 "vs_off": _difference(runs["prompt"], name, "off")}  # fmt: skip
        settings_rows.append(entry)
    comparisons = [{"label": label, **_difference(runs[run], name, baseline)}
                   for label, run, name, baseline in COMPARISONS]  # fmt: skip
    keys = [*(f"set_{m}" for m in METRICS), *METRICS]
    count = _holm(comparisons + [r["vs_matched_per_class"] for r in settings_rows]
                  + [r["vs_matched_global"] for r in settings_rows], keys)  # fmt: skip
    return {
        "units": f"{seeds} seeds ({first}-{first + seeds - 1}) x {classes} classes",
        "commands": {mode: "freeu " + " ".join(run["argv"]) for mode, run in runs.items()},
        "off": {
            m: next(c for c in runs["prompt"]["configs"] if c["name"] == "off")["set_level"][m]["value"]
            for m in METRICS
        },  # fmt: skip
        "rows": settings_rows,
        "comparisons": comparisons,
        "holm_family": count,
    }


#: The set-level SWD intervals the replicate check compares, each ``(label, configuration, baseline)``: a
#: configuration's own value (no baseline) or its paired difference from the baseline.
SWD_CHECK = [
    ("FreeU off", "off", None),
    ("FreeU", "FreeU", None),
    ("FreeU vs FreeU off", "FreeU", "off"),
    ("FreeU vs FreeU off at each class's matched scale", "FreeU", "off@FreeU"),
    ("FreeU, extra guidance taken back (every band), vs FreeU off", "FreeU-compensated", "off"),
    ("FreeU, extra guidance taken back (low band), vs FreeU off", "FreeU-compensated-low", "off"),
]


def _swd_interval(metrics: dict, name: str, baseline: str | None) -> dict:
    if baseline is None:
        return next(c for c in metrics["configs"] if c["name"] == name)["set_level"]["swd"]["value"]
    return _difference(metrics, name, baseline)["set_swd"]


def swd_replicate_check(
    weights: Path, out: Path, seeds: int, first: int, steps: int, classes: int, replicates: int
) -> dict | None:
    """The card's set-level SWD intervals with linear (first-order) and exact (recomputed) replicates, on the same
    ``replicates`` resamplings of the same images: a copy of the card's eval folder ``out`` scored twice, for the
    configurations of :data:`SWD_CHECK` (exact replicates sort every level's projections once per replicate and
    image set, so the check holds fewer sets and replicates than the card). ``None`` when an eval fails."""
    import shutil

    check = out.with_name(out.name + "-swd-check")
    if not check.is_dir():
        shutil.copytree(out, check)
    rows = {row.label.replace(" ", "-"): row for row in ROWS}
    configs = [f"FreeU:{_spec(rows['FreeU'])}", *_compensated(rows)]
    common = _common(weights, check, seeds, first, steps, classes, replicates)
    runs = {}
    for method in ("linear", "exact"):
        started = time.perf_counter()
        runs[method] = _eval(check, [*common, "--swd-replicates", method], "prompt", configs)
        if runs[method] is None:
            return None
        print(f"{method} replicates: {time.perf_counter() - started:.0f} s", flush=True)
    table = []
    for label, name, baseline in SWD_CHECK:
        linear, exact = (_swd_interval(runs[m], name, baseline) for m in ("linear", "exact"))
        width = exact["high"] - exact["low"]
        shift = max(abs(linear["low"] - exact["low"]), abs(linear["high"] - exact["high"]))
        table.append({"label": label, "linear": linear, "exact": exact,
                      "width_ratio": (linear["high"] - linear["low"]) / width, "end_shift": shift / width})  # fmt: skip
    return {"replicates": replicates, "units": f"{seeds} seeds ({first}-{first + seeds - 1}) x {classes} classes",
            "rows": table}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/demo-classes", help="the training run folder (logs, train_config.json)")
    p.add_argument("--weights", default=str(CLASSES_WEIGHTS_DIR))
    p.add_argument("--count", type=int, default=256, help="samples for the distance to held-out patches")
    p.add_argument("--eval-seeds", type=int, default=16, help="seeds per class of the FreeU table")
    p.add_argument("--table-only", action="store_true", help="only the FreeU table, into the card.json there is "
                   "(needs no training run)")  # fmt: skip
    p.add_argument("--eval-out", default="runs/demo-classes-eval", help="the freeu eval folder of the FreeU table")
    p.add_argument("--swd-replicate-check", type=int, metavar="N", default=0,
                   help="only compare the table's set-level SWD intervals from linear and exact replicates (N of "
                   "each) on a copy of --eval-out, into card.json")  # fmt: skip
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    run, weights = Path(args.run), Path(args.weights)
    torch.set_num_threads(args.threads)
    if args.swd_replicate_check:
        card = json.loads((weights / "card.json").read_text())
        first = int(card["distance"]["seeds"].split("-")[0])
        check = swd_replicate_check(weights, Path(args.eval_out), args.eval_seeds, first, args.steps,
                                    len(card["classes"]), args.swd_replicate_check)  # fmt: skip
        if check is None:
            return 1
        card["swd_replicate_check"] = check
        (weights / "card.json").write_text(json.dumps(card, indent=2) + "\n")
        print(json.dumps(check, indent=2))
        return 0
    if args.table_only:
        card = json.loads((weights / "card.json").read_text())
        first = int(card["distance"]["seeds"].split("-")[0])
        table = freeu_table(weights, Path(args.eval_out), args.eval_seeds, first, args.steps, len(card["classes"]))
        if table is None:
            return 1
        card["freeu_table"] = table
        (weights / "card.json").write_text(json.dumps(card, indent=2) + "\n")
        print(json.dumps(table, indent=2))
        return 0
    saved, reference, metric_seed = evaluation_setup(run)
    model = load_demo(weights, device="cpu")
    plain = load_demo(None, device="cpu")
    classes = model.classes
    started = time.perf_counter()

    plot_training(run, weights / "loss.png")
    class_sheet(model, weights / "classes.png", args.steps)
    print(f"figures ({time.perf_counter() - started:.0f} s)")

    # the distance to held-out patches, on seeds model selection never saw: seed i samples class i mod 15
    first = saved["eval_samples"]
    seeds = list(range(first, first + args.count))
    conditional = torch.empty(len(seeds), 3, 32, 32)
    for k, name in enumerate(classes):
        mine = seeds[k :: len(classes)]
        final = model.sample(mine, Request(steps=args.steps, prompt=name), output="tensor", batch_size=64)
        conditional[k :: len(classes)] = to_unit_range(final)
    unconditional = to_unit_range(plain.sample(seeds, Request(steps=args.steps), output="tensor", batch_size=64))
    distance = {
        "seeds": f"{seeds[0]}-{seeds[-1]}",
        "class_conditional": score(conditional, reference, metric_seed),
        "unconditional_demo": score(unconditional, reference, metric_seed),
    }
    print(json.dumps(distance, indent=2), f"({time.perf_counter() - started:.0f} s)")

    table = freeu_table(weights, Path(args.eval_out), args.eval_seeds, first, args.steps, len(classes))
    if table is None:
        return 1
    card = {
        "classes": list(classes),
        "guidance": model.default_guidance,
        "sampler": f"DDIM {args.steps} steps, eta 0",
        "distance": distance,
        "freeu_table": table,
        "training": model.config["training"],
        "train_images": list(TRAIN_IMAGES),
    }
    (weights / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps({k: v for k, v in card.items() if k != "training"}, indent=2))
    print(f"done in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
