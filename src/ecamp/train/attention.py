"""`ecamp attention`: GLoRIA on (image, distilled report) pairs -> entity attention maps.

Three sub-commands (SPEC.md section 4):

* ``train``  trains :class:`ecamp.models.gloria.GLoRIA` on the generic training loop (DDP,
  AMP, resume and logging come from :class:`ecamp.train.loop.Trainer`) and writes
  ``gloria.safetensors`` beside ``config.yaml`` in the output folder.  With boxes in the
  manifest (the phantom world has them) every epoch ends with a localisation check on the
  val split (``eval.csv``: ``mass_in_box``, ``uniform``, ``ratio``).
* ``export`` runs the trained model over every image of the manifest and stores, per image,
  the attention of its entity words over the image, up-sampled to ``export.size`` (448),
  plus the release-style window (see :mod:`ecamp.data.guidance` for the folder format).
* ``show``   draws maps over their images with the entity sentences as titles into one
  PNG (:func:`ecamp.viz.attention.show`).  These are GLoRIA's maps (the SR guidance); the
  paper's Figure 4 shows ECAMP's own MSCF attention after pre-training: ``ecamp pretrain show``.

This module wires library parts to files: the dataset and collator are in
:mod:`ecamp.data.gloria`, the map geometry in :mod:`ecamp.models.gloria_maps`, the
localisation metric in :mod:`ecamp.eval.localization`, the negation cues in
:mod:`ecamp.text.negation`; the command line is :mod:`ecamp.train.attention_cli`.

Text of an image: its ``distilled`` report when non-empty; otherwise the rules distiller's
output for its report (:func:`ecamp.distill.rules.distilled_text`), and the report itself
when that finds no entity (``data.text=report`` always uses the report).

Entity words (:func:`ecamp.text.entities.entity_words`): the words of every entity mention
(:func:`ecamp.text.entities.find_entities`) in that text.  ``export.mentions=positive`` (default) skips mentions in a negated sentence
("There is no pneumothorax.": there is nothing to look at); an image with no remaining
mention gets no map, so the SR loss treats it uniformly.  ``export.mentions=all`` keeps
them.  ``export.pool=all`` stores one map per image (the mean of its entity words' maps);
``export.pool=entity`` stores one per entity as well.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ecamp.config import check_choices
from ecamp.config.attention import (  # noqa: F401  (moved there; old import path kept)
    TRAIN_DEFAULTS,
    AttentionConfig,
    AttentionDataConfig,
    ExportConfig,
    attention_config,
    load_attention_config,
)
from ecamp.data.gloria import AttentionDataset, GloriaCollator, select_splits
from ecamp.errors import UserError
from ecamp.eval.localization import localization, manifest_boxes
from ecamp.models.gloria_maps import maps_to_image, pooled_entity_maps
from ecamp.text.entities import entity_words  # noqa: F401  (re-exported for older callers)

# the parser lives apart so that `ecamp --help` does not import torch; re-exported here
from ecamp.train.attention_cli import HELP, add_arguments  # noqa: F401
from ecamp.utils.device import move_to_device
from ecamp.utils.logging import get_logger
from ecamp.viz.attention import show  # noqa: F401  (re-exported for older callers)

log = get_logger(__name__)

MODEL_FILE = "gloria.safetensors"
CONFIG_FILE = "config.yaml"

# --------------------------------------------------------------------------- data


def load_manifest(cfg: AttentionConfig, output: Path | None) -> pd.DataFrame:
    """The manifest ``data.manifest`` names, or a phantom world generated under ``output``
    (by rank 0 only, the other ranks of a process group waiting for it)."""
    from ecamp.data.manifest import read_table, validate_pretrain
    from ecamp.train import distributed as du

    path = cfg.data.manifest
    if not path:
        if output is None:
            raise UserError("data.manifest is empty; give a manifest")
        from ecamp.data.sources.phantom import ensure_world

        path = str(
            ensure_world(
                output / "phantom",
                n=cfg.data.synthetic_n,
                size=256,
                seed=cfg.data.synthetic_seed,
                main=du.is_main(),
                barrier=du.barrier,
            )
        )
    df = read_table(path)
    out = validate_pretrain(df, str(path), bad_rows=cfg.data.bad_rows)
    out.attrs["source"] = str(Path(path).resolve())
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
    the val split.
    """
    from safetensors.torch import save_file

    from ecamp.models.gloria_init import load_pretrained_parts, resolve_text_init
    from ecamp.text.tokenizer import fit_vocab_size, load_tokenizer
    from ecamp.train import distributed as du
    from ecamp.train.loop import Trainer
    from ecamp.utils.io import atomic_write

    out = Path(output)
    check_choices(cfg)  # every mode field, export's included, before anything trains
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
    val_df = select_splits(df, ("val",))
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
    check_choices(ex, "export.")
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
            moved = move_to_device(batch, dev)
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


__all__ = [
    "AttentionConfig",
    "AttentionDataConfig",
    "AttentionDataset",
    "ExportConfig",
    "GloriaCollator",
    "attention_config",
    "entity_words",
    "export",
    "load_attention_config",
    "load_trained",
    "localization",
    "manifest_boxes",
    "maps_to_image",
    "pooled_entity_maps",
    "select_splits",
    "show",
    "train",
]
