"""The localisation metric of GLoRIA's entity attention: mass inside the lesion boxes.

A manifest with a ``boxes`` column (JSON lists of ``[x1, y1, x2, y2, class]``; the phantom
world has them) says where each entity is; :func:`localization` measures how much of an
entity word's attention falls there against what a flat map would give.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import torch

from ecamp.data.gloria import AttentionDataset, GloriaCollator
from ecamp.errors import DataError
from ecamp.models.gloria_maps import maps_to_image
from ecamp.text.entities import entity_words
from ecamp.utils.device import move_to_device


def box_mask(boxes: list[list[Any]], kind: str, hw: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: the union of the ``[x1, y1, x2, y2, class]`` boxes of class ``kind``."""
    m = np.zeros(hw, dtype=bool)
    for x1, y1, x2, y2, k in boxes:
        if k == kind:
            m[int(y1) : int(y2), int(x1) : int(x2)] = True
    return m


def box_attention(attn: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Share of a non-negative map inside ``mask`` against the mask's area share.

    ``mass_in_box`` = sum inside / sum overall; ``uniform`` = mask area / image area (the
    share a flat map would put inside); ``ratio`` = their quotient (1 = no better than flat).
    """
    a = np.clip(np.asarray(attn, dtype=np.float64), 0.0, None)
    m = np.asarray(mask, dtype=bool)
    if a.shape != m.shape:
        raise ValueError(f"attention map {a.shape} and box mask {m.shape} differ in shape")
    total = a.sum()
    if not m.any() or total <= 0:
        raise ValueError("box_attention needs a non-empty box and a map with some mass")
    mass = float(a[m].sum() / total)
    uniform = float(m.mean())
    return {"mass_in_box": mass, "uniform": uniform, "ratio": mass / uniform}


def summarise(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over (image, entity) pairs: ``mass_in_box``, ``uniform``, ``ratio`` (of the
    means), ``ratio_per_lesion`` (mean of the pairs' ratios), ``n`` and ``per_entity``."""
    scored = [p for p in pairs if "mass_in_box" in p]
    if not scored:
        nan = float("nan")
        return {
            "mass_in_box": nan,
            "uniform": nan,
            "ratio": nan,
            "ratio_per_lesion": nan,
            "n": 0,
            "per_entity": {},
        }
    mass = float(np.mean([p["mass_in_box"] for p in scored]))
    area = float(np.mean([p["uniform"] for p in scored]))
    per: dict[str, Any] = {}
    for ent in sorted({p["entity"] for p in scored}):
        g = [p for p in scored if p["entity"] == ent]
        m, u = (
            float(np.mean([p["mass_in_box"] for p in g])),
            float(np.mean([p["uniform"] for p in g])),
        )
        per[ent] = {"mass_in_box": m, "uniform": u, "ratio": m / u, "n": len(g)}
    return {
        "mass_in_box": mass,
        "uniform": area,
        "ratio": mass / area,
        "ratio_per_lesion": float(np.mean([p["ratio"] for p in scored])),
        "n": len(scored),
        "per_entity": per,
    }


@torch.no_grad()
def localization(
    model: torch.nn.Module,
    dataset: AttentionDataset,
    collate: GloriaCollator,
    boxes: list[list[list[Any]]],
    batch_size: int = 32,
) -> dict[str, Any]:
    """How much of an entity word's attention falls inside its lesion's box.

    For every image and every entity with a positive mention and a box of that class,
    pool the attention of that entity's words, map it onto the original image and measure
    the fraction inside the union of that class's boxes (``mass_in_box``) against the boxes'
    area fraction (``uniform``, what a flat map would give).  Means over (image, entity)
    pairs; ``ratio = mass_in_box / uniform`` (of the means); ``ratio_per_lesion`` is the
    mean of the pairs' own ratios; ``per_entity`` splits them by class.
    """
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    rows: list[tuple[str, float, float]] = []
    for lo in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(lo, min(len(dataset), lo + batch_size))])
        moved = move_to_device(batch, device)
        attn = model.attention_maps(moved).cpu()  # type: ignore[operator]
        for r in range(attn.shape[0]):
            gi = lo + r
            if not boxes[gi]:
                continue
            words, _ = entity_words(batch["text"][r], batch["word_spans"][r], "positive")
            hw = (int(batch["shape"][r, 0]), int(batch["shape"][r, 1]))
            for ent, idx in words.items():
                mask = box_mask(boxes[gi], ent, hw)
                if not mask.any():
                    continue
                grid = attn[r, torch.as_tensor(idx, dtype=torch.long)].mean(0, keepdim=True)
                full = maps_to_image(grid[None], batch["box"][r : r + 1], dataset.img_size, hw)[
                    0, 0
                ].numpy()
                rows.append((ent, float(full[mask].sum()), float(mask.mean())))
    model.train(was)
    if not rows:
        return {
            "mass_in_box": float("nan"),
            "uniform": float("nan"),
            "ratio": float("nan"),
            "ratio_per_lesion": float("nan"),
            "n": 0,
            "per_entity": {},
        }
    df = pd.DataFrame(rows, columns=["entity", "mass", "area"])
    per = {
        e: {
            "mass_in_box": round(g["mass"].mean(), 4),
            "uniform": round(g["area"].mean(), 4),
            "n": len(g),
        }
        for e, g in df.groupby("entity")
    }
    mass, area = float(df["mass"].mean()), float(df["area"].mean())
    return {
        "mass_in_box": mass,
        "uniform": area,
        "ratio": mass / area,
        "ratio_per_lesion": float((df["mass"] / df["area"]).mean()),  # small boxes weigh more
        "n": len(df),
        "per_entity": per,
    }


def manifest_boxes(df: pd.DataFrame) -> list[list[list[Any]]] | None:
    """The ``boxes`` column (JSON lists of [x1, y1, x2, y2, class]) or None without one."""
    if "boxes" not in df.columns:
        return None
    out = []
    for i, v in enumerate(df["boxes"]):
        try:
            out.append(json.loads(v) if isinstance(v, str) and v.strip() else [])
        except json.JSONDecodeError as e:
            raise DataError(f"manifest row {i}: boxes is not JSON ({e})") from None
    return out


__all__ = ["localization", "manifest_boxes"]
