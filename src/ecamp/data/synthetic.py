"""The synthetic "phantom" chest X-ray world: the embedded default for demos and tests.

:func:`make_phantom_world` draws ``n`` grayscale chest-like radiographs (body, lungs,
mediastinum, heart shadow, ribs, vascular texture, noise; anatomy size, position and
contrast vary) with lesions of six types at known places, and writes for each a report in
the sentence forms of real reports, a distilled report, labels, boxes and masks.  The
lesions carry real signal (a model pre-trained on this world can be probed for it):

==============  ======================================================================
class           appearance
==============  ======================================================================
opacity         soft textured blob in one lung zone ("right lower lobe opacity")
nodule          small bright disc ("16 mm nodule in the left upper lobe")
effusion        bright fluid filling a costophrenic angle, meniscus higher laterally
pneumothorax    dark, texture-free peripheral rim of one lung with a bright pleural line
cardiomegaly    heart shadow wider than about half the thorax
atelectasis     thin bright plate-like band near a lung base
==============  ======================================================================

Focal lesions are sized for the models that read the world at 64 px with 8-px patches (the
tiny preset): a nodule is 2-3 px across there, an opacity 8-14 px, an atelectatic band 1 px
thick.  At half these sizes (the first world) the tiny ViT fine-tuned on every training label
stayed at chance on nodule and pneumothorax as well as on opacity and atelectasis; here nodule
and pneumothorax rise above it, opacity and atelectasis stay near chance for that model.

Each class is present with a small probability (about 40 % of images are normal), side
and zone vary; absent classes are mentioned negatively ("No pleural effusion or
pneumothorax.", "The heart size is normal.").

Files written under ``out_dir``::

    manifest.csv              one row per image (columns below)
    images/<id>.png           8-bit grayscale, size x size
    masks/<id>.png            8-bit, 255 inside any focal lesion (all classes but cardiomegaly)
    masks/<id>_classes.png    8-bit, bit k set where lesion class LESION_CLASSES[k] lies
                              (cardiomegaly: the heart shadow)

``manifest.csv`` columns: the pre-training manifest's ``id, image, report, distilled,
study_id, split`` (train / val / test, about 70/15/15) plus ``label_<class>`` (0/1 per
class of :data:`LESION_CLASSES`), ``boxes`` (JSON list of ``[x1, y1, x2, y2, class]``, pixel
corners, x2/y2 exclusive, one per lesion), ``mask``, ``mask_classes``, ``view`` ("PA") and
``ctr`` (cardiothoracic ratio drawn).  Image ``i`` depends only on (seed, i, size): a world of
n images is a prefix of a larger one.  Image-left is the patient's right, as on a PA film.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image

from ecamp.data.manifest import write_table

if TYPE_CHECKING:
    import tokenizers

LESION_CLASSES: tuple[str, ...] = (
    "opacity",
    "nodule",
    "effusion",
    "pneumothorax",
    "cardiomegaly",
    "atelectasis",
)
PREVALENCE: dict[str, float] = {
    "opacity": 0.2,
    "nodule": 0.12,
    "effusion": 0.15,
    "pneumothorax": 0.1,
    "cardiomegaly": 0.15,
    "atelectasis": 0.12,
}
ZONES = ("upper", "middle", "lower")
_LOBES = {
    ("right", "upper"): "right upper lobe",
    ("right", "middle"): "right middle lobe",
    ("right", "lower"): "right lower lobe",
    ("left", "upper"): "left upper lobe",
    ("left", "middle"): "lingula",
    ("left", "lower"): "left lower lobe",
}
PHANTOM_VOCAB = 1000  # tokenizer size bound: the phantom corpus fills only a few hundred tokens
_MM_PER_UNIT = 380.0  # image width in mm, for nodule sizes in reports


@dataclass
class Lesion:
    """One drawn lesion: class, where, how big (a report word) and its pixel mask."""

    kind: str
    side: str = ""
    zone: str = ""
    size: str = ""
    mm: int = 0
    mask: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool), repr=False)

    def box(self) -> list:
        ys, xs = np.nonzero(self.mask)
        return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1, self.kind]


# --------------------------------------------------------------------------- drawing


def _interp_matrix(k: int, size: int) -> np.ndarray:
    """(size, k) linear interpolation weights: smooth noise = A @ grid @ A.T."""
    pos = np.linspace(0, k - 1, size)
    lo = np.clip(np.floor(pos).astype(int), 0, k - 2)
    frac = pos - lo
    a = np.zeros((size, k), np.float32)
    a[np.arange(size), lo] = 1 - frac
    a[np.arange(size), lo + 1] = frac
    return a


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))


class _Canvas:
    """The coordinate grid and smoothing matrices shared by all images of one size."""

    def __init__(self, size: int):
        self.size = size
        c = (np.arange(size, dtype=np.float32) + 0.5) / size
        self.y, self.x = np.meshgrid(c, c, indexing="ij")
        self.interp = {k: _interp_matrix(k, size) for k in (6, 12, 24)}
        self.px = 1.0 / size  # one pixel in unit coordinates

    def smooth_noise(self, rng: np.random.Generator, k: int) -> np.ndarray:
        a = self.interp[k]
        return a @ rng.standard_normal((k, k)).astype(np.float32) @ a.T


def _visible(mask: np.ndarray, nominal_area: float, px: float) -> bool:
    """A lesion counts (is drawn, labelled, reported) only if most of it lies in open lung."""
    return int(mask.sum()) >= max(2.0, 0.4 * nominal_area / (px * px))


def _draw_image(cv: _Canvas, rng: np.random.Generator) -> tuple[np.ndarray, list[Lesion], float]:
    x, y, px = cv.x, cv.y, cv.px
    present = {c: bool(rng.random() < p) for c, p in PREVALENCE.items()}

    # anatomy
    a = rng.uniform(0.9, 1.05)
    cx = 0.5 + rng.normal(0, 0.015)
    top = 0.14 + rng.normal(0, 0.015)
    bottom = 0.8 + rng.normal(0, 0.02)
    yc, hh = (top + bottom) / 2, (bottom - top) / 2
    lw = 0.165 * a
    offset = 0.19 * a
    centres = {"right": cx - offset, "left": cx + offset}  # patient's right on image left
    body = _sigmoid((1 - ((x - cx) / (0.44 * a)) ** 2 - ((y - 0.55) / 0.62) ** 2) / 0.05)
    img = 0.06 + 0.42 * body
    lungs = {}
    lung_d = {}
    for side, xc in centres.items():
        d = ((x - xc) / lw) ** 2 + ((y - yc) / hh) ** 2
        lung_d[side] = d
        lungs[side] = _sigmoid((1 - d) / 0.04)
    lung = np.maximum(lungs["right"], lungs["left"])
    contrast = rng.uniform(0.8, 1.2)
    texture = cv.smooth_noise(rng, 24)
    hilum = np.exp(-(((x - cx) / 0.22) ** 2) - ((y - 0.45) / 0.2) ** 2)
    vessels = 0.025 * texture * (0.5 + hilum)
    spacing = rng.uniform(0.065, 0.085)
    ribs = np.clip(
        np.sin(2 * np.pi * (y + 0.9 * (x - cx) ** 2) / spacing + rng.uniform(0, 6.3)) - 0.3, 0, None
    )
    mediast = _sigmoid((0.055 * a - np.abs(x - cx)) / 0.01) * _sigmoid((0.6 - y) / 0.02)

    ctr = rng.uniform(0.56, 0.66) if present["cardiomegaly"] else rng.uniform(0.38, 0.48)
    thorax = 2 * (offset + lw)
    heart_w, heart_h = ctr * thorax / 2, 0.12 * a * (1 + (ctr - 0.43))
    heart_x, heart_y = cx + 0.25 * heart_w, bottom - 0.13
    heart_d = ((x - heart_x) / heart_w) ** 2 + ((y - heart_y) / heart_h) ** 2
    heart = _sigmoid((1 - heart_d) / 0.06)

    lesions: list[Lesion] = []
    lesion_layer = np.zeros_like(img)
    ptx_dark = np.zeros_like(img)
    ptx_keep = np.ones_like(img)
    lung_hard = {s: lung_d[s] < 1 for s in centres}

    def place(side: str, zone: str) -> tuple[float, float]:
        frac = {"upper": 0.27, "middle": 0.5, "lower": 0.74}[zone]
        py = top + 2 * hh * frac + rng.normal(0, 0.03 * hh)
        half = lw * np.sqrt(max(0.05, 1 - ((py - yc) / hh) ** 2))
        return centres[side] + rng.uniform(-0.55, 0.55) * half, py

    def side_() -> str:
        return "right" if rng.random() < 0.5 else "left"

    if present["opacity"]:
        side, zone = side_(), ZONES[int(rng.integers(3))]
        px0, py0 = place(side, zone)
        rx, ry = rng.uniform(0.06, 0.11, size=2)
        blob = np.exp(-2 * (((x - px0) / rx) ** 2 + ((y - py0) / ry) ** 2))
        blob = blob * np.clip(0.8 + 2.0 * cv.smooth_noise(rng, 12), 0.3, 1.5)
        field = blob * lungs[side] * (1 - heart)
        mask = (field > 0.35) & lung_hard[side]
        amp = rng.uniform(0.2, 0.32)
        if _visible(mask, 0.5 * np.pi * rx * ry, px):
            lesion_layer += amp * field
            size = "small" if max(rx, ry) < 0.085 else "moderate"
            lesions.append(Lesion("opacity", side, zone, size, mask=mask))
    if present["nodule"]:
        side, zone = side_(), ZONES[int(rng.integers(3))]
        px0, py0 = place(side, zone)
        r = max(rng.uniform(0.02, 0.034), 1.6 * px)
        dist = np.sqrt((x - px0) ** 2 + (y - py0) ** 2)
        disc = _sigmoid((r - dist) / (0.2 * r)) * (1 - heart)
        amp = rng.uniform(0.3, 0.45)
        mask = (disc > 0.5) & lung_hard[side]
        if _visible(mask, np.pi * r * r, px):
            lesion_layer += amp * disc
            mm = int(round(2 * r * _MM_PER_UNIT))
            lesions.append(Lesion("nodule", side, zone, "", mm, mask=mask))
    if present["effusion"]:
        side = side_()
        frac = rng.uniform(0.1, 0.32)
        lateral = np.clip((x - centres[side]) / lw * (1 if side == "left" else -1), 0, 1)
        level = bottom - frac * 2 * hh - 0.07 * lateral**2
        fluid = _sigmoid((y - level) / 0.008) * lungs[side]
        lesion_layer += fluid * (0.5 - (0.06 + 0.42 - 0.3 * contrast)) * 0.9
        size = "small" if frac < 0.17 else ("moderate" if frac < 0.25 else "large")
        lesions.append(Lesion("effusion", side, "lower", size, mask=(y > level) & lung_hard[side]))
    if present["pneumothorax"]:
        side = side_()
        k = rng.uniform(0.62, 0.82)
        medial = 1 if side == "right" else -1
        d_in = ((x - centres[side] - medial * (1 - k) * lw * 0.9) / (k * lw)) ** 2 + (
            (y - yc - (1 - k) * hh * 0.8) / (k * hh)
        ) ** 2
        rim = lung_hard[side] & (d_in > 1) & (y < yc + 0.4 * hh)
        soft_rim = (
            _sigmoid((np.sqrt(d_in) - 1) / 0.01)
            * lungs[side]
            * _sigmoid((yc + 0.4 * hh - y) / 0.02)
        )
        ptx_dark += 0.14 * soft_rim
        ptx_keep *= 1 - soft_rim
        line = np.exp(-(((np.sqrt(d_in) - 1) / max(0.006, 0.8 * px)) ** 2)) * lungs[side]
        lesion_layer += 0.16 * line * _sigmoid((yc + 0.4 * hh - y) / 0.02)
        size = "large" if k < 0.68 else ("moderate" if k < 0.75 else "small")
        lesions.append(Lesion("pneumothorax", side, "upper", size, mask=rim))
    if present["atelectasis"]:
        sides = ["right", "left"] if rng.random() < 0.3 else [side_()]
        for side in sides:
            px0, py0 = place(side, "lower")
            theta = rng.uniform(-0.35, 0.35)
            along = (x - px0) * np.cos(theta) + (y - py0) * np.sin(theta)
            across = -(x - px0) * np.sin(theta) + (y - py0) * np.cos(theta)
            thick, length = max(rng.uniform(0.012, 0.02), 1.2 * px), rng.uniform(0.07, 0.12)
            band = np.exp(-((across / thick) ** 2)) * _sigmoid((length - np.abs(along)) / 0.01)
            band = band * lungs[side] * (1 - heart)
            amp = rng.uniform(0.16, 0.24)
            mask = (band > 0.4) & lung_hard[side]
            if _visible(mask, 2 * thick * length, px):
                lesion_layer += amp * band
                size = "mild" if length < 0.095 else "moderate"
                lesions.append(Lesion("atelectasis", side, "lower", size, mask=mask))
    if present["cardiomegaly"]:
        size = "mild" if ctr < 0.6 else ("moderate" if ctr < 0.64 else "severe")
        lesions.append(Lesion("cardiomegaly", "", "", size, mask=heart_d < 1))

    # compose: pneumothorax removes vascular texture and darkens its rim
    lung_layer = -0.3 * contrast * lung + (0.06 * ribs + vessels * ptx_keep) * lung
    img = img + lung_layer - ptx_dark + 0.1 * mediast * (1 - lung)
    img = img * (1 - heart) + (0.5 + 0.04 * contrast) * heart
    img = img + lesion_layer * (1 - 0.6 * heart)
    img = img + 0.06 * _sigmoid((y - bottom - 0.02) / 0.02) * body * (1 - lung)
    gain, bias = rng.uniform(0.85, 1.15), rng.normal(0, 0.03)
    img = (img - 0.3) * gain + 0.3 + bias + 0.015 * cv.smooth_noise(rng, 6)
    img = img + rng.normal(0, rng.uniform(0.006, 0.018), img.shape).astype(np.float32)
    return np.clip(img, 0, 1).astype(np.float32), lesions, float(ctr)


# --------------------------------------------------------------------------- reports


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _positive(les: Lesion, rng: np.random.Generator) -> tuple[str, str]:
    """(report sentence, distilled sentence) for one lesion."""
    lobe = _LOBES.get((les.side, les.zone), f"{les.side} lung")
    forms: list[str]
    if les.kind == "opacity":
        forms = [
            f"There is a {les.size} {lobe} opacity.",
            f"{_cap(les.size)} opacity in the {lobe}, concerning for pneumonia.",
            f"Patchy opacity is seen in the {lobe}.",
            f"Focal consolidation in the {lobe}.",
        ]
        distilled = f"There is {les.size} opacity in the {lobe}."
    elif les.kind == "nodule":
        forms = [
            f"There is a {les.mm} mm nodule in the {lobe}.",
            f"A {les.mm} mm nodule projects over the {lobe}.",
            f"{_cap(lobe)} nodule measuring {les.mm} mm.",
        ]
        distilled = f"There is a nodule in the {lobe}."
    elif les.kind == "effusion":
        forms = [
            f"There is a {les.size} {les.side} pleural effusion.",
            f"{_cap(les.size)} {les.side} pleural effusion.",
            f"A {les.size} {les.side} pleural effusion is present.",
        ]
        distilled = f"There is {les.size} {les.side} effusion."
    elif les.kind == "pneumothorax":
        forms = [
            f"There is a {les.size} {les.side} apical pneumothorax.",
            f"{_cap(les.size)} {les.side} pneumothorax.",
            f"A {les.size} {les.side} pneumothorax is seen with a visible pleural line.",
        ]
        distilled = f"There is {les.size} {les.side} pneumothorax."
    elif les.kind == "cardiomegaly":
        forms = [
            "The heart is enlarged.",
            f"{_cap(les.size)} cardiomegaly.",
            f"There is {les.size} cardiomegaly.",
            "The cardiac silhouette is enlarged.",
        ]
        distilled = f"There is {les.size} cardiomegaly."
    else:  # atelectasis
        forms = [
            f"{_cap(les.size)} {les.side} basilar atelectasis.",
            f"There is {les.size} atelectasis at the {les.side} lung base.",
            f"Linear atelectasis in the {lobe}.",
        ]
        distilled = f"There is {les.size} atelectasis in the {les.side} lung base."
    return forms[int(rng.integers(len(forms)))], distilled


_NEGATIVE = {
    "opacity": ["No focal consolidation.", "There is no focal opacity.", "The lungs are clear."],
    "nodule": ["No pulmonary nodules.", "No suspicious nodule is seen."],
    "effusion": ["No pleural effusion.", "There is no pleural effusion."],
    "pneumothorax": ["No pneumothorax.", "There is no pneumothorax."],
    "cardiomegaly": [
        "The heart size is normal.",
        "Heart size is normal.",
        "The cardiac silhouette is within normal limits.",
    ],
    "atelectasis": ["No atelectasis.", "There is no atelectasis."],
}
_NEGATIVE_DISTILLED = {
    "opacity": "There is no opacity.",
    "nodule": "There is no nodule.",
    "effusion": "There is no effusion.",
    "pneumothorax": "There is no pneumothorax.",
    "cardiomegaly": "There is no cardiomegaly.",
    "atelectasis": "There is no atelectasis.",
}
# how often an absent class is mentioned at all (real reports skip many negatives)
_MENTION_NEGATIVE = {
    "opacity": 0.8,
    "nodule": 0.35,
    "effusion": 0.9,
    "pneumothorax": 0.9,
    "cardiomegaly": 0.85,
    "atelectasis": 0.3,
}
_FILLER = [
    "The mediastinal and hilar contours are unremarkable.",
    "No acute osseous abnormality.",
    "The lungs are well expanded.",
]


def write_report(lesions: list[Lesion], rng: np.random.Generator) -> tuple[str, str]:
    """(report, distilled) for an image's lesions; absent classes mentioned negatively."""
    found = {les.kind for les in lesions}
    sentences, distilled = [], []
    for les in lesions:
        s, d = _positive(les, rng)
        sentences.append(s)
        if d not in distilled:
            distilled.append(d)
    if "effusion" not in found and "pneumothorax" not in found and rng.random() < 0.6:
        sentences.append("No pleural effusion or pneumothorax.")
        distilled += [_NEGATIVE_DISTILLED["effusion"], _NEGATIVE_DISTILLED["pneumothorax"]]
        found |= {"effusion", "pneumothorax"}
    for kind in LESION_CLASSES:
        if kind in found or rng.random() >= _MENTION_NEGATIVE[kind]:
            continue
        if kind == "opacity" and lesions:
            sentence = "No other focal consolidation."
        else:
            options = _NEGATIVE[kind]
            sentence = options[int(rng.integers(len(options)))]
        sentences.append(sentence)
        distilled.append(_NEGATIVE_DISTILLED[kind])
    order = rng.permutation(len(sentences))
    body = [sentences[i] for i in order]
    body += [f for f in _FILLER if rng.random() < 0.3]
    if lesions:
        impression = " ".join(_positive(les, rng)[0] for les in lesions[:2])
    else:
        impression = ["No acute cardiopulmonary process.", "No acute intrathoracic abnormality."][
            int(rng.integers(2))
        ]
    return " ".join(body + [impression]), " ".join(distilled)


# --------------------------------------------------------------------------- world


def make_phantom_image(
    index: int, size: int = 256, seed: int = 0
) -> tuple[np.ndarray, list[Lesion], float]:
    """Image ``index`` of the world with ``seed``: (float image (size, size), lesions, ctr)."""
    return _draw_image(_Canvas(size), np.random.default_rng([seed, index]))


def _draws(
    n: int, size: int, seed: int
) -> Iterator[tuple[np.ndarray, list[Lesion], float, str, str, np.random.Generator]]:
    """Image, lesions, ctr, report, distilled report of images 0..n-1, and each image's rng
    (left where the report ended: the split is drawn from it next)."""
    cv = _Canvas(size)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        img, lesions, ctr = _draw_image(cv, rng)
        report, distilled = write_report(lesions, rng)
        yield img, lesions, ctr, report, distilled, rng


def phantom_reports(n: int, seed: int = 0, size: int = 256) -> list[tuple[str, str]]:
    """(report, distilled) of images 0..n-1 of the world with ``seed`` and image ``size``
    (the same texts :func:`make_phantom_world` writes, without saving any image)."""
    return [(report, distilled) for _, _, _, report, distilled, _ in _draws(n, size, seed)]


def phantom_corpus(n: int = 2048, seed: int = 0) -> list[str]:
    """The texts the phantom tokenizer is trained on: reports and distilled reports of a
    phantom world, plus the rules distiller's sentences for them (what pre-training reads)."""
    from ecamp.distill.rules import distilled_text

    texts: list[str] = []
    for report, distilled in phantom_reports(n, seed=seed):
        texts += [report, distilled, distilled_text(report)]
    return texts


def build_phantom_tokenizer(out_path: str | Path) -> tokenizers.Tokenizer:
    """Train a ``phantom`` tokenizer like the bundled one and save it to ``out_path``
    (``ecamp.text.tokenizer.load_tokenizer("phantom")`` reads the copy in the package).

    ``tokenizers`` breaks ties between equally frequent merges in no fixed order, so a rebuild
    can differ from the bundled file in its intermediate word-pieces and their ids (seen: 17
    of 351); a model trained with one must keep using that file.
    """
    from ecamp.text.tokenizer import train_wordpiece

    return train_wordpiece(phantom_corpus(), PHANTOM_VOCAB, out_path, min_frequency=1)


_PNG_LEVEL = 1


def make_phantom_world(out_dir: str | Path, n: int = 256, size: int = 256, seed: int = 0) -> Path:
    """Write ``n`` phantom images, masks and ``manifest.csv`` into ``out_dir``; return the manifest path."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    bits = {c: np.uint8(1 << k) for k, c in enumerate(LESION_CLASSES)}
    rows = []
    for i, (img, lesions, ctr, report, distilled, rng) in enumerate(_draws(n, size, seed)):
        u = rng.random()
        split = "train" if u < 0.7 else ("val" if u < 0.85 else "test")
        key = f"phantom_{i:05d}"
        classes = np.zeros((size, size), np.uint8)
        for les in lesions:
            classes[les.mask] |= bits[les.kind]
        union = (classes & ~bits["cardiomegaly"]) > 0
        # zlib level 1: the same pixels as the default level 6 in about half the encoding time
        # (PNG writing was half of the world's generation), files ~15% larger
        Image.fromarray(np.rint(img * 255).astype(np.uint8)).save(
            out / "images" / f"{key}.png", compress_level=_PNG_LEVEL
        )
        Image.fromarray(union.astype(np.uint8) * 255).save(
            out / "masks" / f"{key}.png", compress_level=_PNG_LEVEL
        )
        Image.fromarray(classes).save(
            out / "masks" / f"{key}_classes.png", compress_level=_PNG_LEVEL
        )
        row: dict[str, object] = {
            "id": key,
            "image": f"images/{key}.png",
            "report": report,
            "distilled": distilled,
            "study_id": key,
            "split": split,
        }
        found = {les.kind for les in lesions}
        row.update({f"label_{c}": int(c in found) for c in LESION_CLASSES})
        row["boxes"] = json.dumps([les.box() for les in lesions])
        row["mask"] = f"masks/{key}.png"
        row["mask_classes"] = f"masks/{key}_classes.png"
        row["view"] = "PA"
        row["ctr"] = round(ctr, 4)
        rows.append(row)
    return write_table(pd.DataFrame(rows), out / "manifest.csv")
