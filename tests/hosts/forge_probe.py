"""Forge's U-Net under ``freeu``, in Forge's own Python: prints one JSON object with ``freeu.plan`` of a small
IntegratedUNet2DConditionModel (both conventions), and, per version and convention, the largest difference between
``freeu.apply`` on that U-Net and the same settings as an output-block patch called by Forge's own forward, FreeU's
change of the output, and whether ``freeu.remove`` restored the output bit for bit.
Usage: FORGE_PYTHON forge_probe.py FORGE_DIR"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import forge_setup  # noqa: E402

forge_setup.start(sys.argv[1])
from backend.nn.unet import IntegratedUNet2DConditionModel  # noqa: E402

import freeu  # noqa: E402
from freeu import hosts  # noqa: E402

torch.manual_seed(0)
unet = forge_setup.randomise(IntegratedUNet2DConditionModel(**forge_setup.SMALL_UNET), seed=0, std=0.05).eval()
gen = torch.Generator().manual_seed(1)
x = torch.randn(2, 4, 16, 16, generator=gen)
timesteps = torch.tensor([999.0, 400.0])
context = torch.randn(2, 5, 32, generator=gen)


def forward(patch=None) -> torch.Tensor:
    options = {"patches": {"output_block_patch": [patch]}} if patch else {}
    with torch.no_grad():
        return unet(x, timesteps, context=context, transformer_options=options)


result = {
    "class": type(unet).__name__,
    "plan": {
        convention: [
            [p.join.name, p.join.backbone_channels, p.join.skip_channels, p.stage] for p in freeu.plan(unet, convention)
        ]
        for convention in ("official", "diffusers")
    },  # fmt: skip
    "cases": [],
}
plain = forward()
for version in (1, 2):
    for convention in ("official", "diffusers"):
        config = freeu.FreeUConfig(1.3, 1.4, 0.9, 0.2, version=version, convention=convention)
        via_patch = forward(hosts.ldm_output_block_patch(config, dict(unet.config)))
        handle = freeu.apply(unet, config)
        via_apply = forward()
        handle.remove()
        result["cases"].append({
            "version": version, "convention": convention,
            "apply_vs_patch": float((via_apply - via_patch).abs().max()),
            "change": float((via_apply - plain).abs().max()),
            "restored": bool(torch.equal(forward(), plain)),
        })  # fmt: skip
print(json.dumps(result))
