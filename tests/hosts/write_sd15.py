"""Write a random-weight Stable Diffusion 1.5 diffusion model (ComfyUI's UNetModel at SD 1.5's layout, float16
safetensors): what ComfyUI's UNETLoader detects as SD 1.5. Usage: python write_sd15.py COMFYUI_DIR OUT_FILE"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_setup  # noqa: E402

comfy_dir, out = sys.argv[1], sys.argv[2]
comfy_setup.start(comfy_dir)
import safetensors.torch  # noqa: E402
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel  # noqa: E402

model = comfy_setup.randomise(UNetModel(**comfy_setup.SD15_UNET, dtype=torch.float16, device="cpu"), std=0.02)
safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out)
