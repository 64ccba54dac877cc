"""Leak-free train / val / test splits built from the release's shipped lists.

The release's lists leak (measured on the shipped copies, ``ecamp splits``): CheXpert's
``val_list`` is its ``test_list`` (234 images), so the best checkpoint is picked on the test
set; SIIM's val and test share 124 images, and 5 of ``train_1`` and 49 of ``train_10`` are in
its test list.  Two modes:

- ``paper`` (default): the test list stays exactly the release's (results stay comparable);
  validation is the release's val list minus every test image, and training is the release's
  training list minus every val and test image.  Where images carry patient ids (ChestX-ray14
  and CheXpert from their file names; COVIDx and SIIM from the dataset's files), images of a
  test patient leave val and train, and images of a val patient leave train.  CheXpert's val
  is drawn instead, as the paper says: 5,000 images, seeded, whole patients at a time, from
  the training pool outside the chosen fraction (the full training set at 100 %, which then
  trains on the rest: 223,414 - 5,000 = 218,414 images as in the paper); fewer when the
  pool is smaller, logged.
- ``release``: the lists byte for byte, overlaps included; each kept overlap is logged.

The *training pool* is the release's full ``train_list`` where one ships (RSNA, COVIDx), else
the dataset's official training images (an adapter's table; ChestX-ray14, CheXpert, SIIM),
else, with no dataset at hand, the union of the shipped 1 % and 10 % lists (a lower bound,
noted in the output).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ecamp.data import splits as release
from ecamp.errors import UserError
from ecamp.utils.logging import get_logger

log = get_logger(__name__)

SplitMode = Literal["paper", "release"]
MODES: tuple[str, ...] = ("paper", "release")
CHEXPERT_VAL_SIZE = 5000  # the paper's CheXpert validation set (Sec. 4.1)
FRACTIONS = (1, 10, 100)


@dataclass
class SplitPlan:
    """The image ids (adapter ``id`` values) of each split, in list order, and what was done."""

    train: list[str] | None  # None: the full training set needs the dataset (official images)
    val: list[str]
    test: list[str]
    # which ids came from which release list (labels can then be read from that list)
    val_from_list: bool = True
    notes: list[str] = field(default_factory=list)


def _adapter(dataset: str):
    from ecamp.data.downstream import SOURCES

    listed = sorted(k for k, v in SOURCES.items() if not v.generated)  # with release lists
    if dataset not in listed:
        raise UserError(f"unknown dataset {dataset!r}; use one of {listed}")
    cls = SOURCES[dataset]
    return cls, cls.__new__(cls)  # list_id needs no dataset root


def tasks_of(dataset: str) -> tuple[str, ...]:
    """The tasks ``dataset`` has release lists for (cls, seg, det)."""
    return tuple(_adapter(dataset)[0].release_sets)


@functools.lru_cache(maxsize=32)
def _lists(dataset: str, task: str) -> dict[str, tuple[str, ...]]:
    cls, src = _adapter(dataset)
    if task not in cls.release_sets:
        raise UserError(f"{dataset} has no {task!r} task; it has {list(cls.release_sets)}")
    folder, name = cls.release_sets[task]
    out = {}
    for split in release.available(folder, name):
        df = release.read_split(folder, name, split)
        assert df is not None
        key = df.columns[0]  # the entry naming the image: a list path, ImageId or image_path
        out[split] = tuple(dict.fromkeys(src.list_id(e) for e in df[key]))  # unique, in order
    return out


def release_ids(dataset: str, task: str) -> dict[str, list[str]]:
    """Each shipped release list of ``dataset``/``task`` as its unique image ids, in order."""
    return {k: list(v) for k, v in _lists(dataset, task).items()}


# --------------------------------------------------------------------------- patients


def _cxr14_patient(image_id: str) -> str:
    return image_id.split("_", 1)[0]  # NIH names: <patient>_<follow-up>.png


def _chexpert_patient(image_id: str) -> str:
    parts = image_id.split("/")
    return parts[1] if len(parts) > 2 and parts[1].startswith("patient") else image_id


def _covidx_patients(root: Path) -> dict[str, str]:
    from ecamp.data.sources.covidx import COVIDx

    src = COVIDx(root)
    out = {}
    for split in ("train", "test"):
        path = src._split_file(split)
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2:
                out[f"{split}/{parts[1]}"] = parts[0]
    return out


def _siim_patients(root: Path) -> dict[str, str]:
    import pydicom

    from ecamp.data.sources.common import index_files

    out = {}
    for stem, path in index_files(root, (".dcm",), key="stem").items():
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
        except (OSError, pydicom.errors.InvalidDicomError):
            continue  # unreadable files are reported by the loader, not here
        pid = str(getattr(ds, "PatientID", "") or "")
        if pid:
            out[stem] = pid
    return out


def patient_key(
    dataset: str, root: str | Path | None = None
) -> tuple[Callable[[str], str] | None, str]:
    """(image id -> patient id, where the ids come from); (None, reason) where unknown.

    ChestX-ray14 and CheXpert name the patient in the file path; COVIDx's split files and
    SIIM's DICOM headers (``PatientID``) need the dataset (``root``).  RSNA's ``patientId``
    names one image each, so its patients are its images.
    """
    if dataset == "chestxray14":
        return _cxr14_patient, "file names (<patient>_<n>.png)"
    if dataset == "chexpert":
        return _chexpert_patient, "paths (.../patientNNNNN/...)"
    if dataset == "rsna":
        return None, "RSNA's patientId is one image: patient overlap = image overlap"
    if root is None:
        return None, f"{dataset} patient ids need the dataset: pass --data-root"
    root = Path(root).expanduser()
    if dataset == "covidx":
        table = _covidx_patients(root)
        return (lambda i: table.get(i, i)), "the COVIDx split files (patient_id column)"
    table = _siim_patients(root)
    return (lambda i: table.get(i, i)), f"DICOM PatientID of {len(table)} files"


# --------------------------------------------------------------------------- plans


def _drop(
    ids: Iterable[str], images: set[str], patients: set[str], key: Callable[[str], str] | None
) -> list[str]:
    if key is None:
        return [i for i in ids if i not in images]
    return [i for i in ids if i not in images and key(i) not in patients]


def _draw_by_patient(
    candidates: list[str], n: int, seed: int, key: Callable[[str], str] | None
) -> list[str]:
    """Whole patients in a seeded order until ``n`` images (never more), in candidate order."""
    groups: dict[str, list[str]] = {}
    for i in sorted(candidates):  # independent of the table's row order
        groups.setdefault(key(i) if key else i, []).append(i)
    names = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(names))
    chosen: set[str] = set()
    for j in order:
        if len(chosen) >= n:
            break
        g = groups[names[j]]
        if len(chosen) + len(g) <= n:
            chosen.update(g)
    return [i for i in candidates if i in chosen]


def _fraction_name(fraction: float) -> str:
    if fraction not in FRACTIONS:
        raise UserError(f"fraction {fraction}: the release lists exist for 1, 10 and 100")
    return "train" if fraction == 100 else f"train_{int(fraction)}"


def overlaps(
    sets: dict[str, list[str] | None], key: Callable[[str], str] | None = None
) -> dict[str, int | None]:
    """Every pairwise overlap (``a&b``) of the named id lists, by image or by ``key(id)``."""
    names = list(sets)
    out: dict[str, int | None] = {}
    for x in range(len(names)):
        for y in range(x + 1, len(names)):
            a, b = sets[names[x]], sets[names[y]]
            if a is None or b is None:
                out[f"{names[x]}&{names[y]}"] = None
                continue
            sa = set(a) if key is None else {key(i) for i in a}
            sb = set(b) if key is None else {key(i) for i in b}
            out[f"{names[x]}&{names[y]}"] = len(sa & sb)
    return out


def plan_splits(
    dataset: str,
    task: str,
    fraction: float = 100,
    mode: str = "paper",
    *,
    pool: list[str] | None = None,
    patient: Callable[[str], str] | None = None,
    seed: int = 0,
    test_split: str = "test",
    val_size: int = CHEXPERT_VAL_SIZE,
) -> SplitPlan:
    """The train / val / test ids of ``dataset``/``task`` at ``fraction`` % in ``mode``.

    ``pool``: the official training images (ids) where the dataset is at hand; ``patient``:
    image id -> patient id (see :func:`patient_key`); ``seed`` draws CheXpert's val set.
    """
    if mode not in MODES:
        raise UserError(f"split mode {mode!r}: use one of {MODES}")
    lists = _lists(dataset, task)
    if test_split not in lists:
        raise UserError(f"{dataset} {task}: no release list {test_split!r}; it has {sorted(lists)}")
    name = _fraction_name(fraction)
    test, rel_val = list(lists[test_split]), list(lists["val"])
    notes: list[str] = []
    full = list(lists["train"]) if "train" in lists else None
    if full is None and pool is not None:
        full = list(pool)  # the official training images: the release's train minus val, test
    union = list(dict.fromkeys(i for k in ("train_1", "train_10") for i in lists.get(k, ())))
    if name == "train":
        held_out = set(rel_val) | set(test)
        train = None if full is None else [i for i in full if i not in held_out]
    else:
        train = list(lists[name])
    if mode == "release":
        for pair, n in overlaps({"train": train, "val": rel_val, "test": test}).items():
            if n:
                notes.append(f"release mode keeps {n} images in both {pair.replace('&', ' and ')}")
        for note in notes:
            log.warning("%s %s: %s", dataset, task, note)
        return SplitPlan(train, rel_val, test, True, notes)

    test_set = set(test)
    test_pat = {patient(i) for i in test} if patient else set()
    if dataset == "chexpert":
        if full is None:
            base = union
            notes.append(
                f"training pool = the shipped 1 % and 10 % lists only ({len(base)} images); "
                "pass the dataset (--data-root) for the official training set"
            )
        else:
            base = full
        taken = set() if train is None or name == "train" else set(train)
        taken_pat = {patient(i) for i in taken} if patient else set()
        cands = _drop(base, test_set | taken, test_pat | taken_pat, patient)
        val = _draw_by_patient(cands, val_size, seed, patient)
        if len(val) < val_size:
            notes.append(
                f"CheXpert val: {len(val)} images, fewer than {val_size}: the pool outside "
                f"{name} holds {len(cands)}"
            )
        notes.append(f"CheXpert val drawn (seed {seed}) from the training pool outside {name}")
        if name == "train":
            train = None if full is None else list(base)
        val_from_list = False
    else:
        val = _drop(rel_val, test_set, test_pat, patient)
        if len(val) < len(rel_val):
            notes.append(f"val: {len(rel_val) - len(val)} images of test images/patients left out")
        val_from_list = True
    if train is not None:
        val_pat = {patient(i) for i in val} if patient else set()
        kept = _drop(train, test_set | set(val), test_pat | val_pat, patient)
        if len(kept) < len(train):
            notes.append(
                f"{name}: {len(train) - len(kept)} images of val/test images/patients left out"
            )
        train = kept
    for note in notes:
        log.info("%s %s (paper splits): %s", dataset, task, note)
    return SplitPlan(train, val, test, val_from_list, notes)


def audit(
    dataset: str,
    task: str | None = None,
    fraction: float = 100,
    mode: str = "paper",
    root: str | Path | None = None,
    seed: int = 0,
    test_split: str = "test",
) -> dict:
    """What ``ecamp splits`` prints: sizes and every pairwise overlap of one split plan."""
    tasks = tasks_of(dataset)
    task = task or tasks[0]
    pool = None
    if root is not None and "train" not in _lists(dataset, task):
        from ecamp.data.downstream import get_source

        table = get_source(dataset, root).table(task)
        pool = table.loc[table["official_split"] == "train", "id"].drop_duplicates().tolist()
    key, source = patient_key(dataset, root)
    plan = plan_splits(
        dataset, task, fraction, mode, pool=pool, patient=key, seed=seed, test_split=test_split
    )
    sets = {"train": plan.train, "val": plan.val, "test": plan.test}
    return {
        "dataset": dataset,
        "task": task,
        "fraction": fraction,
        "mode": mode,
        "test_split": test_split,
        "sizes": {k: (None if v is None else len(v)) for k, v in sets.items()},
        "overlap_images": overlaps(sets),
        "overlap_patients": overlaps(sets, key) if key else None,
        "patients_from": source,
        "training_pool": (
            "release train_list"
            if "train" in _lists(dataset, task)
            else ("dataset's official training images" if pool is not None else "not given")
        ),
        "notes": plan.notes,
    }


__all__ = [
    "CHEXPERT_VAL_SIZE",
    "MODES",
    "SplitMode",
    "SplitPlan",
    "audit",
    "overlaps",
    "patient_key",
    "plan_splits",
    "release_ids",
    "tasks_of",
]
