"""The figures and numbers of the class-conditional demo model's card:
``python tools/demo_classes_card.py --run runs/demo-classes``.

Writes into the weights folder (``packages/demo-weights/src/freeu_demo_weights/weights-classes`` by default):

- ``loss.png``: the run's training loss and evaluation metric;
- ``classes.png``: for every class, samples of the shipped weights (FreeU off, the default guidance) beside real
  crops of the class's source picture;
- ``card.json``: the distance to held-out patches of this model and of the unconditional demo model on the same
  seeds (the training evaluation's metric), and the FreeU table: each setting's equivalent guidance (the guidance
  meter) and its metric differences from FreeU off at that guidance, set-level and per image, with paired bootstrap
  intervals (a ``freeu eval --guidance-baselines auto`` run, kept in ``--eval-out``).

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


def freeu_table(weights: Path, out: Path, seeds: int, first: int, steps: int, classes: int) -> dict | None:
    """The FreeU table: ``freeu eval`` of the demo's settings with FreeU off at each one's equivalent guidance
    (``--guidance-baselines auto``, measured on one seed of every class); each setting against its matched baseline,
    set-level and per image, with the eval's paired bootstrap intervals. ``None`` when the eval fails."""
    from freeu.apps.cli import main as freeu

    argv = ["eval", "--model", str(weights), "--seeds", str(seeds), "--first-seed", str(first),
            "--steps", str(steps), "--guidance-baselines", "auto", "--guidance-units", str(classes),
            "--fid-features", "none", "--out", str(out), "--no-progress"]  # fmt: skip
    for row in ROWS:
        s = row.settings
        argv += ["--config", f"{row.label.replace(' ', '-')}:b1={s['b1']} b2={s['b2']} s1={s['s1']} s2={s['s2']} "
                 f"version={s['version']}"]  # fmt: skip
    if freeu(argv) != 0:
        return None
    metrics = {c["name"]: c for c in json.loads((out / "metrics.json").read_text())["configs"]}
    meter = json.loads((out / "guidance.json").read_text())["configs"]
    rows = []
    for row in ROWS:
        name = row.label.replace(" ", "-")
        versus = metrics[name]["versus_matched_guidance"]
        entry = {"label": row.label, "freeu": row.settings, "equivalent_guidance": meter[name]["equivalent"],
                 "orthogonal_share": meter[name]["orthogonal_share"],
                 "baseline_guidance": meter[name]["baseline_guidance"]}  # fmt: skip
        for metric in ("swd", "rapsd"):
            entry[f"set_{metric}"] = metrics[name]["set_level"][metric]["value"]
            entry[f"set_{metric}_matched"] = metrics[versus["baseline"]]["set_level"][metric]["value"]
            entry[f"set_{metric}_vs_matched"] = versus["set_level_difference"][metric]
            entry[f"set_{metric}_vs_off"] = metrics[name]["set_level"][metric]["difference_vs_off"]
            entry[f"{metric}_vs_matched"] = versus["per_image_paired"][metric]["mean"] | {
                "better_share": versus["per_image_paired"][metric]["better_share"]}  # fmt: skip
            entry[f"{metric}_vs_off"] = metrics[name]["per_image_paired_vs_off"][metric]["mean"]
        rows.append(entry)
    return {
        "units": f"{seeds} seeds ({first}-{first + seeds - 1}) x {classes} classes",
        "command": "freeu " + " ".join(argv),
        "off": {m: metrics["off"]["set_level"][m]["value"] for m in ("swd", "rapsd")},
        "rows": rows,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/demo-classes", help="the training run folder (logs, train_config.json)")
    p.add_argument("--weights", default=str(CLASSES_WEIGHTS_DIR))
    p.add_argument("--count", type=int, default=256, help="samples for the distance to held-out patches")
    p.add_argument("--eval-seeds", type=int, default=16, help="seeds per class of the FreeU table")
    p.add_argument("--table-only", action="store_true", help="only the FreeU table, into the card.json there is "
                   "(needs no training run)")  # fmt: skip
    p.add_argument("--eval-out", default="runs/demo-classes-eval", help="the freeu eval folder of the FreeU table")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    run, weights = Path(args.run), Path(args.weights)
    torch.set_num_threads(args.threads)
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
