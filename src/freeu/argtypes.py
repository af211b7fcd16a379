"""argparse ``type=`` converters shared by the commands: each returns the value or raises ``ArgumentTypeError``
with what is allowed, so argparse prints ``argument --NAME: must be ...`` and exits with code 2."""

from __future__ import annotations

import argparse
import math

__all__ = ["non_negative", "non_negative_int", "positive_int", "size", "vae_size"]


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def non_negative(text: str) -> float:
    """A finite number >= 0 (a guidance scale, a FreeU factor)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def size(text: str, minimum: int = 1, multiple: int = 1) -> tuple[int, int]:
    """``SIZE`` or ``WIDTHxHEIGHT`` in pixels as ``(width, height)``, each >= ``minimum`` and a multiple of
    ``multiple`` (bind them with ``functools.partial``)."""
    try:
        parts = [int(v) for v in text.lower().split("x")]
        width, height = (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])
        if len(parts) > 2 or width < minimum or height < minimum:
            raise ValueError
    except ValueError:
        least = "" if minimum <= 1 else f", each >= {minimum}"
        raise argparse.ArgumentTypeError(f"must be SIZE or WIDTHxHEIGHT in pixels{least}, got {text!r}") from None
    if width % multiple or height % multiple:
        raise argparse.ArgumentTypeError(
            f"width and height must be multiples of {multiple} (the VAE's downsampling), got {text}"
        )
    return width, height


def vae_size(text: str) -> tuple[int, int]:
    """A generation size for a latent pipeline: :func:`size` in multiples of 8 (the VAE's downsampling)."""
    return size(text, multiple=8)
