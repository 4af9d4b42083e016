"""Pictures people would rather look at than read: image grids with optional captions."""

from __future__ import annotations

import math
import textwrap

from PIL import Image, ImageDraw, ImageFont


def image_grid(
    images: list[Image.Image],
    *,
    columns: int | None = None,
    labels: list[str] | None = None,
    cell: int | None = None,
    label_lines: int = 3,
) -> Image.Image:
    """Tile images (any sizes) into a grid; each cell is `cell` px square (default: the largest side), with up
    to `label_lines` lines of caption under it when labels are given."""
    if not images:
        raise ValueError("no images to tile")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    cell = cell or max(max(im.size) for im in images)
    font = ImageFont.load_default()
    line_height = 11
    chars = max(8, cell // 6)
    label_height = (label_lines * line_height + 4) if labels else 0
    pad = 4
    sheet = Image.new("RGB", (columns * (cell + pad) + pad, rows * (cell + label_height + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        x0, y0 = pad + c * (cell + pad), pad + r * (cell + label_height + pad)
        scale = cell / max(image.size)
        shown = image.resize(
            (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.NEAREST
        )
        sheet.paste(shown, (x0 + (cell - shown.width) // 2, y0 + (cell - shown.height) // 2))
        if labels:
            lines = textwrap.wrap(labels[i], chars)[:label_lines]
            for j, line in enumerate(lines):
                draw.text((x0, y0 + cell + 2 + j * line_height), line, fill="black", font=font)
    return sheet
