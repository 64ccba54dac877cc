"""Pre-trained starting points for GLoRIA, as the original initialises it.

GLoRIA (Huang et al., 2021) starts its image encoder from ImageNet and its text encoder
from a clinical BERT (Bio_ClinicalBERT).  ecamp never downloads: the user names files
they fetched themselves.

* ``model.image_init``: a timm checkpoint of the image backbone (``.safetensors`` or a
  torch file; a ViT for ``backbone=vit``, e.g. timm's ``vit_base_patch16_224`` for the
  ``paper`` preset, or the timm CNN named by ``backbone``).  Loaded by name
  (:func:`ecamp.models.checkpoints.init_encoder`); the classifier head is ignored.
* ``model.text_init``: a local Hugging Face folder in the ``save_pretrained`` layout
  (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``, and the tokenizer's
  ``tokenizer.json`` or ``vocab.txt``) of a BERT model.  Its ``config.json`` sets the text
  encoder's sizes, its tokenizer becomes ``data.tokenizer``, its weights fill the text
  encoder; its position table is cut to ``model.max_text_len`` rows.

:func:`resolve_text_init` runs on the config before the model is built,
:func:`load_pretrained_parts` on the built model; both only at the start of training (the
saved config then holds the resolved sizes, so a trained model reloads without the files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ecamp.errors import UserError
from ecamp.utils.logging import get_logger

log = get_logger(__name__)

TEXT_HINT = (
    "a local Hugging Face folder in the save_pretrained layout (config.json, model.safetensors "
    "or pytorch_model.bin, tokenizer.json or vocab.txt), e.g. Bio_ClinicalBERT fetched with "
    "`huggingface-cli download emilyalsentzer/Bio_ClinicalBERT --local-dir DIR`; "
    "ecamp never downloads it"
)
IMAGE_HINT = (
    "a timm checkpoint file of the image backbone, e.g. ImageNet ViT-B/16 fetched with "
    "`huggingface-cli download timm/vit_base_patch16_224.augreg2_in21k_ft_in1k model.safetensors "
    "--local-dir DIR`; ecamp never downloads it"
)
_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def check_text_folder(folder: str) -> Path:
    """The folder of ``model.text_init``, checked to hold a config and weights."""
    p = Path(folder)
    if not p.is_dir():
        raise UserError(f"model.text_init: {p} is not a folder; give {TEXT_HINT}")
    if not (p / "config.json").is_file():
        raise UserError(f"model.text_init: {p} has no config.json; give {TEXT_HINT}")
    if not any((p / w).is_file() for w in _WEIGHTS):
        raise UserError(f"model.text_init: {p} has no {' or '.join(_WEIGHTS)}; give {TEXT_HINT}")
    if not ((p / "tokenizer.json").is_file() or (p / "vocab.txt").is_file()):
        raise UserError(
            f"model.text_init: {p} has no tokenizer.json or vocab.txt; give {TEXT_HINT}"
        )
    return p


def check_image_file(path: str) -> Path:
    """The file of ``model.image_init``, checked to exist."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"model.image_init: {p} does not exist; give {IMAGE_HINT}")
    return p


def resolve_text_init(model_cfg: Any, data_cfg: Any, default_tokenizer: str = "mimic") -> None:
    """Copy the BERT sizes of ``model.text_init``'s config.json into the GLoRIA config and
    point ``data.tokenizer`` at the folder (in place).  No-op without ``text_init``."""
    if model_cfg.image_init:
        check_image_file(model_cfg.image_init)
    if not model_cfg.text_init:
        return
    from transformers import BertConfig

    folder = check_text_folder(model_cfg.text_init)
    try:
        bert = BertConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # malformed json, wrong model type
        raise UserError(
            f"model.text_init: {folder}/config.json is not a BERT config: {e}"
        ) from None
    if getattr(bert, "model_type", "bert") != "bert":
        raise UserError(
            f"model.text_init: {folder} holds a {bert.model_type!r} model; GLoRIA's text encoder is BERT"
        )
    model_cfg.text_width = int(bert.hidden_size)
    model_cfg.text_depth = int(bert.num_hidden_layers)
    model_cfg.text_heads = int(bert.num_attention_heads)
    model_cfg.text_ffn = int(bert.intermediate_size)
    model_cfg.vocab_size = int(bert.vocab_size)
    model_cfg.pad_token_id = int(bert.pad_token_id or 0)
    model_cfg.max_text_len = min(int(model_cfg.max_text_len), int(bert.max_position_embeddings))
    tok = str(data_cfg.tokenizer)
    if tok not in (default_tokenizer, str(folder), model_cfg.text_init):
        raise UserError(
            f"data.tokenizer={tok!r} but model.text_init={model_cfg.text_init!r}: a pre-trained "
            "text encoder needs its own tokenizer; leave data.tokenizer unset"
        )
    data_cfg.tokenizer = str(folder)


def _cut_positions(key: str, v: torch.Tensor, want: torch.Tensor) -> torch.Tensor | None:
    """The first rows of a longer position table (or position-id buffer), else None."""
    rows = key.endswith("position_embeddings.weight") and v.ndim == 2
    if rows and v.shape[0] >= want.shape[0] and v.shape[1] == want.shape[1]:
        return v[: want.shape[0]]
    ids = key.endswith("position_ids") and v.shape[:-1] == want.shape[:-1]
    if ids and v.shape[-1] >= want.shape[-1]:
        return v[..., : want.shape[-1]]
    return None


def load_text_encoder(bert: nn.Module, folder: str) -> dict[str, list[str]]:
    """Fill ``bert`` (a ``transformers.BertModel``) from the folder's weights.

    Returns ``{"loaded", "resized", "ignored"}`` key lists; any of ``bert``'s tensors left
    unfilled, or a shape mismatch beyond the position table, raises :class:`UserError`.
    """
    from transformers import BertModel

    p = check_text_folder(folder)
    try:
        src = BertModel.from_pretrained(str(p), local_files_only=True, add_pooling_layer=False)
    except Exception as e:
        raise UserError(f"model.text_init: cannot load the BERT weights of {p}: {e}") from None
    sd = src.state_dict()
    own = bert.state_dict()
    new: dict[str, torch.Tensor] = {}
    report: dict[str, list[str]] = {"loaded": [], "resized": [], "ignored": []}
    bad = []
    for k, v in sd.items():
        if k not in own:
            report["ignored"].append(k)
            continue
        if v.shape != own[k].shape:
            cut = _cut_positions(k, v, own[k])
            if cut is None:
                bad.append(f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}")
                continue
            v = cut
            report["resized"].append(k)
        new[k] = v.to(own[k].dtype)
        report["loaded"].append(k)
    missing = sorted(set(own) - set(new))
    if bad or missing:
        raise UserError(
            f"model.text_init: {p} does not fit the text encoder: shape mismatches {bad[:10]}, "
            f"unfilled {missing[:10]}"
        )
    bert.load_state_dict(new)
    return report


def load_pretrained_parts(model: nn.Module, model_cfg: Any) -> dict[str, Any]:
    """Load ``model.image_init`` / ``model.text_init`` into a built GLoRIA; returns what
    each load did (also logged)."""
    from ecamp.models.checkpoints import init_encoder

    done: dict[str, Any] = {}
    if model_cfg.image_init:
        path = check_image_file(model_cfg.image_init)
        backbone = model.image_encoder.backbone  # type: ignore[union-attr]
        assert isinstance(backbone, nn.Module)
        rep = init_encoder(backbone, path, load_pos_embed=model_cfg.backbone == "vit")
        if rep.missing:
            raise UserError(
                f"model.image_init: {path} leaves backbone tensors unfilled {rep.missing[:10]}; "
                f"is it a checkpoint of {model_cfg.backbone!r} at this size?"
            )
        log.info("GLoRIA image encoder from %s: %s", path, rep)
        done["image"] = {
            "source": str(path),
            "loaded": rep.loaded,
            "ignored": rep.unexpected,
            "resized": rep.resized,
        }
    if model_cfg.text_init:
        bert = model.text_encoder.bert  # type: ignore[union-attr]
        assert isinstance(bert, nn.Module)
        rep_t = load_text_encoder(bert, model_cfg.text_init)
        log.info(
            "GLoRIA text encoder from %s: loaded %d tensors, resized %s, ignored %s",
            model_cfg.text_init,
            len(rep_t["loaded"]),
            rep_t["resized"],
            rep_t["ignored"],
        )
        done["text"] = {"source": str(model_cfg.text_init), **rep_t}
    return done
