"""What FreeU adds to one call of an exported U-Net in ONNX Runtime: the plain graph, FreeU baked, FreeU's factors as
graph inputs, interleaved in one run on a full-width random-weight U-Net.

The three graphs are written by ``freeu export``'s function (``freeu.apps.export.export_unet``) into a temporary
folder; each repetition runs each graph once on the same inputs, in a rotating order (``benchlib.interleaved``). The
ratio is the median of the per-repetition ratios to the plain graph. Goal: FreeU adds at most 2 % to a call.

    python benchmarks/export_overhead.py [--layout sd15] [--latent 64] [--batch 2] [--repeats 10] [--threads N]

Exporting a full-size SD 1.5 U-Net takes a few minutes per graph and about 3.5 GB of disk each (float32).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import benchlib as bl
import torch

import freeu


def measure(layout: str, latent: int, batch: int, repeats: int) -> bl.Section:
    from freeu.apps.export import ExportedUNet, export_unet

    device = torch.device("cpu")
    unet = bl.cached_unet(layout, device, torch.float32)
    config = freeu.FreeUConfig(**bl.FACTORS)
    inputs = bl.unet_inputs(unet, latent, batch, device, torch.float32)
    feed = {"sample": inputs["sample"], "timestep": inputs["timestep"].float().expand(batch),
            "encoder_hidden_states": inputs["encoder_hidden_states"]}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folders = {name: Path(tmp) / name for name in ("plain", "baked", "inputs")}
        export_unet(unet, folders["plain"], None)
        export_unet(unet, folders["baked"], config)
        export_unet(unet, folders["inputs"], config, mode="inputs")
        del unet  # three runtime sessions of a full-size U-Net need the memory the PyTorch copy holds
        bl.drop_cache()
        graphs = {name: ExportedUNet(folder) for name, folder in folders.items()}
        factors = graphs["inputs"].factors(config, 500.0, batch)
        contenders = [
            bl.Contender("plain", lambda: graphs["plain"](**feed)),
            bl.Contender("baked", lambda: graphs["baked"](**feed)),
            bl.Contender("inputs", lambda: graphs["inputs"](**feed, **factors)),
        ]
        times = bl.interleaved(contenders, repeats, device)
    rows = []
    for name in ("plain", "baked", "inputs"):
        ratios = bl.paired_ratios(times[name], times["plain"])
        low, high = bl.quartiles(ratios)
        rows.append([name, bl.fmt_ms(bl.median(times[name])), bl.fmt_ratio(bl.median(ratios)),
                     f"{bl.fmt_ratio(low)} .. {bl.fmt_ratio(high)}"])  # fmt: skip
    return bl.Section(
        key="export_overhead",
        title=f"Exported U-Net in ONNX Runtime (CPU): {layout} widths, random weights, latent {latent}, batch {batch}",
        headers=["graph", "median per call", "ratio to plain (median)", "interquartile range"],
        rows=rows,
        note=f"One call of each graph per repetition, {repeats} repetitions, interleaved; FreeU = the SD 1.5 factors "
        "(v2, official). baked: the factors as constants; inputs: the factors as graph inputs.",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", default="sd15", help="a full-size layout of benchlib (default sd15)")
    parser.add_argument("--latent", type=int, default=64, help="latent size (default 64: 512 px)")
    parser.add_argument("--batch", type=int, default=2, help="batch (default 2: one prompt with guidance)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the export")
    args = parser.parse_args()
    device = bl.setup("cpu", args.threads)
    print(bl.environment(device) + "\n")
    print(measure(args.layout, args.latent, args.batch, args.repeats).markdown())


if __name__ == "__main__":
    main()
