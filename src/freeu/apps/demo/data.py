"""Moved to :mod:`freeu.apps.demo_data` (``freeu demo``, ``freeu eval`` and the demo's training share it); these
names stay importable from here for code written against the old place."""

from __future__ import annotations

from ..demo_data import ALL_IMAGES, HELD_OUT_IMAGES, HELD_OUT_SEED, TRAIN_IMAGES, PatchSampler, load_image, mix_seed

__all__ = ["ALL_IMAGES", "HELD_OUT_IMAGES", "HELD_OUT_SEED", "TRAIN_IMAGES", "PatchSampler", "load_image", "mix_seed"]
