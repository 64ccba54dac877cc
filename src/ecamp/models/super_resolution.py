"""Context-guided super-resolution (SPEC.md section 4, paper Eq. 5).

The up-sampler turns the MAE reconstruction (low resolution) into a high-resolution image:
bilinear x2, conv 3x3, ReLU, conv 3x3, plus the interpolated input (residual).  The
release ends with one more ReLU (``final_relu``), which cannot produce the negative values
a normalised target holds; the paper's form is the default.

The SR loss is an MSE weighted by guidance:
- ``map``: a (B, 1, H, W) attention map (paper).  Each image's map is scaled to mean 1,
  so a uniform map gives the plain MSE and only the map's shape matters.
- ``window``: a square window of ``window_patches`` low-resolution patches whose top-left
  patch (row, col) is stored per image (release); (-1, -1) means no window.
Images without guidance (no map / all-zero map / window -1) use the uniform MSE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SuperResolution(nn.Module):
    """Bilinear up-sampling followed by a two-conv residual refinement."""

    def __init__(self, out_size: int, channels: int = 3, final_relu: bool = False) -> None:
        super().__init__()
        self.out_size = out_size
        self.final_relu = final_relu
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, C, out_size, out_size)."""
        x = F.interpolate(
            x, size=(self.out_size, self.out_size), mode="bilinear", align_corners=False
        )
        # 3-channel convolutions over 448 px run 4x faster channels-last on CPUs (oneDNN):
        # 0.11 s -> 0.03 s of a release-size step; same values, only the memory layout
        x = x.contiguous(memory_format=torch.channels_last)
        y = self.conv2(F.relu(self.conv1(x))) + x
        return F.relu(y) if self.final_relu else y


def _map_weights(guidance: torch.Tensor) -> torch.Tensor:
    """Scale each image's non-negative map to mean 1; empty maps become uniform."""
    w = guidance.float().clamp_min(0)
    mean = w.mean(dim=(1, 2, 3), keepdim=True)
    empty = mean <= 0
    return torch.where(
        empty, torch.ones_like(w), w / torch.where(empty, torch.ones_like(mean), mean)
    )


def window_mask(
    window: torch.Tensor, size: int, patch_px: int, window_patches: int
) -> torch.Tensor:
    """(B, 2) top-left (row, col) in low-res patches -> (B, size, size) bool mask.

    ``patch_px`` is the side of one low-resolution patch in high-resolution pixels.
    A row of -1 selects the whole image.  Windows running past the border are clipped.
    """
    window = window.to(torch.long)
    idx = torch.arange(size, device=window.device) // patch_px  # patch index of each pixel
    top, left = window[:, 0:1], window[:, 1:2]
    rows = (idx >= top) & (idx < top + window_patches)
    cols = (idx >= left) & (idx < left + window_patches)
    inside = rows[:, :, None] & cols[:, None, :]
    none = (window < 0).any(dim=1)
    return inside | none[:, None, None]


def sr_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    mode: str = "map",
    guidance: torch.Tensor | None = None,
    window: torch.Tensor | None = None,
    patch_px: int = 32,
    window_patches: int = 12,
    window_norm: str = "window",
) -> torch.Tensor:
    """Guided MSE between the SR output and the high-resolution image.

    ``window_norm``: ``window`` averages over the pixels inside the windows; ``image``
    (release) averages over the whole image with the outside zeroed.
    """
    err = ((pred.float() - target.float()) ** 2).mean(dim=1, keepdim=True)  # (B, 1, H, W)
    if mode == "map":
        if guidance is None:
            return err.mean()
        if guidance.shape[-2:] != err.shape[-2:]:
            guidance = F.interpolate(
                guidance.float(), size=err.shape[-2:], mode="bilinear", align_corners=False
            )
        return (err * _map_weights(guidance)).mean()
    if mode != "window":
        raise ValueError(f"unknown SR guidance mode {mode!r}; use 'map' or 'window'")
    if window is None:
        return err.mean()
    m = window_mask(window, err.shape[-1], patch_px, window_patches).unsqueeze(1).float()
    total = (err * m).sum()
    if window_norm == "image":
        return total / err.numel()
    if window_norm != "window":
        raise ValueError(f"unknown sr_window_norm {window_norm!r}; use 'window' or 'image'")
    return total / m.sum().clamp_min(1.0)
