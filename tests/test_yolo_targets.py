"""YOLOv3 target assignment of the detection head, against a box computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from ecamp.config import model_config
from ecamp.models.heads import YOLO_ANCHORS_416, DetectionModel
from ecamp.models.vit import MAEEncoder


def test_a_box_goes_to_its_cell_and_best_shaped_anchor():
    cfg = model_config("tiny")
    assert (cfg.img_size, cfg.patch_size) == (64, 8)  # the numbers below assume these
    torch.manual_seed(0)
    model = DetectionModel(MAEEncoder(cfg), hidden=8)
    assert model.strides == (4.0, 8.0, 16.0)
    # a 24 x 30 px box centred at (40, 20) in a 64 px image.  Anchors scale by 64/416; the
    # 8th, (156, 198) -> (24.0, 30.46), has the best shape IoU (720 / 731.1 = 0.98): the
    # largest level (index 2, stride 16), its anchor 1.  Its cell: (40 // 16, 20 // 16) =
    # column 2, row 1, with the centre at (0.5, 0.25) inside it.
    aw, ah = (v * 64 / 416 for v in YOLO_ANCHORS_416[7])
    box = torch.tensor([[[28.0, 5.0, 52.0, 35.0]]])
    raw = [torch.zeros(1, 3, n, n, 5, requires_grad=True) for n in (16, 8, 4)]
    model.loss(raw, box, torch.tensor([1])).backward()
    # coordinates: only the assigned (level, anchor, row, column) gets a gradient
    for level, r in enumerate(raw):
        g = r.grad[..., :4]
        hit = g.abs().sum(-1).nonzero().tolist()
        assert hit == ([[0, 1, 1, 2]] if level == 2 else []), (level, hit)
    g = raw[2].grad[0, 1, 1, 2]
    scale = 2.0 - (24 * 30) / 64**2  # YOLOv3's small-box weight
    # BCE on (tx, ty) at logit 0: d/dx = sigmoid(0) - target
    assert g[0].item() == pytest.approx(scale * (0.5 - 0.5), abs=1e-6)
    assert g[1].item() == pytest.approx(scale * (0.5 - 0.25), rel=1e-5)
    # squared error on (tw, th) at 0: d/dx = -2 log(box / anchor)
    assert g[2].item() == pytest.approx(-2 * scale * math.log(24 / aw), rel=1e-4, abs=1e-6)
    assert g[3].item() == pytest.approx(-2 * scale * math.log(30 / ah), rel=1e-4)
    # objectness: target 1 at that anchor of that cell (d/dx = sigmoid(0) - 1)
    assert raw[2].grad[0, 1, 1, 2, 4].item() == pytest.approx(-0.5)
    positives = [
        (lv, i) for lv, r in enumerate(raw) for i in (r.grad[..., 4] < 0).nonzero().tolist()
    ]
    assert positives == [(2, [0, 1, 1, 2])]
