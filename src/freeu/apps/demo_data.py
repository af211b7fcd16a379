"""Training data for the demo model: random 32x32 crops of the real photographs that scikit-image ships, and the
held-out patches that ``freeu demo`` and ``freeu eval`` measure samples against (outside the command packages, as
both use it, and the demo's training too).

scikit-image's wheel contains a few real photographs and textures (``skimage.data``); the ones below load with no
download (others, e.g. ``brain`` or ``eagle``, need ``pooch`` and the network, and synthetic ones such as
``checkerboard`` or ``binary_blobs`` are left out). Three whole images are held out for evaluation and never cropped
for training: ``coffee`` (a colour photograph), ``gravel`` (a texture; ``grass`` and ``brick`` are its training
cousins) and ``camera`` (a grayscale photograph).

A patch is made by picking an image uniformly, a scale ``s`` log-uniformly in ``[min_scale, max_scale]``, a random
square of side ``round(32 * s)`` (capped by the image), random horizontal and vertical flips, and an antialiased
resize to 32x32; a scale above 1 makes the crop show structure (edges, objects), not only pixels. Grayscale images
become three equal channels; values are in ``[0, 1]``.

Batches are a pure function of ``(seed, index)``: the sampler has no hidden state, so "the data sampler state" of a
resumed run is just its step counter, and any batch can be regenerated exactly.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["ALL_IMAGES", "HELD_OUT_IMAGES", "HELD_OUT_SEED", "TRAIN_IMAGES", "PatchSampler", "load_image", "mix_seed"]

logger = logging.getLogger(__name__)

#: Held out for evaluation: never cropped for training.
HELD_OUT_IMAGES: tuple[str, ...] = ("coffee", "gravel", "camera")

#: The seed of the held-out patches that ``freeu demo`` and ``freeu eval`` compare samples with (the training
#: evaluation draws its own from the run's seed).
HELD_OUT_SEED = 20240321

#: Cropped for training. ``motorcycle`` is the left view of ``skimage.data.stereo_motorcycle``.
TRAIN_IMAGES: tuple[str, ...] = (
    "astronaut",
    "brick",
    "cell",
    "chelsea",
    "clock",
    "coins",
    "grass",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "motorcycle",
    "page",
    "retina",
    "rocket",
    "text",
)

ALL_IMAGES: tuple[str, ...] = TRAIN_IMAGES + HELD_OUT_IMAGES

_MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """A 63-bit seed that depends on every value (splitmix64 finaliser), for independent per-step generators."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & _MASK64
        h ^= h >> 29
    return h & ((1 << 63) - 1)


@functools.cache
def load_image(name: str) -> torch.Tensor:
    """The scikit-image picture ``name`` as a float32 ``(3, H, W)`` tensor in ``[0, 1]`` (grayscale repeated).

    Cached: callers must not modify the returned tensor in place.
    """
    if name not in ALL_IMAGES:
        raise ValueError(f"name must be one of {sorted(ALL_IMAGES)}, got {name!r}")
    from skimage import data

    array = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    image = torch.from_numpy(array.copy())
    if image.dtype != torch.uint8:
        raise TypeError(f"skimage.data.{name} is {image.dtype}, expected uint8")
    image = image.to(torch.float32) / 255.0
    image = image.unsqueeze(0).expand(3, -1, -1) if image.dim() == 2 else image[..., :3].permute(2, 0, 1)
    return image.contiguous()


class PatchSampler:
    """Deterministic random patches of ``images``: batch ``index`` depends only on ``(seed, index, batch_size)``.

    ``allow_held_out`` must be set to sample from :data:`HELD_OUT_IMAGES` (the evaluation reference does); a
    training sampler refuses them, so held-out pictures cannot leak into training by a wrong argument.
    """

    def __init__(
        self,
        images: Sequence[str] = TRAIN_IMAGES,
        *,
        seed: int = 0,
        size: int = 32,
        min_scale: float = 1.0,
        max_scale: float = 4.0,
        allow_held_out: bool = False,
    ) -> None:
        images = tuple(images)
        if not images:
            raise ValueError("images must name at least one picture")
        unknown = [n for n in images if n not in ALL_IMAGES]
        if unknown:
            raise ValueError(f"images: unknown {unknown}; allowed: {sorted(ALL_IMAGES)}")
        leaked = [n for n in images if n in HELD_OUT_IMAGES]
        if leaked and not allow_held_out:
            raise ValueError(
                f"images: {leaked} are held out for evaluation ({list(HELD_OUT_IMAGES)}); pass allow_held_out=True "
                "only for an evaluation reference"
            )
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        if not (math.isfinite(min_scale) and math.isfinite(max_scale) and 0 < min_scale <= max_scale):
            raise ValueError(
                f"min_scale, max_scale must satisfy 0 < min_scale <= max_scale, got {min_scale}, {max_scale}"
            )
        self.images = images
        self.seed = int(seed)
        self.size = size
        self.min_scale = float(min_scale)
        self.max_scale = float(max_scale)
        self._pixels = [load_image(n) for n in images]
        small = [n for n, p in zip(images, self._pixels, strict=True) if min(p.shape[-2:]) < size]
        if small:
            raise ValueError(f"images {small} are smaller than size={size}")

    def sample(self, index: int, batch_size: int) -> tuple[torch.Tensor, list[str]]:
        """Batch number ``index``: ``(batch_size, 3, size, size)`` float32 in ``[0, 1]``, and each patch's image."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        gen = torch.Generator().manual_seed(mix_seed(self.seed, index, batch_size))
        log_lo, log_hi = math.log(self.min_scale), math.log(self.max_scale)
        patches, sources = [], []
        for _ in range(batch_size):
            which = int(torch.randint(len(self.images), (1,), generator=gen))
            u, top_u, left_u, flip_h, flip_v = torch.rand(5, generator=gen, dtype=torch.float64).tolist()
            image = self._pixels[which]
            height, width = image.shape[-2:]
            side = min(round(self.size * math.exp(log_lo + u * (log_hi - log_lo))), height, width)
            top = min(int(top_u * (height - side + 1)), height - side)
            left = min(int(left_u * (width - side + 1)), width - side)
            crop = image[:, top : top + side, left : left + side]
            if flip_h < 0.5:
                crop = crop.flip(-1)
            if flip_v < 0.5:
                crop = crop.flip(-2)
            if side != self.size:
                crop = F.interpolate(
                    crop.unsqueeze(0), size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
                ).squeeze(0)
            patches.append(crop.clamp(0.0, 1.0))
            sources.append(self.images[which])
        return torch.stack(patches), sources
