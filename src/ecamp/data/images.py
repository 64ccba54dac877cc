"""Image decoding (PNG / JPEG / DICOM) and the pre-training augmentation.

Every loader returns one channel, float32, values in [0, 1], shape (H, W):

* PNG/JPEG/TIFF via PIL: 8-bit divided by 255, 16-bit by 65535; RGB(A)/palette images are
  converted to luma (ITU-R 601) first.
* DICOM via pydicom: modality LUT (rescale slope/intercept), then the VOI LUT sequence or the
  first window (center/width, LINEAR or SIGMOID) when the file has one, else min-max over
  the image for >8-bit data (stored bit depths are often wrong in CR/DX headers) and /255
  for 8-bit data; MONOCHROME1 is inverted so bone is always bright.

The augmentation follows the authors' release (SPEC section 2): RandomResizedCrop(hr, scale
(0.2, 1), ratio (3/4, 4/3), bicubic), horizontal flip (p=0.5), gray -> 3 channels, normalise
with mean 0.4721 / std 0.3037.  All random draws come from a ``numpy`` generator seeded by the
caller, so a sample's augmentation is a pure function of (image, seed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ecamp.errors import DataError

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _pil_to_float(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(img, dtype=np.uint16).astype(np.float32) / 65535.0
    if mode == "I":
        arr = np.asarray(img, dtype=np.int64).astype(np.float32)
        # PIL reads 16-bit grayscale PNGs as "I" in some versions
        return arr / 65535.0 if arr.min() >= 0 and arr.max() <= 65535 else _minmax(arr)
    if mode == "F":
        return _minmax(np.asarray(img, dtype=np.float32))
    if mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGB" if mode != "LA" else "L")
    if img.mode != "L":
        img = img.convert("L")
    return np.asarray(img, dtype=np.float32) / 255.0


def _minmax(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros_like(arr, dtype=np.float32)
    return ((arr - lo) / (hi - lo)).astype(np.float32)


def _window(arr: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    width = max(float(width), 1.0)
    if function == "SIGMOID":
        return (1.0 / (1.0 + np.exp(-4.0 * (arr - center) / width))).astype(np.float32)
    if function == "LINEAR_EXACT":
        out = (arr - center) / width + 0.5
    else:  # LINEAR, DICOM PS3.3 C.11.2.1.2.1
        out = (arr - (center - 0.5)) / (width - 1.0) + 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _first(value: object) -> float:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return float(value[0])  # type: ignore[index]
    return float(value)  # type: ignore[arg-type]


def load_dicom(path: str | Path) -> np.ndarray:
    """Decode a DICOM file into float32 (H, W) in [0, 1] (see module docstring)."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    p = Path(path)
    try:
        ds = pydicom.dcmread(p)
        raw = ds.pixel_array
    except Exception as e:  # pydicom raises many types for bad files / missing codecs
        raise DataError(f"cannot decode DICOM {p}: {e}") from None
    if raw.ndim == 3 and raw.shape[-1] in (3, 4):  # colour DICOM (rare for CXR)
        raw = raw[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    elif raw.ndim != 2:
        raise DataError(f"DICOM {p}: expected one 2-D frame, got pixel array {raw.shape}")
    arr = apply_modality_lut(raw, ds).astype(np.float32)
    if "VOILUTSequence" in ds:
        lut = np.asarray(apply_voi_lut(raw, ds, prefer_lut=True), dtype=np.float32)
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        out = np.clip(lut / float(2**bits - 1), 0.0, 1.0)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
        out = _window(arr, _first(ds.WindowCenter), _first(ds.WindowWidth), function)
    elif raw.dtype == np.uint8 and "RescaleSlope" not in ds:
        out = arr / 255.0
    else:
        out = _minmax(arr)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = 1.0 - out
    return np.ascontiguousarray(out, dtype=np.float32)


def _open_pil(path: Path, draft_size: int | None = None) -> Image.Image:
    if not path.is_file():
        raise DataError(
            f"image {path} does not exist; check the manifest's image column and image_root"
        )
    try:
        img = Image.open(path)
        full = (int(img.size[1]), int(img.size[0]))
        if draft_size and img.format == "JPEG":
            # decode at 1/2, 1/4 or 1/8 scale in the DCT: far faster for downsizing
            img.draft("L", (draft_size, draft_size))
        img.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError
        raise DataError(f"cannot decode image {path}: {e}") from None
    img._ecamp_full_size = full  # type: ignore[attr-defined]  # (H, W) before the draft
    return img


def load_image(path: str | Path) -> np.ndarray:
    """Load PNG / JPEG / DICOM as float32 (H, W) in [0, 1]; :class:`DataError` names bad files."""
    p = Path(path)
    if not p.exists():
        raise DataError(
            f"image {p} does not exist; check the manifest's image column and image_root"
        )
    if _is_dicom(p):
        return load_dicom(p)
    return _pil_to_float(_open_pil(p))


def content_box(h: int, w: int, size: int, mode: str = "pad") -> tuple[int, int, int, int]:
    """(top, left, height, width) of an (h, w) image inside its (size, size) resized square."""
    if mode == "squash":
        return 0, 0, size, size
    if mode != "pad":
        raise ValueError(f"resize mode must be 'pad' or 'squash', got {mode!r}")
    s = size / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    return (size - nh) // 2, (size - nw) // 2, nh, nw


def resize_square(img: np.ndarray, size: int, mode: str = "pad") -> np.ndarray:
    """Resize a float [0,1] (H, W) image to (size, size) float32 with PIL bicubic.

    ``pad`` keeps the aspect ratio (longer side = size, zero padding centred on the shorter
    side, like GLoRIA/MGCA); ``squash`` resizes both sides to ``size``.
    """
    h, w = img.shape
    top, left, nh, nw = content_box(h, w, size, mode)
    pil = Image.fromarray(np.ascontiguousarray(img, dtype=np.float32))  # float32 -> mode "F"
    small = np.asarray(pil.resize((nw, nh), Image.Resampling.BICUBIC), dtype=np.float32)
    small = np.clip(small, 0.0, 1.0)
    if (nh, nw) == (size, size):
        return small
    out = np.zeros((size, size), np.float32)
    out[top : top + nh, left : left + nw] = small
    return out


def decode_for_cache(
    path: str | Path, size: int, mode: str = "pad"
) -> tuple[np.ndarray, tuple[int, int]]:
    """Load and resize to (size, size) uint8, plus the decoded (H, W) before resizing.

    JPEGs are decoded at reduced DCT scale (never below ``size``) before the bicubic resize,
    so the returned shape may be the reduced one (same aspect ratio).
    """
    img, decoded, _ = prepare_image(path, size, mode)
    return img, decoded


def prepare_image(
    path: str | Path, size: int, mode: str = "pad"
) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """(size, size) uint8 image as the cache stores it, its decoded (H, W) and the file's.

    The file's (H, W) is the full size even when a JPEG was decoded at reduced DCT scale
    (boxes and masks in original pixels need it).
    """
    p = Path(path)
    if not p.exists():
        raise DataError(
            f"image {p} does not exist; check the manifest's image column and image_root"
        )
    if _is_dicom(p):
        arr = load_dicom(p)
        original = (int(arr.shape[0]), int(arr.shape[1]))
    else:
        pil = _open_pil(p, draft_size=size)
        original = getattr(pil, "_ecamp_full_size", (pil.size[1], pil.size[0]))
        arr = _pil_to_float(pil)
    decoded = (int(arr.shape[0]), int(arr.shape[1]))
    return to_uint8(resize_square(arr, size, mode)), decoded, original


def load_image_resized(path: str | Path, size: int, mode: str = "pad") -> np.ndarray:
    """(size, size) uint8 image: exactly what the image cache stores for ``path``."""
    return decode_for_cache(path, size, mode)[0]


def to_uint8(img: np.ndarray) -> np.ndarray:
    """float [0,1] -> uint8 with rounding."""
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- augmentation


@dataclass(frozen=True)
class CropParams:
    """One draw of the geometric augmentation, in the source image's pixel frame."""

    top: int
    left: int
    height: int
    width: int
    flip: bool


def sample_crop(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_prob: float = 0.5,
) -> CropParams:
    """RandomResizedCrop's parameter draw (10 tries, then a centre crop), from ``rng``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    draws = rng.random((10, 4))
    flip = bool(rng.random() < flip_prob)
    for u_scale, u_ratio, u_top, u_left in draws:
        target = area * (scale[0] + (scale[1] - scale[0]) * u_scale)
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u_ratio)
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(u_top * (height - h + 1)), height - h)
            left = min(int(u_left * (width - w + 1)), width - w)
            return CropParams(top, left, h, w, flip)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return CropParams((height - h) // 2, (width - w) // 2, h, w, flip)


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """(H, W) uint8 or float image -> (1, H, W) float32 tensor in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(img))
    t = t.float().div_(255.0) if t.dtype == torch.uint8 else t.float()
    return t.unsqueeze(0)


def apply_crop(
    t: torch.Tensor, params: CropParams, size: int, interpolation: str = "bicubic"
) -> torch.Tensor:
    """Crop a (C, H, W) tensor with ``params``, resize to (size, size), flip if drawn."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    mode = InterpolationMode.BICUBIC if interpolation == "bicubic" else InterpolationMode.BILINEAR
    out = F.resized_crop(
        t, params.top, params.left, params.height, params.width, [size, size], mode, antialias=True
    )
    return out.flip(-1) if params.flip else out


def crop_resize(img: np.ndarray, params: CropParams, size: int) -> torch.Tensor:
    """Crop an (H, W) image with ``params`` and resize to (1, size, size) float32 in [0, 1].

    The crop is sliced before any conversion, so only its pixels are touched.  uint8 images
    are resized with torch's uint8 bicubic kernel (antialiased, clamped to 0..255 between the
    two passes, like PIL on an 8-bit image: what the release's torchvision-on-PIL transform
    does) and then scaled; float images with the float kernel, clamped to [0, 1].
    """
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    part = img[params.top : params.top + params.height, params.left : params.left + params.width]
    part = np.ascontiguousarray(part)
    if not part.flags.writeable:  # torch wants writable memory (a decoder's read-only array)
        part = part.copy()
    t = torch.from_numpy(part).unsqueeze(0)
    mode = InterpolationMode.BICUBIC
    if t.dtype == torch.uint8:
        out = F.resize(t, [size, size], mode, antialias=True).float().div_(255.0)
    else:
        out = F.resize(t.float(), [size, size], mode, antialias=True).clamp_(0.0, 1.0)
    return out.flip(-1) if params.flip else out


def augment_pretrain(
    img: np.ndarray,
    hr_size: int,
    seed: int,
    scale: tuple[float, float] = (0.2, 1.0),
    mean: float = 0.4721,
    std: float = 0.3037,
    mode: str = "release",
) -> tuple[torch.Tensor, CropParams]:
    """The release's pre-training augmentation, deterministic in ``seed``.

    ``img`` is (H, W) uint8 or float in [0, 1].  Returns the normalised (3, hr, hr) tensor and
    the crop drawn (so a guidance map can follow the same geometry).  ``mode="none"``
    resizes the whole image without flipping.
    """
    params = draw_pretrain_crop(img.shape[0], img.shape[1], seed, scale, mode)
    out = crop_resize(img, params, hr_size).sub_(mean).div_(std)
    return out.expand(3, -1, -1).contiguous(), params


def augment_region(
    region: np.ndarray, flip: bool, hr_size: int, mean: float = 0.4721, std: float = 0.3037
) -> torch.Tensor:
    """:func:`augment_pretrain`'s output from the crop's pixels alone (already cut out)."""
    params = CropParams(0, 0, region.shape[0], region.shape[1], flip)
    out = crop_resize(region, params, hr_size).sub_(mean).div_(std)
    return out.expand(3, -1, -1).contiguous()


def draw_pretrain_crop(
    height: int,
    width: int,
    seed: int,
    scale: tuple[float, float] = (0.2, 1.0),
    mode: str = "release",
) -> CropParams:
    """The crop :func:`augment_pretrain` draws on an (height, width) image for ``seed``."""
    if mode == "release":
        return sample_crop(height, width, np.random.default_rng(seed), scale)
    if mode == "none":
        return CropParams(0, 0, height, width, False)
    raise ValueError(f"augment must be 'release' or 'none', got {mode!r}")


# --------------------------------------------------------------------------- crop resolution


def min_crop_sides(
    height: int,
    width: int,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int]:
    """The smallest crop height and width :func:`sample_crop` can draw on (height, width).

    The crop's area is ``scale * H * W`` and its aspect w/h lies in ``ratio``, so its width
    is smallest at the least scale and the least aspect, its height at the least scale and
    the largest aspect (computed with the same expressions as the draw, then rounded).  The
    fallback crop (after ten rejected draws) is larger than both.
    """
    area = height * width * scale[0]
    w = round(math.sqrt(area * ratio[0]))
    h = round(math.sqrt(area / ratio[1]))
    return h, w


def cache_side_for(
    hr_size: int,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> int:
    """The smallest square side S whose every crop has both sides >= ``hr_size`` pixels.

    A crop drawn on an S x S cache square with scale ``s`` and aspect ``a`` is
    round(S sqrt(s a)) wide and round(S sqrt(s / a)) high, so
    S >= (hr - 1/2) / sqrt(scale_min * min(ratio_min, 1 / ratio_max)).  For the release's
    448 px, scale (0.2, 1) and ratio (3/4, 4/3) that is 1156 (1001 if the aspect were
    always 1).
    """
    k = math.sqrt(scale[0] * min(ratio[0], 1.0 / ratio[1]))
    side = max(hr_size, math.ceil((hr_size - 0.5) / k) - 1)
    while min(min_crop_sides(side, side, scale, ratio)) < hr_size:
        side += 1
    return side


def crop_source_pixels(
    params: CropParams, frame: int, decoded: tuple[int, int], mode: str = "pad"
) -> tuple[float, float]:
    """(height, width) in real image pixels behind a crop drawn on a cached square.

    The square of side ``frame`` holds an image decoded at ``decoded`` (H, W), resized by
    ``mode`` (pad: one scale, longer side = frame; squash: each side = frame).  A cache that
    shrank the image keeps one real pixel per cache pixel; one that enlarged it keeps fewer.
    """
    h, w = decoded
    if mode == "pad":
        fy = fx = min(1.0, max(h, w) / frame)
    else:
        fy, fx = min(1.0, h / frame), min(1.0, w / frame)
    return params.height * fy, params.width * fx


def is_upsampled(source_hw: tuple[float, float], hr_size: int) -> bool:
    """Whether a crop with ``source_hw`` real pixels is enlarged to become ``hr_size`` square."""
    return source_hw[0] < hr_size or source_hw[1] < hr_size


def image_shape(path: str | Path) -> tuple[int, int]:
    """(H, W) of an image file read from its header (no pixel decoding)."""
    p = Path(path)
    if _is_dicom(p):
        import pydicom

        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            return int(ds.Rows), int(ds.Columns)
        except Exception as e:  # pydicom raises many types for bad files
            raise DataError(f"cannot read DICOM header {p}: {e}") from None
    try:
        with Image.open(p) as img:
            return int(img.size[1]), int(img.size[0])
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError
        raise DataError(f"cannot read image header {p}: {e}") from None


def crop_map(
    guidance: np.ndarray,
    params: CropParams,
    size: int,
    box: tuple[int, int, int, int],
) -> torch.Tensor:
    """Apply an image's crop to a guidance map; returns (1, size, size) float32 (bilinear).

    ``params`` is in the loaded image's pixel frame; the map (any resolution) covers the
    region ``box`` = (top, left, height, width) of that frame (the whole image, or the
    content of a padded cache square).  Crop parts outside the map read as 0.
    """
    gh, gw = guidance.shape[-2:]
    top0, left0, h0, w0 = box
    sy, sx = gh / h0, gw / w0
    scaled = CropParams(
        int(round((params.top - top0) * sy)),
        int(round((params.left - left0) * sx)),
        max(1, int(round(params.height * sy))),
        max(1, int(round(params.width * sx))),
        params.flip,
    )
    t = torch.from_numpy(np.ascontiguousarray(guidance, dtype=np.float32)).reshape(1, gh, gw)
    return apply_crop(t, scaled, size, interpolation="bilinear")
