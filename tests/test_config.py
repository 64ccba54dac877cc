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
