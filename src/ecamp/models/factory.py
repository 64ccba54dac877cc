"""One factory for every ecamp network: :func:`create_model` and :func:`create_encoder`.

:func:`create_model` builds the model a config describes -- a
:class:`~ecamp.models.gloria.GloriaConfig` gives :class:`~ecamp.models.gloria.GLoRIA`, a
:class:`~ecamp.config.ModelConfig` gives :class:`~ecamp.models.ecamp.ECAMPModel`, a downstream
task spec (an object with ``task`` in ``cls`` / ``seg`` / ``det`` and a ``model`` section, such
as `ecamp finetune`'s config) gives the task head model of :mod:`ecamp.models.heads` on the
``encoder`` passed in.

:func:`create_encoder` (:func:`resolve_encoder`) turns an encoder *source* into a timm
``VisionTransformer``.  A source is one of

- ``random`` (or ``""``): a fresh ViT of the architecture given by ``arch`` (timm's default init);
- an exported encoder (the folder holding ``encoder.safetensors`` + ``encoder.json``, or the
  ``.safetensors`` file itself), as written by :func:`ecamp.models.checkpoints.export_encoder`;
- an ecamp run folder (``<run>/checkpoints/latest`` is used) or a training checkpoint ``.pt``
  of `ecamp pretrain` or `ecamp finetune` (the ``encoder.*`` tensors are taken);
- the authors' released ECAMP checkpoint (recognised by its ``bert_encoder.*`` keys);
- any other ViT state dict with timm names (ImageNet MAE ``.pth``, a timm ``.safetensors``);
- a timm model name (``vit_base_patch16_224.mae``): timm fetches its pretrained weights from
  its hub, which needs a machine that is online.

The encoder is built at the requested input size; the position embedding is resampled
when the checkpoint was trained at another size.

Heavy libraries (torch, timm) are imported inside the functions: `ecamp export`'s parser
imports this module, and the CLI must stay fast.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")


@dataclass
class EncoderArch:
    """The timm ViT architecture used when a source does not record its own."""

    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    in_chans: int = 3

    def kwargs(self) -> dict[str, Any]:
        return {
            "img_size": self.img_size,
            "patch_size": self.patch_size,
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "in_chans": self.in_chans,
        }


@dataclass
class ResolvedEncoder:
    """An encoder ready for a task head, and where it came from."""

    encoder: Any  # timm VisionTransformer (num_classes=0)
    kind: str  # random | exported | checkpoint | release | state_dict | timm
    source: str
    details: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- building


def _build_vit(kwargs: dict[str, Any], img_size: int | None, drop_path: float) -> Any:
    import timm

    from ecamp.models.checkpoints import TIMM_ARCH

    args = {k: v for k, v in kwargs.items() if k != "num_classes"}
    if img_size:
        args["img_size"] = int(img_size)
    return timm.create_model(
        TIMM_ARCH, pretrained=False, num_classes=0, drop_path_rate=drop_path, **args
    )


def infer_arch(sd: dict[str, Any], num_heads: int | None = None) -> dict[str, Any]:
    """timm ViT arguments from the shapes of a timm-named encoder state dict.

    ``num_heads`` cannot be read from shapes: ``num_heads`` if given, else width / 64
    (right for ViT-Ti/S/B/L).
    """
    from ecamp.errors import UserError

    w = sd.get("patch_embed.proj.weight")
    if w is None or w.ndim != 4:
        raise UserError("the checkpoint has no ViT patch embedding (patch_embed.proj.weight)")
    dim, in_chans, patch = int(w.shape[0]), int(w.shape[1]), int(w.shape[2])
    depth = 1 + max((int(m.group(1)) for k in sd if (m := _BLOCK_RE.match(k))), default=-1)
    if depth == 0:
        raise UserError("the checkpoint has no ViT blocks (blocks.N.*)")
    fc1 = sd.get("blocks.0.mlp.fc1.weight")
    mlp_ratio = float(fc1.shape[0]) / dim if fc1 is not None else 4.0
    pos = sd.get("pos_embed")
    n_patches = int(pos.shape[1]) - ("cls_token" in sd) if pos is not None else 196
    grid = int(round(n_patches**0.5))
    return {
        "img_size": grid * patch,
        "patch_size": patch,
        "in_chans": in_chans,
        "embed_dim": dim,
        "depth": depth,
        "num_heads": int(num_heads) if num_heads else max(1, dim // 64),
        "mlp_ratio": mlp_ratio,
    }


def _load_into_new(
    sd: dict[str, Any], kwargs: dict[str, Any], img_size: int | None, drop_path: float
) -> Any:
    """A fresh ViT of ``kwargs`` filled with ``sd`` (every encoder tensor must be there)."""
    from ecamp.errors import UserError
    from ecamp.models.checkpoints import init_encoder

    vit = _build_vit(kwargs, img_size, drop_path)
    report = init_encoder(vit, sd, load_pos_embed=True)
    if report.missing:
        raise UserError(f"the checkpoint lacks encoder tensors {report.missing[:10]}")
    return vit


def _encoder_part(sd: dict[str, Any]) -> dict[str, Any]:
    """The ``encoder.*`` tensors of a whole-model state dict, prefix removed."""
    return {k[len("encoder.") :]: v for k, v in sd.items() if k.startswith("encoder.")}


def _checkpoint_heads(state: dict[str, Any], dim: int) -> int | None:
    """Head count from a training checkpoint's saved config, when it describes this width."""
    model = (state.get("config") or {}).get("model") or {}
    if model.get("embed_dim") == dim and model.get("num_heads"):
        return int(model["num_heads"])
    return None


def _from_file(path: Path, img_size: int | None, drop_path: float) -> ResolvedEncoder:
    from ecamp.errors import UserError
    from ecamp.models.checkpoints import (
        ENCODER_CONFIG,
        load_release_encoder,
        read_checkpoint,
        read_state_dict,
        state_dict_of,
    )

    if path.suffix == ".safetensors" and (path.parent / ENCODER_CONFIG).is_file():
        meta = json.loads((path.parent / ENCODER_CONFIG).read_text(encoding="utf-8"))
        sd = read_state_dict(path)
        vit = _load_into_new(sd, dict(meta["timm_kwargs"]), img_size, drop_path)
        return ResolvedEncoder(vit, "exported", str(path), {"meta": meta})
    state: Any = {}
    if path.suffix != ".safetensors":
        state = read_checkpoint(path, "encoder checkpoint")
    if isinstance(state, dict) and isinstance(state.get("model"), dict) and "format" in state:
        # an ecamp training checkpoint (pretrain or finetune): its encoder.* tensors
        enc = _encoder_part(state["model"])
        if not enc:
            raise UserError(f"training checkpoint {path} holds no encoder.* tensors")
        dim = int(enc["patch_embed.proj.weight"].shape[0])
        kwargs = infer_arch(enc, _checkpoint_heads(state, dim))
        vit = _load_into_new(enc, kwargs, img_size, drop_path)
        return ResolvedEncoder(
            vit, "checkpoint", str(path), {"step": state.get("step"), "epoch": state.get("epoch")}
        )
    # the file was read once above; a safetensors file is read here
    sd = state_dict_of(state, str(path)) if path.suffix != ".safetensors" else read_state_dict(path)
    if any(k.startswith("bert_encoder.") for k in sd):
        vit = load_release_encoder(sd, img_size=img_size or 224)
        if drop_path:
            vit = _load_into_new(vit.state_dict(), _arch_of(vit), img_size, drop_path)
        return ResolvedEncoder(vit, "release", str(path))
    if not any(k.startswith("patch_embed.") for k in sd) and _encoder_part(sd):
        sd = _encoder_part(sd)
    vit = _load_into_new(sd, infer_arch(sd), img_size, drop_path)
    return ResolvedEncoder(vit, "state_dict", str(path))


def _arch_of(vit: Any) -> dict[str, Any]:
    from ecamp.models.checkpoints import timm_kwargs

    return timm_kwargs(vit)


def _from_timm_name(name: str, img_size: int | None, drop_path: float) -> ResolvedEncoder:
    import timm

    from ecamp.errors import UserError

    base = name.split(".", 1)[0]
    if not timm.is_model(base):
        raise UserError(
            f"--init {name!r} is neither an existing file or folder nor a timm model name; "
            "use an exported encoder, a checkpoint, a timm ViT name, or 'random'"
        )
    kwargs: dict[str, Any] = {"num_classes": 0, "drop_path_rate": drop_path}
    if img_size:
        kwargs["img_size"] = int(img_size)
    try:
        vit = timm.create_model(name, pretrained=True, **kwargs)
    except Exception as e:  # offline, unknown tag, no weights
        raise UserError(
            f"timm could not create {name!r} with pretrained weights ({type(e).__name__}: {e}); "
            "without network access, download the weights elsewhere and pass the file"
        ) from None
    if not hasattr(vit, "blocks") or not hasattr(vit, "patch_embed"):
        raise UserError(f"timm model {name!r} is not a plain ViT (no blocks / patch_embed)")
    return ResolvedEncoder(vit, "timm", name)


def resolve_encoder(
    source: str,
    img_size: int | None = None,
    drop_path: float = 0.0,
    arch: EncoderArch | None = None,
) -> ResolvedEncoder:
    """Build the timm ViT encoder ``source`` names (see the module docstring), at ``img_size``
    (``None``: the size the source was trained at) with stochastic depth ``drop_path``."""
    from ecamp.errors import UserError
    from ecamp.models.checkpoints import checkpoint_file

    text = (source or "random").strip()
    if text == "random":
        vit = _build_vit((arch or EncoderArch()).kwargs(), img_size, drop_path)
        return ResolvedEncoder(vit, "random", "random")
    path = Path(text).expanduser()
    if path.is_dir() or path.is_file():  # an exported encoder folder or a run: its tensor file
        return _from_file(checkpoint_file(path), img_size, drop_path)
    if "/" in text or text.endswith((".pt", ".pth", ".safetensors", ".bin")):
        raise UserError(f"encoder checkpoint {path} does not exist")
    return _from_timm_name(text, img_size, drop_path)


def create_encoder(
    source: str,
    img_size: int | None = None,
    drop_path: float = 0.0,
    arch: EncoderArch | None = None,
) -> ResolvedEncoder:
    """The timm ViT encoder ``source`` names, with where it came from (see the module
    docstring); ``""`` means ``random``."""
    return resolve_encoder(source, img_size=img_size, drop_path=drop_path, arch=arch)


# --------------------------------------------------------------------------- models


def _task_model(spec: Any, encoder: Any, num_classes: int, multilabel: bool) -> Any:
    """The head model of a downstream task spec (``task`` + ``model`` section) on ``encoder``."""
    from ecamp.models.heads import ClassificationModel, DetectionModel, SegmentationModel

    m = spec.model
    if spec.task == "cls":
        return ClassificationModel(
            encoder,
            num_classes,
            multilabel=multilabel,
            linear_probe=m.linear_probe,
            dropout=m.dropout,
        )
    if spec.task == "seg":
        return SegmentationModel(
            encoder,
            decoder=m.seg_decoder,
            freeze_encoder=m.linear_probe,
            channels=list(m.seg_channels) or None,
            prior=m.seg_prior,
        )
    return DetectionModel(
        encoder, img_size=m.img_size, hidden=m.det_hidden, freeze_encoder=m.linear_probe
    )


def create_model(
    cfg: Any,
    *,
    encoder: Any = None,
    num_classes: int = 0,
    multilabel: bool = False,
) -> Any:
    """The model ``cfg`` configures.

    - :class:`~ecamp.models.gloria.GloriaConfig` -> :class:`~ecamp.models.gloria.GLoRIA`;
    - :class:`~ecamp.config.ModelConfig` -> :class:`~ecamp.models.ecamp.ECAMPModel`;
    - a downstream task spec (``cfg.task`` in ``cls`` / ``seg`` / ``det``, head options in
      ``cfg.model``) -> the head model on ``encoder`` (a timm ViT, e.g. from
      :func:`create_encoder`); ``num_classes`` / ``multilabel`` are the classifier's.
    """
    from ecamp.config import ModelConfig
    from ecamp.errors import UserError
    from ecamp.models.gloria import GloriaConfig

    if isinstance(cfg, GloriaConfig):
        from ecamp.models.gloria import GLoRIA

        return GLoRIA(cfg)
    if isinstance(cfg, ModelConfig):
        from ecamp.models.ecamp import ECAMPModel

        return ECAMPModel(cfg)
    if getattr(cfg, "task", None) in ("cls", "seg", "det") and hasattr(cfg, "model"):
        if encoder is None:
            raise UserError(f"a {cfg.task} model needs an encoder (see create_encoder)")
        return _task_model(cfg, encoder, num_classes, multilabel)
    raise UserError(
        f"create_model: no model for {type(cfg).__name__} (expected GloriaConfig, "
        "ModelConfig or a downstream task spec with task cls/seg/det)"
    )


__all__ = [
    "EncoderArch",
    "ResolvedEncoder",
    "create_encoder",
    "create_model",
    "infer_arch",
    "resolve_encoder",
]
