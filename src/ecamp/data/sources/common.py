"""What every downstream dataset adapter shares.

An adapter reads one dataset from its official folder layout and yields a *downstream
manifest*: a DataFrame with one row per image and the columns (the vocabulary of
:mod:`ecamp.data.manifest`)

- ``id`` (str): the image's key (the release split lists are matched on it),
- ``image`` (str): absolute image file path (PNG / JPEG / DICOM),
- ``split`` (str): ``train`` | ``val`` | ``test``,
- classification: one float column per entry of ``source.labels`` (1/0, NaN = ignored) for
  multi-label sets, or one int column ``label`` (class index into ``source.labels``),
- detection / segmentation: ``boxes`` (JSON list of ``[x1, y1, x2, y2]`` in original pixels),
- SIIM segmentation: ``rle`` (the challenge's RLE strings of the image joined by ``|``;
  empty = no mask).

Default splits are the ECAMP release lists (package data, :mod:`ecamp.data.splits`):
``fraction`` 1 / 10 / 100 picks its 1%, 10% or full training list.  ``sampling="random"``
draws a seeded random ``fraction`` percent of the full training set instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from ecamp.data import splits as release
from ecamp.errors import DataError, UserError
from ecamp.utils.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

log = get_logger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
NO_BOX = "[]"


def index_files(root: Path, exts: Iterable[str] = IMAGE_EXTS, key: str = "name") -> dict[str, str]:
    """Map each image file under ``root`` (recursively) by file ``name`` or ``stem`` to its path."""
    exts = tuple(e.lower() for e in exts)
    out: dict[str, str] = {}
    for folder, _, files in os.walk(root, followlinks=True):
        for f in files:
            if f.lower().endswith(exts):
                out[f if key == "name" else f.rsplit(".", 1)[0]] = os.path.join(folder, f)
    return out


def find_file(root: Path, candidates: Iterable[str], what: str) -> Path:
    """The first of ``candidates`` present in ``root``, else a DataError naming them."""
    cands = list(candidates)
    for name in cands:
        if (root / name).is_file():
            return root / name
    raise DataError(
        f"{what}: none of {cands} found in {root}; point the source at the dataset's root folder"
    )


def read_table(path: Path, required: Iterable[str], **kwargs) -> pd.DataFrame:
    """Read a CSV (plain, .gz or .zip), strip header whitespace, check required columns."""
    try:
        df = pd.read_csv(path, **kwargs)
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise DataError(f"{path}: cannot read as CSV ({e})") from e
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    return df


def rle_decode(rle: str, height: int, width: int) -> np.ndarray:
    """Decode SIIM-ACR challenge RLE into a bool (H,W) mask.

    The challenge's format: pairs ``start length`` where each start is an offset *relative to
    the end of the previous run*, over the image flattened column-major.  Several RLE strings
    joined by ``|`` (several rows of one image) are united; ``-1`` or empty = no mask.
    """
    flat = np.zeros(height * width + 1, dtype=np.int32)
    for part in str(rle).split("|"):
        part = part.strip()
        if not part or part == "-1":
            continue
        try:
            nums = np.asarray(part.split(), dtype=np.int64)
        except ValueError as e:
            raise DataError(f"malformed RLE string {part[:40]!r}...") from e
        if nums.size % 2:
            raise DataError(f"RLE string with an odd count of numbers: {part[:40]!r}...")
        rel, lengths = nums[0::2], nums[1::2]
        # absolute start = relative start + everything consumed before it
        starts = np.cumsum(rel) + np.concatenate([[0], np.cumsum(lengths)[:-1]])
        ends = starts + lengths
        if ends.max(initial=0) > height * width:
            raise DataError(f"RLE runs past a {height}x{width} image: {part[:40]!r}...")
        np.add.at(flat, starts, 1)
        np.add.at(flat, ends, -1)
    mask = np.cumsum(flat[:-1]) > 0
    return mask.reshape(width, height).T


def rle_encode(mask: np.ndarray) -> str:
    """Inverse of :func:`rle_decode` for one mask (``-1`` when empty)."""
    flat = np.asarray(mask, dtype=bool).T.reshape(-1)
    padded = np.concatenate([[False], flat, [False]])
    change = np.flatnonzero(padded[1:] != padded[:-1])
    if change.size == 0:
        return "-1"
    starts, ends = change[0::2], change[1::2]
    lengths = ends - starts
    rel = starts - np.concatenate([[0], ends[:-1]])
    return " ".join(f"{s} {n}" for s, n in zip(rel, lengths))


def boxes_to_mask(boxes: Iterable[Iterable[float]], height: int, width: int) -> np.ndarray:
    """Fill ``[x1, y1, x2, y2]`` boxes (pixels) into a bool (H,W) mask."""
    mask = np.zeros((height, width), dtype=bool)
    for x1, y1, x2, y2 in boxes:  # a handful of boxes per image
        mask[max(int(y1), 0) : int(np.ceil(y2)), max(int(x1), 0) : int(np.ceil(x2))] = True
    return mask


def parse_boxes(text: str) -> list[list[float]]:
    """Boxes of a ``boxes`` / release ``bbox`` cell; the release's all-zero box means none."""
    try:
        boxes = json.loads(text) if text else []
    except json.JSONDecodeError as e:
        raise DataError(f"malformed box list {text[:60]!r}") from e
    return [[float(v) for v in b] for b in boxes if len(b) == 4 and b[2] > b[0] and b[3] > b[1]]


def parse_fraction(text: str | float) -> tuple[float, str]:
    """``"10"`` -> (10, "release"); ``"random:5"`` -> (5, "random"): a CLI fraction spec."""
    spec = str(text).strip()
    sampling = "release"
    if ":" in spec:
        sampling, spec = (part.strip() for part in spec.split(":", 1))
    try:
        value = float(spec)
    except ValueError as e:
        raise UserError(
            f"fraction {text!r}: use a percentage (1, 10, 100) or random:PERCENT"
        ) from e
    if sampling not in ("release", "random"):
        raise UserError(f"fraction {text!r}: sampling must be 'release' or 'random'")
    return value, sampling


def subset(ids: list[str], fraction: float, seed: int) -> list[str]:
    """A seeded random ``fraction`` percent of ``ids`` (at least one)."""
    if not 0 < fraction <= 100:
        raise UserError(f"fraction must be a percentage in (0, 100], not {fraction}")
    n = max(1, int(round(len(ids) * fraction / 100.0)))
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(ids), size=min(n, len(ids)), replace=False))
    return [ids[i] for i in pick]


class DownstreamSource:
    """Base class of the dataset adapters (same interface and label order for each).

    Subclasses set the class attributes and implement :meth:`table` (every image the
    official files know, with labels) and :meth:`list_id` (a release list entry -> ``id``).
    """

    name: ClassVar[str] = ""
    labels: ClassVar[tuple[str, ...]] = ()
    multilabel: ClassVar[bool] = True
    seg_target: ClassVar[str] = "boxes"  # manifest column a segmentation mask is built from
    # task -> (release split folder, dataset folder)
    release_sets: ClassVar[dict[str, tuple[str, str]]] = {}
    # drawn by ecamp (the phantom world) rather than read from official files: no prepared
    # manifests (``data.manifest``) apply, and with no release lists the training share is
    # always a random one and the splits come with the source (no ``data.split_mode``)
    generated: ClassVar[bool] = False
    # ``data.labels`` picks the classes the seg / det targets hold (:meth:`class_names`
    # honours ``wanted`` for them); elsewhere seg / det have one target
    picks_target_classes: ClassVar[bool] = False

    def __init__(self, root: str | Path, missing: str = "skip") -> None:
        """``missing``: what to do with list entries absent from the local copy (skip | fail)."""
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise UserError(f"{self.name}: dataset root {self.root} is not a folder")
        if missing not in ("skip", "fail"):
            raise UserError(f"missing must be 'skip' or 'fail', not {missing!r}")
        self.missing = missing

    @classmethod
    def from_data_config(
        cls,
        data: Any,
        workdir: Path,
        *,
        main: bool = True,
        barrier: Callable[[], None] | None = None,
    ) -> DownstreamSource:
        """The adapter a downstream data config (``data.root``, ``data.source_args``) names.

        ``workdir`` / ``main`` / ``barrier`` serve sources drawn on the fly (the phantom
        world); a real dataset only needs its root.
        """
        if not data.root:
            raise UserError(f"data.dataset={data.dataset}: give --data-root (the dataset's folder)")
        return cls(data.root, **data.source_args)

    @classmethod
    def class_names(cls, task: str, wanted: Sequence[str] = ()) -> list[str]:
        """The class names of ``task``'s targets (``wanted``: classes a source lets one pick)."""
        return list(cls.labels)

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.release_sets)

    # ---- to implement
    def table(self, task: str) -> pd.DataFrame:
        """Every image of the local copy: ``id``, ``image``, task columns, ``official_split``."""
        raise NotImplementedError

    def list_id(self, entry: str) -> str:
        """The ``id`` a release list entry (path or ImageId) refers to."""
        return entry

    # ---- shared
    @classmethod
    def label_columns(cls, task: str = "cls") -> list[str]:
        """Manifest columns holding the targets of ``task``."""
        if task == "cls":
            return list(cls.labels) if cls.multilabel else ["label"]
        return [cls.seg_target] if task == "seg" else ["boxes"]

    def _check_task(self, task: str) -> None:
        if task not in self.release_sets:
            raise UserError(
                f"{self.name} has no {task!r} task; use one of {list(self.release_sets)}"
            )

    def _release(self, task: str, split: str) -> pd.DataFrame | None:
        folder, dataset = self.release_sets[task]
        df = release.read_split(folder, dataset, split)
        if df is None:
            return None
        key = df.columns[0]  # the entry naming the image: a list path, ImageId or image_path
        df = df.copy()
        df["id"] = [self.list_id(e) for e in df[key]]
        return df

    def _from_list(
        self, table: pd.DataFrame, lst: pd.DataFrame, task: str, labels_from: str, what: str
    ) -> pd.DataFrame:
        """Rows of ``table`` named by a release list, its targets taken from the list if asked."""
        ids = list(dict.fromkeys(lst["id"]))  # unique, in list order
        present = [i for i in ids if i in table.index]
        if len(present) < len(ids):
            msg = f"{self.name} {what}: {len(ids) - len(present)} of {len(ids)} listed images are not in {self.root}"
            if self.missing == "fail":
                raise DataError(msg + " (pass missing='skip' to use what is there)")
            log.warning(msg + "; skipped")
        rows = table.loc[present].copy()
        if labels_from == "list" and present:
            self._apply_list_targets(rows, lst.set_index("id"), task)
        return rows

    def _apply_list_targets(self, rows: pd.DataFrame, lst: pd.DataFrame, task: str) -> None:
        if task == "cls":
            first = lst[~lst.index.duplicated()]
            if self.multilabel:
                for k, name in enumerate(self.labels):
                    rows[name] = first.loc[rows.index, f"label_{k}"].astype(float).to_numpy()
            else:
                rows["label"] = first.loc[rows.index, "label_0"].astype(int).to_numpy()
        elif "bbox" in lst.columns:
            first = lst[~lst.index.duplicated()]
            rows["boxes"] = [json.dumps(parse_boxes(b)) for b in first.loc[rows.index, "bbox"]]
        elif "EncodedPixels" in lst.columns:
            rle = lst["EncodedPixels"].astype(str).str.strip()
            joined = rle[rle != "-1"].groupby(level=0).agg("|".join)
            rows["rle"] = [joined.get(i, "") for i in rows.index]

    def manifest(
        self,
        task: str = "cls",
        fraction: float = 100,
        sampling: str = "release",
        seed: int = 0,
        labels_from: str = "list",
        test_split: str = "test",
        split_mode: str = "paper",
        split_seed: int = 0,
    ) -> pd.DataFrame:
        """The downstream manifest of ``task`` with train / val / test rows.

        ``fraction`` (percent) with ``sampling="release"`` must be 1, 10 or 100 (the release's
        lists); ``sampling="random"`` draws that percentage of the full training set with
        ``seed``.  ``labels_from="list"`` takes targets from the release lists (what the paper
        was scored on), ``"official"`` from the dataset's own label files.  ``test_split``
        names the release list used as test set (CheXpert also has ``test_600``).
        ``split_mode``: ``paper`` (leak-free: train and val hold no test image or patient,
        CheXpert's val is 5,000 training images drawn with ``split_seed``, labelled from the
        dataset's files) or ``release`` (the lists as shipped); see
        :mod:`ecamp.data.split_modes`.
        """
        from ecamp.data import split_modes

        self._check_task(task)
        if sampling not in ("release", "random"):
            raise UserError(f"sampling must be 'release' or 'random', not {sampling!r}")
        if labels_from not in ("list", "official"):
            raise UserError(f"labels_from must be 'list' or 'official', not {labels_from!r}")
        if sampling == "release" and fraction not in (1, 10, 100):
            raise UserError(
                f"release splits exist for fraction 1, 10 and 100, not {fraction}; use sampling='random'"
            )
        table = self.table(task).set_index("id", drop=False)
        table = table[~table.index.duplicated()]
        official = table.index[table["official_split"] == "train"].tolist()
        key, _ = split_modes.patient_key(self.name, self.root)
        plan = split_modes.plan_splits(
            self.name,
            task,
            fraction if sampling == "release" else 100,
            split_mode,
            pool=official,
            patient=key,
            seed=split_seed,
            test_split=test_split,
        )

        def rows_of(list_name: str, ids: list[str]) -> pd.DataFrame:
            lst = self._release(task, list_name) if list_name else None
            if lst is None:  # ids drawn from the dataset's own training images
                return table.loc[[i for i in ids if i in table.index]].copy()
            wanted = set(ids)
            return self._from_list(table, lst[lst["id"].isin(wanted)], task, labels_from, list_name)

        if plan.train is None:  # without a pool the plan cannot name the full training set
            raise UserError(f"{self.name}: no training images found under {self.root}")
        train_list = (
            "train" if sampling == "random" or fraction == 100 else f"train_{int(fraction)}"
        )
        train = rows_of(train_list, plan.train)
        if sampling == "random":
            train = train.loc[subset(list(train.index), float(fraction), seed)]
        val = rows_of("val", plan.val) if plan.val_from_list else rows_of("", plan.val)
        parts = [
            train.assign(split="train"),
            val.assign(split="val"),
            rows_of(test_split, plan.test).assign(split="test"),
        ]
        out = pd.concat(parts, ignore_index=True)
        keep = ["id", "image", "split"] + self.label_columns(task)
        return out[keep].reset_index(drop=True)
