"""Task heads on a tiny timm ViT: shapes, learning, detection decoding, linear probe, lr decay."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from ecamp.errors import UserError
from ecamp.models.heads import (
    ClassificationModel,
    DetectionModel,
    SegmentationModel,
    param_groups_lrd,
)


def tiny_vit(depth: int = 2) -> VisionTransformer:
    return VisionTransformer(
        img_size=64, patch_size=8, embed_dim=64, depth=depth, num_heads=4, num_classes=0
    )


def _fit(model, batch, steps=25, lr=3e-3) -> tuple[float, float]:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    first = last = 0.0
    for i in range(steps):
        loss = model(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i == 0:
            first = loss.item()
        last = loss.item()
    return first, last


def test_classification_shapes_and_learning():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 64, 64)
    y = torch.tensor([[1, 0, 1], [0, 1, float("nan")], [1, 1, 0], [0, 0, 1]])
    model = ClassificationModel(tiny_vit(), 3, multilabel=True)
    out = model({"image": x, "label": y})
    assert out["logits"].shape == (4, 3) and torch.isfinite(out["loss"])
    first, last = _fit(model, {"image": x, "label": y})
    assert last < 0.5 * first
    model.eval()
    p = model.predict({"image": x})
    assert p.shape == (4, 3) and ((p >= 0) & (p <= 1)).all()
    mc = ClassificationModel(tiny_vit(), 3, multilabel=False)
    first, last = _fit(mc, {"image": x, "label": torch.tensor([0, 1, 2, 1])})
    assert last < 0.5 * first
    assert torch.allclose(mc.predict({"image": x}).sum(-1), torch.ones(4))


def test_global_feature_is_mean_of_patch_tokens_normed():
    enc = tiny_vit()
    model = ClassificationModel(enc, 2).eval()
    x = torch.randn(2, 3, 64, 64)
    tokens = enc.blocks(enc.norm_pre(enc._pos_embed(enc.patch_embed(x))))
    expected = model.fc_norm(tokens[:, enc.num_prefix_tokens :].mean(1))
    assert torch.allclose(model.features(x), expected, atol=1e-5)


def test_linear_probe_keeps_encoder_weights():
    enc = tiny_vit()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    model = ClassificationModel(enc, 2, linear_probe=True)
    x = torch.randn(4, 3, 64, 64)
    _fit(model, {"image": x, "label": torch.tensor([[1.0, 0], [0, 1], [1, 1], [0, 0]])}, steps=3)
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())
    assert not model.encoder.training and model.training
    assert not any(p.requires_grad for p in enc.parameters())


@pytest.mark.parametrize("decoder", ["conv", "upernet"])
def test_segmentation_shapes_and_learning(decoder):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    mask = torch.zeros(2, 1, 64, 64)
    mask[0, :, 10:40, 20:50] = 1
    mask[1, :, 30:60, 5:25] = 1
    model = SegmentationModel(tiny_vit(depth=4), decoder=decoder)
    out = model({"image": x, "mask": mask})
    assert out["logits"].shape == (2, 1, 64, 64)
    first, last = _fit(model, {"image": x, "mask": mask}, steps=10)
    assert last < 0.8 * first
    model.eval()
    assert model.predict({"image": x}).shape == (2, 64, 64)
    with pytest.raises(UserError):
        SegmentationModel(tiny_vit(), decoder="fcn")


@pytest.mark.parametrize("patch, stages", [(8, 3), (16, 4), (4, 2)])
def test_conv_decoder_has_log2_patch_stages(patch, stages):
    enc = VisionTransformer(
        img_size=64, patch_size=patch, embed_dim=32, depth=1, num_heads=2, num_classes=0
    )
    model = SegmentationModel(enc)
    ups = [m for m in model.decoder.stages if isinstance(m, torch.nn.Upsample)]
    assert len(ups) == stages
    widths = [8, 4, 4, 2][:stages]
    model = SegmentationModel(enc, channels=widths)
    assert model.decoder.classifier.in_channels == widths[-1]
    # stages bring the token map back to the input size without a final resize
    fmap = torch.randn(1, 32, 64 // patch, 64 // patch)
    assert model.decoder([fmap]).shape == (1, 1, 64, 64)
    with pytest.raises(UserError, match=f"{stages} up-sampling stages"):
        SegmentationModel(enc, channels=[8] * (stages + 1))
    assert (
        SegmentationModel(enc, decoder="upernet", channels=[24]).decoder.classifier.in_channels
        == 24
    )


def test_segmentation_starts_at_the_prior_and_dice_pools_the_batch():
    from ecamp.models.heads import dice_bce_loss

    model = SegmentationModel(tiny_vit(), prior=0.02).eval()
    p = model.predict({"image": torch.randn(2, 3, 64, 64)})
    assert p.mean().item() == pytest.approx(0.02, rel=0.5)
    # an empty image next to a lesion: pooled Dice lets the lesion's overlap count, per image
    # the empty one scores 0 whatever the lesion does
    logits = torch.full((2, 1, 4, 4), -3.0)
    logits[1, 0, :2] = 3.0
    target = torch.zeros(2, 1, 4, 4)
    target[1, 0, :2] = 1
    pooled = dice_bce_loss(logits, target, bce_weight=0.0)
    per_image = dice_bce_loss(logits, target, bce_weight=0.0, per_image=True)
    assert pooled.item() < 0.2 < per_image.item()


def test_detection_learning_and_prediction_shapes():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    boxes = torch.zeros(2, 3, 4)
    boxes[0, 0] = torch.tensor([8.0, 8.0, 30.0, 40.0])
    boxes[1, :2] = torch.tensor([[30.0, 10.0, 60.0, 30.0], [5.0, 40.0, 20.0, 60.0]])
    batch = {"image": x, "boxes": boxes, "num_boxes": torch.tensor([1, 2])}
    model = DetectionModel(tiny_vit())
    raw = model(batch)["raw"]
    assert [tuple(r.shape) for r in raw] == [(2, 3, 16, 16, 5), (2, 3, 8, 8, 5), (2, 3, 4, 4, 5)]
    first, last = _fit(model, batch, steps=30)
    assert last < 0.5 * first
    model.eval()
    dets = model.predict(
        {"image": x, "orig_size": torch.tensor([[128, 128], [64, 64]])}, conf_threshold=0.0
    )
    assert len(dets) == 2 and all(b.shape[1] == 4 and len(b) == len(s) <= 100 for b, s in dets)
    assert dets[0][0].max() <= 128 + 1e-4


def test_detection_decode_and_nms_on_a_constructed_case():
    model = DetectionModel(tiny_vit()).eval()
    # all objectness logits very negative except two anchors on the same object and one apart
    raw = [torch.zeros(1, 3, s, s, 5) for s in (16, 8, 4)]
    for r in raw:
        r[..., 4] = -20.0
    lvl = raw[1]  # stride 8, anchors of the middle scale
    grow = torch.log(torch.tensor(5.0)).item()  # boxes 5x the anchor
    lvl[0, 0, 4, 3] = torch.tensor([0.0, 0.0, grow, grow, 5.0])  # centre (3.5*8, 4.5*8) = (28, 36)
    lvl[0, 0, 4, 4] = torch.tensor(
        [-20.0, 0.0, grow, grow, 4.0]
    )  # centre (32, 36): IoU ~0.7, lower score
    lvl[0, 1, 6, 1] = torch.tensor([0.0, 0.0, 0.0, 0.0, 3.0])  # another object
    boxes, logits = model.decode(raw)
    assert boxes.shape == (1, 3 * (256 + 64 + 16), 4) and logits.shape == (1, 3 * (256 + 64 + 16))
    aw, ah = (5 * model.anchors[1, 0]).tolist()
    ((b, s),) = model.postprocess(raw, conf_threshold=0.5, nms_iou=0.5)
    assert len(b) == 2  # the duplicate was suppressed
    assert s.tolist() == pytest.approx(torch.sigmoid(torch.tensor([5.0, 3.0])).tolist())
    assert b[0].tolist() == pytest.approx(
        [28 - aw / 2, 36 - ah / 2, 28 + aw / 2, 36 + ah / 2], abs=1e-4
    )
    # mapping back to a 128 x 256 (H x W) original doubles y and quadruples x
    model.raw = lambda image: raw  # type: ignore[method-assign]
    ((bo, _),) = model.predict(
        {"image": torch.zeros(1, 3, 64, 64), "orig_size": torch.tensor([[128, 256]])},
        conf_threshold=0.5,
    )
    assert bo[0].tolist() == pytest.approx(
        (b[0] * torch.tensor([4.0, 2.0, 4.0, 2.0])).tolist(), abs=1e-4
    )


def test_param_groups_layer_decay():
    model = ClassificationModel(tiny_vit(depth=2), 2)
    groups = param_groups_lrd(model, lr=1.0, weight_decay=0.05, layer_decay=0.5)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert lr_of[id(model.head.weight)] == 1.0
    assert lr_of[id(model.encoder.blocks[1].attn.qkv.weight)] == 0.5
    assert lr_of[id(model.encoder.blocks[0].attn.qkv.weight)] == 0.25
    assert lr_of[id(model.encoder.pos_embed)] == 0.125 and wd_of[id(model.encoder.pos_embed)] == 0.0
    assert (
        wd_of[id(model.encoder.blocks[0].attn.qkv.weight)] == 0.05
        and wd_of[id(model.head.bias)] == 0.0
    )
    n = sum(p.numel() for g in groups for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("kind", ["cls", "seg", "det"])
def test_layer_decay_groups_decay_exactly_what_the_plain_groups_decay(kind: str) -> None:
    from ecamp.models.params import param_groups

    enc = tiny_vit(depth=2)
    model = {
        "cls": lambda: ClassificationModel(enc, 2),
        "seg": lambda: SegmentationModel(enc),
        "det": lambda: DetectionModel(enc),
    }[kind]()
    plain = {id(p): g["weight_decay"] for g in param_groups(model, 0.05) for p in g["params"]}
    lrd = {
        id(p): g["weight_decay"]
        for g in param_groups_lrd(model, lr=1.0, weight_decay=0.05, layer_decay=0.5)
        for p in g["params"]
    }
    assert plain == lrd
    assert plain[id(model.encoder.cls_token)] == 0.0 and plain[id(model.encoder.pos_embed)] == 0.0
