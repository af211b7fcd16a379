"""Skip-filter speed: freeu.fourier_filter vs diffusers' fourier_filter vs a plain copy, interleaved in one run.

Shapes: the skip features that FreeU filters in Stable Diffusion 1.5 under the official convention at 512 px
(64x64 latents), read from freeu.plan on a full-size SD 1.5 U-Net built on the meta device (no weights).
Each repetition times the three contenders over all shapes in a rotating order; medians and ratios are printed.

    python benchmarks/filter_speed.py [--batch 2] [--dtype float32] [--repeats 30] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import freeu


def sd15_skip_shapes(batch: int, latent: int = 64) -> list[tuple[int, int, int, int]]:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(cross_attention_dim=768)  # the SD 1.5 layout: diffusers' defaults
    levels = len(unet.up_blocks)
    shapes = []
    for p in freeu.plan(unet, "official"):
        if p.stage is not None:
            size = latent // 2 ** (levels - 1 - p.join.block)
            shapes.append((batch, p.join.skip_channels, size, size))
    return shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scale", type=float, default=0.9, help="s1 of the SD 1.5 preset")
    args = parser.parse_args()
    from diffusers.utils.torch_utils import fourier_filter as diffusers_filter

    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    shapes = sd15_skip_shapes(args.batch)
    inputs = [torch.randn(s, device=device).to(dtype) for s in shapes]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    contenders = {
        "freeu": lambda x: freeu.fourier_filter(x, 1, args.scale),
        "diffusers": lambda x: diffusers_filter(x, threshold=1, scale=args.scale),
        "clone": lambda x: x.clone(),
    }
    for x in inputs:  # warm up (and check agreement while at it)
        a, b = contenders["freeu"](x), contenders["diffusers"](x).to(dtype)
        assert (a.float() - b.float()).abs().max().item() < (1e-4 if dtype == torch.float32 else 5e-2)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for rep in range(args.repeats):
        order = names[rep % 3 :] + names[: rep % 3]
        for name in order:
            fn = contenders[name]
            sync()
            start = time.perf_counter()
            for x in inputs:
                fn(x)
            sync()
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"SD 1.5 official-convention skip shapes at 512 px, batch {args.batch}, {args.dtype}, {device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.repeats} interleaved repeats"
    )
    print(f"{len(shapes)} tensors: " + ", ".join("x".join(map(str, s[1:])) for s in shapes))
    for name in names:
        print(f"  {name:10s} median {med[name] * 1e3:8.2f} ms per pass over all shapes")
    print(f"  speed-up of freeu over diffusers: {med['diffusers'] / med['freeu']:.1f}x")
    print(f"  freeu / clone (the copy floor):   {med['freeu'] / med['clone']:.2f}x")


if __name__ == "__main__":
    main()
