"""Extra peak memory of one U-Net forward with FreeU, ours vs diffusers' enable_freeu, measured on any device.

Memory is counted by ``benchlib.MemoryTracker`` (a ``TorchDispatchMode`` that adds up the storages torch ops return
until they are freed): the same count on CPU and GPU, of what the code asks for (not the allocator's caching). On
CUDA the allocator's own peak (``torch.cuda.max_memory_allocated``) is reported next to it. One forward per
contender; memory is deterministic, so there is nothing to repeat.

    python benchmarks/peak_memory.py [--models sd15,sdxl] [--dtypes float32] [--latent 16] [--batch 2] [--device cpu]
"""

from __future__ import annotations

import argparse

import benchlib as bl
import torch

import freeu

CONTENDERS = {
    "off": (lambda unet: None, lambda unet: None),
    "ours v1 diffusers": (
        lambda unet: freeu.apply(unet, **bl.FACTORS, version=1, convention="diffusers"),
        freeu.remove,
    ),
    "ours v2 official": (
        lambda unet: freeu.apply(unet, **bl.FACTORS, version=2, convention="official"),
        freeu.remove,
    ),
    "diffusers": (lambda unet: unet.enable_freeu(**bl.FACTORS), lambda unet: unet.disable_freeu()),
}


def largest_join(unet: torch.nn.Module, convention: str, latent: int, batch: int, itemsize: int) -> int:
    """Bytes of the largest joined input (``cat([backbone, skip])``) at a join FreeU touches under ``convention``."""
    sizes = bl.join_sizes(unet, latent)
    return max(
        batch * p.join.in_channels * n * n * itemsize
        for p, n in zip(freeu.plan(unet, convention), sizes, strict=True)
        if p.stage is not None
    )


def measure(layout: str, dtype_name: str, latent: int, batch: int, device: torch.device) -> list[list[str]]:
    dtype = getattr(torch, dtype_name)
    bl.latent_ok(layout, latent)
    unet = bl.cached_unet(layout, device, dtype)
    kwargs = bl.unet_inputs(unet, latent, batch, device, dtype)
    cuda = device.type == "cuda"
    stats: dict[str, tuple[int, int, int | None]] = {}
    with torch.no_grad():
        for name, (install, uninstall) in CONTENDERS.items():
            install(unet)
            unet(**kwargs)  # warm-up: lazily built caches (the filter's bases) are not per-call memory
            if cuda:
                bl.sync(device)
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
            with bl.MemoryTracker() as tracker:
                out = unet(**kwargs)
                del out
            allocator = None
            if cuda:
                bl.sync(device)
                allocator = torch.cuda.max_memory_allocated(device) - before
            uninstall(unet)
            stats[name] = (tracker.peak, tracker.allocated, allocator)
    itemsize = torch.empty((), dtype=dtype).element_size()
    floor = {
        "ours v1 diffusers": largest_join(unet, "diffusers", latent, batch, itemsize),
        "ours v2 official": largest_join(unet, "official", latent, batch, itemsize),
    }
    peak0, total0, alloc0 = stats["off"]
    rows = []
    for name, (peak, total, allocator) in stats.items():
        row = [
            layout, dtype_name, name, bl.fmt_mib(peak),
            "" if name == "off" else bl.fmt_mib(peak - peak0),
            "" if name == "off" else bl.fmt_pct((peak - peak0) / peak0),
            bl.fmt_mib(floor[name]) if name in floor else "",
            bl.fmt_mib(total), "" if name == "off" else bl.fmt_mib(total - total0),
        ]  # fmt: skip
        if cuda:
            row += [bl.fmt_mib(allocator), "" if name == "off" else bl.fmt_mib(allocator - alloc0)]
        rows.append(row)
    return rows


def memory_section(models: list[str], dtypes: list[str], latent: int, batch: int, device: torch.device) -> bl.Section:
    rows = []
    for layout in bl.cached_first(models):
        for dtype_name in dtypes:
            rows.extend(measure(layout, dtype_name, latent, batch, device))
    headers = [
        "model", "dtype", "contender", "peak (MiB)", "extra peak (MiB)", "extra peak / off peak",
        "largest joined input (MiB)", "allocated per forward (MiB)", "extra allocated (MiB)",
    ]  # fmt: skip
    if device.type == "cuda":
        headers += ["CUDA allocator peak (MiB)", "extra CUDA allocator peak (MiB)"]
    note = (
        f"One U-Net forward (`torch.no_grad`, after one warm-up forward), full-width layouts with random weights, "
        f"latent {latent}x{latent}, batch {batch}. Peak: the most bytes of activations alive at once during the "
        "forward, counted by `MemoryTracker` (every storage a torch op returns, from allocation to release; weights "
        "and inputs are not counted). Extra: with FreeU minus without, same model, same inputs. Largest joined input: "
        "the size of the biggest `cat([backbone, skip])` at a join FreeU touches; a hook that returns a new joined "
        "tensor instead of writing into the host's needs that much extra, at that join. Allocated per forward: the "
        "sum of all those storages, a measure of memory traffic."
    )
    if device.type == "cuda":
        note += " On CUDA, the allocator's own peak above the memory in use before the forward is listed too."
    return bl.Section("memory", "Extra peak memory of a forward with FreeU", headers, rows, note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="sd15,sdxl", help="comma list of sd15, sd21, sdxl")
    parser.add_argument("--dtypes", default="float32")
    parser.add_argument("--latent", type=int, default=16)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    device = bl.setup(args.device, args.threads)
    print(bl.environment(device) + "\n")
    print(memory_section(args.models.split(","), args.dtypes.split(","), args.latent, args.batch, device).markdown())


if __name__ == "__main__":
    main()
