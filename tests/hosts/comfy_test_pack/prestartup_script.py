# Runs before ComfyUI imports torchvision: the registry's torchvision 0.28 (a CUDA build) registers meta kernels for
# two ops whose schemas its C extension would define; on a CPU torch the schemas are defined here (no kernels).
import sys

if "torchvision" not in sys.modules:
    import torch

    _library = torch.library.Library("torchvision", "DEF")
    _library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    torch.library._freeu_test_torchvision_schemas = _library  # kept alive: a collected Library drops its ops
