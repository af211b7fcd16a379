"""The figures of the demo model's card: ``python tools/demo_card.py --run runs/demo``.

Writes into the weights folder (``packages/demo-weights/src/freeu_demo_weights/weights`` by default):

- ``loss.png``: the training loss (every ``log_every`` steps) and the evaluation metric (every ``eval_every``) of the
  run, from its ``train_log.jsonl`` and ``eval_log.jsonl``;
- ``samples.png``: 64 samples of the shipped weights (DDIM 25 steps, FreeU off) beside 64 held-out real patches;
- ``card.json``: the FreeU table, the training evaluation's metric for every row of ``freeu demo`` on seeds that
  model selection never saw, plus the same model on a second set of seeds (how much the metric moves by chance) and
  real training patches (the floor).

The metric is the training evaluation's (``freeu.apps.demo.train.score``): Laplacian-pyramid SWD and radial power
spectrum distance against the same 512 held-out patches, with the same seed.
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

import freeu  # noqa: E402
from freeu.apps.demo.train import STREAM_METRIC as _STREAM_METRIC  # noqa: E402
from freeu.apps.demo.train import TrainConfig, evaluation_reference, score  # noqa: E402
from freeu.apps.demo_data import TRAIN_IMAGES, PatchSampler, mix_seed  # noqa: E402
from freeu.apps.demo_model import DEFAULT_ROWS, WEIGHTS_DIR  # noqa: E402
from freeu.apps.measures import high_frequency_share  # noqa: E402
from freeu.apps.runtime import Request, load_demo, to_pil, to_unit_range  # noqa: E402


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def evaluation_setup(run: Path) -> tuple[dict, torch.Tensor, int]:
    """A training run's saved config, the held-out reference patches of its evaluation, and its metric's seed."""
    saved = json.loads((run / "train_config.json").read_text())
    cfg = TrainConfig(out=str(run), seed=saved["seed"], eval_reference=saved["eval_reference"])
    return saved, evaluation_reference(cfg), mix_seed(cfg.seed, _STREAM_METRIC)


def plot_training(run: Path, path: Path) -> None:
    from matplotlib.figure import Figure

    train, evals = _read_jsonl(run / "train_log.jsonl"), _read_jsonl(run / "eval_log.jsonl")
    fig = Figure(figsize=(10, 3.6), dpi=100)
    left, right = fig.subplots(1, 2)
    left.semilogy([r["step"] for r in train], [r["loss"] for r in train], linewidth=1)
    left.set(xlabel="training step", ylabel="loss (MSE on the noise)", title="training loss")
    right.plot([r["step"] for r in evals], [r["swd_mean"] for r in evals], "o-", label="SWD (Laplacian, mean)")
    right.plot([r["step"] for r in evals], [r["rapsd"] for r in evals], "s-", label="radial power spectrum distance")
    right.set(xlabel="training step", ylabel="distance to held-out patches", title="evaluation (128 samples)")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def sample_sheet(samples: torch.Tensor, real: torch.Tensor, path: Path) -> None:
    from freeu.apps.imaging import grid

    def rows(images: torch.Tensor) -> list[list]:
        return [[to_pil(im) for im in images[r * 8 : r * 8 + 8]] for r in range(len(images) // 8)]

    left = grid(rows(samples), title="the demo model (FreeU off), seeds 0-63", min_cell=32)
    right = grid(rows(real), title="held-out real patches (coffee, gravel, camera)", min_cell=32)
    from PIL import Image

    sheet = Image.new("RGB", (left.width + right.width + 16, max(left.height, right.height)), "white")
    sheet.paste(left, (0, 0))
    sheet.paste(right, (left.width + 16, 0))
    sheet.save(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/demo", help="the training run folder (logs, train_config.json)")
    p.add_argument("--weights", default=str(WEIGHTS_DIR))
    p.add_argument("--count", type=int, default=256, help="samples per setting")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    run, weights = Path(args.run), Path(args.weights)
    torch.set_num_threads(args.threads)
    saved, reference, metric_seed = evaluation_setup(run)
    model = load_demo(None if weights == WEIGHTS_DIR else weights, device="cpu")
    config = model.config

    def sample(seeds: range, setting: freeu.FreeUConfig | None = None) -> torch.Tensor:
        final = model.sample(seeds, Request(steps=args.steps), freeu=setting, output="tensor", batch_size=64)
        return to_unit_range(final)

    plot_training(run, weights / "loss.png")
    sample_sheet(sample(range(64)), reference[:64], weights / "samples.png")

    # seeds 0..eval_samples-1 chose the best checkpoint: the table uses seeds after them
    first = saved["eval_samples"]
    seeds = range(first, first + args.count)
    repeat = range(first + args.count, first + 2 * args.count)
    table = []
    started = time.perf_counter()
    for row in DEFAULT_ROWS:
        images = sample(seeds, freeu.FreeUConfig(**row.settings) if row.settings else None)
        entry = {"label": row.label, "freeu": row.settings, **score(images, reference, metric_seed)}
        entry["high_frequency_share"] = float(high_frequency_share(images).mean())
        table.append(entry)
        elapsed = time.perf_counter() - started
        print(f"{row.label:10s} swd {entry['swd_mean']:.4f} rapsd {entry['rapsd']:.4f}  ({elapsed:.0f} s)")
    again = sample(repeat)
    chance = {"label": f"FreeU off, seeds {repeat.start}-{repeat.stop - 1}", **score(again, reference, metric_seed)}
    real = PatchSampler(TRAIN_IMAGES, seed=12345).sample(0, args.count)[0]
    floor = {"label": "real training patches", **score(real, reference, metric_seed)}
    card = {
        "samples_per_setting": args.count,
        "seeds": f"{seeds.start}-{seeds.stop - 1}",
        "sampler": f"DDIM {args.steps} steps, eta 0",
        "reference": f"{len(reference)} held-out patches (the training evaluation's)",
        "rows": table,
        "chance": chance,
        "floor": floor,
        "training": config["training"],
    }
    (weights / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps({k: v for k, v in card.items() if k != "training"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
