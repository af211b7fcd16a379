"""The offline demo model: a small pixel-space diffusion U-Net that this project trains itself.

It is a diffusers ``UNet2DModel`` (32x32 RGB, widths 32/64/128, so FreeU's official rule finds both stages) trained
on random crops of the photographs and textures that scikit-image ships in its wheel, so that FreeU can be shown on
a CPU with nothing downloaded. Modules:

- :mod:`freeu.apps.demo.model`: the U-Net and noise-scheduler configs, in one place, and builders/loaders for them.
- :mod:`freeu.apps.demo.data`: the images, the held-out ones, and a deterministic patch sampler.
- :mod:`freeu.apps.demo.metrics`: weight-free sample-quality metrics (Laplacian-pyramid SWD, radial power spectrum).
- :mod:`freeu.apps.demo.train`: the resumable, early-stopped training loop and the weight export
  (``python scripts/train_demo.py --out runs/demo``).

Nothing here is imported by ``import freeu``; diffusers, scikit-image, tqdm, safetensors and Pillow are imported
lazily inside the functions that need them.
"""

from __future__ import annotations

__all__: list[str] = []
