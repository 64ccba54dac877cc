"""Downstream task models on any timm ``VisionTransformer`` encoder.

- :class:`ClassificationModel`: GLOBAL feature (mean-pooled patch tokens + LayerNorm) -> linear;
  full fine-tune or linear probe (frozen encoder).
- :class:`SegmentationModel`: LOCAL features (patch tokens as a map) -> an up-sampling conv
  decoder with one x2 stage per factor 2 of the patch size (4 for patch 16, as the release) or
  a UPerNet-style decoder; Dice + BCE loss.
- :class:`DetectionModel`: LOCAL features -> YOLOv3-style head (3 scales x 3 anchors,
  objectness, box regression), decoding and NMS; boxes come back in original image pixels.

Batches are dicts (see :mod:`ecamp.data.downstream`): ``image`` (B,3,S,S) and, as the task
needs, ``label``, ``mask`` (B,1,S,S), ``boxes`` (B,G,4, resized pixels, zero-padded) with
``num_boxes`` (B,) and ``orig_size`` (B,2 = H,W).  ``forward(batch)`` returns a dict with
``loss`` (when targets are present) and the raw outputs; ``predict(batch)`` what the metrics
take.  :func:`param_groups_lrd` (from :mod:`ecamp.models.params`) builds layer-wise lr-decay
parameter groups.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, box_iou

from ecamp.errors import UserError
from ecamp.models.params import param_groups_lrd

# YOLOv3's COCO anchors (w, h) at 416 px, small to large; scaled to the input size
YOLO_ANCHORS_416 = (
    (10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90), (156, 198), (373, 326),
)  # fmt: skip


def _patch_size(encoder: Any) -> int:
    ps = encoder.patch_embed.patch_size
    return int(ps[0] if isinstance(ps, (tuple, list)) else ps)


def _img_size(encoder: Any) -> int:
    size = encoder.patch_embed.img_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def token_maps(encoder: Any, image: torch.Tensor, indices: list[int]) -> list[torch.Tensor]:
    """Patch tokens after the blocks ``indices`` as (B,D,h,w) maps (prefix tokens dropped)."""
    return encoder.forward_intermediates(
        image, indices=indices, norm=False, output_fmt="NCHW", intermediates_only=True
    )


def _fresh_norm(encoder: Any) -> nn.LayerNorm:
    """A LayerNorm over the embedding, started from the encoder's final norm where it has one."""
    dim = encoder.embed_dim
    norm = nn.LayerNorm(dim, eps=1e-6)
    src = getattr(encoder, "norm", None)
    if isinstance(src, nn.LayerNorm) and src.normalized_shape == (dim,):
        norm.load_state_dict(src.state_dict())
    return norm


class _EncoderMixin(nn.Module):
    """Freezing: a frozen encoder stays in eval mode and gets no gradients."""

    encoder: Any
    freeze_encoder: bool

    def _setup_encoder(self, encoder: Any, freeze: bool) -> None:
        self.encoder = encoder
        self.freeze_encoder = freeze
        if freeze:
            encoder.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def _maps(self, image: torch.Tensor, indices: list[int]) -> list[torch.Tensor]:
        if self.freeze_encoder:
            with torch.no_grad():
                return token_maps(self.encoder, image, indices)
        return token_maps(self.encoder, image, indices)


# --------------------------------------------------------------------------- classification


class ClassificationModel(_EncoderMixin):
    """Global feature -> linear classifier.

    ``multilabel``: BCE over ``num_classes`` independent labels (NaN targets ignored);
    otherwise cross-entropy over classes (``label`` holds class indices).
    ``linear_probe``: the encoder is frozen; only the norm and the linear layer learn.
    """

    def __init__(
        self,
        encoder: Any,
        num_classes: int,
        multilabel: bool = True,
        linear_probe: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self._setup_encoder(encoder, linear_probe)
        self.multilabel = multilabel
        self.fc_norm = _fresh_norm(encoder)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5 if not linear_probe else 0.01)
        nn.init.zeros_(self.head.bias)

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """The global feature (B,D): mean of the last block's patch tokens, normalised."""
        fmap = self._maps(image, [len(self.encoder.blocks) - 1])[-1]
        return self.fc_norm(fmap.flatten(2).mean(-1))

    def loss(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if not self.multilabel:
            return F.cross_entropy(logits, label.long().view(-1))
        label = label.float().view_as(logits)
        keep = ~torch.isnan(label)
        per = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(label), reduction="none")
        return (per * keep).sum() / keep.sum().clamp_min(1)

    def forward(self, batch: dict) -> dict:
        logits = self.head(self.dropout(self.features(batch["image"])))
        out = {"logits": logits}
        if "label" in batch:
            out["loss"] = self.loss(logits, batch["label"])
        return out

    @torch.no_grad()
    def predict(self, batch: dict) -> torch.Tensor:
        """Probabilities: sigmoid per label (B,K) or softmax over classes (B,C)."""
        logits = self.forward({"image": batch["image"]})["logits"]
        return torch.sigmoid(logits) if self.multilabel else logits.softmax(-1)


# --------------------------------------------------------------------------- segmentation


def _conv_bn(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


# widths of the conv decoder's stages, widest first (the release: 256, 128, 64, 32 for patch 16)
DEFAULT_SEG_CHANNELS = (256, 128, 64, 32, 16, 8)


def upsampling_stages(patch_size: int) -> int:
    """Number of x2 decoder stages that bring a patch-token map back to about the input size."""
    return max(1, round(math.log2(patch_size)))


class ConvDecoder(nn.Module):
    """The release's decoder shape: stages of (x2 bilinear up-sampling, 3x3 conv, BN, ReLU),
    one per entry of ``channels`` (its output width)."""

    def __init__(
        self, dim: int, channels: Sequence[int] = (256, 128, 64, 32), num_classes: int = 1
    ) -> None:
        super().__init__()
        stages, cin = [], dim
        for c in channels:
            stages += [
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                _conv_bn(cin, c),
            ]
            cin = c
        self.stages = nn.Sequential(*stages)
        self.classifier = nn.Conv2d(cin, num_classes, 1)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.stages(maps[-1]))


class UPerNetDecoder(nn.Module):
    """UPerNet-style decoder for a plain ViT (as BEiT / MAE segment): four block outputs made
    multi-scale (x4, x2, x1, x1/2), a pyramid-pooling module on the coarsest, an FPN top-down
    path, and the fused pyramid classified."""

    def __init__(
        self,
        dim: int,
        channels: int = 128,
        num_classes: int = 1,
        pool_scales: tuple[int, ...] = (1, 2, 3, 6),
    ) -> None:
        super().__init__()
        up = lambda: nn.ConvTranspose2d(dim, dim, 2, stride=2)  # noqa: E731
        self.rescale = nn.ModuleList(
            [
                nn.Sequential(up(), nn.BatchNorm2d(dim), nn.GELU(), up()),
                up(),
                nn.Identity(),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
        )
        # no norm in the pooled branches: a 1x1 pooled map has one value per channel
        self.ppm = nn.ModuleList(
            [
                nn.Sequential(
                    nn.AdaptiveAvgPool2d(s), nn.Conv2d(dim, channels, 1), nn.ReLU(inplace=True)
                )
                for s in pool_scales
            ]
        )
        self.bottleneck = _conv_bn(dim + len(pool_scales) * channels, channels)
        self.lateral = nn.ModuleList([_conv_bn(dim, channels, 1) for _ in range(3)])
        self.fpn = nn.ModuleList([_conv_bn(channels, channels) for _ in range(3)])
        self.fuse = _conv_bn(4 * channels, channels)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        feats = [f(m) for f, m in zip(self.rescale, maps)]
        top = feats[3]
        pooled = [
            F.interpolate(p(top), size=top.shape[-2:], mode="bilinear", align_corners=False)
            for p in self.ppm
        ]
        lat = [lateral(f) for lateral, f in zip(self.lateral, feats[:3])] + [
            self.bottleneck(torch.cat([top, *pooled], 1))
        ]
        for i in range(3, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(
                lat[i], size=lat[i - 1].shape[-2:], mode="bilinear", align_corners=False
            )
        outs = [conv(x) for conv, x in zip(self.fpn, lat[:3])] + [lat[3]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [
            F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]
        ]
        return self.classifier(self.fuse(torch.cat(outs, 1)))


def dice_bce_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    dice_weight: float = 1.0,
    bce_weight: float = 1.0,
    per_image: bool = False,
) -> torch.Tensor:
    """BCE plus soft Dice (1 - 2|PT| / (|P| + |T|), smoothed by 1).

    The Dice term pools the whole batch (as the global Dice metric does) unless ``per_image``:
    averaged per image, every lesion-free image scores ~0 until its summed probability is
    below 1, which with mostly-empty masks (SIIM, the phantom) swamps the signal of the few
    lesions and stalls learning at an all-empty prediction.
    """
    target = target.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    if not per_image:
        prob, t = prob.reshape(1, -1), t.reshape(1, -1)
    soft_dice = (2 * (prob * t).sum(1) + 1) / (prob.sum(1) + t.sum(1) + 1)
    return bce_weight * bce + dice_weight * (1 - soft_dice).mean()


class SegmentationModel(_EncoderMixin):
    """Local features -> binary mask logits at the input size; Dice + BCE loss.

    ``decoder="conv"``: log2(patch size) x2 up-sampling stages (4 for patch 16, 3 for patch 8);
    ``channels`` gives each stage's width (as many entries as stages; default
    :data:`DEFAULT_SEG_CHANNELS` from the widest).  ``decoder="upernet"``: ``channels`` is one
    width, the decoder's (default 128).  ``prior``: the foreground probability the output
    starts at; the loss is :func:`dice_bce_loss` with the Dice pooled over the batch.
    """

    def __init__(
        self,
        encoder: Any,
        decoder: str = "conv",
        num_classes: int = 1,
        freeze_encoder: bool = False,
        dice_weight: float = 1.0,
        bce_weight: float = 1.0,
        channels: Sequence[int] | int | None = None,
        prior: float = 0.01,
    ) -> None:
        super().__init__()
        self._setup_encoder(encoder, freeze_encoder)
        depth, dim = len(encoder.blocks), encoder.embed_dim
        if decoder == "conv":
            self.indices = [depth - 1]
            stages = upsampling_stages(_patch_size(encoder))
            widths = [channels] if isinstance(channels, int) else list(channels or [])
            if not widths:
                widths = list(DEFAULT_SEG_CHANNELS[:stages])
                widths += [widths[-1]] * (stages - len(widths))  # a patch size above 64
            if len(widths) != stages:
                raise UserError(
                    f"the conv decoder has {stages} up-sampling stages for patch size "
                    f"{_patch_size(encoder)}; give {stages} channel widths, not {widths}"
                )
            self.decoder: nn.Module = ConvDecoder(dim, widths, num_classes=num_classes)
        elif decoder == "upernet":
            self.indices = [max(round(depth * q) - 1, 0) for q in (0.25, 0.5, 0.75, 1.0)]
            if isinstance(channels, int):
                width = channels
            elif channels:
                if len(channels) != 1:
                    raise UserError(f"the upernet decoder takes one channel width, not {channels}")
                width = int(channels[0])
            else:
                width = 128
            self.decoder = UPerNetDecoder(dim, channels=width, num_classes=num_classes)
        else:
            raise UserError(f"decoder must be 'conv' or 'upernet', not {decoder!r}")
        # start at the expected foreground share (as detectors start objectness low): with
        # sparse masks the first steps then learn where lesions are, not that most is background
        classifier: Any = self.decoder.classifier
        nn.init.constant_(classifier.bias, math.log(prior / (1 - prior)))
        self.dice_weight, self.bce_weight = dice_weight, bce_weight

    def forward(self, batch: dict) -> dict:
        image = batch["image"]
        unique = sorted(set(self.indices))
        maps = dict(zip(unique, self._maps(image, unique)))
        logits = self.decoder([maps[i] for i in self.indices])
        if logits.shape[-2:] != image.shape[-2:]:
            logits = F.interpolate(
                logits, size=image.shape[-2:], mode="bilinear", align_corners=False
            )
        out = {"logits": logits}
        if "mask" in batch:
            out["loss"] = dice_bce_loss(
                logits, batch["mask"].view_as(logits), self.dice_weight, self.bce_weight
            )
        return out

    @torch.no_grad()
    def predict(self, batch: dict) -> torch.Tensor:
        """Foreground probabilities (B,H,W) at the input size."""
        return torch.sigmoid(self.forward({"image": batch["image"]})["logits"][:, 0])


# --------------------------------------------------------------------------- detection


class DetectionModel(_EncoderMixin):
    """YOLOv3-style single-class detector on the ViT token map.

    The token map (stride = patch size p) is made into three levels of strides p/2, p, 2p; each
    has 3 anchors (YOLOv3's, scaled to the input size) predicting (tx, ty, tw, th, objectness)
    per cell.  Loss as YOLOv3: each ground-truth box goes to the anchor of best shape IoU at the
    cell of its centre (BCE on the centre offset, MSE on log size, weighted by 2 - relative area),
    BCE objectness with anchors whose box already overlaps a ground truth above
    ``ignore_iou`` left out of the negatives.
    """

    anchors: torch.Tensor  # (3 levels, 3 anchors, wh) in input pixels

    def __init__(
        self,
        encoder: Any,
        img_size: int | None = None,
        hidden: int = 256,
        freeze_encoder: bool = False,
        ignore_iou: float = 0.5,
    ) -> None:
        super().__init__()
        self._setup_encoder(encoder, freeze_encoder)
        dim = encoder.embed_dim
        self.img_size = img_size or _img_size(encoder)
        p = _patch_size(encoder)
        self.strides = (p / 2, float(p), 2.0 * p)
        self.necks = nn.ModuleList(
            [
                nn.Sequential(
                    nn.ConvTranspose2d(dim, dim, 2, stride=2),
                    nn.BatchNorm2d(dim),
                    nn.LeakyReLU(0.1),
                ),
                nn.Identity(),
                nn.Sequential(
                    nn.Conv2d(dim, dim, 3, stride=2, padding=1),
                    nn.BatchNorm2d(dim),
                    nn.LeakyReLU(0.1),
                ),
            ]
        )
        self.heads = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(dim, hidden, 3, padding=1, bias=False),
                    nn.BatchNorm2d(hidden),
                    nn.LeakyReLU(0.1),
                    nn.Conv2d(hidden, 3 * 5, 1),
                )
                for _ in range(3)
            ]
        )
        for head in self.heads:  # start with a low objectness prior, as detectors usually do
            last: Any = head[-1]  # type: ignore[index]
            nn.init.constant_(last.bias.view(3, 5)[:, 4], -4.0)
        anchors = torch.tensor(YOLO_ANCHORS_416, dtype=torch.float32) * (self.img_size / 416.0)
        self.register_buffer("anchors", anchors.view(3, 3, 2), persistent=False)
        self.ignore_iou = ignore_iou

    def raw(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Per level (B, 3, h, w, 5) raw outputs."""
        fmap = self._maps(image, [len(self.encoder.blocks) - 1])[-1]
        outs = []
        for neck, head in zip(self.necks, self.heads):
            o = head(neck(fmap))
            b, _, h, w = o.shape
            outs.append(o.view(b, 3, 5, h, w).permute(0, 1, 3, 4, 2))
        return outs

    def _grid(self, level: int, h: int, w: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        ys, xs = torch.meshgrid(
            torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij"
        )
        return torch.stack([xs, ys], -1).float(), self.anchors[level].to(device)

    def decode(self, raw: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes (B,N,4) x1y1x2y2 in input pixels and objectness logits (B,N) over all levels."""
        boxes, logits = [], []
        for level, o in enumerate(raw):
            b, a, h, w, _ = o.shape
            grid, anchors = self._grid(level, h, w, o.device)
            xy = (torch.sigmoid(o[..., :2]) + grid) * self.strides[level]
            wh = torch.exp(o[..., 2:4].clamp(max=8.0)) * anchors.view(1, a, 1, 1, 2)
            boxes.append(torch.cat([xy - wh / 2, xy + wh / 2], -1).reshape(b, -1, 4))
            logits.append(o[..., 4].reshape(b, -1))
        return torch.cat(boxes, 1), torch.cat(logits, 1)

    def loss(
        self, raw: list[torch.Tensor], boxes: torch.Tensor, num_boxes: torch.Tensor
    ) -> torch.Tensor:
        bsz, device = raw[0].shape[0], raw[0].device
        valid = torch.arange(boxes.shape[1], device=device)[None] < num_boxes.view(-1, 1)
        bidx = torch.arange(bsz, device=device)[:, None].expand_as(valid)[valid]
        gt = boxes[valid].float()  # (n, 4)
        pred_boxes, _ = self.decode([o.detach() for o in raw])
        # negatives that already cover a ground truth well are not punished (YOLOv3 "ignore")
        ignore = torch.zeros(pred_boxes.shape[:2], dtype=torch.bool, device=device)
        if len(gt):
            iou = box_iou(pred_boxes.reshape(-1, 4), gt).view(bsz, -1, len(gt))
            same = bidx[None, None, :] == torch.arange(bsz, device=device)[:, None, None]
            ignore = (iou * same).amax(-1) > self.ignore_iou
        obj_target = [torch.zeros(o.shape[:4], device=device) for o in raw]
        coord = raw[0].new_zeros(())
        if len(gt):
            wh = (gt[:, 2:] - gt[:, :2]).clamp_min(1e-3)
            centre = (gt[:, :2] + gt[:, 2:]) / 2
            anchors = self.anchors.view(9, 2)
            inter = torch.minimum(wh[:, None], anchors[None]).prod(-1)
            shape_iou = inter / (wh.prod(-1)[:, None] + anchors.prod(-1)[None] - inter)
            best = shape_iou.argmax(1)
            level_of, anchor_of = best // 3, best % 3
            scale = 2.0 - wh.prod(-1) / float(self.img_size**2)
            for level, o in enumerate(raw):  # three levels
                sel = level_of == level
                if not sel.any():
                    continue
                h, w = o.shape[2:4]
                s = self.strides[level]
                g = centre[sel] / s
                gx = g[:, 0].long().clamp(0, w - 1)
                gy = g[:, 1].long().clamp(0, h - 1)
                a, bi = anchor_of[sel], bidx[sel]
                pred = o[bi, a, gy, gx]  # (m, 5)
                txy = (g - torch.stack([gx, gy], 1).float()).clamp(0, 1)
                twh = torch.log(wh[sel] / self.anchors[level][a])
                sc = scale[sel][:, None]
                coord = (
                    coord
                    + (
                        sc * F.binary_cross_entropy_with_logits(pred[:, :2], txy, reduction="none")
                    ).sum()
                )
                coord = coord + (sc * (pred[:, 2:4] - twh) ** 2).sum()
                obj_target[level][bi, a, gy, gx] = 1.0
        obj_t = torch.cat([t.reshape(bsz, -1) for t in obj_target], 1)
        obj_logit = torch.cat([o[..., 4].reshape(bsz, -1) for o in raw], 1)
        weight = (~ignore | (obj_t > 0)).float()
        obj = (
            F.binary_cross_entropy_with_logits(obj_logit, obj_t, reduction="none") * weight
        ).sum()
        return (coord + obj) / bsz

    def forward(self, batch: dict) -> dict:
        raw = self.raw(batch["image"])
        out: dict = {"raw": raw}
        if "boxes" in batch:
            out["loss"] = self.loss(raw, batch["boxes"], batch["num_boxes"])
        return out

    @torch.no_grad()
    def postprocess(
        self,
        raw: list[torch.Tensor],
        conf_threshold: float = 0.05,
        nms_iou: float = 0.5,
        max_det: int = 100,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image (boxes (M,4) in input pixels, scores (M,)) after threshold and NMS."""
        boxes, logits = self.decode(raw)
        scores = torch.sigmoid(logits)
        bsz = boxes.shape[0]
        keep = scores > conf_threshold
        img = torch.arange(bsz, device=boxes.device)[:, None].expand_as(scores)[keep]
        b = boxes[keep].clamp(0, self.img_size)
        s = scores[keep]
        kept = batched_nms(b, s, img, nms_iou)  # sorted by score
        out = []
        for i in range(bsz):  # splitting the batch into its images
            k = kept[img[kept] == i][:max_det]
            out.append((b[k], s[k]))
        return out

    @torch.no_grad()
    def predict(
        self, batch: dict, conf_threshold: float = 0.05, nms_iou: float = 0.5, max_det: int = 100
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image (boxes (M,4) x1y1x2y2 in ORIGINAL image pixels, scores (M,)).

        ``orig_size`` (B,2 = H,W) in the batch maps the input-size boxes back; without it boxes
        stay in input pixels.
        """
        image = batch["image"]
        dets = self.postprocess(
            self.forward({"image": image})["raw"], conf_threshold, nms_iou, max_det
        )
        if "orig_size" not in batch:
            return dets
        size = batch["orig_size"].to(image.device).float()
        h_in, w_in = image.shape[-2:]
        out = []
        for (b, s), (h, w) in zip(dets, size):
            factor = torch.stack([w / w_in, h / h_in, w / w_in, h / h_in])
            out.append((b * factor, s))
        return out


def num_parameters(model: nn.Module, trainable: bool = True) -> int:
    """Parameter count (trainable only by default)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


__all__ = [
    "ClassificationModel",
    "ConvDecoder",
    "DEFAULT_SEG_CHANNELS",
    "DetectionModel",
    "SegmentationModel",
    "UPerNetDecoder",
    "dice_bce_loss",
    "param_groups_lrd",
    "token_maps",
    "upsampling_stages",
]
