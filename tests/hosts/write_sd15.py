"""Write a random-weight Stable Diffusion 1.5 diffusion model (ComfyUI's UNetModel at SD 1.5's layout, float16
safetensors): what ComfyUI's UNETLoader detects as SD 1.5. Usage: python write_sd15.py COMFYUI_DIR OUT_FILE"""

import sys

import torch

_TORCHVISION = torch.library.Library("torchvision", "DEF")  # see comfy_probe.py
_TORCHVISION.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_TORCHVISION.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
comfy_dir, out = sys.argv[1], sys.argv[2]
sys.path.insert(0, comfy_dir)
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()
import safetensors.torch  # noqa: E402
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel  # noqa: E402

SD15 = dict(
    use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
    adm_in_channels=None, in_channels=4, model_channels=320, num_res_blocks=[2, 2, 2, 2],
    transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], channel_mult=[1, 2, 4, 4], transformer_depth_middle=1,
    use_linear_in_transformer=False, context_dim=768, num_heads=8,
    transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], use_temporal_attention=False,
    use_temporal_resblock=False,
)  # fmt: skip
model = UNetModel(**SD15, dtype=torch.float16, device="cpu")
generator = torch.Generator().manual_seed(0)
with torch.no_grad():
    for p in model.parameters():
        p.copy_(torch.randn(p.shape, generator=generator).mul_(0.02))
safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out)
