"""The paper's Figure 4: MSCF attention of a pre-trained ECAMP run (`ecamp pretrain show`).

For a pre-trained ECAMP run, every entity sentence of an image's distilled report gets the
attention of MSCF's local path (the cross-attention from the report's tokens to the image
patches, :meth:`ecamp.models.ecamp.ECAMPModel.mscf_attention`), pooled over the tokens of
that entity's positive mentions and drawn over the image, titled with the sentence, with
the lesion's box in red where the manifest has boxes (the phantom world does).  The image
goes in whole (no patch masked), at the encoder's resolution; the text is the distilled
report as the attention stage reads it (:class:`ecamp.data.gloria.AttentionDataset`).

With boxes, the share of each (image, entity) map inside the union of that class's boxes
(``mass_in_box``) is set against the boxes' share of the image (``uniform``, what a flat
map gives); ``ratio = mass_in_box / uniform`` (of the means over pairs), as the attention
stage's localisation check computes it for GLoRIA.  ``mscf_attention.json`` keeps the
numbers, ``mscf_attention.png`` the figure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ecamp.errors import UserError
from ecamp.utils.logging import get_logger

log = get_logger(__name__)

PNG_NAME = "mscf_attention.png"
JSON_NAME = "mscf_attention.json"


# --------------------------------------------------------------------------- maps


def _sentence_of(text: str, start: int) -> str:
    from ecamp.text.entities import split_sentences

    for s0, s1 in split_sentences(text):
        if s0 <= start < s1:
            return text[s0:s1].strip()
    return text.strip()


def _run_manifest(run: Path, cfg: dict[str, Any], manifest: str | None) -> str:
    if manifest:
        return manifest
    named = str((cfg.get("data") or {}).get("manifest") or "")
    if named:
        return named
    phantom = run / "phantom" / "manifest.csv"
    if phantom.is_file():
        return str(phantom)
    raise UserError(
        f"{run}: the run names no data.manifest and has no phantom world; give --manifest"
    )


def _held_out_first(df: Any) -> Any:
    import numpy as np

    if "split" not in df.columns:
        return df
    order = {"test": 0, "val": 1, "train": 2}  # read_table normalised the names
    return df.iloc[np.argsort([order.get(str(s), 3) for s in df["split"]], kind="stable")]


def entity_pairs(
    model: Any,
    cfg: dict[str, Any],
    df: Any,
    limit: int,
    batch_size: int = 16,
    device: Any = None,
) -> list[dict[str, Any]]:
    """(image, entity sentence) pairs of the first ``limit`` images that have a positive
    entity mention: id, entity, sentence, the map over the original image (sums to 1),
    the image (H, W) in [0, 1], that class's boxes, and the box numbers where it has any."""
    import torch

    from ecamp.config import from_dict
    from ecamp.config.attention import AttentionDataConfig
    from ecamp.data.gloria import AttentionDataset, GloriaCollator
    from ecamp.eval.localization import box_attention, box_mask, manifest_boxes
    from ecamp.models.gloria_maps import maps_to_image
    from ecamp.text.entities import entity_words
    from ecamp.text.tokenizer import load_tokenizer
    from ecamp.utils.device import move_to_device

    mc = model.cfg
    data = cfg.get("data") or {}
    dcfg = from_dict(
        AttentionDataConfig,
        dict(
            image_root=str(data.get("image_root", "")),
            cache=str(data.get("cache", "")),
            resize=str(data.get("cache_resize", "pad")),
            augment="none",
            mean=float(data.get("mean", 0.4721)),
            std=float(data.get("std", 0.3037)),
        ),
    )
    ds = AttentionDataset(df, dcfg, mc.img_size, mc.in_chans, train=False)
    tok = load_tokenizer(str((cfg.get("text") or {}).get("tokenizer", "mimic")))
    collate = GloriaCollator(tok, mc.max_text_len)
    boxes = manifest_boxes(df)
    dev = device or next(model.parameters()).device
    out: list[dict[str, Any]] = []
    n_images = 0
    for lo in range(0, len(ds), batch_size):
        if n_images >= limit:
            break
        batch = collate([ds[i] for i in range(lo, min(len(ds), lo + batch_size))])
        inputs = move_to_device([batch[k] for k in ("image", "input_ids", "attention_mask")], dev)
        attn = model.mscf_attention(*inputs).cpu()  # (B, L, g, g)
        for r in range(attn.shape[0]):
            if n_images >= limit:
                break
            text, spans = batch["text"][r], batch["word_spans"][r]
            words, _ = entity_words(text, spans, "positive")
            if not words:
                continue
            n_images += 1
            gi = lo + r
            hw = (int(batch["shape"][r, 0]), int(batch["shape"][r, 1]))
            widx = batch["word_index"][r]
            image = None
            for ent, idx in words.items():
                tokens = torch.isin(widx, torch.as_tensor(idx, dtype=torch.long))
                if not bool(tokens.any()):
                    continue
                grid = attn[r, tokens].mean(0)
                full = maps_to_image(grid[None, None], batch["box"][r : r + 1], mc.img_size, hw)
                m = full[0, 0].numpy()
                if image is None:
                    from ecamp.data.images import load_image

                    image = load_image(ds.paths[gi])
                pair: dict[str, Any] = {
                    "id": batch["id"][r],
                    "entity": ent,
                    "sentence": _sentence_of(text, int(spans[int(idx[0]), 0])),
                    "map": m,
                    "image": image,
                    "boxes": [],
                }
                if boxes is not None:
                    mine = [b for b in boxes[gi] if b[4] == ent]
                    pair["boxes"] = mine
                    if mine:
                        pair.update(box_attention(m, box_mask(mine, ent, hw)))
                out.append(pair)
    return out


# --------------------------------------------------------------------------- show


def show(
    run: str | Path,
    output: str | Path | None = None,
    n: int = 8,
    eval_images: int = 64,
    cols: int = 4,
    manifest: str | None = None,
    device: str = "auto",
    image_root: str | None = None,
) -> dict[str, Any]:
    """Draw ``n`` (image, entity sentence) MSCF maps of the run in ``run`` and measure the
    attention in the lesion boxes over ``eval_images`` images (held-out splits first).

    Writes ``PNG_NAME`` and ``JSON_NAME`` into ``output`` (default: ``run``); returns the
    JSON's content.
    """
    from ecamp.data.manifest import read_table
    from ecamp.eval.localization import summarise
    from ecamp.models.checkpoints import checkpoint_file
    from ecamp.utils.device import resolve_device
    from ecamp.viz.overlays import overlay_grid
    from ecamp.viz.report import load_ecamp_checkpoint

    run = Path(run)
    if n < 1 or eval_images < 1:
        raise UserError("--n and --eval-images must be at least 1")
    model, cfg = load_ecamp_checkpoint(checkpoint_file(run))  # a run folder: its newest step
    dev = resolve_device(device)
    model = model.to(dev)
    source = _run_manifest(run, cfg, manifest)
    if manifest or image_root:
        # a manifest given here has its own image folder; the run's data.image_root was where
        # its own manifest lay when it trained (the run folder may have moved since)
        root = image_root or str(Path(source).resolve().parent)  # source is that manifest
        cfg = {**cfg, "data": {**(cfg.get("data") or {}), "image_root": root}}
    df = _held_out_first(read_table(source))
    pairs = entity_pairs(model, cfg, df, max(n, eval_images), device=dev)
    if not pairs:
        raise UserError(f"{source}: no image has a positive entity mention to show")
    shown = sorted(pairs, key=lambda p: not p["boxes"])[:n]  # lesions with boxes first
    out_dir = Path(output) if output else run
    png = overlay_grid(
        [p["image"] for p in shown],
        [p["map"] for p in shown],
        [f"{p['sentence']} [{p['entity']}]" for p in shown],
        out_dir / PNG_NAME,
        boxes=[p["boxes"] for p in shown],
        cols=cols,
    )
    keep = ("id", "entity", "sentence", "mass_in_box", "uniform", "ratio")
    result = {
        "run": str(run),
        "manifest": source,
        "figure": str(png),
        "what": "MSCF local cross-attention (distilled-report tokens -> image patches), head "
        "mean, pooled over each entity's tokens; boxes: the lesion boxes of that class",
        "images": len({p["id"] for p in pairs}),
        **summarise(pairs),
        "shown": [{k: p[k] for k in keep if k in p} for p in shown],
    }
    from ecamp.utils.io import atomic_write_text

    atomic_write_text(out_dir / JSON_NAME, json.dumps(result, indent=2) + "\n")
    log.info(
        "MSCF attention in the lesion boxes: %.4f of the mass vs %.4f uniform (ratio %.2f, %d pairs)",
        result["mass_in_box"],
        result["uniform"],
        result["ratio"],
        result["n"],
    )
    return result
