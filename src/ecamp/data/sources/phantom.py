"""The synthetic phantom world (:mod:`ecamp.data.synthetic`) as a downstream dataset.

Unlike the real sets it has no official files and no release lists: ecamp draws it
(:func:`ensure_world`), and every task reads the world's own ``manifest.csv``.  cls: the six
lesion labels; seg: the pixels of the targeted lesion classes as one binary RLE mask; det: one
box per lesion of the targeted classes.  The splits are the world's own (train / val / test);
``fraction`` < 100 keeps a seeded random share of the training rows (no release lists).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from ecamp.data.manifest import normalize_manifest
from ecamp.data.sources.common import DownstreamSource, rle_encode, subset
from ecamp.data.synthetic import LESION_CLASSES
from ecamp.errors import DataError, UserError
from ecamp.utils.logging import get_logger

log = get_logger(__name__)

# focal phantom lesions: what its detection boxes hold by default
PHANTOM_FOCAL = ("opacity", "nodule", "effusion", "pneumothorax", "atelectasis")
# what phantom segmentation masks hold by default: the two large-area lesions (about 3 % and 7 %
# of an image where present).  Opacity, nodule and atelectasis cover 0.1-0.7 % of an image, a
# few pixels at 64 px, below what a patch-8 token map can resolve from a small training set.
PHANTOM_SEG_DEFAULT = ("effusion", "pneumothorax")


def phantom_classes(task: str, wanted: Sequence[str] = ()) -> list[str]:
    """The lesion classes a phantom ``task`` targets: ``wanted`` (checked) or the task default.

    cls: all six labels (selected later by :func:`ecamp.data.downstream.select_labels`); seg:
    :data:`PHANTOM_SEG_DEFAULT`; det: :data:`PHANTOM_FOCAL`.
    """
    if task == "cls" or not wanted:
        return list({"seg": PHANTOM_SEG_DEFAULT, "det": PHANTOM_FOCAL}.get(task, LESION_CLASSES))
    unknown = [w for w in wanted if w not in LESION_CLASSES]
    if unknown:
        raise UserError(
            f"data.labels: unknown phantom lesion class(es) {unknown}; choose from {LESION_CLASSES}"
        )
    return list(dict.fromkeys(wanted))


def phantom_manifest(
    world_csv: str | Path, task: str, classes: Sequence[str] = ()
) -> tuple[pd.DataFrame, list[str]]:
    """The phantom world as a downstream manifest for ``task``, and its class names.

    cls: the six lesion labels; seg: the pixels of the lesion ``classes`` (read from the
    per-class bit mask; default :data:`PHANTOM_SEG_DEFAULT`) as one binary RLE mask; det: one
    box per lesion of ``classes`` (default the focal ones: cardiomegaly is a heart shadow).
    The returned names are the targeted classes.  A world written before the one manifest
    vocabulary (splits ``validate``) is read in it (:func:`ecamp.data.manifest.normalize_manifest`).
    """
    import numpy as np
    from PIL import Image

    path = Path(world_csv)
    df = normalize_manifest(pd.read_csv(path))
    root = path.parent
    targets = phantom_classes(task, classes)
    out = pd.DataFrame(
        {
            "id": df["id"].astype(str),
            "image": [str(root / p) for p in df["image"]],
            "split": df["split"],
        }
    )
    if task == "cls":
        for c in LESION_CLASSES:
            out[c] = df[f"label_{c}"].astype(float)
        return out, list(LESION_CLASSES)
    if task == "det":
        out["boxes"] = [
            json.dumps([b[:4] for b in json.loads(s) if b[4] in targets]) for s in df["boxes"]
        ]
        return out, targets
    if "mask_classes" not in df.columns:
        raise DataError(f"{path}: no 'mask_classes' column; regenerate the phantom world")
    bits = np.uint8(sum(1 << LESION_CLASSES.index(c) for c in targets))
    rles = []
    for m in df["mask_classes"]:  # a few hundred small masks, read once
        try:
            rles.append(rle_encode((np.asarray(Image.open(root / m)) & bits) > 0))
        except OSError as e:
            raise DataError(f"{root / m}: cannot read the phantom class mask ({e})") from None
    out["rle"] = ["" if r == "-1" else r for r in rles]
    return out, targets


def ensure_world(
    folder: str | Path,
    n: int,
    size: int,
    seed: int,
    *,
    main: bool = True,
    barrier: Callable[[], None] | None = None,
) -> Path:
    """``folder/manifest.csv``, drawing the world there first if it is missing.

    Under DDP only the ``main`` process draws; ``barrier`` (the process group's) makes the
    others wait until the files are complete.
    """
    from ecamp.data import synthetic

    world = Path(folder)
    csv = world / "manifest.csv"
    if main and not csv.is_file():
        log.info("generating the phantom world (%d images) in %s", n, world)
        synthetic.make_phantom_world(world, n=n, size=size, seed=seed)
    if barrier is not None:
        barrier()
    return csv


class PhantomWorld(DownstreamSource):
    """The phantom world in ``root`` (a folder holding its ``manifest.csv``).

    ``classes``: the lesion classes seg / det target (default :data:`PHANTOM_SEG_DEFAULT` /
    :data:`PHANTOM_FOCAL`); cls always has the six labels.
    """

    name = "phantom"
    labels = LESION_CLASSES
    multilabel = True
    seg_target = "rle"
    # no release lists: the entries only name the tasks (the manifest never reads them)
    release_sets: ClassVar[dict[str, tuple[str, str]]] = {
        t: ("", "") for t in ("cls", "seg", "det")
    }
    generated = True
    picks_target_classes = True  # the lesion classes seg / det target

    def __init__(
        self, root: str | Path, missing: str = "skip", classes: Sequence[str] = ()
    ) -> None:
        super().__init__(root, missing)
        self.classes = list(classes)

    @classmethod
    def from_data_config(
        cls,
        data: Any,
        workdir: Path,
        *,
        main: bool = True,
        barrier: Callable[[], None] | None = None,
    ) -> DownstreamSource:
        """The world ``data.root`` names (default ``workdir/phantom``), drawn there if missing
        with ``data.synthetic_n`` / ``synthetic_size`` / ``synthetic_seed``."""
        csv = ensure_world(
            Path(data.root) if data.root else workdir / "phantom",
            n=data.synthetic_n,
            size=data.synthetic_size,
            seed=data.synthetic_seed,
            main=main,
            barrier=barrier,
        )
        return cls(csv.parent, classes=data.labels)

    @classmethod
    def class_names(cls, task: str, wanted: Sequence[str] = ()) -> list[str]:
        return list(LESION_CLASSES) if task == "cls" else phantom_classes(task, wanted)

    def table(self, task: str) -> pd.DataFrame:
        return phantom_manifest(self.root / "manifest.csv", task, self.classes)[0]

    def manifest(
        self,
        task: str = "cls",
        fraction: float = 100,
        sampling: str = "random",
        seed: int = 0,
        labels_from: str = "list",
        test_split: str = "test",
        split_mode: str = "paper",
        split_seed: int = 0,
    ) -> pd.DataFrame:
        """The world's rows for ``task``; ``fraction`` < 100 keeps a seeded random share of
        the training rows (sampling, label and split modes do not apply: no release lists)."""
        self._check_task(task)
        df = self.table(task)
        if fraction < 100:  # no release lists: always a seeded random share
            train_ids = df.loc[df["split"] == "train", "id"].tolist()
            keep = set(subset(train_ids, fraction, seed))
            df = df[(df["split"] != "train") | df["id"].isin(keep)].reset_index(drop=True)
        return df
