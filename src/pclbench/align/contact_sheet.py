"""Contact sheets: a PNG grid of aligned crops, optionally captioned (the QC sheets of the align stage)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from pclbench.core.io import atomic_file


def contact_sheet(
    images: np.ndarray, indices: Sequence[int], path: Path, captions: Sequence[str] | None = None, cols: int = 8
) -> None:
    """A PNG grid of shard crops ``images[indices]`` (uint8 ``(N, 3, S, S)``), optional caption each."""
    from PIL import ImageDraw

    indices = list(indices)
    s = int(images.shape[-1])
    cell = max(s, 48)
    cap_h = 12 if captions else 0
    cols = max(1, min(cols, len(indices)))
    rows = max(1, -(-len(indices) // cols))
    sheet = Image.new("RGB", (cols * cell, rows * (cell + cap_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, i in enumerate(indices):
        x, y = (k % cols) * cell, (k // cols) * (cell + cap_h)
        tile = Image.fromarray(np.asarray(images[i]).transpose(1, 2, 0))
        if s != cell:
            tile = tile.resize((cell, cell), Image.Resampling.NEAREST)
        sheet.paste(tile, (x, y))
        if captions:
            draw.text((x + 1, y + cell), captions[k], fill=(0, 0, 0))
    with atomic_file(path) as tmp:
        sheet.save(tmp, format="PNG")
