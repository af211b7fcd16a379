"""Write a random-weight Stable Diffusion 1.5 checkpoint that Forge recognises (float16 safetensors, the original
checkpoint's key prefixes), built with Forge's own classes from the configs Forge bundles.
Usage: FORGE_PYTHON forge_write_sd15.py FORGE_DIR OUT_FILE"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import forge_setup  # noqa: E402

forge_dir, out = Path(sys.argv[1]), sys.argv[2]
forge_setup.start(forge_dir)
import safetensors.torch  # noqa: E402
from backend.nn.clip import IntegratedCLIP  # noqa: E402
from backend.nn.unet import IntegratedUNet2DConditionModel  # noqa: E402
from backend.nn.vae import IntegratedAutoencoderKL  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

configs = forge_dir / "backend" / "huggingface" / "runwayml" / "stable-diffusion-v1-5"
torch.manual_seed(0)
parts = {
    "model.diffusion_model.": forge_setup.randomise(IntegratedUNet2DConditionModel(**forge_setup.SD15_UNET), 1, 0.02),
    "first_stage_model.": forge_setup.randomise(
        IntegratedAutoencoderKL.from_config(IntegratedAutoencoderKL.load_config(configs / "vae")), 2, 0.02
    ),
    "cond_stage_model.": forge_setup.randomise(
        IntegratedCLIP(CLIPTextModel, CLIPTextConfig.from_pretrained(configs / "text_encoder")), 3, 0.02
    ),
}
state = {
    prefix + key: value.to(torch.float16).contiguous()
    for prefix, module in parts.items()
    for key, value in module.state_dict().items()
}
safetensors.torch.save_file(state, out)
