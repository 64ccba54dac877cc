"""Image decoding (PNG 8/16-bit, JPEG, DICOM) and the seeded pre-training augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ecamp.data.images import (
    CropParams,
    apply_crop,
    augment_pretrain,
    crop_map,
    load_image,
    load_image_resized,
    resize_square,
    sample_crop,
    to_tensor,
)
from ecamp.errors import DataError

SIIM = "fixtures/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


def _ramp(h: int = 40, w: int = 60) -> np.ndarray:
    return np.linspace(0, 1, h * w, dtype=np.float32).reshape(h, w)


def test_png_8_and_16_bit_and_rgb(tmp_path):
    ramp = _ramp()
    Image.fromarray(np.rint(ramp * 255).astype(np.uint8)).save(tmp_path / "a8.png")
    Image.fromarray(np.rint(ramp * 65535).astype(np.uint16)).save(tmp_path / "a16.png")
    rgb = np.stack([np.rint(ramp * 255).astype(np.uint8)] * 3, -1)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    a8, a16, argb = (load_image(tmp_path / n) for n in ("a8.png", "a16.png", "rgb.png"))
    for a in (a8, a16, argb):
        assert a.dtype == np.float32 and a.shape == (40, 60)
    np.testing.assert_allclose(a8, ramp, atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(a16, ramp, atol=0.5 / 65535 + 1e-6)
    np.testing.assert_allclose(argb, a8, atol=1 / 255)


def test_jpeg_and_real_fixtures(tmp_path, test_data):
    Image.fromarray(np.rint(_ramp() * 255).astype(np.uint8)).save(tmp_path / "a.jpg", quality=95)
    np.testing.assert_allclose(load_image(tmp_path / "a.jpg"), _ramp(), atol=0.05)
    png = load_image(test_data("fixtures/00000001_000.png"))
    assert png.shape == (512, 512) and 0 <= png.min() < png.max() <= 1
    jpg = load_image(test_data("fixtures/16747_3_1.jpg"))  # RGB JPEG -> one channel
    assert jpg.shape == (885, 1036) and jpg.dtype == np.float32


def test_dicom_monochrome1_is_inverted(test_data):
    mono2 = load_image(test_data(SIIM))
    mono1 = load_image(test_data("fixtures/Fake_MONOHR1.dcm"))  # same pixels, MONOCHROME1
    assert mono2.shape == (1024, 1024) and mono2.dtype == np.float32
    assert mono2.min() >= 0.0 and mono2.max() <= 1.0 and mono2.std() > 0.1
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)


def _write_dicom(path, pixels: np.ndarray, photometric: str, window: tuple[float, float] | None):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_dicom_16bit_window_and_minmax(tmp_path):
    pixels = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (8, 1))  # 8 x 64 ramp, 12-bit
    _write_dicom(tmp_path / "w.dcm", pixels, "MONOCHROME2", (2048, 1024))
    _write_dicom(tmp_path / "m1.dcm", pixels, "MONOCHROME1", None)
    w = load_image(tmp_path / "w.dcm")
    assert w[0, 0] == 0.0 and w[0, -1] == 1.0  # outside the window: clipped
    inside = (pixels[0] > 1600) & (pixels[0] < 2500)
    assert np.all(np.diff(w[0][inside]) > 0)  # linear ramp inside the window
    assert abs(float(w[0][pixels[0] == 2048][0]) - 0.5) < 0.01
    m1 = load_image(tmp_path / "m1.dcm")
    np.testing.assert_allclose(m1[0], 1.0 - pixels[0] / pixels.max(), atol=1e-6)


def test_missing_and_corrupt_files_raise_data_error_naming_path(tmp_path):
    with pytest.raises(DataError, match="nope.png"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(DataError, match="bad.jpg"):
        load_image(tmp_path / "bad.jpg")
    (tmp_path / "bad.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\1" * 50)
    with pytest.raises(DataError, match="bad.dcm"):
        load_image(tmp_path / "bad.dcm")


def test_resize_square_pad_keeps_aspect():
    img = np.ones((50, 100), np.float32)
    out = resize_square(img, 40, "pad")
    assert out.shape == (40, 40)
    assert out[:10].max() == 0 and out[-10:].max() == 0  # padding above/below
    np.testing.assert_allclose(out[10:30], 1.0, atol=1e-5)
    assert resize_square(img, 40, "squash").min() > 0.99


def test_jpeg_draft_decode_close_to_full_decode(tmp_path):
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.random((12, 10)), np.ones((100, 100))).astype(np.float32)
    Image.fromarray(np.rint(smooth * 255).astype(np.uint8)).save(tmp_path / "big.jpg", quality=95)
    fast = load_image_resized(tmp_path / "big.jpg", 128).astype(np.float32) / 255
    full = resize_square(load_image(tmp_path / "big.jpg"), 128)
    assert np.abs(fast - full).mean() < 0.01


def test_augmentation_deterministic_under_seed():
    img = (np.random.default_rng(0).random((300, 250)) * 255).astype(np.uint8)
    a, pa = augment_pretrain(img, 64, seed=123)
    b, pb = augment_pretrain(img, 64, seed=123)
    c, _ = augment_pretrain(img, 64, seed=124)
    assert a.shape == (3, 64, 64) and a.dtype == torch.float32
    assert torch.equal(a, b) and pa == pb
    assert not torch.equal(a, c)
    assert torch.equal(a[0], a[2])  # gray -> 3 identical channels
    lo, hi = (0 - 0.4721) / 0.3037, (1 - 0.4721) / 0.3037
    assert a.min() >= lo - 1e-5 and a.max() <= hi + 1e-5


def test_crop_params_follow_release_ranges():
    rng = np.random.default_rng(0)
    draws = [sample_crop(400, 300, rng) for _ in range(300)]
    areas = np.array([d.height * d.width / (400 * 300) for d in draws])
    assert areas.min() >= 0.19 and areas.max() <= 1.0 and areas.mean() > 0.4
    assert all(0 <= d.top <= 400 - d.height and 0 <= d.left <= 300 - d.width for d in draws)
    assert 0.35 < np.mean([d.flip for d in draws]) < 0.65


def test_no_augment_mode_is_plain_resize():
    img = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (32, 1))
    out, params = augment_pretrain(img, 32, seed=5, mode="none", mean=0.0, std=1.0)
    assert params == CropParams(0, 0, 32, 32, False)
    np.testing.assert_allclose(out[0].numpy(), img, atol=1e-5)


def test_crop_map_follows_image_crop_and_flip():
    img = np.zeros((100, 100), np.float32)
    img[:, :50] = 1.0  # left half bright
    guide = np.zeros((10, 10), np.float32)
    guide[:, :5] = 1.0  # same pattern at lower resolution
    params = CropParams(20, 10, 60, 60, True)
    crop = apply_crop(to_tensor(img), params, 30)
    gmap = crop_map(guide, params, 30, (0, 0, 100, 100))
    assert gmap.shape == (1, 30, 30)
    assert torch.corrcoef(torch.stack([crop.flatten(), gmap.flatten()]))[0, 1] > 0.95
