"""Attention maps drawn over their images, titled, with optional lesion boxes.

Used for GLoRIA's entity maps (`ecamp attention show`: the SR guidance, not a figure of
the paper) and for MSCF's text-to-image attention after pre-training (`ecamp pretrain
show`: the ECAMP paper's Figure 4).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ecamp.errors import UserError
from ecamp.utils.io import atomic_write


def overlay_grid(
    images: Sequence[np.ndarray],
    maps: Sequence[np.ndarray],
    titles: Sequence[str],
    output: str | Path,
    boxes: Sequence[Sequence[Sequence[Any]]] | None = None,
    cols: int = 4,
    alpha: float = 0.45,
    panel_inches: float = 3.2,
) -> Path:
    """Write one PNG: each image in gray, its map (any resolution, stretched over the whole
    image) as a translucent heat map, its title wrapped above, optional red boxes
    ``[x1, y1, x2, y2, ...]`` in image pixels.  Returns the PNG path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    if not (len(images) == len(maps) == len(titles)) or not images:
        raise UserError("overlay_grid needs as many images, maps and titles, at least one")
    cols = max(1, min(cols, len(images)))
    rows = math.ceil(len(images) / cols)
    fig = Figure(figsize=(cols * panel_inches, rows * (panel_inches + 0.5)), dpi=100)
    FigureCanvasAgg(fig)
    for k, (img, m, title) in enumerate(zip(images, maps, titles)):
        ax = fig.add_subplot(rows, cols, k + 1)
        h, w = img.shape[:2]
        ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0, extent=(0, w, h, 0))
        m = np.asarray(m, dtype=np.float32)
        hi = float(m.max())
        ax.imshow(
            m / hi if hi > 0 else m,
            cmap="jet",
            alpha=alpha,
            vmin=0.0,
            vmax=1.0,
            extent=(0, w, h, 0),
        )
        for b in boxes[k] if boxes else []:
            x1, y1, x2, y2 = (float(v) for v in b[:4])
            ax.add_patch(
                Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="red", linewidth=1.5)
            )
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.set_title("\n".join(textwrap.wrap(title, 38)[:4]), fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    out = Path(output)
    return atomic_write(out, lambda tmp: fig.savefig(tmp, format="png"))
