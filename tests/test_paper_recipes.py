"""The shipped downstream recipes load, follow the release's scripts, and the paper pipeline
fine-tunes every task with its own recipe."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecamp.config import from_dict, read_yaml
from ecamp.train.finetune import FinetuneConfig, check_config

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted((REPO / "configs" / "paper").glob("finetune_*.yaml"))
# Fine-tuning/Segmentation/run.sh and Fine-tuning/Detection/run.sh of the release (d02d16d):
# (batch size, lr, warm-up steps, steps) per data volume
RELEASE_RUN_SH = {
    "siim_seg_1": (512, 5e-4, 50, 3000),
    "siim_seg_10": (1024, 5e-4, 150, 3000),
    "siim_seg_100": (512, 5e-4, 50, 3000),
    "rsna_seg_1": (96, 3e-4, 50, 3000),
    "rsna_seg_10": (256, 5e-4, 50, 1000),
    "rsna_seg_100": (512, 3e-3, 100, 1000),
    "rsna_det_1": (96, 5e-4, 5, 3000),
    "rsna_det_10": (256, 5e-4, 5, 3000),
    "rsna_det_100": (1024, 5e-4, 30, 20000),
}


def _load(path: Path) -> FinetuneConfig:
    cfg = from_dict(FinetuneConfig, read_yaml(path))
    check_config(cfg)
    return cfg


def test_every_shipped_recipe_loads():
    assert len(RECIPES) == 33  # 4 sets x (ft, linear) x 3 + seg 6 + det 3
    for path in RECIPES:
        cfg = _load(path)
        assert cfg.data.split_mode == "paper", path.name
        assert cfg.layer_decay == 1.0, path.name  # the release uses none, for any task
        stale = "AdamW only" in path.read_text()
        assert not stale, path.name


@pytest.mark.parametrize("run", sorted(RELEASE_RUN_SH))
def test_seg_det_recipes_follow_the_release_scripts(run):
    ds, task, fraction = run.split("_")
    cfg = _load(REPO / "configs" / "paper" / f"finetune_{ds}_{task}_{fraction}.yaml")
    t = cfg.train
    assert (t.batch_size, t.lr, t.warmup_steps, cfg.steps) == RELEASE_RUN_SH[run]
    assert (t.optimizer, t.weight_decay, t.betas, t.clip_grad, t.min_lr) == (
        "adamw",
        0.05,
        (0.9, 0.999),
        1.0,
        0.0,
    )
    assert cfg.data.fraction == float(fraction) and cfg.task == task
    if task == "seg":
        assert cfg.seg_dice == "per_image"


def test_paper_pipeline_finetunes_with_the_per_dataset_recipes(monkeypatch):
    from ecamp.pipeline import default_stages, load_pipeline
    from ecamp.pipeline.ecamp_stages import _finetune_cfg

    monkeypatch.chdir(REPO)  # the pipeline names its recipes relative to the repository
    runs = read_yaml(REPO / "configs/paper/pipeline_mimic.yaml")["finetune"]["runs"]
    stages = default_stages(load_pipeline("configs/paper/pipeline_mimic.yaml"))
    ft = [s for s in stages if s.name.startswith("finetune.")]
    assert len(ft) == 33 * 2  # every recipe, from the pre-trained and from a random encoder
    seen = set()
    for stage in ft:
        base = runs[stage.name.split(".")[1]]["base"]
        recipe = from_dict(FinetuneConfig, read_yaml(REPO / base))
        got = _finetune_cfg(stage.config)
        seen.add(base)
        # the recipe's optimisation, not one shared AdamW recipe
        for key in ("optimizer", "lr", "batch_size", "weight_decay", "warmup_steps", "clip_grad"):
            assert getattr(got.train, key) == getattr(recipe.train, key), (stage.name, key)
        assert (got.steps, got.layer_decay, got.task) == (
            recipe.steps,
            recipe.layer_decay,
            recipe.task,
        )
        assert got.data.dataset == recipe.data.dataset and got.data.fraction == recipe.data.fraction
        assert got.model.linear_probe == recipe.model.linear_probe
        assert got.model.depth == 8 and got.data.split_mode == "paper"  # the shared keys
    assert seen == {f"configs/paper/{p.name}" for p in RECIPES}
