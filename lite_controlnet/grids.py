"""The per-epoch picture: one row per validation sample, with the columns
Prompt | Control | Reconstruction | Text only | Samples.

- Reconstruction: the target through the VAE, as ControlNet's image logger shows it;
- Text only: the base model without control (what the seed's figures call reconstruction);
- Samples: with control.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

COLUMNS = ("Prompt", "Control", "Reconstruction", "Text only", "Samples")
HEADER = 24  # pixels above the first row, for the column titles


@dataclass
class GridRow:
    prompt: str
    control: Image.Image
    reconstruction: Image.Image
    text_only: Image.Image
    sample: Image.Image


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        return ImageFont.load_default()


def prompt_tile(prompt: str, size: int) -> Image.Image:
    """The prompt as black text on white, wrapped to a square tile."""
    tile = Image.new("RGB", (size, size), "white")
    font_size = max(8, size // 12)
    chars_per_line = max(8, int(size / (font_size * 0.55)))
    text = "\n".join(textwrap.wrap(prompt, chars_per_line)) or "(empty prompt)"
    ImageDraw.Draw(tile).multiline_text((4, 4), text, fill="black", font=_font(font_size))
    return tile


def make_grid(rows: list[GridRow], tile: int | None = None, title: str | None = None) -> Image.Image:
    """One image with a row per sample and the columns of `COLUMNS`; tiles are `tile` px squares."""
    if not rows:
        raise ValueError("make_grid needs at least one row.")
    tile = tile or max(128, rows[0].control.size[0])  # small images are enlarged, for legible titles
    header = HEADER + (HEADER if title else 0)
    grid = Image.new("RGB", (tile * len(COLUMNS), header + tile * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    font = _font(14)
    if title:
        draw.text((4, 4), title, fill="black", font=font)
    for c, name in enumerate(COLUMNS):
        draw.text((c * tile + 4, header - HEADER + 4), name, fill="black", font=font)
    for r, row in enumerate(rows):
        tiles = [prompt_tile(row.prompt, tile), row.control, row.reconstruction, row.text_only, row.sample]
        for c, image in enumerate(tiles):
            grid.paste(image.convert("RGB").resize((tile, tile), Image.NEAREST), (c * tile, header + r * tile))
    return grid
