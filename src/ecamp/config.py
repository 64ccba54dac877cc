"""Dataclass configs, YAML in/out, dotted overrides and model presets.

Every stage of ecamp is driven by one dataclass tree.  A YAML file gives any
subset of its fields; command-line overrides (``train.lr=3e-4``) come last.
Unknown keys and wrongly typed values fail with a message naming the key, so a
typo in a config never silently falls back to a default.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ecamp.errors import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A config file or override that does not fit the config's schema."""


# --------------------------------------------------------------------------- model


@dataclass
class ModelConfig:
    """The ECAMP network (SPEC.md sections 2-5).  ``preset`` fills the sizes."""

    preset: str = "paper"  # tiny | paper | release (see PRESETS)
    # image side
    img_size: int = 224  # encoder input (low resolution)
    hr_size: int = 448  # super-resolution target
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 8
    num_heads: int = 12
    mlp_ratio: float = 4.0
    mask_ratio: float = 0.75
    decoder_embed_dim: int = 512
    decoder_depth: int = 4
    decoder_num_heads: int = 16
    norm_pix_loss: bool = False
    # text side
    vocab_size: int = 30000  # 0: the tokenizer's size (text.tokenizer)
    max_text_len: int = 256
    text_width: int = 768
    text_depth: int = 6
    text_heads: int = 6
    text_ffn: int = 1536
    pad_token_id: int = 0
    text_dropout: float = 0.1  # BERT hidden/attention dropout (release: 0.1)
    text_tie_embeddings: bool = False  # tie MLM decoder to word embeddings (release: untied)
    # objectives and ablation switches (Table 4)
    use_mim: bool = True
    use_mlm: bool = True
    use_sr: bool = True
    fusion_global: bool = True
    fusion_local: bool = True
    # release-compatibility switches (SPEC.md section 9); defaults follow the paper
    mim_loss: str = "masked"  # masked (paper/MAE) | release (mean over all pixels, unmasked zeroed)
    sr_guidance: str = "map"  # map (paper Eq. 5) | window (release: 12x12-patch window)
    sr_window_patches: int = 12  # window side in low-resolution patches
    sr_window_norm: str = "window"  # window (mean inside it) | image (release: mean over image)
    sr_final_relu: bool = False  # release ends the SR head with a ReLU
    loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # mim, mlm, sr
    drop_path: float = 0.0


PRESETS: dict[str, dict[str, Any]] = {
    # seconds on one CPU core: what tests and the embedded default use
    "tiny": dict(
        img_size=64,
        hr_size=128,
        patch_size=8,
        embed_dim=64,
        depth=2,
        num_heads=4,
        decoder_embed_dim=48,
        decoder_depth=1,
        decoder_num_heads=4,
        text_width=64,
        text_depth=2,
        text_heads=4,
        text_ffn=128,
        max_text_len=64,
        sr_window_patches=4,
    ),
    # the paper: ViT-B/16 with 8 layers
    "paper": dict(depth=8),
    # the authors' release: ViT-B/16 with 12 layers and the release's loss choices
    "release": dict(
        depth=12,
        mim_loss="release",
        sr_guidance="window",
        sr_window_norm="image",
        sr_final_relu=True,
    ),
}


def model_config(preset: str = "paper", **overrides: Any) -> ModelConfig:
    """Build a :class:`ModelConfig` from a preset name plus field overrides."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    values = {**PRESETS[preset], **overrides}
    return ModelConfig(preset=preset, **values)


# --------------------------------------------------------------------------- text


@dataclass
class TextConfig:
    """Text assembly, tokenisation and entity-centered masking (SPEC.md section 3)."""

    # "mimic" (bundled release WordPiece), "phantom" (bundled, for the synthetic world) or a
    # tokenizers JSON path
    tokenizer: str = "mimic"
    max_length: int = 256
    distill_prob: float = 0.8  # insert the distilled report with this probability
    use_distilled: bool = True  # Table 4: context distillation on/off
    descriptor_masking: bool = True  # Table 4: descriptor masking on/off
    descriptor_k: int = 2  # words before an entity that are descriptors
    entity_mask_prob: float = 0.75
    random_mask_prob_with_entity: float = 0.7
    random_mask_prob_no_entity: float = 0.75
    rebalance: bool = True  # Table 4: re-balance on/off
    rebalance_lambda: float = 0.05
    negative_templates: tuple[str, ...] = ("there is no evidence of", "there is no")
    masking_mode: str = "paper"  # paper | release (reproduces the release's dead branch)
    mlm_labels: str = "masked"  # masked (-100 elsewhere, paper) | all (release)
    assembly: str = "paper"  # paper (insert at a sentence boundary, [CLS] .. [SEP]) | release


# --------------------------------------------------------------------------- data


@dataclass
class DataConfig:
    """Where pre-training data comes from and how images are prepared."""

    manifest: str = ""  # empty: the embedded synthetic phantom world
    image_root: str = ""  # relative image paths in the manifest resolve against this
    guidance: str = ""  # attention-map shards from `ecamp attention export`; empty = uniform
    cache: str = ""  # preprocessed image cache folder; empty = decode on the fly
    cache_size: int = 512  # side of the cached square images (ecamp.data.cache.build_cache)
    cache_resize: str = "pad"  # pad (keep aspect, zero padding) | squash
    synthetic_n: int = 256  # size of the phantom world when no manifest is given
    synthetic_seed: int = 0
    augment: str = "release"  # release | none
    crop_scale: tuple[float, float] = (0.2, 1.0)
    mean: float = 0.4721
    std: float = 0.3037
    num_workers: int = 0
    bad_rows: str = "skip"  # skip (report and count) | fail


# --------------------------------------------------------------------------- training


@dataclass
class TrainConfig:
    """The generic training loop (used by every stage that trains)."""

    epochs: int = 115
    max_steps: int = 0  # >0 stops after this many optimizer steps
    batch_size: int = 256  # per process
    accum_steps: int = 1
    lr: float = 1.5e-4
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    optimizer: str = "adamw"  # adamw (betas above) | sgd (momentum below)
    momentum: float = 0.9  # sgd only
    warmup_epochs: float = 40.0
    # cosine horizon in epochs: the lr reaches min_lr there.  0 = ``epochs``; the release
    # trains 115-120 epochs on a 200-epoch horizon (util/lr_sched.py, --max_epoch 200)
    schedule_epochs: float = 0.0
    warmup_steps: int = 0  # >0 overrides warmup_epochs
    clip_grad: float = 0.0  # 0 disables clipping
    precision: str = "auto"  # auto | bf16 | fp16 | fp32
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 0  # optimizer steps between checkpoints; 0 = each epoch end only
    keep_last: int = 2
    resume: str = "auto"  # auto (latest in output dir) | never | a checkpoint path
    progress: bool = True
    tensorboard: bool = True
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    compile: bool = False
    drop_last: bool = True  # skip the epoch's tail that does not fill a global batch
    find_unused_parameters: bool = False  # DDP: set when a config leaves some parameters unused


@dataclass
class PretrainConfig:
    """`ecamp pretrain`: everything one pre-training run needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    text: TextConfig = field(default_factory=TextConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    init: str = ""  # ImageNet MAE / timm ViT checkpoint, or the authors' release checkpoint
    output: str = ""


# --------------------------------------------------------------------------- machinery


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict of a config dataclass (tuples become lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError("; ".join(errors))
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {list(value)!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], key) for v in value] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (possibly partial) dict, checking names and types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + u for u in unknown)}; "
            f"valid keys here: {', '.join(sorted(fields))}"
        )
    kwargs: dict[str, Any] = {}
    # a model preset fills the sizes first, explicit keys win
    if cls is ModelConfig and "preset" in data:
        preset = data["preset"]
        if preset not in PRESETS:
            raise ConfigError(
                f"{prefix}preset: unknown model preset {preset!r}; choose one of {sorted(PRESETS)}"
            )
        kwargs.update(PRESETS[preset])
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], prefix + name)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and a YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({e})") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted overrides to a nested dict (in place) and return it."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
            node = nxt
        node[path[-1]] = value
    return data


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``extra`` recursively (new dict; mappings merge, the rest replaces)."""
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error for a missing or malformed file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    return data


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None
) -> T:
    """Defaults <- YAML file <- dotted overrides, checked against ``cls``."""
    data = read_yaml(path) if path else {}
    apply_overrides(data, list(overrides or []))
    return from_dict(cls, data)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically), secrets masked."""
    from ecamp.utils.io import atomic_write_text
    from ecamp.utils.secrets import mask_secrets

    atomic_write_text(Path(path), yaml.safe_dump(mask_secrets(to_dict(cfg)), sort_keys=False))
