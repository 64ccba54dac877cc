"""Checkpoint files in and out of the ECAMP network.

(a) :func:`init_encoder` -- initialise the ViT encoder from an ImageNet MAE / timm ViT
    checkpoint (``.pth`` with a ``model`` key or a plain state dict, or ``.safetensors``).
(a') :func:`init_from_mae` -- initialise an :class:`ECAMPModel` from the official ImageNet MAE
    checkpoint (``mae_pretrain_vit_base.pth``: a ``model`` dict of timm-named encoder
    tensors; the ``visualize`` files add the decoder's ``mask_token`` / ``decoder_*``), as
    the release's ``run.sh`` does (``--resume``; ``util/misc.py`` ``load_model`` copies every
    tensor whose name the model shares).  Returns and logs where every key went.
(b) :func:`load_release_checkpoint` -- load the authors' released pre-training checkpoint
    (state dict under ``model``; keys as in ``reference/release_state_dict_keys.tsv``) into
    the ``release`` preset :class:`ECAMPModel`, every part, by an explicit key mapping;
    :func:`load_release_encoder` puts its encoder alone into a plain timm ViT.
(c) :func:`export_encoder` / :func:`load_encoder` -- the encoder as a timm ViT state dict
    (safetensors) plus a JSON of its timm arguments, loadable by
    ``timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0,
    checkpoint_path=...)`` (other sizes: pass the JSON's ``timm_kwargs``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from ecamp.errors import UserError
from ecamp.utils.io import atomic_write, atomic_write_text
from ecamp.utils.logging import get_logger

log = get_logger(__name__)

TIMM_ARCH = "vit_base_patch16_224"
ENCODER_FILE = "encoder.safetensors"
ENCODER_CONFIG = "encoder.json"


# --------------------------------------------------------------------------- reading


_PREFIXES = ("module.", "_orig_mod.")  # DDP's wrapper, torch.compile's wrapper
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def strip_prefixes(sd: dict[str, Any]) -> dict[str, Any]:
    """Keys without the ``module.`` (DDP) / ``_orig_mod.`` (torch.compile) wrapper prefixes."""
    out: dict[str, Any] = {}
    for k, v in sd.items():
        changed = True
        while changed:  # a compiled DDP model stacks both
            changed = False
            for pre in _PREFIXES:
                if k.startswith(pre):
                    k, changed = k[len(pre) :], True
        out[k] = v
    return out


def latest_step_file(root: str | Path) -> Path | None:
    """The newest ``step_*.pt`` of a ``checkpoints`` folder: what ``latest`` names if it
    exists, else the highest step; None when there is none."""
    folder = Path(root)
    pointer = folder / "latest"
    if pointer.is_file():
        target = folder / pointer.read_text(encoding="utf-8").strip()
        if target.is_file():
            return target
        log.warning(
            "%s names %s, which is missing; using the newest step file", pointer, target.name
        )
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_FILE.match(p.name))]
    return max(found)[1] if found else None


def checkpoint_file(path: str | Path) -> Path:
    """The tensor file a checkpoint *path* names: the file itself, an exported encoder
    folder's ``encoder.safetensors`` (beside its ``encoder.json``, as `ecamp export` writes
    them), or a run / ``checkpoints`` folder's newest step file."""
    p = Path(path)
    if not p.is_dir():
        return p
    if (p / ENCODER_FILE).is_file() and (p / ENCODER_CONFIG).is_file():
        return p / ENCODER_FILE
    sub = p / "checkpoints" if (p / "checkpoints").is_dir() else p
    found = latest_step_file(sub)
    if found is None:
        raise UserError(
            f"{p} holds neither an exported encoder ({ENCODER_FILE} + {ENCODER_CONFIG}) "
            "nor training checkpoints (checkpoints/step_*.pt)"
        )
    return found


def read_checkpoint(path: str | Path, what: str = "checkpoint", trusted: bool = False) -> Any:
    """The whole object of a checkpoint file, read weights-only (see :func:`read_state_dict`):
    a training state (``model`` + optimizer / scheduler / RNG entries) comes back whole."""
    from ecamp.utils.safeload import safetensors_load, torch_load

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} {p} does not exist")
    if p.suffix == ".safetensors":
        return safetensors_load(p)
    if trusted:
        try:
            return torch.load(p, map_location="cpu", weights_only=False)
        except Exception as e:  # corrupt / truncated
            raise UserError(f"cannot read {what} {p} ({type(e).__name__}: {e})") from None
    return torch_load(p, what)


def state_dict_of(obj: Any, name: str) -> dict[str, torch.Tensor]:
    """The tensors-by-name of a loaded checkpoint object (top level, ``model`` or
    ``state_dict``), wrapper prefixes removed; a UserError when it holds none."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(
            f"checkpoint {name} holds no state dict (tensors by name) at its top level or under 'model'"
        )
    return strip_prefixes(obj)


def read_state_dict(path: str | Path, trusted: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint: ``.safetensors``, or a torch file (``.pt`` / ``.pth`` /
    ``.bin``) holding a state dict directly or under ``model`` / ``state_dict`` (a training
    checkpoint's); a folder stands for its exported encoder or newest training checkpoint.
    DDP ``module.`` and torch.compile ``_orig_mod.`` prefixes are removed.

    Torch files are unpickled safely (``weights_only``), allowing the ``argparse.Namespace``
    that MAE-style training scripts (the release's included) store beside the weights;
    ``trusted=True`` (Python callers only) unpickles anything, for files from a source you
    trust.  A damaged or foreign file is a UserError saying what it is and what to do.
    """
    p = checkpoint_file(path)
    if not p.is_file():
        raise UserError(f"checkpoint {p} does not exist")
    return state_dict_of(read_checkpoint(p, trusted=trusted), str(p))


# --------------------------------------------------------------------------- (a) ImageNet init


@dataclass
class LoadReport:
    """What a load did: target keys loaded, left at their init, source keys ignored."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"loaded {len(self.loaded)} tensors, missing {len(self.missing)} {self.missing[:8]}, "
            f"unexpected {len(self.unexpected)} {self.unexpected[:8]}, resized {self.resized}, "
            f"skipped {self.skipped}"
        )

    __str__ = summary


def _grid(n_tokens: int, prefix: int) -> tuple[int, int]:
    g = int(round((n_tokens - prefix) ** 0.5))
    return g, g


def init_encoder(
    encoder: nn.Module,
    source: str | Path | dict[str, torch.Tensor],
    load_pos_embed: bool = False,
) -> LoadReport:
    """Initialise a timm-named ViT encoder from an ImageNet MAE / timm ViT checkpoint.

    Keys are matched by name; keys the encoder lacks (MAE decoder, classifier head) are
    reported as unexpected.  The fixed sin-cos ``pos_embed`` is kept unless
    ``load_pos_embed`` (then it is resampled when the patch grid differs).  A shape
    mismatch on any other key, or no key in common, raises :class:`UserError`.
    """
    sd = read_state_dict(source) if not isinstance(source, dict) else dict(source)
    name = str(source) if not isinstance(source, dict) else "state dict"
    own = encoder.state_dict()
    report = LoadReport()
    new: dict[str, torch.Tensor] = {}
    bad: list[str] = []
    for key, value in sd.items():
        if key not in own:
            report.unexpected.append(key)
            continue
        if key == "pos_embed":
            if not load_pos_embed:
                report.skipped.append(key)
                continue
            if value.shape != own[key].shape:
                value = resample_abs_pos_embed(
                    value.float(),
                    new_size=list(_grid(own[key].shape[1], 1)),
                    old_size=list(_grid(value.shape[1], 1)),
                    num_prefix_tokens=1,
                )
                report.resized.append(key)
        if value.shape != own[key].shape:
            bad.append(f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}")
            continue
        new[key] = value.to(own[key].dtype)
    if bad:
        raise UserError(
            f"checkpoint {name} does not fit the encoder (shape mismatch): {'; '.join(bad[:10])}"
        )
    if not new:
        raise UserError(
            f"checkpoint {name} shares no tensor name with a timm ViT encoder; is it a ViT checkpoint?"
        )
    encoder.load_state_dict(new, strict=False)
    report.loaded = sorted(new)
    report.missing = sorted(set(own) - set(new) - set(report.skipped))
    return report


# --------------------------------------------------------------------------- (a') MAE -> ECAMP

MAE_URL = "https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_base.pth"
MAE_SOURCE = (
    "the ImageNet MAE ViT-B/16 checkpoint released with the MAE repository "
    f"(github.com/facebookresearch/mae, 'Pre-trained checkpoints': {MAE_URL}); "
    "the authors' run.sh loads it as ./dataset/mae_vit_base.pth"
)
_FIXED_TABLES = ("pos_embed", "decoder_pos_embed")


@dataclass
class InitReport:
    """Where every key of an MAE checkpoint went, and which model keys it left alone."""

    source: str = ""
    mapped: dict[str, str] = field(default_factory=dict)  # checkpoint key -> model key
    ignored: dict[str, str] = field(default_factory=dict)  # checkpoint key -> why
    missing: list[str] = field(default_factory=list)  # model keys left at their init

    def summary(self) -> str:
        parts: dict[str, int] = {}
        for k in self.missing:
            top = k.split(".", 1)[0]
            parts[top] = parts.get(top, 0) + 1
        return (
            f"{self.source}: mapped {len(self.mapped)}, ignored {len(self.ignored)}, "
            f"missing {len(self.missing)} (left at their init, by part: {parts})"
        )

    def lines(self) -> list[str]:
        """One line per key: what a log or a reader needs to audit the load."""
        out = [self.summary()]
        out += [f"  mapped  {k} -> {v}" for k, v in self.mapped.items()]
        out += [f"  ignored {k}: {why}" for k, why in self.ignored.items()]
        out += [f"  missing {k}" for k in self.missing]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "mapped": self.mapped,
            "ignored": self.ignored,
            "missing": self.missing,
        }

    __str__ = summary


def _mae_target(key: str, own: dict[str, torch.Tensor]) -> tuple[str | None, str]:
    """(model key or None, why not) for one MAE checkpoint key."""
    if key.startswith(ENCODER_PREFIXES):
        target = "encoder." + key
        if target in own:
            return target, ""
        if key.startswith("blocks."):
            n_blocks = len({k.split(".")[2] for k in own if k.startswith("encoder.blocks.")})
            return None, f"block {key.split('.')[1]}: the encoder has {n_blocks} blocks"
        return None, "the encoder has no such tensor"
    if key == "mask_token" or key.startswith("decoder_"):
        target = "decoder." + key
        if target in own:
            return target, ""
        if not any(k.startswith("decoder.") for k in own):
            return None, "the model has no image decoder (use_mim and use_sr are off)"
        return None, "the decoder has no such tensor"
    if key.startswith(("head.", "fc_norm.")):
        return None, "classifier head: not part of the pre-training network"
    return None, "no such tensor in the ECAMP network"


def init_from_mae(
    model: nn.Module, source: str | Path | dict[str, torch.Tensor], name: str = ""
) -> InitReport:
    """Load an MAE checkpoint's image encoder (and decoder, when present) into ``model``.

    Names are the MAE repository's (timm-style): ``cls_token``, ``pos_embed``,
    ``patch_embed.*``, ``blocks.N.*``, ``norm.*`` go to ``encoder.*``; ``mask_token`` and
    ``decoder_*`` to ``decoder.*``.  Blocks beyond the encoder's depth (the paper's 8-layer
    encoder from a 12-layer ViT-B), classifier heads and keys the model lacks are ignored,
    with the reason.  The fixed sin-cos tables load when their grid matches (equal values)
    and are ignored otherwise.  Any other shape mismatch, or no tensor loaded at all,
    raises :class:`UserError`.
    """
    sd = read_state_dict(source) if not isinstance(source, dict) else dict(source)
    report = InitReport(
        source=name or (str(source) if not isinstance(source, dict) else "state dict")
    )
    own = model.state_dict()
    new: dict[str, torch.Tensor] = {}
    bad: list[str] = []
    for key, value in sd.items():
        target, why = _mae_target(key, own)
        if target is None:
            report.ignored[key] = why
            continue
        if tuple(value.shape) != tuple(own[target].shape):
            if key in _FIXED_TABLES:
                report.ignored[key] = (
                    f"fixed sin-cos table for another grid {tuple(value.shape)}; "
                    f"the model's own {tuple(own[target].shape)} is kept"
                )
                continue
            bad.append(f"{key} {tuple(value.shape)} -> {target} {tuple(own[target].shape)}")
            continue
        new[target] = value.to(own[target].dtype)
        report.mapped[key] = target
    if bad:
        raise UserError(
            f"{report.source} does not fit the model (shape mismatch; is it a ViT-B/16 MAE "
            f"checkpoint and the model a ViT-B/16 preset?): {'; '.join(bad[:10])}"
        )
    if not new:
        raise UserError(
            f"{report.source} shares no tensor name with the ECAMP image encoder; expected the "
            f"MAE layout (a 'model' dict with cls_token, patch_embed.*, blocks.N.*): {MAE_SOURCE}"
        )
    model.load_state_dict(new, strict=False)
    report.missing = sorted(set(own) - set(new))
    return report


# --------------------------------------------------------------------------- (b) the release

# release key prefix -> our key prefix (None: dropped, with the reason in RELEASE_DROPPED)
RELEASE_PREFIXES: list[tuple[str, str | None]] = [
    ("bert_encoder.model.bert.embeddings.", "text.embeddings."),
    ("bert_encoder.model.bert.encoder.", "text.encoder."),
    ("bert_encoder.model.bert.context_fusion_layer.", "fusion."),
    ("bert_encoder.model.bert.pooler.", None),
    ("bert_encoder.model.cls.predictions.decoder.bias", "text.mlm_head.predictions.bias"),
    ("bert_encoder.model.cls.", "text.mlm_head."),
    ("bert_mlp.", "vision_proj."),
    ("super_res.", "super_res."),
    ("mask_token", "decoder.mask_token"),
    ("decoder_", "decoder.decoder_"),
    ("cls_token", "encoder.cls_token"),
    ("pos_embed", "encoder.pos_embed"),
    ("patch_embed.", "encoder.patch_embed."),
    ("blocks.", "encoder.blocks."),
    ("norm.", "encoder.norm."),
]
RELEASE_DROPPED = {
    "bert_encoder.model.bert.pooler.": "BERT pooler: built by the release but never used in its forward",
}
# the release's prediction bias is one tensor stored under two names (HF ties them)
RELEASE_TIED = {
    "bert_encoder.model.cls.predictions.decoder.bias": "bert_encoder.model.cls.predictions.bias"
}

ENCODER_PREFIXES = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")


def release_target(key: str) -> tuple[str | None, str]:
    """Map one release key to ours: (our key or None if dropped, the rule's prefix)."""
    for src, dst in RELEASE_PREFIXES:
        if key.startswith(src):
            return (None if dst is None else dst + key[len(src) :]), src
    raise KeyError(key)


@dataclass
class ReleaseReport:
    """Where every release key went."""

    mapped: dict[str, str] = field(default_factory=dict)  # release key -> our key
    dropped: dict[str, str] = field(default_factory=dict)  # release key -> reason
    tied: dict[str, str] = field(default_factory=dict)  # release key -> the key it duplicates

    def summary(self) -> str:
        return f"mapped {len(self.mapped)}, dropped {len(self.dropped)}, tied duplicates {len(self.tied)}"

    __str__ = summary


def map_release_state_dict(
    sd: dict[str, torch.Tensor], own: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], ReleaseReport]:
    """Translate a release state dict to our names, checking coverage and shapes.

    Raises :class:`UserError` naming every release key that has no rule, every of our keys
    left unfilled, every shape mismatch, and tied duplicates whose values differ.
    """
    report = ReleaseReport()
    new: dict[str, torch.Tensor] = {}
    unknown, shapes, untied = [], [], []
    for key, value in sd.items():
        try:
            target, rule = release_target(key)
        except KeyError:
            unknown.append(key)
            continue
        if target is None:
            report.dropped[key] = RELEASE_DROPPED[rule]
            continue
        if key in RELEASE_TIED:
            report.tied[key] = RELEASE_TIED[key]
            twin = sd.get(RELEASE_TIED[key])
            if twin is not None and not torch.equal(twin, value):
                untied.append(f"{key} != {RELEASE_TIED[key]}")
            if twin is not None:
                continue
        if target not in own:
            unknown.append(f"{key} (-> {target}, which this model lacks)")
            continue
        if tuple(value.shape) != tuple(own[target].shape):
            shapes.append(f"{key} {tuple(value.shape)} -> {target} {tuple(own[target].shape)}")
            continue
        new[target] = value
        report.mapped[key] = target
    missing = sorted(set(own) - set(new))
    problems = []
    if unknown:
        problems.append(f"release keys with no place in the model: {unknown[:20]}")
    if shapes:
        problems.append(f"shape mismatches: {shapes[:20]}")
    if untied:
        problems.append(f"tied tensors that differ: {untied}")
    if missing:
        problems.append(f"model keys the checkpoint does not fill: {missing[:20]}")
    if problems:
        raise UserError(
            "release checkpoint does not fit the model (build it with model.preset=release): "
            + "; ".join(problems)
        )
    return new, report


def load_release_checkpoint(
    model: nn.Module, source: str | Path | dict[str, torch.Tensor]
) -> ReleaseReport:
    """Load the authors' released checkpoint into a ``release``-preset :class:`ECAMPModel`."""
    sd = read_state_dict(source) if not isinstance(source, dict) else source
    own = model.state_dict()
    new, report = map_release_state_dict(sd, own)
    _check_shared(own, new)
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in new.items()}, strict=True)
    return report


def _check_shared(own: dict[str, torch.Tensor], new: dict[str, torch.Tensor]) -> None:
    """Keys that share one tensor in the model (tied weights) must get equal values."""
    by_storage: dict[int, list[str]] = {}
    for k, v in own.items():
        by_storage.setdefault(v.data_ptr(), []).append(k)
    for keys in by_storage.values():
        if len(keys) > 1 and not all(torch.equal(new[keys[0]], new[k]) for k in keys[1:]):
            raise UserError(
                f"the model ties {keys} but the checkpoint holds different values for them; "
                "build the model with model.text_tie_embeddings=false"
            )


def release_encoder_state(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The timm-named encoder tensors of a release state dict (its names are already timm's)."""
    return {k: v for k, v in sd.items() if k.startswith(ENCODER_PREFIXES)}


def load_release_encoder(
    source: str | Path | dict[str, torch.Tensor], img_size: int = 224
) -> nn.Module:
    """The release's encoder alone, in a plain timm ViT-B/16 (``num_classes=0``) for downstream."""
    import timm

    sd = read_state_dict(source) if not isinstance(source, dict) else source
    enc = release_encoder_state(sd)
    vit = timm.create_model(TIMM_ARCH, pretrained=False, num_classes=0, img_size=img_size)
    report = init_encoder(vit, enc, load_pos_embed=True)
    if report.missing:
        raise UserError(f"release checkpoint lacks encoder tensors {report.missing[:10]}")
    return vit


# --------------------------------------------------------------------------- (c) export


def timm_kwargs(encoder: Any) -> dict[str, Any]:
    """The ``timm.create_model`` arguments that rebuild ``encoder``'s architecture."""
    pe = encoder.patch_embed
    blocks = encoder.blocks
    return {
        "img_size": int(pe.img_size[0]),
        "patch_size": int(pe.patch_size[0]),
        "in_chans": int(pe.proj.in_channels),
        "embed_dim": int(encoder.embed_dim),
        "depth": len(blocks),
        "num_heads": int(blocks[0].attn.num_heads),
        "mlp_ratio": blocks[0].mlp.fc1.out_features / blocks[0].mlp.fc1.in_features,
        "num_classes": 0,
    }


def export_encoder(
    model_or_encoder: nn.Module, out_dir: str | Path, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``encoder.safetensors`` (timm ViT names) + ``encoder.json``; return the tensor file."""
    from safetensors.torch import save_file

    enc = getattr(model_or_encoder, "encoder", model_or_encoder)
    if not hasattr(enc, "patch_embed") or not hasattr(enc, "blocks"):
        raise UserError(f"{type(model_or_encoder).__name__} has no ViT encoder to export")
    out = Path(out_dir)
    tensors = {
        k: v.detach().to("cpu", torch.float32).contiguous().clone()
        for k, v in enc.state_dict().items()
    }
    path = atomic_write(
        out / ENCODER_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"})
    )
    meta = {
        "architecture": TIMM_ARCH,
        "timm_kwargs": timm_kwargs(enc),
        "weights": ENCODER_FILE,
        **(extra or {}),
    }
    atomic_write_text(out / ENCODER_CONFIG, json.dumps(meta, indent=2) + "\n")
    return path


def load_encoder(path: str | Path) -> nn.Module:
    """Rebuild an exported encoder as a timm ``VisionTransformer`` (``path``: file or its folder)."""
    import timm

    p = Path(path)
    weights = p / ENCODER_FILE if p.is_dir() else p
    cfg_path = weights.parent / ENCODER_CONFIG
    if not weights.is_file():
        raise UserError(f"exported encoder {weights} does not exist")
    if not cfg_path.is_file():
        raise UserError(
            f"{cfg_path} is missing: it records the encoder's size (written by export_encoder)"
        )
    try:
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
        kwargs = dict(meta["timm_kwargs"])
        arch = meta.get("architecture", TIMM_ARCH)
    except (ValueError, KeyError) as e:
        raise UserError(f"{cfg_path} is not a valid encoder config: {e}") from None
    return timm.create_model(arch, pretrained=False, checkpoint_path=str(weights), **kwargs)
