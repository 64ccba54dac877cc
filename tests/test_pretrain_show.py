"""`ecamp pretrain show`: MSCF's text-to-image attention (the paper's Figure 4) and its
share inside the lesion boxes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ecamp.cli import main
from ecamp.eval.localization import box_attention, box_mask, summarise


def test_box_attention_on_a_hand_built_map() -> None:
    attn = np.zeros((10, 10))
    attn[2:4, 2:4] = 3.0  # 12 units inside the box
    attn[8, 8] = 4.0  # 4 outside
    mask = box_mask([[2, 2, 6, 4, "nodule"], [0, 0, 10, 10, "effusion"]], "nodule", (10, 10))
    assert mask.sum() == 8 and mask[2:4, 2:6].all()  # x1..x2 are columns, y1..y2 rows
    got = box_attention(attn, mask)
    assert got["mass_in_box"] == pytest.approx(12 / 16)
    assert got["uniform"] == pytest.approx(8 / 100)
    assert got["ratio"] == pytest.approx((12 / 16) / (8 / 100))
    # a flat map scores exactly the box's area: ratio 1
    assert box_attention(np.ones((10, 10)), mask)["ratio"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        box_attention(attn, np.zeros((10, 10), dtype=bool))


def test_summary_is_ratio_of_means_and_mean_of_ratios() -> None:
    pairs = [
        {"entity": "nodule", "mass_in_box": 0.5, "uniform": 0.1, "ratio": 5.0},
        {"entity": "effusion", "mass_in_box": 0.3, "uniform": 0.3, "ratio": 1.0},
        {"entity": "effusion"},  # no box of its class: not scored
    ]
    s = summarise(pairs)
    assert s["n"] == 2
    assert s["ratio"] == pytest.approx(0.4 / 0.2)
    assert s["ratio_per_lesion"] == pytest.approx(3.0)
    assert s["per_entity"]["nodule"]["ratio"] == pytest.approx(5.0)
    assert summarise([])["n"] == 0


def test_mscf_attention_rows_are_distributions_over_patches() -> None:
    import dataclasses

    from ecamp.config import model_config
    from ecamp.models.ecamp import ECAMPModel

    torch.manual_seed(0)
    cfg = dataclasses.replace(model_config("tiny"), vocab_size=64, text_dropout=0.0)
    model = ECAMPModel(cfg).eval()
    imgs = torch.randn(2, 3, cfg.img_size, cfg.img_size)
    ids = torch.randint(5, 64, (2, 7))
    a = model.mscf_attention(imgs, ids, torch.ones(2, 7, dtype=torch.long))
    g = cfg.img_size // cfg.patch_size
    assert a.shape == (2, 7, g, g)
    assert torch.allclose(a.sum(dim=(-2, -1)), torch.ones(2, 7), atol=1e-5)
    # the maps follow the image: moving one patch's content changes the attention on it
    b = model.mscf_attention(imgs.flip(-1), ids, torch.ones(2, 7, dtype=torch.long))
    assert not torch.allclose(a, b)
    off = ECAMPModel(dataclasses.replace(cfg, fusion_local=False)).eval()
    from ecamp.errors import UserError

    with pytest.raises(UserError, match="local path"):
        off.mscf_attention(imgs, ids, None)


def test_show_end_to_end_at_the_tiny_preset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    fast = [
        "data.synthetic_n=24",
        "train.batch_size=4",
        "train.max_steps=2",
        "train.progress=false",
        "train.tensorboard=false",
    ]
    assert main(["pretrain", "--output", str(run), *fast]) == 0
    capsys.readouterr()
    assert main(["pretrain", "show", str(run), "--n", "4", "--eval-images", "12"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    png = run / "mscf_attention.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads((run / "mscf_attention.json").read_text())
    assert res["n"] > 0 and res["images"] <= 12 and len(res["shown"]) == 4
    assert 0 < res["uniform"] < 1 and 0 <= res["mass_in_box"] <= 1
    assert res["ratio"] == pytest.approx(res["mass_in_box"] / res["uniform"])
    assert line["ratio"] == pytest.approx(res["ratio"])
    assert all(s["sentence"] for s in res["shown"])
    # a run folder without checkpoints is one clear error line
    assert main(["pretrain", "show", str(tmp_path / "nothing")]) == 2
    assert "no pre-training checkpoint" in capsys.readouterr().err


def test_show_reads_images_beside_a_manifest_that_moved(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the run trained with an absolute data.image_root (as `ecamp run` gives it); the world has
    # moved since, so the images are found beside the --manifest given, or under --image-root
    from ecamp.data.synthetic import make_phantom_world

    world, run = tmp_path / "world", tmp_path / "run"
    make_phantom_world(world, n=24, size=64, seed=0)
    fast = [
        f"data.manifest={world / 'manifest.csv'}",
        f"data.image_root={world}",
        "train.batch_size=4",
        "train.max_steps=2",
        "train.progress=false",
        "train.tensorboard=false",
    ]
    assert main(["pretrain", "--output", str(run), *fast]) == 0
    moved = tmp_path / "moved"
    world.rename(moved)
    capsys.readouterr()
    args = ["pretrain", "show", str(run), "--n", "2", "--eval-images", "8"]
    assert main([*args, "--manifest", str(moved / "manifest.csv")]) == 0
    assert json.loads((run / "mscf_attention.json").read_text())["images"] > 0
    # a manifest elsewhere with its images under another folder: --image-root names it
    (tmp_path / "tables").mkdir()
    table = tmp_path / "tables" / "manifest.csv"
    table.write_text((moved / "manifest.csv").read_text())
    assert main([*args, "--manifest", str(table), "--image-root", str(moved)]) == 0
    capsys.readouterr()
    assert main([*args, "--manifest", str(table)]) == 2  # its folder holds no images
    assert "does not exist" in capsys.readouterr().err
