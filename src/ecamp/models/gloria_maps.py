"""GLoRIA map geometry: region-grid attention -> maps over the original image.

:func:`maps_to_image` undoes the input geometry (resize, zero padding) of
:class:`ecamp.data.gloria.AttentionDataset`; :func:`pooled_entity_maps` pools the word maps
of each text's entity words (:func:`ecamp.text.entities.entity_words`).  Pure tensor work,
no file reading: the attention stage (:mod:`ecamp.train.attention`) and the localisation
metric (:mod:`ecamp.eval.localization`) call them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ecamp.text.entities import entity_words


def maps_to_image(
    grid_maps: torch.Tensor, box: torch.Tensor, img_size: int, out_hw: tuple[int, int]
) -> torch.Tensor:
    """Attention over the region grid -> maps over the original image at ``out_hw``.

    grid_maps (B, K, h, w), box (B, 4) = (top, left, height, width) of the image content in
    the ``img_size`` input -> (B, K, H, W), bilinear, each map scaled to sum 1.
    """
    up = F.interpolate(
        grid_maps.float(), size=(img_size, img_size), mode="bilinear", align_corners=False
    )
    full = (box[:, 0] == 0) & (box[:, 1] == 0) & (box[:, 2] == img_size) & (box[:, 3] == img_size)
    if bool(full.all()):
        out = F.interpolate(up, size=out_hw, mode="bilinear", align_corners=False)
    else:  # padded inputs: crop each image's content first (one call per image)
        out = torch.cat(
            [
                F.interpolate(
                    u[None, :, int(b[0]) : int(b[0] + b[2]), int(b[1]) : int(b[1] + b[3])],
                    size=out_hw,
                    mode="bilinear",
                    align_corners=False,
                )
                for u, b in zip(up, box)
            ]
        )
    out = out.clamp_min(0)
    return out / out.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12)


def pooled_entity_maps(
    attn: torch.Tensor, batch: dict[str, Any], mentions: str
) -> tuple[torch.Tensor, list[dict[str, np.ndarray]], list[list[str]]]:
    """Mean attention of each text's entity words: attn (B, W, h, w) -> (B, h, w) (zeros
    for texts without entity words), plus each text's entity word sets and sentences."""
    b, w = attn.shape[:2]
    sel = torch.zeros(b, w, dtype=attn.dtype)
    sets, titles = [], []
    for r, (text, spans) in enumerate(zip(batch["text"], batch["word_spans"])):
        words, sent = entity_words(text, spans, mentions)
        sets.append(words)
        titles.append(sent)
        for idx in words.values():
            sel[r, torch.as_tensor(idx[idx < w], dtype=torch.long)] = 1.0
    sel = sel * batch["word_mask"].to(sel.dtype).cpu()
    pooled = (
        torch.einsum("bw,bwhx->bhx", sel.to(attn.device), attn)
        / sel.sum(1).clamp_min(1).to(attn.device)[:, None, None]
    )
    return pooled, sets, titles


__all__ = ["maps_to_image", "pooled_entity_maps"]
