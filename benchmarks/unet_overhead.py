"""FreeU's cost in a whole U-Net forward: off vs freeu (ours) vs diffusers' own enable_freeu, interleaved in one run.

Full-width SD 1.5 and SDXL U-Nets (random weights, built from diffusers' configs; nothing downloaded) at small
latents so a CPU can run them. Every repetition runs each contender once, in a rotating order; the table reports
medians and each contender's overhead relative to FreeU off measured in the same run (never absolute times across
runs). Contenders:

- ``off``: the plain U-Net;
- ``freeu v1 diffusers``: ours, same settings and joins as diffusers' ``enable_freeu`` (apples to apples);
- ``freeu v2 official``: ours, the authors' settings (more joins: 10 of 12 in SD 1.5);
- ``diffusers``: ``unet.enable_freeu`` (version 1, diffusers' convention).

    python benchmarks/unet_overhead.py [--models sd15,sdxl] [--dtypes float32,bfloat16] [--latent 16] [--repeats 9]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import freeu
from freeu.cli import LAYOUTS

FACTORS = dict(b1=1.5, b2=1.6, s1=0.9, s2=0.2)


def build(layout: str, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(**LAYOUTS[layout]).to(dtype).eval()


def inputs(unet: torch.nn.Module, latent: int, batch: int, dtype: torch.dtype) -> dict:
    gen = torch.Generator().manual_seed(0)
    cfg = unet.config
    kwargs = dict(
        sample=torch.randn(batch, 4, latent, latent, generator=gen).to(dtype),
        timestep=torch.tensor(500),
        encoder_hidden_states=torch.randn(batch, 77, cfg.cross_attention_dim, generator=gen).to(dtype),
    )
    if cfg.addition_embed_type == "text_time":
        kwargs["added_cond_kwargs"] = dict(
            text_embeds=torch.randn(batch, 1280, generator=gen).to(dtype),
            time_ids=torch.tensor([[latent * 8, latent * 8, 0, 0, latent * 8, latent * 8]] * batch).to(dtype),
        )
    return kwargs


def measure(layout: str, dtype_name: str, latent: int, batch: int, repeats: int) -> list[tuple[str, float, float]]:
    dtype = getattr(torch, dtype_name)
    unet = build(layout, dtype)
    kwargs = inputs(unet, latent, batch, dtype)

    # (set up, tear down) per contender; only the forward itself is timed
    contenders = {
        "off": (lambda: None, lambda: None),
        "freeu v1 diffusers": (
            lambda: freeu.apply(unet, **FACTORS, version=1, convention="diffusers"),
            lambda: freeu.remove(unet),
        ),
        "freeu v2 official": (
            lambda: freeu.apply(unet, **FACTORS, version=2, convention="official"),
            lambda: freeu.remove(unet),
        ),
        "diffusers": (lambda: unet.enable_freeu(**FACTORS), unet.disable_freeu),
    }
    names = list(contenders)
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.no_grad():
        for rep in range(repeats + 1):  # the first round warms up and is not counted
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                setup, teardown = contenders[name]
                setup()
                start = time.perf_counter()
                unet(**kwargs)
                elapsed = time.perf_counter() - start
                teardown()
                if rep:
                    times[name].append(elapsed)
    base = statistics.median(times["off"])
    return [(n, statistics.median(times[n]), statistics.median(times[n]) / base - 1) for n in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="sd15,sdxl", help="comma list of sd15, sd21, sdxl")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--latent", type=int, default=16, help="latent size (16 = 128 px)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, batch {args.batch}, "
          f"latent {args.latent}x{args.latent}, {args.repeats} interleaved repeats; medians\n")  # fmt: skip
    print("| model | dtype | contender | median forward (ms) | overhead vs off |")
    print("| --- | --- | --- | --- | --- |")
    for layout in args.models.split(","):
        for dtype_name in args.dtypes.split(","):
            for name, median, overhead in measure(layout, dtype_name, args.latent, args.batch, args.repeats):
                print(
                    f"| {layout} | {dtype_name} | {name} | {median * 1e3:.1f} | {overhead * 100:+.1f} % |", flush=True
                )


if __name__ == "__main__":
    main()
