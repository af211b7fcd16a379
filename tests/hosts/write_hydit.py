"""Write a random-weight Hunyuan-DiT diffusion model, small (ComfyUI's own HunYuanDiT: 4 blocks 128 wide, its other
sizes the class defaults, float32 safetensors): ComfyUI's UNETLoader reads the depth and width from the weights and
detects it as Hunyuan-DiT. Usage: python write_hydit.py COMFYUI_DIR OUT_FILE"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_setup  # noqa: E402

comfy_dir, out = sys.argv[1], sys.argv[2]
comfy_setup.start(comfy_dir)
import comfy.ops  # noqa: E402
import safetensors.torch  # noqa: E402
from comfy.ldm.hydit.models import HunYuanDiT  # noqa: E402

#: what the loader builds from the weights: depth and width read from them, 16 heads by default (8 channels each,
#: the least its attention takes)
HYDIT = dict(depth=4, hidden_size=128)
model = HunYuanDiT(**HYDIT, dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init)
model = comfy_setup.randomise(model, std=0.02)
safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out)
