"""Run inside a fresh interpreter by tests/hosts/test_comfyui.py: the "FreeU (freeu)" node on ComfyUI's own Stable
Cascade (``StageC``, ``StageB``) and Hunyuan-DiT (``HunYuanDiT``) classes, tiny with random weights, called through
ComfyUI's ``BaseModel.apply_model`` and ``ModelPatcher`` as its samplers call them; prints one JSON object.

Each family's numbers: the node against the float64 reference applied at the model's own ``torch.cat`` (ComfyUI's
code, its ``torch`` replaced in the module), a branch without the node and b = s = 1 against the model as it is, no
hook left on the shared model after a call, a second node replacing the first, a window; and ComfyUI's Flux refused.

Usage: python comfy_probe_families.py COMFYUI_DIR PACK_DIR
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
import comfy_setup  # noqa: E402
from reference import reference_stage  # noqa: E402

torch.set_num_threads(1)
comfy_dir, pack_dir = sys.argv[1], sys.argv[2]
comfy_setup.start(comfy_dir)
import comfy.model_base  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.patcher_extension  # noqa: E402
import comfy.supported_models  # noqa: E402

import freeu  # noqa: E402

Node = comfy_setup.load_pack(pack_dir).FreeUNode
FACTORS = dict(b1=1.5, b2=1.6, s1=0.9, s2=0.2)
CPU = torch.device("cpu")


def patcher(config_class, unet_config: dict, model_class) -> comfy.model_patcher.ModelPatcher:
    config = config_class(unet_config)
    config.set_inference_dtype(torch.float32, None)
    model = model_class(config, device=CPU)
    comfy_setup.randomise(model.diffusion_model)
    return comfy.model_patcher.ModelPatcher(model, load_device=CPU, offload_device=CPU)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


FAMILIES = {
    "hunyuan": dict(
        patcher=lambda: patcher(comfy.supported_models.HunyuanDiT, dict(
            image_model="hydit", depth=6, hidden_size=32, num_heads=4, text_states_dim=16, text_states_dim_t5=16,
            text_len=4, text_len_t5=4), comfy.model_base.HunyuanDiT),
        latent=(4, 16, 24),
        conds=lambda batch: dict(
            c_crossattn=torch.randn(batch, 4, 16, generator=gen(1)), text_embedding_mask=torch.ones(batch, 4),
            encoder_hidden_states_t5=torch.randn(batch, 4, 16, generator=gen(2)),
            text_embedding_mask_t5=torch.ones(batch, 4)),
        module="comfy.ldm.hydit.models",
    ),
    "stage_c": dict(
        patcher=lambda: patcher(comfy.supported_models.Stable_Cascade_C, dict(
            stable_cascade_stage="c", c_in=4, c_out=4, c_r=8, c_cond=16, c_hidden=[16, 32], nhead=[2, 2],
            blocks=[[1, 1], [1, 1]], block_repeat=[[1, 1], [2, 1]], level_config=["CTA", "CTA"], c_clip_text=12,
            c_clip_text_pooled=12, c_clip_img=8, c_clip_seq=2, t_conds=["sca"], switch_level=[False]),
            comfy.model_base.StableCascade_C),
        latent=(4, 8, 12),
        conds=lambda batch: dict(
            clip_text=torch.randn(batch, 2, 12, generator=gen(1)),
            clip_text_pooled=torch.randn(batch, 1, 12, generator=gen(2)),
            clip_img=torch.randn(batch, 1, 8, generator=gen(3))),
        module="comfy.ldm.cascade.common",
    ),
    "stage_b": dict(
        patcher=lambda: patcher(comfy.supported_models.Stable_Cascade_B, dict(
            stable_cascade_stage="b", c_in=4, c_out=4, c_r=8, patch_size=1, c_cond=16, c_hidden=[16, 32, 64],
            nhead=[-1, 2, 2], blocks=[[1, 1, 1], [1, 1, 1]], block_repeat=[[1, 1, 1], [1, 2, 1]],
            level_config=["CT", "CT", "CTA"], c_clip=12, c_clip_seq=2, c_effnet=8, t_conds=["sca"]),
            comfy.model_base.StableCascade_B),
        latent=(4, 16, 24),
        conds=lambda batch: dict(
            clip=torch.randn(batch, 1, 12, generator=gen(1)), effnet=torch.randn(batch, 8, 6, 6, generator=gen(2))),
        module="comfy.ldm.cascade.common",
    ),
}  # fmt: skip


def run(model, family: dict, sigma: float = 2.0) -> torch.Tensor:
    batch = 2
    x = torch.randn(batch, *family["latent"], generator=gen(0))
    options = comfy.model_patcher.create_model_options_clone(model.model_options)["transformer_options"]
    options["sigmas"] = torch.full((batch,), sigma)
    options["wrappers"] = model.wrappers  # what ComfyUI's sampling does before it calls the model
    t = torch.full((batch,), sigma)
    with torch.no_grad():
        return model.model.apply_model(x, t, transformer_options=options, **family["conds"](batch))


def node(model, **settings):
    defaults = dict(preset="custom", **FACTORS, version="2", convention="official", threshold=1, start_percent=0.0,
                    end_percent=1.0, ramp=0.0)  # fmt: skip
    return Node.execute(model, **{**defaults, **settings}).result[0]


class ReferenceCat:
    """``torch`` in ComfyUI's model module, with every skip join's ``cat`` given the float64 reference: Hunyuan-DiT's
    ``cat([x, skip], -1)`` on the token grid (stage 1), Stable Cascade's ``cat([x, x_skip], 1)`` in a residual block
    (stage by width, version 2's map from the block's input ``x_res``)."""

    def __init__(self, config: freeu.FreeUConfig, grid: tuple[int, int], stages: dict[int, int]) -> None:
        self.config, self.grid, self.stages, self.joins = config, grid, stages, 0

    def __getattr__(self, name: str):
        return getattr(torch, name)

    def cat(self, tensors, dim=0, **kwargs):
        frame = inspect.currentframe().f_back
        caller = frame.f_locals.get("self")
        settings = (self.config.version, self.config.threshold)
        if dim == -1 and len(tensors) == 2 and getattr(caller, "skip_linear", None) is not None:
            rows, cols = self.grid
            grids = [t.transpose(1, 2).reshape(t.shape[0], t.shape[2], rows, cols) for t in tensors]
            x, h = reference_stage(*grids, self.config.stage(1), *settings)
            tensors, self.joins = [g.flatten(2).transpose(1, 2) for g in (x, h)], self.joins + 1
        elif dim == 1 and len(tensors) == 2 and "x_res" in frame.f_locals:
            stage = self.stages.get(tensors[0].shape[1])
            if stage is not None:
                tensors = reference_stage(*tensors, self.config.stage(stage), *settings,
                                          structure=frame.f_locals["x_res"])  # fmt: skip
            self.joins += 1
        return torch.cat(tensors, dim=dim, **kwargs)


def hooks_left(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.model.diffusion_model.modules())


out: dict = {}
for name, family in FAMILIES.items():
    plain = family["patcher"]()
    found = {p.join.backbone_channels: p.stage for p in freeu.plan(plain.model.diffusion_model)}
    stages = {width: stage for width, stage in found.items() if stage is not None}
    off = run(plain, family)
    scale = float(off.abs().max())
    result: dict = {"joins": [p.join.name for p in freeu.plan(plain.model.diffusion_model)]}
    for version in (1, 2):
        ours = node(plain, version=str(version))
        with_node = run(ours, family)
        module = sys.modules[family["module"]]
        config = freeu.FreeUConfig(**FACTORS, version=version)
        proxy = ReferenceCat(config, (family["latent"][1] // 2, family["latent"][2] // 2), stages)  # patches of 2
        module.torch = proxy
        try:
            expected = run(plain, family)
        finally:
            module.torch = torch
        result[f"v{version}_vs_reference"] = float((with_node.double() - expected.double()).abs().max()) / scale
        result[f"v{version}_vs_off"] = float((with_node - off).abs().max()) / scale
        result[f"v{version}_reference_joins"] = proxy.joins
    result["no_hook_left"] = hooks_left(plain) == 0
    result["branch_without_node_equals_off"] = bool(torch.equal(run(plain, family), off))
    result["identity_equals_off"] = bool(torch.equal(run(node(plain, b1=1, b2=1, s1=1, s2=1), family), off))
    v1 = node(plain, version="1")
    twice = node(node(plain, b1=1.8), version="1")
    wrappers = twice.get_all_wrappers(comfy.patcher_extension.WrappersMP.APPLY_MODEL)
    result["second_node_replaces"] = len(wrappers) == 1 and bool(torch.equal(run(twice, family), run(v1, family)))
    sampling = plain.get_model_object("model_sampling")
    early, late = float(sampling.percent_to_sigma(0.2)), float(sampling.percent_to_sigma(0.8))
    windowed = node(plain, start_percent=0.0, end_percent=0.5)
    full = node(plain)
    result["window_inside_equals_node"] = bool(torch.equal(run(windowed, family, early), run(full, family, early)))
    result["window_outside_equals_off"] = bool(torch.equal(run(windowed, family, late), run(plain, family, late)))
    result["window_changes_inside"] = float((run(windowed, family, early) - run(plain, family, early)).abs().max())
    result["no_hook_left_after_all"] = hooks_left(plain) == 0
    out[name] = result

try:
    node(node(FAMILIES["hunyuan"]["patcher"](), convention="diffusers"))
    out["hunyuan_diffusers_convention"] = "accepted"
except ValueError as error:
    out["hunyuan_diffusers_convention"] = str(error)

# a diffusion transformer without skip joins: ComfyUI's own Flux class, tiny
import comfy.ldm.flux.model  # noqa: E402
import comfy.ops  # noqa: E402

flux = comfy.ldm.flux.model.Flux(
    in_channels=4, out_channels=4, vec_in_dim=8, context_in_dim=8, hidden_size=16, mlp_ratio=2.0, num_heads=2, depth=1,
    depth_single_blocks=1, axes_dim=[2, 2, 4], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=False,
    txt_ids_dims=[], operations=comfy.ops.disable_weight_init,
)  # fmt: skip


import comfy.ldm.modules.diffusionmodules.mmdit  # noqa: E402
import comfy.ldm.pixart.pixartms  # noqa: E402

transformers = {
    "flux": flux,
    "pixart": comfy.ldm.pixart.pixartms.PixArtMS(
        input_size=8, patch_size=2, in_channels=4, hidden_size=16, depth=1, num_heads=2, caption_channels=16,
        model_max_length=8, operations=comfy.ops.disable_weight_init),
    "sd3": comfy.ldm.modules.diffusionmodules.mmdit.OpenAISignatureMMDITWrapper(
        input_size=None, patch_size=2, in_channels=4, depth=1, num_patches=64, pos_embed_max_size=8,
        adm_in_channels=16, context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 16,
        "out_features": 64}}, operations=comfy.ops.disable_weight_init),
}  # fmt: skip
out["transformers"] = {}
for name, diffusion in transformers.items():
    holder = type("Model", (), {"model": type("Base", (), {"diffusion_model": diffusion, "model_config": None})()})
    try:
        node(holder())
        out["transformers"][name] = "accepted"
    except ValueError as error:
        out["transformers"][name] = str(error)
print(json.dumps(out))
