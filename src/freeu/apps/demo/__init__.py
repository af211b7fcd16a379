"""The offline demo model: a small pixel-space diffusion U-Net that this project trains itself.

It is a diffusers ``UNet2DModel`` (32x32 RGB, widths 32/64/128, so FreeU's official rule finds both stages) trained
on random crops of the photographs and textures that scikit-image ships in its wheel, so that FreeU can be shown on
a CPU with nothing downloaded. Modules:

- :mod:`freeu.apps.demo.showcase`: ``freeu demo``, the grid, the spectra and the guidance comparison.
- :mod:`freeu.apps.demo.train`: the resumable, early-stopped training loop and the weight export
  (``python tools/train_demo.py --out runs/demo``).
- The shipped weights are the ``freeu-demo-weights`` distribution (``packages/demo-weights``), apart from the library.

What the runtime and the other commands use too lives outside this package, so that none of them imports it:

- :mod:`freeu.apps.demo_model`: the U-Net and noise-scheduler configs, in one place, the weights' folders, builders
  and the loader, and the FreeU settings the demo shows;
- :mod:`freeu.apps.demo_data`: the images, the held-out ones, and a deterministic patch sampler;
- :mod:`freeu.apps.measures`: weight-free sample-quality metrics (Laplacian-pyramid SWD, radial power spectrum).

Nothing here is imported by ``import freeu``; diffusers, scikit-image, tqdm, safetensors and Pillow are imported
lazily inside the functions that need them.
"""

from __future__ import annotations

__all__: list[str] = []
