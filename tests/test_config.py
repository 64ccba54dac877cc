"""Config loading: presets, YAML, dotted overrides, and the errors a typo gets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ecamp.config import (
    ConfigError,
    ModelConfig,
    PretrainConfig,
    from_dict,
    load_config,
    model_config,
    save_config,
    to_dict,
)
from ecamp.errors import UserError


def test_presets_fill_sizes_and_explicit_keys_win() -> None:
    tiny = model_config("tiny")
    assert (tiny.embed_dim, tiny.depth, tiny.img_size) == (64, 2, 64)
    cfg = from_dict(ModelConfig, {"preset": "release", "depth": 4})
    assert cfg.depth == 4 and cfg.mim_loss == "release" and cfg.sr_guidance == "window"
    assert model_config("paper").depth == 8 and model_config("release").depth == 12


def test_yaml_then_overrides(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"model": {"preset": "tiny"}, "train": {"lr": 1e-3, "epochs": 3}}))
    cfg = load_config(
        PretrainConfig, f, ["train.lr=3e-4", "text.rebalance=false", "train.betas=[0.8,0.9]"]
    )
    assert cfg.model.embed_dim == 64
    assert cfg.train.lr == pytest.approx(3e-4) and cfg.train.epochs == 3
    assert cfg.text.rebalance is False
    assert cfg.train.betas == (0.8, 0.9)


def test_round_trip(tmp_path: Path) -> None:
    cfg = load_config(PretrainConfig, None, ["model.preset=tiny", "train.max_steps=5"])
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(PretrainConfig, tmp_path / "resolved.yaml")
    assert to_dict(again) == to_dict(cfg)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.lrr=1", "train.lrr"),
        ("train.epochs=abc", "train.epochs"),
        ("model.preset=huge", "huge"),
        ("text.rebalance=3", "text.rebalance"),
        ("train.betas=[1]", "train.betas"),
        ("noequals", "key.path=value"),
    ],
)
def test_bad_values_name_the_key(override: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(PretrainConfig, None, [override])


def test_missing_or_malformed_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(PretrainConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(PretrainConfig, bad)


@pytest.mark.parametrize(
    "path", ["configs/paper/pretrain_mimic.yaml", "configs/release/pretrain_mimic_release.yaml"]
)
def test_shipped_pretrain_recipes_load(path: str) -> None:
    cfg = load_config(PretrainConfig, Path(__file__).parent.parent / path)
    assert cfg.model.embed_dim == 768 and cfg.text.max_length == 256
    release = "release" in path
    assert cfg.model.depth == (12 if release else 8)
    assert (cfg.text.masking_mode, cfg.text.mlm_labels, cfg.model.sr_guidance) == (
        ("release", "all", "window") if release else ("paper", "masked", "map")
    )


# --------------------------------------------------------------------------- mode fields

# every mode string of every config: (config, dotted key, its valid choices).  A typo in any
# of them must fail when the config loads, naming the key and the choices, not later (e.g. an
# attention `export.pool` typo used to fail only after GLoRIA had trained).
MODE_FIELDS: list[tuple[str, str, tuple[str, ...]]] = [
    ("pretrain", "model.preset", ("tiny", "paper", "release")),
    ("pretrain", "model.mim_loss", ("masked", "release")),
    ("pretrain", "model.sr_guidance", ("map", "window")),
    ("pretrain", "model.sr_window_norm", ("window", "image")),
    ("pretrain", "text.masking_mode", ("paper", "release")),
    ("pretrain", "text.mlm_labels", ("masked", "all")),
    ("pretrain", "text.assembly", ("paper", "release")),
    ("pretrain", "data.cache_resize", ("pad", "squash")),
    ("pretrain", "data.augment", ("release", "none")),
    ("pretrain", "data.bad_rows", ("skip", "fail")),
    ("pretrain", "train.optimizer", ("adamw", "sgd")),
    ("pretrain", "train.precision", ("auto", "bf16", "fp16", "fp32")),
    ("attention", "model.global_pool", ("mean", "token")),
    ("attention", "model.text_pool", ("mean", "cls")),
    ("attention", "model.attention", ("paper", "released")),
    ("attention", "data.text", ("distilled", "report")),
    ("attention", "data.resize", ("squash", "pad")),
    ("attention", "data.augment", ("crop", "none")),
    ("attention", "data.bad_rows", ("skip", "fail")),
    ("attention", "export.mentions", ("positive", "all")),
    ("attention", "export.pool", ("all", "entity")),
    ("attention", "train.precision", ("auto", "bf16", "fp16", "fp32")),
    ("finetune", "task", ("cls", "seg", "det")),
    ("finetune", "det_protocol", ("mgca", "coco")),
    ("finetune", "seg_dice", ("per_image", "global")),
    ("finetune", "model.seg_decoder", ("conv", "upernet")),
    ("finetune", "data.dataset", ("phantom", "chestxray14", "chexpert", "rsna", "covidx", "siim")),
    ("finetune", "data.sampling", ("release", "random")),
    ("finetune", "data.split_mode", ("paper", "release")),
    ("finetune", "data.labels_from", ("list", "official")),
    ("finetune", "train.optimizer", ("adamw", "sgd")),
    ("distill", "backend", ("rules", "openai", "llamacpp", "transformers")),
    ("student", "load_dtype", ("auto", "fp32", "bf16")),
    ("student", "train.precision", ("auto", "bf16", "fp16", "fp32")),
]


def _nested(key: str, value: object) -> dict[str, object]:
    """``a.b=value`` as the nested mapping a YAML file holds."""
    out: dict[str, object] = {}
    node = out
    *parents, last = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})  # type: ignore[assignment]
    node[last] = value
    return out


def _load(kind: str, path: Path) -> object:
    """Load ``path`` the way the stage ``kind`` loads its config file."""
    from ecamp.config import (
        DistillConfig,
        FinetuneConfig,
        load_attention_config,
        load_student_config,
    )

    if kind == "pretrain":
        return load_config(PretrainConfig, path)
    if kind == "attention":
        return load_attention_config(path)
    if kind == "finetune":
        return load_config(FinetuneConfig, path)
    if kind == "distill":
        return load_config(DistillConfig, path)
    if kind == "student":
        return load_student_config(path, [])
    raise AssertionError(kind)


@pytest.mark.parametrize(("kind", "key", "choices"), MODE_FIELDS, ids=lambda v: str(v))
def test_a_mode_typo_fails_at_load_naming_key_and_choices(
    tmp_path: Path, kind: str, key: str, choices: tuple[str, ...]
) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(_nested(key, "typo")))
    with pytest.raises(ConfigError) as err:
        _load(kind, f)
    msg = str(err.value)
    assert key in msg and "'typo'" in msg, msg
    assert all(c in msg for c in choices), msg
    # every listed choice loads (the Literal is not narrower than what the stage accepts)
    for c in choices:
        f.write_text(yaml.safe_dump(_nested(key, c)))
        cfg = _load(kind, f)
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)
        assert node == c


def test_a_dotted_override_typo_fails_too() -> None:
    from ecamp.config import load_attention_config

    with pytest.raises(ConfigError, match=r"export\.pool.*all, entity"):
        load_attention_config(None, ["export.pool=entities"])


def test_every_literal_field_is_listed() -> None:
    """A new mode field gets its typo test: MODE_FIELDS covers every Literal of every config."""
    import dataclasses
    import typing

    from ecamp import config as C

    roots = {
        "pretrain": C.PretrainConfig,
        "attention": C.AttentionConfig,
        "finetune": C.FinetuneConfig,
        "distill": C.DistillConfig,
        "student": C.StudentConfig,
    }

    def literals(cls: type, prefix: str) -> set[str]:
        found: set[str] = set()
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                found |= literals(tp, prefix + f.name + ".")  # type: ignore[arg-type]
            elif typing.get_origin(tp) is typing.Literal:
                found.add(prefix + f.name)
        return found

    listed = {(k, key) for k, key, _ in MODE_FIELDS}
    # the shared sub-configs (TrainConfig, GLoRIA presets) are tested once, where they matter
    shared = {"train.", "model.preset"}
    missing = {
        (kind, key)
        for kind, cls in roots.items()
        for key in literals(cls, "")
        if (kind, key) not in listed and not (kind != "pretrain" and key.startswith(tuple(shared)))
    }
    assert not missing, missing


def test_defaults_and_numeric_precision_load() -> None:
    from ecamp.config import AttentionConfig, DistillConfig, FinetuneConfig, StudentConfig

    for cls in (PretrainConfig, AttentionConfig, FinetuneConfig, DistillConfig, StudentConfig):
        assert from_dict(cls, to_dict(cls())) == cls()
    # YAML reads `precision: 16` as a number; it was accepted as "16" before and still is
    assert from_dict(PretrainConfig, {"train": {"precision": 16}}).train.precision == "16"
    # a choice in other letter case is the choice (the checks the Literals replaced lower-cased)
    assert from_dict(PretrainConfig, {"train": {"precision": "BF16"}}).train.precision == "bf16"


def test_a_pipeline_section_typo_fails_before_any_stage_runs() -> None:
    from ecamp.pipeline import default_stages, load_pipeline
    from ecamp.pipeline.engine import check_stages

    stages = default_stages(load_pipeline(None, ["attention.export.pool=entities"]))
    with pytest.raises(UserError, match=r"stage attention: export\.pool.*all, entity"):
        check_stages(stages)


def test_a_config_built_in_code_is_checked_by_its_stage() -> None:
    from ecamp.config import FinetuneConfig, FinetuneDataConfig, check_config

    with pytest.raises(ConfigError, match=r"task: 'segment'.*cls, seg, det"):
        check_config(FinetuneConfig(task="segment"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"data\.dataset: 'nih'.*chestxray14"):
        check_config(FinetuneConfig(data=FinetuneDataConfig(dataset="nih")))  # type: ignore[arg-type]
    check_config(FinetuneConfig())
