"""Pictures made of square tiles under column titles: `table_grid` makes every one (the
per-epoch grid, the evaluation's, the comparison's, the strength strip).

The per-epoch picture (`make_grid`): one row per validation sample, with the columns
Prompt | Control | Reconstruction | Text only | Samples.

- Reconstruction: the target through the VAE, as ControlNet's image logger shows it;
- Text only: the base model without control (what the paper's figures call reconstruction);
- Samples: with control.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
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


def label_font(size: int) -> ImageFont.ImageFont:
    """Pillow's default font at `size` px (its one fixed size before Pillow 10.1)."""
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
    ImageDraw.Draw(tile).multiline_text((4, 4), text, fill="black", font=label_font(font_size))
    return tile


def make_grid(rows: list[GridRow], tile: int | None = None, title: str | None = None) -> Image.Image:
    """One image with a row per sample and the columns of `COLUMNS`; tiles are `tile` px squares."""
    if not rows:
        raise ValueError("make_grid needs at least one row.")
    cells = [[r.prompt, r.control, r.reconstruction, r.text_only, r.sample] for r in rows]
    return table_grid(COLUMNS, cells, tile=tile, title=title)


def table_grid(columns: Sequence[str], rows: Sequence[Sequence[Image.Image | str]], tile: int | None = None,
               title: str | None = None, band: int = HEADER) -> Image.Image:
    """A table of square tiles under a band of column titles.

    Args:
        columns: the column titles.
        rows: the cells of each row: images, enlarged or shrunk to the tile (nearest neighbour, so
            pixels stay exact), or texts, drawn as prompt tiles.
        tile: the tiles' size in pixels; None: the first image's width, at least 128 px (small
            images are enlarged, for legible titles).
        title: a line above the column titles, in a band of its own.
        band: the height of the band of column titles (and of the title's).
    """
    if not rows or any(len(row) != len(columns) for row in rows):
        raise ValueError(f"table_grid needs rows of {len(columns)} cells ({', '.join(columns)}).")
    first_image = next(c for c in rows[0] if isinstance(c, Image.Image))
    tile = tile or max(128, first_image.size[0])
    header = band * (2 if title else 1)
    grid = Image.new("RGB", (tile * len(columns), header + tile * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    font = label_font(14)
    if title:
        draw.text((4, 4), title, fill="black", font=font)
    for c, name in enumerate(columns):
        draw.text((c * tile + 4, header - band + 4), name, fill="black", font=font)
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            image = prompt_tile(cell, tile) if isinstance(cell, str) else cell.convert("RGB").resize((tile, tile), Image.NEAREST)
            grid.paste(image, (c * tile, header + r * tile))
    return grid
