"""What FreeU adds to one call of an exported U-Net in ONNX Runtime: the plain graph, FreeU baked, FreeU's factors as
graph inputs, interleaved in one run on a full-width random-weight U-Net.

The three graphs are written by ``freeu export``'s function (``freeu.apps.export.export_unet``) into ``--folder``
(kept, and reused by a later run with the same layout) or a temporary folder; each repetition runs each graph once
on the same inputs, in a rotating order (``benchlib.interleaved``). The ratio is the median of the per-repetition
ratios to the plain graph. Goal: FreeU adds at most 2 % to a call.

The sessions run without ONNX Runtime's memory arena (the same for all three), so that three sessions of a float32
SD 1.5 U-Net fit in 24 GB; before timing, each graph's output is checked against PyTorch's.

    python benchmarks/export_overhead.py [--layout sd15] [--latent 64] [--batch 2] [--repeats 10] [--folder DIR]

Exporting a full-size SD 1.5 U-Net takes a few minutes per graph and about 3.5 GB of disk each (float32).
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
from pathlib import Path
from typing import Any

import benchlib as bl
import torch

import freeu

GRAPHS = ("plain", "baked", "inputs")


def _export(layout: str, folder: Path, config: freeu.FreeUConfig) -> None:
    """The three graphs of ``layout`` in ``folder`` (each one kept from an earlier run if it is there)."""
    from freeu.apps.export import export_unet

    wanted = {"plain": (None, "baked"), "baked": (config, "baked"), "inputs": (config, "inputs")}
    todo = []
    for name, (settings, mode) in wanted.items():
        manifest = folder / name / "manifest.json"
        expected = {"model": f"{layout} (random weights)", "mode": mode,
                    "settings": None if settings is None else settings.to_dict()}  # fmt: skip
        if manifest.is_file() and all(json.loads(manifest.read_text()).get(k) == v for k, v in expected.items()):
            continue
        todo.append((name, settings, mode))
    if not todo:
        return
    unet = bl.cached_unet(layout, torch.device("cpu"), torch.float32)
    for name, settings, mode in todo:
        print(f"exporting {name} ...", flush=True)
        export_unet(unet, folder / name, settings, mode=mode, description=f"{layout} (random weights)")
    bl.drop_cache()
    del unet
    gc.collect()


def _session(path: Path) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    # no memory arena: it keeps each session's peak of activations (some GB at 512 px) reserved after a call and
    # grows with dynamic shapes; three arenas of a float32 SD 1.5 U-Net at 512 px do not fit in 24 GB. Without it
    # a session holds its activations only while it runs (measured here: 3.5 GB per session, 14 GB at most)
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class _JoinsAlone(torch.nn.Module):
    """FreeU's work at every join it acts on, alone: each join's concatenated input split into backbone and skip,
    the backbone scaled, the skip filtered, the two joined again, as the baked graph does it inside the U-Net."""

    def __init__(self, plans: list, config: freeu.FreeUConfig) -> None:
        super().__init__()
        self.plans, self.config = plans, config

    def forward(self, *joined: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from freeu.join import apply_join

        out = []
        for plan, x in zip(self.plans, joined, strict=True):
            width = plan.join.backbone_channels
            first, skip = apply_join(x[:, :width], x[:, width:], self.config.stage(plan.stage),
                                     version=self.config.version, threshold=self.config.threshold)  # fmt: skip
            out.append(torch.cat([first, skip], dim=1))
        return tuple(out)


def _joins_alone(unet: torch.nn.Module, config: freeu.FreeUConfig, latent: int, batch: int, path: Path) -> dict:
    """An ONNX graph of :class:`_JoinsAlone` at the joins' sizes for this latent and batch, and its inputs."""
    acting = [(p, size) for p, size in zip(freeu.plan(unet), bl.join_sizes(unet, latent), strict=True) if p.stage]
    gen = torch.Generator().manual_seed(0)
    examples = [torch.randn(batch, p.join.in_channels, size, size, generator=gen) for p, size in acting]
    names = [f"join{i}" for i in range(len(examples))]
    module = _JoinsAlone([p for p, _ in acting], config).eval()
    with torch.no_grad():
        torch.onnx.export(module, tuple(examples), path, dynamo=True, input_names=names, opset_version=18)
    return {name: x.numpy() for name, x in zip(names, examples, strict=True)}


def export_section(layout: str, latent: int, batch: int, repeats: int, device: torch.device,
                   folder: str | None = None) -> bl.Section:  # fmt: skip
    if device.type != "cpu":
        raise ValueError("the export section runs ONNX Runtime on the CPU: run it with --device cpu")
    from freeu.apps.export import ExportedUNet

    config = freeu.FreeUConfig(**bl.FACTORS)
    unet = bl.cached_unet(layout, device, torch.float32)
    inputs = bl.unet_inputs(unet, latent, batch, device, torch.float32)
    feed = {"sample": inputs["sample"].numpy(), "timestep": inputs["timestep"].float().expand(batch).numpy(),
            "encoder_hidden_states": inputs["encoder_hidden_states"].numpy()}  # fmt: skip
    with torch.no_grad():  # what each graph must give (checked below: the shared weights are the right ones)
        plain = unet(**inputs).sample.numpy()
        with freeu.apply(unet, config):
            with_freeu = unet(**inputs).sample.numpy()
    expected = {"plain": plain, "baked": with_freeu, "inputs": with_freeu}
    with tempfile.TemporaryDirectory() as tmp:
        joins_feed = _joins_alone(unet, config, latent, batch, Path(tmp) / "joins.onnx")
        joins = _session(Path(tmp) / "joins.onnx")
        del unet
        root = Path(folder) if folder else Path(tmp)
        _export(layout, root, config)
        sessions = {name: _session(root / name / "unet.onnx") for name in GRAPHS}
        factors = ExportedUNet.factors(config, 500.0, batch)
        errors = {}
        for name, session in sessions.items():
            out = session.run(None, {**feed, **factors} if name == "inputs" else feed)[0]
            errors[name] = float(abs(out - expected[name]).max() / abs(expected[name]).max())
        if max(errors.values()) > 1e-4:
            raise AssertionError(f"an exported graph does not give PyTorch's output: {errors}")
        contenders = [
            bl.Contender("plain", lambda: sessions["plain"].run(None, feed)),
            bl.Contender("baked", lambda: sessions["baked"].run(None, feed)),
            bl.Contender("inputs", lambda: sessions["inputs"].run(None, {**feed, **factors})),
        ]
        times = bl.interleaved(contenders, repeats, device)
        # FreeU's operators alone, many times: what they add to a call, resolved below the calls' noise
        alone = bl.interleaved([bl.Contender("joins", lambda: joins.run(None, joins_feed))], 5 * repeats, device)
    rows = []
    for name in GRAPHS:
        ratios = bl.paired_ratios(times[name], times["plain"])
        low, high = bl.quartiles(ratios)
        rows.append([name, bl.fmt_ms(bl.median(times[name])), bl.fmt_ratio(bl.median(ratios)),
                     f"{bl.fmt_ratio(low)} .. {bl.fmt_ratio(high)}"])  # fmt: skip
    own = bl.median(alone["joins"])
    rows.append(["FreeU's operators alone", bl.fmt_ms(own), bl.fmt_pct(own / bl.median(times["plain"])), ""])
    return bl.Section(
        key="export",
        title=f"Exported U-Net in ONNX Runtime (CPU): {layout} widths, random weights, latent {latent}, batch {batch}",
        headers=["graph", "median per call", "ratio to plain (median)", "interquartile range"],
        rows=rows,
        note=f"One call of each graph per repetition, {repeats} repetitions after one warm-up round, interleaved, "
        "float32, ONNX Runtime's CPU provider with its default graph optimisations and no memory arena; FreeU = "
        "the SD 1.5 factors (v2, official). plain: `freeu export --plain`; baked: the factors as constants; "
        "inputs: the factors as graph inputs, fed at every call. Each graph's output equals PyTorch's "
        f"(freeu.apply) within {max(errors.values()):.1e} of its scale. FreeU's operators alone: the work the baked "
        "graph adds at the joins FreeU acts on (split, scale, filter, join again, at the joins' sizes for this input), "
        f"as a graph of its own in the same runtime, median of {5 * repeats} calls, over the plain graph's median: "
        "what FreeU adds to a call, measured below the calls' own noise.",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", default="sd15", help="a full-size layout of benchlib, or tiny (default sd15)")
    parser.add_argument("--latent", type=int, default=64, help="latent size (default 64: 512 px)")
    parser.add_argument("--batch", type=int, default=2, help="batch (default 2: one prompt with guidance)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--folder", default=None, help="where the graphs are written and kept (default: a temporary "
                        "folder, removed after)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the export")
    args = parser.parse_args()
    device = bl.setup("cpu", args.threads)
    bl.latent_ok(args.layout, args.latent)
    print(bl.environment(device) + "\n")
    print(export_section(args.layout, args.latent, args.batch, args.repeats, device, args.folder).markdown())


if __name__ == "__main__":
    main()
