"""Moved to :mod:`freeu.apps.demo_model` (the runtime and every command use it, so it lives outside this package);
these names stay importable from here for code written against the old place."""

from __future__ import annotations

from ..demo_model import (
    CLASSES_WEIGHTS_DIR,
    SCHEDULER_CONFIG,
    UNET_CONFIG,
    WEIGHTS_DIR,
    build_scheduler,
    build_unet,
    check_freeu_stages,
    count_parameters,
    load_exported,
)

__all__ = [
    "CLASSES_WEIGHTS_DIR",
    "SCHEDULER_CONFIG",
    "UNET_CONFIG",
    "WEIGHTS_DIR",
    "build_scheduler",
    "build_unet",
    "check_freeu_stages",
    "count_parameters",
    "load_exported",
]
