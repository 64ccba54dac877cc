"""GLoRIA's (image, text) pairs: the dataset, the collator and split selection.

:class:`AttentionDataset` reads a pre-training manifest (images plus ``report`` /
``distilled`` text); :class:`GloriaCollator` turns a batch of its samples into BERT inputs
plus the word structure GLoRIA's word-level attention needs.  The stage that trains and
exports GLoRIA is :mod:`ecamp.train.attention`.

Text of an image: its ``distilled`` report when non-empty; otherwise the rules distiller's
output for its report (:func:`ecamp.distill.rules.distilled_text`), and the report itself
when that finds no entity (``text="report"`` always uses the report).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ecamp.config import check_choices
from ecamp.config.attention import AttentionDataConfig
from ecamp.errors import UserError


def _pair_text(report: str, distilled: str, mode: str) -> str:
    """The text paired with an image (see the module doc)."""
    if mode == "report":
        return report
    if mode != "distilled":
        raise UserError(f"data.text={mode!r}: use 'distilled' or 'report'")
    if distilled.strip():
        return distilled
    try:
        from ecamp.distill.rules import distilled_text
    except ImportError:
        return report
    return distilled_text(report) or report


class AttentionDataset(Dataset):
    """(image, text) pairs of a pre-training manifest; items are ``(index, seed)`` tuples.

    A sample: ``image`` (C, S, S) normalised, ``text``, ``id``, ``box`` (top, left, h, w) of
    the original image inside the S x S input, ``shape`` (H, W) of the original image.
    """

    accepts_seed = True

    def __init__(
        self,
        df: pd.DataFrame,
        cfg: AttentionDataConfig,
        img_size: int,
        in_chans: int = 3,
        train: bool = True,
    ):
        from ecamp.data.cache import ImageCache
        from ecamp.data.manifest import resolve_image

        self.cfg = cfg
        self.img_size = int(img_size)
        self.in_chans = int(in_chans)
        self.train = train
        root = cfg.image_root or df.attrs.get("root")
        self.ids: list[str] = df["id"].astype(str).tolist()
        self.paths = [resolve_image(p, root) for p in df["image"]]
        self.reports: list[str] = df["report"].astype(str).tolist()
        self.distilled: list[str] = (
            df["distilled"].astype(str).tolist() if "distilled" in df else [""] * len(df)
        )
        self.cache = ImageCache(cfg.cache) if cfg.cache else None
        check_choices(cfg, "data.")  # a config built in code did not pass the loader's check

    def __len__(self) -> int:
        return len(self.ids)

    def text(self, i: int) -> str:
        return _pair_text(self.reports[i], self.distilled[i], self.cfg.text)

    def _square(self, i: int) -> tuple[np.ndarray, tuple[int, int, int, int], tuple[int, int]]:
        """The S x S float input, the original content's box in it and the original shape."""
        from ecamp.data.images import content_box, load_image, resize_square

        s = self.img_size
        if self.cache is not None and self.ids[i] in self.cache:
            img = self.cache.get(self.ids[i]).astype(np.float32) / 255.0  # type: ignore[union-attr]
            shape = self.cache.shapes.get(self.ids[i], img.shape)
            top, left, h, w = content_box(
                int(shape[0]), int(shape[1]), self.cache.size, self.cache.resize
            )
            k = s / self.cache.size
            box = (round(top * k), round(left * k), max(1, round(h * k)), max(1, round(w * k)))
            return resize_square(img, s, "squash"), box, (int(shape[0]), int(shape[1]))
        img = load_image(self.paths[i])
        return (
            resize_square(img, s, self.cfg.resize),
            content_box(int(img.shape[0]), int(img.shape[1]), s, self.cfg.resize),
            img.shape,
        )

    def __getitem__(self, item: tuple[int, int] | int) -> dict[str, Any]:
        from ecamp.data.images import apply_crop, sample_crop, to_tensor

        index, seed = item if isinstance(item, tuple) else (int(item), 0)
        img, box, shape = self._square(index)
        t = to_tensor(img)
        if self.train and self.cfg.augment == "crop":
            rng = np.random.default_rng(seed)
            lo, hi = self.cfg.crop_scale
            params = sample_crop(self.img_size, self.img_size, rng, (lo, hi), flip_prob=0.0)
            t = apply_crop(t, params, self.img_size).clamp_(0.0, 1.0)
        t = t.sub_(self.cfg.mean).div_(self.cfg.std).expand(self.in_chans, -1, -1).contiguous()
        return {
            "image": t,
            "text": self.text(index),
            "id": self.ids[index],
            "box": torch.tensor(box, dtype=torch.long),
            "shape": torch.tensor(shape, dtype=torch.long),
        }


def _content_table(tokenizer: Any) -> np.ndarray:
    """Per token id: does the token carry a letter or digit (punctuation words are not scored)."""
    vocab = tokenizer.get_vocab()
    table = np.zeros(max(vocab.values()) + 1, dtype=bool)
    for tok, i in vocab.items():
        if not (tok.startswith("[") and tok.endswith("]")):
            table[i] = any(ch.isalnum() for ch in tok)
    return table


class GloriaCollator:
    """Stack images and turn texts into BERT inputs plus word indices.

    Adds ``[CLS]``/``[SEP]``, pads to the batch's longest text (at most ``max_len``),
    and gives every token its word (``word_index``, -1 for special tokens, padding and
    punctuation); ``word_mask`` (B, W) marks the scored words and ``word_spans`` holds each
    text's word character spans (W_b, 2) for mapping entity mentions onto words.
    """

    def __init__(self, tokenizer: Any, max_len: int):
        self.tok = tokenizer
        self.max_len = int(max_len)
        self.cls = tokenizer.token_to_id("[CLS]")
        self.sep = tokenizer.token_to_id("[SEP]")
        self.pad = tokenizer.token_to_id("[PAD]")
        self.content = _content_table(tokenizer)

    def encode(self, texts: list[str]) -> dict[str, Any]:
        encs = self.tok.encode_batch(texts, add_special_tokens=False)
        n = [min(len(e.ids), self.max_len - 2) for e in encs]
        length = max(n) + 2
        b = len(texts)
        ids = np.full((b, length), self.pad, dtype=np.int64)
        words = np.full((b, length), -1, dtype=np.int64)
        attn = np.zeros((b, length), dtype=np.int64)
        spans = []
        for r, (e, k) in enumerate(zip(encs, n)):
            ids[r, 0], ids[r, k + 1] = self.cls, self.sep
            ids[r, 1 : k + 1] = e.ids[:k]
            attn[r, : k + 2] = 1
            w = np.nan_to_num(np.array(e.word_ids[:k], dtype=np.float64), nan=-1).astype(np.int64)
            words[r, 1 : k + 1] = w
            off = np.asarray(e.offsets[:k], dtype=np.int64).reshape(-1, 2)
            nw = int(w.max()) + 1 if k else 0
            sp = np.zeros((nw, 2), dtype=np.int64)
            sp[:, 0] = np.iinfo(np.int64).max
            if k:
                np.minimum.at(sp[:, 0], w, off[:, 0])
                np.maximum.at(sp[:, 1], w, off[:, 1])
            spans.append(sp)
        words[~self.content[ids]] = -1
        n_words = max(1, int(words.max()) + 1)
        mask = np.zeros((b, n_words + 1), dtype=bool)
        mask[np.arange(b)[:, None], np.where(words < 0, n_words, words)] = True
        return {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(attn),
            "word_index": torch.from_numpy(words),
            "word_mask": torch.from_numpy(mask[:, :n_words]),
            "word_spans": spans,
        }

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        if not samples:
            raise ValueError("GloriaCollator got an empty batch")
        batch = self.encode([s["text"] for s in samples])
        batch["image"] = torch.stack([s["image"] for s in samples])
        batch["box"] = torch.stack([s["box"] for s in samples])
        batch["shape"] = torch.stack([s["shape"] for s in samples])
        batch["id"] = [s["id"] for s in samples]
        batch["text"] = [s["text"] for s in samples]
        return batch


def select_splits(df: pd.DataFrame, splits: tuple[str, ...]) -> pd.DataFrame:
    """The rows of ``df`` (a normalised manifest) in ``splits`` (index reset, ``attrs`` kept);
    the names are read as :func:`ecamp.data.manifest.split_name` reads them, so a config's
    ``[train, validate]`` still selects the val rows."""
    from ecamp.data.manifest import split_name

    out = df[df["split"].isin([split_name(s) for s in splits])].reset_index(drop=True)
    out.attrs = dict(df.attrs)
    return out


__all__ = ["AttentionDataset", "GloriaCollator", "AttentionDataConfig", "select_splits"]
