"""Forge's diffusion transformers, which have no skip joins (Flux, Chroma, SD3's MMDiT), under ``freeu`` and the
extension's script, in Forge's own Python: prints one JSON object with, per class, what ``freeu.apply`` and
``freeu.plan`` raise and what the script's ``process`` raises and writes into the infotext when FreeU is enabled
on a model holding that class (and, for comparison, an enabled script on Forge's U-Net, which it accepts).

The script is loaded from its file with Forge's UI modules (gradio's components, ``modules.scripts``) stood in by
stubs: ``process`` uses none of them, and the real ones start the whole web UI.
Usage: FORGE_PYTHON forge_probe_dits.py FORGE_DIR SCRIPT_FILE"""

import importlib.util
import json
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import forge_setup  # noqa: E402

forge_setup.start(sys.argv[1])
from backend.nn.chroma import IntegratedChromaTransformer2DModel  # noqa: E402
from backend.nn.flux import IntegratedFluxTransformer2DModel  # noqa: E402
from backend.nn.mmditx import MMDiTX  # noqa: E402
from backend.nn.unet import IntegratedUNet2DConditionModel  # noqa: E402

import freeu  # noqa: E402

for name in ("gradio", "modules", "modules.scripts", "modules.ui_components"):
    sys.modules[name] = types.ModuleType(name)
sys.modules["modules.scripts"].Script = object
sys.modules["modules.scripts"].AlwaysVisible = object()
sys.modules["modules.ui_components"].InputAccordion = None
sys.modules["modules"].scripts = sys.modules["modules.scripts"]
sys.modules["modules"].ui_components = sys.modules["modules.ui_components"]
spec = importlib.util.spec_from_file_location("freeu_forge", sys.argv[2])
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)

FLUX = dict(in_channels=4, vec_in_dim=8, context_in_dim=8, hidden_size=16, mlp_ratio=2.0, num_heads=2, depth=1,
            depth_single_blocks=1, axes_dim=[2, 2, 4], theta=10000, qkv_bias=True)  # fmt: skip
torch.manual_seed(0)
models = {
    "flux": IntegratedFluxTransformer2DModel(**FLUX, guidance_embed=True),
    "chroma": IntegratedChromaTransformer2DModel(
        **FLUX, guidance_out_dim=16, guidance_hidden_dim=16, guidance_n_layers=1
    ),  # fmt: skip
    "sd3": MMDiTX(
        input_size=None,
        patch_size=2,
        in_channels=4,
        depth=2,
        adm_in_channels=8,
        pos_embed_max_size=8,
        context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 8, "out_features": 128}},
    ),  # fmt: skip
    "unet": IntegratedUNet2DConditionModel(**forge_setup.SMALL_UNET),
}


def error_of(call) -> dict:
    try:
        call()
    except Exception as error:  # what each raises is the result
        return {"type": type(error).__name__, "message": str(error)}
    return {"type": None, "message": ""}


def through_the_script(diffusion: torch.nn.Module) -> dict:
    unet = SimpleNamespace(model=SimpleNamespace(diffusion_model=diffusion))
    p = SimpleNamespace(sd_model=SimpleNamespace(forge_objects=SimpleNamespace(unet=unet)), extra_generation_params={})
    result = error_of(lambda: script.FreeUScript().process(p, {"enabled": True, "preset": "sd15"}))
    result["infotext"] = {k: str(v) for k, v in p.extra_generation_params.items()}
    return result


result = {}
for key, model in models.items():
    result[key] = {
        "class": type(model).__name__,
        "apply": error_of(lambda m=model: freeu.apply(m, freeu.FreeUConfig(1.3, 1.4, 0.9, 0.2)).remove()),
        "plan": error_of(lambda m=model: freeu.plan(m)),
        "script": through_the_script(model),
    }
print(json.dumps(result))
