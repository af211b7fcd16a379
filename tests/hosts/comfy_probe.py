"""Run inside a fresh interpreter by tests/hosts/test_comfyui.py: the real ComfyUI (its UNetModel, ModelPatcher and
built-in FreeU / FreeU_V2 nodes) against the "FreeU (freeu)" node pack; prints one JSON object of measurements.

Usage: python comfy_probe.py COMFYUI_DIR PACK_DIR
"""

from __future__ import annotations

import importlib.util
import json
import sys

import torch

torch.set_num_threads(1)
# torchvision 0.28 (the registry's build for torch 2.13) registers meta kernels for two ops its C extension would
# define; on a CPU torch the extension does not load, so the schemas are defined here (no kernels) first. ComfyUI
# imports torchvision through a model family SD never uses.
_TORCHVISION = torch.library.Library("torchvision", "DEF")
_TORCHVISION.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_TORCHVISION.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")

comfy_dir, pack_dir = sys.argv[1], sys.argv[2]
sys.path.insert(0, comfy_dir)
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()
import comfy.cli_args  # noqa: E402, F401
import comfy.latent_formats  # noqa: E402
import comfy.model_base  # noqa: E402
import comfy.model_management  # noqa: E402, F401
import comfy.model_patcher  # noqa: E402
import comfy.supported_models_base  # noqa: E402
from comfy_extras.nodes_freelunch import FreeU, FreeU_V2  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

spec = importlib.util.spec_from_file_location("freeu_comfyui", f"{pack_dir}/__init__.py")
pack = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pack)
Node = pack.FreeUNode

UNET = {
    "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 32,
    "num_res_blocks": [1, 1, 1], "channel_mult": [1, 2, 4], "transformer_depth": [1, 1, 0],
    "transformer_depth_middle": 1, "transformer_depth_output": [1, 1, 1, 1, 0, 0], "use_spatial_transformer": True,
    "legacy": False, "context_dim": 32, "use_linear_in_transformer": False, "adm_in_channels": None,
    "use_temporal_attention": False, "use_temporal_resblock": False,
}  # fmt: skip


class TinySD(comfy.supported_models_base.BASE):
    unet_config: dict = {}
    unet_extra_config = {"num_heads": 4, "num_head_channels": -1}
    latent_format = comfy.latent_formats.SD15


config = TinySD(UNET)
config.set_inference_dtype(torch.float32, None)
base_model = comfy.model_base.BaseModel(config, device=torch.device("cpu"))
torch.manual_seed(0)
with torch.no_grad():
    for p in base_model.diffusion_model.parameters():
        p.copy_(torch.randn_like(p) * 0.05)
cpu = torch.device("cpu")
plain = comfy.model_patcher.ModelPatcher(base_model, load_device=cpu, offload_device=cpu)
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


class NotAUNet:
    def __init__(self) -> None:
        self.model = type("Model", (), {"diffusion_model": torch.nn.Linear(2, 2), "model_config": None})()


try:
    node(NotAUNet())
    out["unsupported"] = "accepted"
except ValueError as error:
    out["unsupported"] = str(error)
print(json.dumps(out))
