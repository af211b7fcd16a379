"""What FreeU adds to one call of an exported U-Net in ONNX Runtime: the plain graph, FreeU baked, FreeU's factors as
graph inputs, interleaved in one run on a full-width random-weight U-Net.

The three graphs are written by ``freeu export``'s function (``freeu.apps.export.export_unet``) into ``--folder``
(kept, and reused by a later run with the same layout) or a temporary folder; each repetition runs each graph once
on the same inputs, in a rotating order (``benchlib.interleaved``). The ratio is the median of the per-repetition
ratios to the plain graph. Goal: FreeU adds at most 2 % to a call.

The three runtime sessions share one copy of the weights (``SessionOptions.add_initializer`` with arrays mapped from
the plain graph's weights file): three separate copies of a float32 SD 1.5 U-Net do not fit in 24 GB.

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


def _shared_weights(folder: Path) -> dict[str, Any]:
    """The plain graph's weights as ONNX Runtime values over arrays mapped from its weights file (read lazily,
    shared by every session they are given to)."""
    import numpy as np
    import onnx
    import onnxruntime
    from onnx import helper

    model = onnx.load(str(folder / "unet.onnx"), load_external_data=False)
    values: dict[str, Any] = {}
    maps: dict[str, Any] = {}
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        path = folder / info["location"]
        if path not in maps:
            maps[path] = np.memmap(path, dtype=np.uint8, mode="r")
        offset, length = int(info.get("offset", 0)), int(info["length"])
        dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
        array = np.frombuffer(maps[path], dtype=dtype, count=length // dtype.itemsize, offset=offset)
        values[tensor.name] = onnxruntime.OrtValue.ortvalue_from_numpy(array.reshape(tuple(tensor.dims)))
    return values


def _session(path: Path, weights: dict[str, Any]) -> Any:
    """A session of the graph at ``path``, given the shared weights it holds: the U-Net's parameters (named after
    them), of the same shape and type (the exporter's own constants, ``val_N``, differ between graphs)."""
    import onnx
    import onnxruntime
    from onnx import helper

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    graph = onnx.load(str(path), load_external_data=False).graph
    own = {t.name: (tuple(t.dims), helper.tensor_dtype_to_np_dtype(t.data_type)) for t in graph.initializer}
    for name, value in weights.items():
        if name.startswith("unet.") and own.get(name) == (tuple(value.shape()), value.numpy().dtype):
            options.add_initializer(name, value)
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


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
    del unet
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(folder) if folder else Path(tmp)
        _export(layout, root, config)
        weights = _shared_weights(root / "plain")
        sessions = {name: _session(root / name / "unet.onnx", weights) for name in GRAPHS}
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
    rows = []
    for name in GRAPHS:
        ratios = bl.paired_ratios(times[name], times["plain"])
        low, high = bl.quartiles(ratios)
        rows.append([name, bl.fmt_ms(bl.median(times[name])), bl.fmt_ratio(bl.median(ratios)),
                     f"{bl.fmt_ratio(low)} .. {bl.fmt_ratio(high)}"])  # fmt: skip
    return bl.Section(
        key="export",
        title=f"Exported U-Net in ONNX Runtime (CPU): {layout} widths, random weights, latent {latent}, batch {batch}",
        headers=["graph", "median per call", "ratio to plain (median)", "interquartile range"],
        rows=rows,
        note=f"One call of each graph per repetition, {repeats} repetitions after one warm-up round, interleaved, "
        "float32, ONNX Runtime's CPU provider with its default graph optimisations; FreeU = the SD 1.5 factors (v2, "
        "official). plain: `freeu export --plain`; baked: the factors as constants; inputs: the factors as graph "
        "inputs, fed at every call. Each graph's output equals PyTorch's (freeu.apply) within "
        f"{max(errors.values()):.1e} of its scale.",
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
