"""A sweep of N FreeU settings: one batched forward with per-sample factors vs N forwards, one per setting.

Per-sample factors (``freeu.apply(unet, b1=(v1, ..., vN), ...)``) give each sample of a batch its own setting, so a
grid of settings costs one batched forward. This measures what that saves against the obvious loop (apply one
setting, run one sample, N times), for the same N samples, interleaved in one run, on a full-width U-Net.

    python benchmarks/batch_sweep.py [--layout sd15] [--sizes 4,8] [--latent 16] [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse

import benchlib as bl
import torch

import freeu

OTHERS = dict(b2=1.6, s1=0.9, s2=0.2)


def settings(n: int) -> tuple[float, ...]:
    """``n`` values of b1 spread over [1.0, 1.6] (the sweep's one varying factor)."""
    return tuple(round(1.0 + 0.6 * i / max(n - 1, 1), 4) for i in range(n))


def _sample(kwargs: dict, i: int) -> dict:
    """The ``i``-th sample of batched U-Net inputs, as a batch of one (scalars, like the timestep, shared)."""

    def pick(value: object) -> object:
        if isinstance(value, dict):
            return {k: pick(v) for k, v in value.items()}
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value[i : i + 1]
        return value

    return {k: pick(v) for k, v in kwargs.items()}


def measure(layout: str, n: int, latent: int, repeats: int, device: torch.device) -> list[str]:
    dtype = torch.float32
    unet = bl.cached_unet(layout, device, dtype)
    kwargs = bl.unet_inputs(unet, latent, n, device, dtype)
    singles = [_sample(kwargs, i) for i in range(n)]
    values = settings(n)

    def forward() -> torch.Tensor:
        return unet(**kwargs).sample

    def plain_runs() -> list[torch.Tensor]:
        return [unet(**single).sample for single in singles]

    def one_by_one() -> list[torch.Tensor]:
        outs = []
        for value, single in zip(values, singles, strict=True):
            freeu.apply(unet, b1=value, **OTHERS)
            outs.append(unet(**single).sample)
        freeu.remove(unet)
        return outs

    contenders = [
        bl.Contender("off, one batch", forward),
        bl.Contender(
            "FreeU, one batch", forward, lambda: freeu.apply(unet, b1=values, **OTHERS), lambda: freeu.remove(unet)
        ),
        bl.Contender("FreeU, N runs", one_by_one),
        bl.Contender("off, N runs", plain_runs),
    ]
    with torch.no_grad():
        freeu.apply(unet, b1=values, **OTHERS)
        batched = forward()
        freeu.remove(unet)
        looped = torch.cat(one_by_one())
        agreement = (batched - looped).abs().max().item() / looped.abs().max().item()
        times = bl.interleaved(contenders, repeats, device)
    med = {name: bl.median(t) for name, t in times.items()}
    speedup = bl.paired_ratios(times["FreeU, N runs"], times["FreeU, one batch"])
    plain_speedup = bl.paired_ratios(times["off, N runs"], times["off, one batch"])
    per_sample_cost = bl.paired_ratios(times["FreeU, one batch"], times["off, one batch"])
    return [
        layout, str(n), ", ".join(f"{v:g}" for v in values),
        bl.fmt_ms(med["FreeU, one batch"]), bl.fmt_ms(med["FreeU, N runs"]),
        bl.fmt_ratio(med["FreeU, N runs"] / med["FreeU, one batch"]), bl.fmt_ratio(bl.median(speedup)),
        bl.fmt_ms(med["off, one batch"]), bl.fmt_ms(med["off, N runs"]), bl.fmt_ratio(bl.median(plain_speedup)),
        bl.fmt_pct(bl.median(per_sample_cost) - 1), f"{agreement:.1e}",
    ]  # fmt: skip


def sweep_section(layout: str, sizes: list[int], latent: int, repeats: int, device: torch.device) -> bl.Section:
    bl.latent_ok(layout, latent)
    rows = [measure(layout, n, latent, repeats, device) for n in sizes]
    headers = [
        "model", "N", "b1 values", "FreeU, one batch of N (ms)", "FreeU, N runs of 1 (ms)",
        "speed-up (ratio of medians)", "speed-up (median of paired ratios)", "off, one batch of N (ms)",
        "off, N runs of 1 (ms)", "off: speed-up (paired)", "one batch: FreeU vs off (paired)",
        "max rel. diff batch vs runs",
    ]  # fmt: skip
    note = (
        f"N settings of FreeU (version 2, official convention; b1 varies, b2 1.6, s1 0.9, s2 0.2) on N samples of a "
        f"full-width {layout} U-Net with random weights, float32, latent {latent}x{latent}, one forward each, "
        f"{repeats} interleaved repetitions after one warm-up round, medians. One batch: a single forward of batch N "
        "with per-sample factors (`freeu.apply(unet, b1=(...))`). N runs: for each setting, `freeu.apply` with that "
        "b1 and a forward of that sample alone (the applies are timed: they are part of the loop a user would "
        "write). Speed-up: N runs over one batch. The off columns do the same without FreeU: what batching saves by "
        "itself on this device and size (a CPU may even lose: its convolution algorithm changes with the batch), "
        "and, against the batch with FreeU, the cost of the per-sample factors. The last column checks that each "
        "sample of the batch equals its own run (relative to the largest output value). Under classifier-free "
        "guidance the U-Net batch is 2N and the per-sample factors repeat over both halves; the saving is of the "
        "same kind."
    )
    return bl.Section("sweep", "A sweep of N settings as one batch", headers, rows, note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", default="sd15", help="sd15, sd21, sdxl")
    parser.add_argument("--sizes", default="4,8", help="comma list of N")
    parser.add_argument("--latent", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    device = bl.setup(args.device, args.threads)
    print(bl.environment(device) + "\n")
    sizes = [int(n) for n in args.sizes.split(",")]
    print(sweep_section(args.layout, sizes, args.latent, args.repeats, device).markdown())


if __name__ == "__main__":
    main()
