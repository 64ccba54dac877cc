"""Up-sampler and guided SR loss."""

from __future__ import annotations

import torch

from ecamp.models.super_resolution import SuperResolution, sr_loss, window_mask


def test_upsampler_shapes_and_release_relu():
    x = torch.randn(2, 3, 16, 16)
    assert SuperResolution(32)(x).shape == (2, 3, 32, 32)
    assert SuperResolution(32)(x).min() < 0  # paper form can produce negative targets
    assert SuperResolution(32, final_relu=True)(x).min() >= 0


def test_uniform_map_is_plain_mse():
    p, t = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    mse = torch.nn.functional.mse_loss(p, t)
    assert torch.allclose(sr_loss(p, t, mode="map", guidance=None), mse)
    assert torch.allclose(sr_loss(p, t, mode="map", guidance=torch.full((2, 1, 32, 32), 7.0)), mse)
    assert torch.allclose(sr_loss(p, t, mode="map", guidance=torch.zeros(2, 1, 32, 32)), mse)


def test_map_concentrated_on_a_region_ignores_errors_outside():
    t = torch.randn(2, 3, 32, 32)
    g = torch.zeros(2, 1, 32, 32)
    g[:, :, 4:12, 8:20] = 1.0
    p = torch.randn(2, 3, 32, 32)
    base = sr_loss(p, t, mode="map", guidance=g)
    q = p.clone()
    q[:, :, 20:, :] += 10.0  # outside the region
    assert torch.allclose(sr_loss(q, t, mode="map", guidance=g), base)
    q[:, :, 5, 9] = t[:, :, 5, 9] + 5.0  # inside
    assert sr_loss(q, t, mode="map", guidance=g) > base


def test_window_mask_and_loss():
    # 2 patches of 8 px per side window, top-left patch (1, 2) on a 4x4 patch grid
    win = torch.tensor([[1, 2], [-1, -1]])
    m = window_mask(win, 32, 8, 2)
    assert m[0].sum() == 16 * 16 and m[0, 8:24, 16:32].all()
    assert m[1].all()  # no window -> whole image
    t = torch.zeros(2, 3, 32, 32)
    p = torch.zeros(2, 3, 32, 32)
    p[0, :, :8, :] = 3.0  # outside image 0's window
    loss = sr_loss(p[:1], t[:1], mode="window", window=win[:1], patch_px=8, window_patches=2)
    assert loss == 0
    p[0, :, 8:24, 16:32] = 1.0
    w = sr_loss(p[:1], t[:1], mode="window", window=win[:1], patch_px=8, window_patches=2)
    img = sr_loss(
        p[:1],
        t[:1],
        mode="window",
        window=win[:1],
        patch_px=8,
        window_patches=2,
        window_norm="image",
    )
    assert torch.allclose(w, torch.tensor(1.0))
    assert torch.allclose(img, torch.tensor(256 / 1024))  # release: mean over the image
    # missing guidance -> uniform
    assert torch.allclose(
        sr_loss(p, t, mode="window", window=None), torch.nn.functional.mse_loss(p, t)
    )
