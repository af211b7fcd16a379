"""Run inside a fresh interpreter by tests/hosts/test_comfyui.py: the real ComfyUI (its UNetModel, ModelPatcher and
built-in FreeU / FreeU_V2 nodes) against the "FreeU (freeu)" node pack; prints one JSON object of measurements.

Usage: python comfy_probe.py COMFYUI_DIR PACK_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_setup  # noqa: E402

torch.set_num_threads(1)
comfy_dir, pack_dir = sys.argv[1], sys.argv[2]
comfy_setup.start(comfy_dir)
import comfy.model_patcher  # noqa: E402
from comfy_extras.nodes_freelunch import FreeU, FreeU_V2  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

Node = comfy_setup.load_pack(pack_dir).FreeUNode
plain = comfy_setup.patcher(comfy_setup.SMALL_UNET)
ctx = torch.randn(1, 7, 32, generator=torch.Generator().manual_seed(1))


def run(patcher, sigma: float = 2.0, size: int = 16) -> torch.Tensor:
    x = torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(2))
    options = comfy.model_patcher.create_model_options_clone(patcher.model_options)["transformer_options"]
    options["sigmas"] = torch.tensor([sigma])
    with torch.no_grad():
        return patcher.model.apply_model(x, torch.tensor([sigma]), c_crossattn=ctx, transformer_options=options)


def node(patcher, **settings):
    defaults = dict(preset="custom", b1=1.3, b2=1.4, s1=0.9, s2=0.2, version="2", convention="official",
                    threshold=1, start_percent=0.0, end_percent=1.0, ramp=0.0)  # fmt: skip
    return Node.execute(patcher, **{**defaults, **settings}).result[0]


def patches(patcher) -> list:
    return patcher.model_options.get("transformer_options", {}).get("patches", {}).get("output_block_patch", [])


out: dict = {}
reference = run(plain)
scale = float(reference.abs().max())
out["scale"] = scale
v2 = node(plain)
out["v2_vs_builtin"] = (
    float((run(v2) - run(FreeU_V2.execute(plain, b1=1.3, b2=1.4, s1=0.9, s2=0.2).result[0])).abs().max()) / scale
)
v1 = node(plain, b1=1.1, b2=1.2, version="1")
out["v1_vs_builtin"] = (
    float((run(v1) - run(FreeU.execute(plain, b1=1.1, b2=1.2, s1=0.9, s2=0.2).result[0])).abs().max()) / scale
)
out["v2_vs_off"] = float((run(v2) - reference).abs().max()) / scale
out["identity_equals_off"] = bool(torch.equal(run(node(plain, b1=1, b2=1, s1=1, s2=1)), reference))
out["branch_without_node_equals_off"] = bool(torch.equal(run(plain), reference)) and patches(plain) == []
twice = node(node(plain, b1=1.6), b1=1.1, b2=1.2, version="1")
out["second_node_replaces"] = len(patches(twice)) == 1 and bool(torch.equal(run(twice), run(v1)))
windowed = node(plain, start_percent=0.0, end_percent=0.5)
sampling = plain.get_model_object("model_sampling")
early, late = float(sampling.percent_to_sigma(0.2)), float(sampling.percent_to_sigma(0.8))
out["window_inside_equals_node"] = bool(torch.equal(run(windowed, early), run(v2, early)))
out["window_outside_equals_off"] = bool(torch.equal(run(windowed, late), run(plain, late)))
out["window_changes_inside"] = float((run(windowed, early) - run(plain, early)).abs().max()) / scale
small = run(FreeU_V2.execute(plain, b1=1.3, b2=1.4, s1=0.9, s2=0.2).result[0], size=4)  # 1x1 at the deepest joins
mine = run(v2, size=4)
out["builtin_v2_nan_at_64px"] = bool(torch.isnan(small).any())
out["node_finite_at_64px"] = bool(torch.isfinite(mine).all())


class Spy(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.fft, self.complex = [], 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if "fft" in str(func):
            self.fft.append(str(func))
        for r in result if isinstance(result, (tuple, list)) else [result]:
            if isinstance(r, torch.Tensor) and r.is_complex():
                self.complex += 1
        return result


with Spy() as spy:
    run(v2)
out["node_fft_calls"], out["node_complex_tensors"] = spy.fft, spy.complex
with Spy() as spy:
    run(FreeU_V2.execute(plain, b1=1.3, b2=1.4, s1=0.9, s2=0.2).result[0])
out["builtin_fft_calls"] = len(spy.fft)


STAGES = "3:b=1.2,s=0.5; 1:high=1.1,cutoff=0.3,window=0.25/0.5"
import freeu  # noqa: E402

staged = node(plain, stages=STAGES)
with freeu.apply(plain.model.diffusion_model, freeu.FreeUConfig(1.3, 1.4, 0.9, 0.2).with_stages(
        freeu.config.parse_stage_settings(STAGES))):  # fmt: skip
    via_apply = run(plain)
out["stages_vs_apply"] = float((run(staged) - via_apply).abs().max()) / scale
out["stages_change"] = float((run(staged) - run(v2)).abs().max()) / scale
out["stages_left_no_hook"] = bool(torch.equal(run(plain), reference))
try:
    node(plain, stages="3:b=x")
    out["bad_stages"] = "accepted"
except ValueError as error:
    out["bad_stages"] = str(error)

# a preset file (as freeu tune writes it) in place of the preset: its factors, version and window
import tempfile  # noqa: E402

import folder_paths  # noqa: E402

with tempfile.TemporaryDirectory() as folder:
    presets = Path(folder_paths.get_folder_paths("freeu_presets")[0])  # models/freeu_presets, which the pack registers
    presets.mkdir(parents=True, exist_ok=True)
    tuned = presets / "tuned.toml"
    tuned.write_text('name = "tuned"\n[freeu]\nb1 = 1.2\nb2 = 1.35\ns1 = 0.7\ns2 = 0.6\nversion = 1\nstart = 0.25\n')
    out["listed_preset_files"] = folder_paths.get_filename_list("freeu_presets")
    from_file = node(plain, preset="sd15", preset_file="tuned.toml")
    sigma = 2.0  # inside the file's window at any schedule position: compare with the same setting applied directly
    with freeu.apply(plain.model.diffusion_model, freeu.FreeUConfig(1.2, 1.35, 0.7, 0.6, version=1)):
        direct = run(plain, sigma)
    out["preset_file_window"] = [p.freeu_config.start for p in patches(from_file)]
    out["preset_file_vs_apply"] = float((run(from_file, sigma) - direct).abs().max()) / scale
    out["preset_file_change"] = float((run(from_file, sigma) - reference).abs().max()) / scale
    outside = Path(folder) / "outside.toml"
    outside.write_text(tuned.read_text())
    out["refused_preset_files"] = {}
    for name in ("missing.toml", str(outside), f"../{outside.name}", "../../../../" + str(outside)):
        try:
            node(plain, preset_file=name)
            out["refused_preset_files"][name] = "accepted"
        except ValueError as error:
            out["refused_preset_files"][name] = str(error)
    tuned.unlink()


class NotAUNet:
    def __init__(self) -> None:
        self.model = type("Model", (), {"diffusion_model": torch.nn.Linear(2, 2), "model_config": None})()


try:
    node(NotAUNet())
    out["unsupported"] = "accepted"
except ValueError as error:
    out["unsupported"] = str(error)
print(json.dumps(out))
