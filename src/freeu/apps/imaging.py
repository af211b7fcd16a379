"""Pictures for people: labelled side-by-sides and grids, and settings carried inside the PNG files themselves.

Every PNG this project writes carries its settings as JSON in a ``tEXt`` chunk named ``freeu`` (model, prompt, seed,
steps, guidance, size, FreeU factors, version, convention, window), so ``freeu info IMAGE`` can print them and
``freeu generate --from IMAGE`` can re-run them. Needs Pillow (a dependency of diffusers).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["METADATA_KEY", "grid", "read_settings", "save_gif", "save_png", "side_by_side"]

METADATA_KEY = "freeu"
_PAD = 4


def _pil():
    try:
        from PIL import Image, ImageDraw, ImageFont, PngImagePlugin
    except ImportError as error:  # pragma: no cover - Pillow comes with diffusers
        raise ImportError("writing images needs Pillow: pip install 'freeu[diffusers]'") from error
    return Image, ImageDraw, ImageFont, PngImagePlugin


def _font(size: int = 12):
    _, _, font, _ = _pil()
    try:
        return font.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        return font.load_default()


def _text_size(draw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.multiline_textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def grid(
    images: Sequence[Sequence[Any]],
    row_labels: Sequence[str] = (),
    col_labels: Sequence[str] = (),
    title: str = "",
    footer: str = "",
    min_cell: int = 160,
):
    """One image: ``images[r][c]`` (PIL images of one size) in a grid, with labels on the left and on top (may hold
    newlines), a title and a footer (for what holds for every cell). Small images are enlarged by a whole factor
    (nearest neighbour, so pixels stay pixels) until a cell is at least ``min_cell`` pixels wide."""
    image_cls, draw_cls, _, _ = _pil()
    width, height = images[0][0].size
    zoom = max(1, -(-min_cell // width))
    width, height = width * zoom, height * zoom
    font, small = _font(13), _font(11)
    draw = draw_cls.Draw(image_cls.new("RGB", (1, 1)))
    cols = max(len(r) for r in images)
    label_w = max([_text_size(draw, t, font)[0] for t in row_labels] + [0]) + (2 * _PAD if row_labels else 0)
    cell_w = max([width] + [_text_size(draw, t, font)[0] + 2 * _PAD for t in col_labels])
    col_h = max([_text_size(draw, t, font)[1] for t in col_labels] + [0]) + 3 * _PAD if col_labels else 0
    title_h = _text_size(draw, title, font)[1] + 3 * _PAD if title else 0
    footer_h = _text_size(draw, footer, small)[1] + 3 * _PAD if footer else 0
    top = title_h + col_h
    canvas_w = max(
        label_w + cols * (cell_w + _PAD) + _PAD,
        _text_size(draw, title, font)[0] + 2 * _PAD,
        _text_size(draw, footer, small)[0] + 2 * _PAD,
    )
    canvas = image_cls.new("RGB", (canvas_w, top + len(images) * (height + _PAD) + _PAD + footer_h), "white")
    draw = draw_cls.Draw(canvas)
    if title:
        draw.multiline_text((_PAD, _PAD), title, fill="black", font=font)
    for c, text in enumerate(col_labels):
        x = label_w + _PAD + c * (cell_w + _PAD) + (cell_w - _text_size(draw, text, font)[0]) // 2
        draw.multiline_text((x, title_h + _PAD), text, fill="black", font=font, align="center")
    for r, row in enumerate(images):
        y = top + _PAD + r * (height + _PAD)
        if r < len(row_labels):
            draw.multiline_text((_PAD, y + (height - _text_size(draw, row_labels[r], font)[1]) // 2), row_labels[r],
                                fill="black", font=font)  # fmt: skip
        for c, img in enumerate(row):
            cell = img.convert("RGB")
            if zoom > 1:
                cell = cell.resize((width, height), image_cls.NEAREST)
            canvas.paste(cell, (label_w + _PAD + c * (cell_w + _PAD) + (cell_w - width) // 2, y))
    if footer:
        draw.multiline_text((_PAD, canvas.height - footer_h + _PAD), footer, fill="dimgray", font=small)
    return canvas


def side_by_side(images: Sequence[Any], labels: Sequence[str], footer: str = ""):
    """Images of one size next to each other, each labelled on top."""
    return grid([list(images)], col_labels=labels, footer=footer)


def save_png(image, path: str | Path, settings: dict[str, Any]) -> Path:
    """Write ``image`` as PNG with ``settings`` (JSON) in its ``freeu`` text chunk."""
    _, _, _, png = _pil()
    info = png.PngInfo()
    info.add_text(METADATA_KEY, json.dumps(settings, sort_keys=True))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, pnginfo=info)
    return path


def save_gif(frames: Sequence[Any], path: str | Path, settings: dict[str, Any], fps: int = 8) -> Path:
    """Write frames as a looping GIF, with ``settings`` as its comment (``freeu info`` reads it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    first, *rest = [f.convert("RGB") for f in frames]
    first.save(
        path, save_all=True, append_images=rest, duration=max(1, round(1000 / fps)), loop=0,
        comment=json.dumps(settings, sort_keys=True).encode(),
    )  # fmt: skip
    return path


def read_settings(path: str | Path) -> dict[str, Any]:
    """The settings a PNG (or GIF) written by this project carries; ``ValueError`` if it carries none."""
    image_cls, _, _, _ = _pil()
    try:
        with image_cls.open(path) as img:
            raw = img.info.get(METADATA_KEY) or img.info.get("comment")
    except image_cls.DecompressionBombError as error:
        raise ValueError(f"{path}: refused, its declared size is a decompression bomb ({error})") from None
    if raw is None:
        raise ValueError(f"{path} carries no freeu settings (it was not written by freeu generate or freeu sweep)")
    if isinstance(raw, bytes):
        raw = raw.decode()
    try:
        return json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: its freeu settings are not valid JSON ({error})") from None
    except RecursionError:
        raise ValueError(f"{path}: its freeu settings are nested too deeply to be settings") from None
