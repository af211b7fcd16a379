"""FreeU's cost in a whole U-Net forward: off vs freeu (ours) vs diffusers' own enable_freeu, interleaved in one run.

Full-width SD 1.5 and SDXL U-Nets (random weights, built from diffusers' configs; nothing downloaded) at small
latents so a CPU can run them. Every repetition runs each contender once, in a rotating order; the table reports
medians and each contender's overhead relative to FreeU off measured in the same run (never absolute times across
runs). Contenders:

- ``off``: the plain U-Net;
- ``ours v1 diffusers``: ours, same settings and joins as diffusers' ``enable_freeu`` (apples to apples);
- ``ours v2 official``: ours, the authors' settings (more joins: 10 of 12 in SD 1.5);
- ``diffusers``: ``unet.enable_freeu`` (version 1, diffusers' convention).

Besides the whole-forward times, which vary by more than FreeU costs, each FreeU contender's own code is timed inside
the forward (every hook ``freeu.apply`` installs; every call of diffusers' ``apply_freeu``): its share of the plain
forward. ``--share-only`` measures just that share, for latents too slow to repeat many times on a CPU.

    python benchmarks/unet_overhead.py [--models sd15,sdxl] [--dtypes float32,bfloat16] [--latent 16] [--repeats 9]
                                       [--share-only]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import benchlib as bl
import torch

import freeu


def _count(unet: torch.nn.Module, convention: str) -> int:
    return sum(p.stage is not None for p in freeu.plan(unet, convention))


def _contenders(
    unet: torch.nn.Module, forward: Callable[[], torch.Tensor]
) -> tuple[list[bl.Contender], dict[str, int]]:
    """Off, ours v1 at diffusers' joins, ours v2 at the official joins, diffusers' ``enable_freeu``; and how many joins
    each applies FreeU at."""
    contenders = [
        bl.Contender("off", forward),
        bl.Contender(
            "ours v1 diffusers",
            forward,
            lambda: freeu.apply(unet, **bl.FACTORS, version=1, convention="diffusers"),
            lambda: freeu.remove(unet),
        ),
        bl.Contender(
            "ours v2 official",
            forward,
            lambda: freeu.apply(unet, **bl.FACTORS, version=2, convention="official"),
            lambda: freeu.remove(unet),
        ),
        bl.Contender("diffusers", forward, lambda: unet.enable_freeu(**bl.FACTORS), unet.disable_freeu),
    ]
    joins = {
        "off": 0, "ours v1 diffusers": _count(unet, "diffusers"), "ours v2 official": _count(unet, "official"),
        "diffusers": _count(unet, "diffusers"),
    }  # fmt: skip
    return contenders, joins


def measure(
    layout: str, dtype_name: str, latent: int, batch: int, repeats: int, device: torch.device
) -> list[list[str]]:
    """Table rows for one model and dtype."""
    dtype = getattr(torch, dtype_name)
    bl.latent_ok(layout, latent)
    unet = bl.cached_unet(layout, device, dtype)
    kwargs = bl.unet_inputs(unet, latent, batch, device, dtype)

    def forward() -> torch.Tensor:
        return unet(**kwargs).sample

    contenders, joins = _contenders(unet, forward)
    with torch.no_grad():
        # apples to apples: ours v1 with diffusers' convention must compute what enable_freeu computes
        outputs = {}
        for c in (contenders[1], contenders[3]):
            c.setup()
            outputs[c.name] = forward().float()
            c.teardown()
        agreement = (outputs["ours v1 diffusers"] - outputs["diffusers"]).abs().max().item()
        scale = outputs["diffusers"].abs().max().item()
        times = bl.interleaved(contenders, repeats, device)
        inside = {c.name: _time_inside(c, unet, forward, repeats, device) for c in contenders[1:]}
    base = bl.median(times["off"])
    rows = []
    for c in contenders:
        med = bl.median(times[c.name])
        if c.name == "off":
            paired, spread = "", ""
        else:
            ratios = bl.paired_ratios(times[c.name], times["off"])
            low, high = bl.quartiles(ratios)
            paired, spread = bl.fmt_pct(bl.median(ratios) - 1), f"{bl.fmt_pct(low - 1)} .. {bl.fmt_pct(high - 1)}"
        check = f"{agreement / scale:.1e}" if c.name == "ours v1 diffusers" else ""
        own = inside.get(c.name)
        rows.append(
            [
                layout, dtype_name, c.name, str(joins[c.name]), bl.fmt_ms(med),
                "" if c.name == "off" else bl.fmt_pct(med / base - 1), paired, spread,
                "" if own is None else bl.fmt_ms(own), "" if own is None else bl.fmt_pct(own / base), check,
            ]
        )  # fmt: skip
    return rows


def _time_inside(
    contender: bl.Contender,
    unet: torch.nn.Module,
    forward: Callable[[], torch.Tensor],
    repeats: int,
    device: torch.device,
) -> float:
    """Median seconds per forward spent in the contender's own FreeU code: every hook ``freeu.apply`` installed
    (ours), or every ``apply_freeu`` call (diffusers), each timed with the device synchronised around it."""
    if bl.module_hooks(unet):
        raise RuntimeError("the U-Net has module hooks before FreeU is applied: they would be timed as FreeU's")
    per_forward = []
    for _ in range(repeats):
        timer = bl.CodeTimer(device)
        contender.setup()
        try:
            wrap = bl.timing_diffusers_freeu(timer) if contender.name == "diffusers" else bl.timing_hooks(unet, timer)
            with wrap:
                forward()
        finally:
            contender.teardown()
        if timer.calls == 0:
            raise RuntimeError(f"{contender.name}: no FreeU code ran in the forward, nothing was timed")
        per_forward.append(timer.seconds)
    return bl.median(per_forward)


HEADERS = [
    "model", "dtype", "contender", "FreeU joins", "median forward (ms)", "overhead (ratio of medians)",
    "overhead (median of paired ratios)", "paired ratios, quartiles", "time in FreeU's code per forward (ms)",
    "time in FreeU's code / off forward", "max rel. diff vs diffusers",
]  # fmt: skip


def unet_section(
    models: list[str], dtypes: list[str], latent: int, batch: int, repeats: int, device: torch.device
) -> bl.Section:
    rows = []
    for layout in bl.cached_first(models):
        for dtype_name in dtypes:
            rows.extend(measure(layout, dtype_name, latent, batch, repeats, device))
    note = (
        f"One U-Net forward (`torch.no_grad`), full-width layouts with random weights, latent {latent}x{latent} "
        f"({latent * 8} px), batch {batch}, {repeats} interleaved repetitions after one warm-up round. Off: the plain "
        "U-Net. Ours v1 diffusers: `freeu.apply(version=1, convention='diffusers')`, the same joins and arithmetic as "
        "diffusers' `enable_freeu` (the last column: the largest difference of their outputs relative to the "
        "output's largest value). Ours v2 official: the authors' version 2 at the official-convention joins (more "
        "joins). Diffusers: `unet.enable_freeu`. Factors b1 1.5, b2 1.6, s1 0.9, s2 0.2; FreeU is installed and "
        "removed around each timed forward, untimed. Overhead is relative to Off in the same run, two ways: the ratio "
        "of the medians, and the median of the per-round ratios (each round times all contenders back to back, so "
        "the paired ratio cancels drift that is slower than a round); the quartiles of the paired ratios show the "
        "noise: an overhead inside them is not distinguishable from zero. Time in FreeU's code: a separate pass of "
        f"{repeats} forwards per contender that times, with the device synchronised around each call, the code "
        "FreeU itself runs in a forward (ours: every hook `freeu.apply` installs; diffusers: every call of its "
        "`apply_freeu`), summed per forward, median; divided by Off's median forward it is FreeU's share of the "
        "work, a figure the whole-forward noise does not blur. It leaves out what neither code path shows: "
        "PyTorch's dispatch of a module's hooks (ours) and the `is_freeu_enabled` checks (diffusers), each "
        "microseconds per join."
    )
    return bl.Section("unet", "U-Net forward with FreeU on and off", HEADERS, rows, note)


SHARE_HEADERS = [
    "model", "dtype", "contender", "FreeU joins", "off: median forward (ms)", "time in FreeU's code per forward (ms)",
    "time in FreeU's code / off forward",
]  # fmt: skip


def share_section(
    models: list[str], dtypes: list[str], latent: int, batch: int, repeats: int, device: torch.device
) -> bl.Section:
    """FreeU's share of a forward at a size whole-forward timing cannot afford many repetitions of: the time in
    FreeU's own code per forward over the plain forward's median, with no interleaved whole-forward comparison."""
    rows = []
    for layout in bl.cached_first(models):
        for dtype_name in dtypes:
            dtype = getattr(torch, dtype_name)
            bl.latent_ok(layout, latent)
            unet = bl.cached_unet(layout, device, dtype)
            kwargs = bl.unet_inputs(unet, latent, batch, device, dtype)

            def forward(unet=unet, kwargs=kwargs) -> torch.Tensor:  # noqa: ANN001
                return unet(**kwargs).sample

            (off, *contenders), joins = _contenders(unet, forward)
            with torch.no_grad():
                base = bl.median(bl.interleaved([off], repeats, device)[off.name])
                rows.append([layout, dtype_name, off.name, "0", bl.fmt_ms(base), "", ""])
                for contender in contenders:
                    own = _time_inside(contender, unet, forward, repeats, device)
                    rows.append(
                        [layout, dtype_name, contender.name, str(joins[contender.name]), "", bl.fmt_ms(own),
                         bl.fmt_pct(own / base)]
                    )  # fmt: skip
    note = (
        f"FreeU's share of one U-Net forward (`torch.no_grad`) at latent {latent}x{latent} ({latent * 8} px), batch "
        f"{batch}, full-width layouts with random weights: the time in FreeU's own code per forward, timed as in "
        f"the table above ({repeats} forwards per contender, median), over the median of {repeats} plain forwards "
        "after one warm-up. A forward this size is too slow on a small CPU for the interleaved whole-forward "
        "comparison above; the share needs no such comparison. Same contenders and factors as above."
    )
    return bl.Section("share", "FreeU's share of a forward at full size", SHARE_HEADERS, rows, note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="sd15,sdxl", help="comma list of sd15, sd21, sdxl")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--latent", type=int, default=16, help="latent size (16 = 128 px)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--share-only", action="store_true", help="only FreeU's share of the forward (for latents too slow to repeat)"
    )
    args = parser.parse_args()
    device = bl.setup(args.device, args.threads)
    print(bl.environment(device) + "\n")
    make = share_section if args.share_only else unet_section
    section = make(args.models.split(","), args.dtypes.split(","), args.latent, args.batch, args.repeats, device)
    print(section.markdown())


if __name__ == "__main__":
    main()
