"""`ecamp attention`: GLoRIA on (image, distilled report) pairs -> entity attention maps.

Three sub-commands (SPEC.md section 4):

* ``train``  trains :class:`ecamp.models.gloria.GLoRIA` on the generic training loop (DDP,
  AMP, resume and logging come from :class:`ecamp.train.loop.Trainer`) and writes
  ``gloria.safetensors`` beside ``config.yaml`` in the output folder.  With boxes in the
  manifest (the phantom world has them) every epoch ends with a localisation check on the
  validate split (``eval.csv``: ``mass_in_box``, ``uniform``, ``ratio``).
* ``export`` runs the trained model over every image of the manifest and stores, per image,
  the attention of its entity words over the image, up-sampled to ``export.size`` (448),
  plus the release-style window (see :mod:`ecamp.data.guidance` for the folder format).
* ``show``   draws maps over their images with the entity sentences as titles into one
  PNG.  These are GLoRIA's maps (the SR guidance); the paper's Figure 4 shows ECAMP's own
  MSCF attention after pre-training: ``ecamp pretrain show``.

Text of an image: its ``distilled`` report when non-empty; otherwise the rules distiller's
output for its report (:func:`ecamp.distill.rules.distilled_text`), and the report itself
when that finds no entity (``data.text=report`` always uses the report).

Entity words: the words of every entity mention (:func:`ecamp.text.entities.find_entities`)
in that text.  ``export.mentions=positive`` (default) skips mentions in a negated sentence
("There is no pneumothorax.": there is nothing to look at); an image with no remaining
mention gets no map, so the SR loss treats it uniformly.  ``export.mentions=all`` keeps
them.  ``export.pool=all`` stores one map per image (the mean of its entity words' maps);
``export.pool=entity`` stores one per entity as well.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ecamp.config.attention import (  # noqa: F401  (moved there; old import path kept)
    TRAIN_DEFAULTS,
    AttentionConfig,
    AttentionDataConfig,
    ExportConfig,
    attention_config,
    load_attention_config,
)
from ecamp.errors import DataError, UserError

# the parser lives apart so that `ecamp --help` does not import torch; re-exported here
from ecamp.train.attention_cli import HELP, add_arguments  # noqa: F401
from ecamp.utils.logging import get_logger

log = get_logger(__name__)

MODEL_FILE = "gloria.safetensors"
CONFIG_FILE = "config.yaml"

# --------------------------------------------------------------------------- data


def _pair_text(report: str, distilled: str, mode: str) -> str:
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
        if cfg.resize not in ("squash", "pad"):
            raise UserError(f"data.resize={cfg.resize!r}: use 'squash' or 'pad'")
        if cfg.augment not in ("crop", "none"):
            raise UserError(f"data.augment={cfg.augment!r}: use 'crop' or 'none'")

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


def load_manifest(cfg: AttentionConfig, output: Path | None) -> pd.DataFrame:
    """The manifest ``data.manifest`` names, or a phantom world generated under ``output``
    (by rank 0 only, the other ranks of a process group waiting for it)."""
    from ecamp.data.manifest import read_table, validate_pretrain
    from ecamp.train import distributed as du

    path = cfg.data.manifest
    if not path:
        if output is None:
            raise UserError("data.manifest is empty; give a manifest")
        from ecamp.data.synthetic import make_phantom_world

        folder = output / "phantom"
        path = str(folder / "manifest.csv")
        if du.is_main() and not Path(path).is_file():
            log.info(
                "no data.manifest: writing a phantom world of %d images to %s",
                cfg.data.synthetic_n,
                folder,
            )
            make_phantom_world(folder, n=cfg.data.synthetic_n, seed=cfg.data.synthetic_seed)
        du.barrier()
    df = read_table(path)
    out = validate_pretrain(df, str(path), bad_rows=cfg.data.bad_rows)
    out.attrs["source"] = str(Path(path).resolve())
    return out


def select_splits(df: pd.DataFrame, splits: tuple[str, ...]) -> pd.DataFrame:
    out = df[df["split"].isin(list(splits))].reset_index(drop=True)
    out.attrs = dict(df.attrs)
    return out


# --------------------------------------------------------------------------- entity words

_NEGATION = re.compile(
    r"\b(?:no|not|without|negative for|free of|absence of|resolved)\b", re.IGNORECASE
)


def entity_words(
    text: str, word_spans: np.ndarray, mentions: str = "positive"
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Words of each entity mentioned in ``text``: ({entity: word indices}, entity sentences).

    With ``mentions="positive"`` a mention is skipped when a negation cue precedes it in
    its sentence.  Mentions cut off by truncation have no words and are skipped.
    """
    from ecamp.text.entities import find_entities, split_sentences

    if mentions not in ("positive", "all"):
        raise UserError(f"export.mentions={mentions!r}: use 'positive' or 'all'")
    found = find_entities(text)
    if not found:
        return {}, []
    sentences = split_sentences(text)
    out: dict[str, list[int]] = {}
    kept: list[int] = []
    for m in found:
        s0, _ = sentences[m.sentence_index] if m.sentence_index < len(sentences) else (0, len(text))
        if mentions == "positive" and _NEGATION.search(text, s0, m.start):
            continue
        hit = np.flatnonzero((word_spans[:, 0] < m.end) & (word_spans[:, 1] > m.start))
        if hit.size:
            out.setdefault(m.entity, []).extend(hit.tolist())
            if m.sentence_index not in kept:
                kept.append(m.sentence_index)
    titles = [text[slice(*sentences[i])] for i in kept if i < len(sentences)]
    return {e: np.unique(np.asarray(w)) for e, w in out.items()}, titles


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


# --------------------------------------------------------------------------- localisation check


def _box_mask(boxes: list[list[Any]], kind: str, hw: tuple[int, int]) -> np.ndarray:
    m = np.zeros(hw, dtype=bool)
    for x1, y1, x2, y2, k in boxes:
        if k == kind:
            m[int(y1) : int(y2), int(x1) : int(x2)] = True
    return m


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
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        attn = model.attention_maps(moved).cpu()  # type: ignore[operator]
        for r in range(attn.shape[0]):
            gi = lo + r
            if not boxes[gi]:
                continue
            words, _ = entity_words(batch["text"][r], batch["word_spans"][r], "positive")
            hw = (int(batch["shape"][r, 0]), int(batch["shape"][r, 1]))
            for ent, idx in words.items():
                mask = _box_mask(boxes[gi], ent, hw)
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


# --------------------------------------------------------------------------- train


def build_model(cfg: AttentionConfig) -> torch.nn.Module:
    """The GLoRIA network of ``cfg.model`` (through the models-level factory)."""
    from ecamp.models.factory import create_model

    model: torch.nn.Module = create_model(cfg.model)
    return model


def train(cfg: AttentionConfig, output: str | Path, evaluate: bool = True) -> dict[str, Any]:
    """Train GLoRIA as ``cfg`` says into ``output``; returns the training summary.

    With ``evaluate`` and a ``boxes`` column, each epoch ends with :func:`localization` on
    the validate split.
    """
    from safetensors.torch import save_file

    from ecamp.models.gloria_init import load_pretrained_parts, resolve_text_init
    from ecamp.text.tokenizer import fit_vocab_size, load_tokenizer
    from ecamp.train import distributed as du
    from ecamp.train.loop import Trainer
    from ecamp.utils.io import atomic_write

    out = Path(output)
    resolve_text_init(cfg.model, cfg.data)  # checks both files first; BERT sizes + tokenizer
    du.init_distributed(cfg.train.device)  # before the rank-0-only phantom world is written
    df = load_manifest(cfg, out)
    train_df = select_splits(df, cfg.data.splits)
    if train_df.empty:
        raise UserError(f"{df.attrs.get('source')}: no rows in split(s) {list(cfg.data.splits)}")
    cfg.data.manifest = str(df.attrs["source"])  # the resolved config names the data trained on
    tok = load_tokenizer(cfg.data.tokenizer)
    cfg.model.vocab_size = fit_vocab_size(cfg.model.vocab_size, tok, cfg.data.tokenizer)
    collate = GloriaCollator(tok, cfg.model.max_text_len)
    ds = AttentionDataset(train_df, cfg.data, cfg.model.img_size, cfg.model.in_chans, train=True)
    eval_fn = None
    val_df = select_splits(df, ("validate",))
    boxes = manifest_boxes(val_df)
    if evaluate and boxes is not None and len(val_df):
        val_ds = AttentionDataset(
            val_df, cfg.data, cfg.model.img_size, cfg.model.in_chans, train=False
        )

        def eval_fn(model: torch.nn.Module, epoch: int) -> dict[str, float]:
            res = localization(model, val_ds, collate, boxes)
            return {k: float(v) for k, v in res.items() if k != "per_entity"}

    # the Trainer seeds the global RNGs only after the model exists: seed the initial
    # weights here too, or two runs with one train.seed start from different models
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg)
    load_pretrained_parts(model, cfg.model)
    trainer = Trainer(
        model,
        ds,
        cfg.train,
        out,
        collate_fn=collate,
        eval_fn=eval_fn,
        config_to_save=cfg,
        best_metric="ratio" if eval_fn is not None else None,
        num_workers=cfg.data.num_workers,
    )
    summary = trainer.fit()
    if trainer.dist.is_main:
        state = {k: v.detach().cpu().contiguous() for k, v in trainer.model.state_dict().items()}
        atomic_write(out / MODEL_FILE, lambda tmp: save_file(state, tmp))
        log.info("GLoRIA weights: %s", out / MODEL_FILE)
    du.cleanup()
    return summary


def load_trained(
    folder: str | Path, cfg: AttentionConfig | None = None
) -> tuple[torch.nn.Module, AttentionConfig]:
    """The GLoRIA model (eval mode) and config saved by ``train`` in ``folder``."""
    from safetensors.torch import load_file

    folder = Path(folder)
    weights = folder / MODEL_FILE
    if not weights.is_file():
        raise UserError(
            f"{weights} not found; train first with `ecamp attention train -o {folder}`"
        )
    if cfg is None:
        cfg = load_attention_config(folder / CONFIG_FILE)
    elif cfg.model.vocab_size == 0:  # "the tokenizer's size": the one training resolved
        cfg.model.vocab_size = load_attention_config(folder / CONFIG_FILE).model.vocab_size
    model = build_model(cfg)
    try:
        model.load_state_dict(load_file(str(weights)))
    except RuntimeError as e:
        raise UserError(
            f"{weights} does not fit the model of {folder / CONFIG_FILE}: {e}"
        ) from None
    return model.eval(), cfg


# --------------------------------------------------------------------------- export


@torch.no_grad()
def export(
    model: torch.nn.Module,
    cfg: AttentionConfig,
    df: pd.DataFrame,
    output: str | Path,
    device: str = "auto",
) -> Path:
    """Write the guidance folder for every row of ``df`` (resumes finished shards)."""
    from ecamp.data.guidance import GuidanceWriter, best_window, entity_key
    from ecamp.text.tokenizer import load_tokenizer
    from ecamp.train.distributed import resolve_device

    ex = cfg.export
    if ex.pool not in ("all", "entity"):
        raise UserError(f"export.pool={ex.pool!r}: use 'all' or 'entity'")
    dev = resolve_device(device)
    model = model.to(dev).eval()
    meta = {
        "version": 1,
        "size": ex.size,
        "window_grid": ex.window_grid,
        "window_patches": ex.window_patches,
        "pool": ex.pool,
        "mentions": ex.mentions,
        "manifest": str(df.attrs.get("source", "")),
        "text": cfg.data.text,
        "n_rows": len(df),
        "shard_size": ex.shard_size,
    }
    writer = GuidanceWriter(output, meta)
    collate = GloriaCollator(load_tokenizer(cfg.data.tokenizer), cfg.model.max_text_len)
    ds = AttentionDataset(df, cfg.data, cfg.model.img_size, cfg.model.in_chans, train=False)
    n_shards = max(1, -(-len(ds) // ex.shard_size))
    for shard in range(n_shards):
        if writer.done(shard):
            continue
        lo, hi = shard * ex.shard_size, min(len(ds), (shard + 1) * ex.shard_size)
        maps: dict[str, np.ndarray] = {}
        rows = []
        for b0 in range(lo, hi, ex.batch_size):
            batch = collate([ds[i] for i in range(b0, min(hi, b0 + ex.batch_size))])
            moved = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
            attn = model.attention_maps(moved).float().cpu()  # type: ignore[operator]
            pooled, sets, titles = pooled_entity_maps(attn, batch, ex.mentions)
            full = maps_to_image(
                pooled[:, None], batch["box"], cfg.model.img_size, (ex.size, ex.size)
            )[:, 0]
            full = full / full.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
            windows = best_window(full, ex.window_grid, ex.window_patches)
            for r, key in enumerate(batch["id"]):
                has = bool(sets[r])
                if has:
                    maps[key] = full[r].numpy()
                    if ex.pool == "entity":
                        for ent, idx in sets[r].items():
                            one = attn[r, torch.as_tensor(idx, dtype=torch.long)].mean(0)
                            m = maps_to_image(
                                one[None, None],
                                batch["box"][r : r + 1],
                                cfg.model.img_size,
                                (ex.size, ex.size),
                            )[0, 0]
                            maps[entity_key(key, ent)] = (m / m.max().clamp_min(1e-12)).numpy()
                rows.append(
                    {
                        "id": key,
                        "shard": shard if has else -1,
                        "row": int(windows[r, 0]) if has else -1,
                        "col": int(windows[r, 1]) if has else -1,
                        "entities": ";".join(sets[r]),
                        "sentence": " ".join(titles[r]),
                    }
                )
        writer.write_shard(shard, maps, pd.DataFrame(rows))
        log.info("shard %d/%d: %d images, %d maps", shard + 1, n_shards, len(rows), len(maps))
    return writer.finish(n_shards)


# --------------------------------------------------------------------------- show


def show(
    guidance: str | Path,
    output: str | Path,
    manifest: str | None = None,
    ids: list[str] | None = None,
    n: int = 8,
    cols: int = 4,
) -> Path:
    """Overlay ``n`` maps (or those of ``ids``) on their images into one PNG grid."""
    from ecamp.data.guidance import GuidanceStore
    from ecamp.data.images import load_image
    from ecamp.data.manifest import read_table, resolve_image
    from ecamp.viz.overlays import overlay_grid

    store = GuidanceStore(guidance)
    source = manifest or store.meta.get("manifest")
    if not source:
        raise UserError("the guidance export names no manifest; give --manifest")
    df = read_table(source)
    df["id"] = df["id"].astype(str)
    by_id = df.set_index("id", drop=False)
    chosen = ids or store.ids_with_maps()[:n]
    if not chosen:
        raise UserError(f"{guidance} holds no maps to show")
    boxes = manifest_boxes(df)
    box_of = dict(zip(df["id"], boxes)) if boxes is not None else {}
    images, maps, titles, draw = [], [], [], []
    for key in chosen:
        if key not in by_id.index:
            raise UserError(f"id {key!r} is not in {source}")
        m = store.map(key)
        if m is None:
            raise UserError(f"id {key!r} has no map in {guidance}")
        images.append(load_image(resolve_image(str(by_id.loc[key, "image"]), df.attrs.get("root"))))
        maps.append(m)
        titles.append(store.sentence(key) or ", ".join(store.entities(key)))
        ents = set(store.entities(key))
        draw.append([b for b in box_of.get(key, []) if b[4] in ents])
    return overlay_grid(images, maps, titles, output, boxes=draw, cols=cols)


__all__ = [
    "AttentionConfig",
    "AttentionDataConfig",
    "AttentionDataset",
    "ExportConfig",
    "GloriaCollator",
    "attention_config",
    "export",
    "load_attention_config",
    "load_trained",
    "localization",
    "show",
    "train",
]
