"""Property: no file makes a table reader or `ecamp evaluate` raise anything but ecamp's errors.

Whatever bytes a manifest, a reports table, a distilled output or a prediction / target file
holds (random bytes, ragged CSV, other encodings, NaN and inf, JSON of any shape, damaged
Parquet and NPZ), the reader either returns or raises a :class:`~ecamp.errors.UserError`
(which the CLI prints as one line), never a pandas / numpy / sklearn / torch traceback.
Derandomised and without a deadline: the same examples on every run, no timing flakes.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecamp.errors import UserError

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

COLUMNS = ["id", "image", "report", "distilled", "study_id", "split", "findings", "impression"]
COLUMNS += ["A", "B", "label", "score", "boxes", ""]
CELLS = ["", "1", "0", "-1", "2", "0.5", "nan", "NaN", "inf", "-inf", "1e400", "a", "train"]
CELLS += ["val", '"', '""', "x,y", "a\tb", "é", "True", " ", "s123", "[1, 2]", "\x00"]

cell = st.one_of(st.sampled_from(CELLS), st.text(max_size=6))
row = st.lists(cell, min_size=0, max_size=6)


@st.composite
def csv_bytes(draw: st.DrawFn) -> bytes:
    sep = draw(st.sampled_from([",", "\t", ";"]))
    header = draw(st.lists(st.sampled_from(COLUMNS), min_size=0, max_size=6))
    rows = draw(st.lists(row, max_size=6))
    text = "\n".join(sep.join(r) for r in [header, *rows]) + draw(st.sampled_from(["", "\n"]))
    encoding = draw(st.sampled_from(["utf-8", "latin-1", "utf-16"]))
    return text.encode(encoding, errors="replace")


json_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(CELLS),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.sampled_from(COLUMNS), inner, max_size=5)
    ),
    max_leaves=12,
)


@st.composite
def jsonl_bytes(draw: st.DrawFn) -> bytes:
    lines = draw(
        st.lists(
            st.one_of(
                st.dictionaries(st.sampled_from(COLUMNS), json_value, max_size=6).map(json.dumps),
                json_value.map(json.dumps),
                st.sampled_from(["", "{", "{bad}", '{"id": 1,}', "[", "\ufeff{}"]),
            ),
            max_size=6,
        )
    )
    data = "\n".join(lines).encode()
    return data + (b"\xff\xfe" if draw(st.booleans()) else b"")


@st.composite
def parquet_bytes(draw: st.DrawFn) -> bytes:
    cols = draw(st.lists(st.sampled_from(COLUMNS[:8]), min_size=1, max_size=4, unique=True))
    n = draw(st.integers(0, 4))
    kind = draw(st.sampled_from(["str", "int", "float", "none"]))
    make: dict[str, Callable[[int], Any]] = {
        "str": lambda i: f"v{i}",
        "int": lambda i: i,
        "float": lambda i: float("nan") if i % 2 else 0.5,
        "none": lambda i: None,
    }
    df = pd.DataFrame({c: [make[kind](i) for i in range(n)] for c in cols})
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    data = buf.getvalue()
    cut = draw(st.sampled_from([None, len(data) // 2, 8]))
    return data if cut is None else data[:cut]


table_bytes = st.one_of(st.binary(max_size=120), csv_bytes(), jsonl_bytes())


def _only_user_errors(fn: Callable[[], Any]) -> None:
    with contextlib.suppress(UserError):  # ecamp's own: printed as one clear line
        fn()


def _write(folder: Path, name: str, data: bytes) -> Path:
    p = folder / name
    p.write_bytes(data)
    return p


def _readers(p: Path) -> list[Callable[[], Any]]:
    from ecamp.data.downstream import load_manifest
    from ecamp.data.manifest import load_pretrain_manifest, read_table
    from ecamp.distill import merge
    from ecamp.distill.run import read_reports
    from ecamp.text.stats import read_corpus

    calls: list[Callable[[], Any]] = [
        lambda: merge.read_table(p),
        lambda: merge.read_distilled([p]),
        lambda: read_reports(p),
        lambda: read_reports(p, "id", ("report",)),
    ]
    if p.suffix in (".csv", ".jsonl", ".parquet"):
        calls += [
            lambda: read_table(p),
            lambda: load_pretrain_manifest(p, bad_rows="skip"),
            lambda: load_pretrain_manifest(p, bad_rows="fail"),
        ]
    if p.suffix in (".csv", ".jsonl", ".json"):
        calls.append(lambda: read_corpus(p, "report,findings"))
    if p.suffix == ".csv":
        calls.append(lambda: load_manifest(p))
    return calls


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json"])
@SETTINGS
@given(data=table_bytes)
def test_table_readers_raise_only_ecamp_errors(suffix: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = _write(Path(d), f"t{suffix}", data)
        for call in _readers(p):
            _only_user_errors(call)


@SETTINGS
@given(data=st.one_of(parquet_bytes(), st.binary(max_size=64)))
def test_parquet_readers_raise_only_ecamp_errors(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = _write(Path(d), "t.parquet", data)
        for call in _readers(p):
            _only_user_errors(call)


SCORE_CELLS = ["0", "1", "0.25", "0.75", "2", "-1", "nan", "inf", "", "x", "1e400"]
clean_cell = st.sampled_from(SCORE_CELLS[:4])
score_cell = st.one_of(*[clean_cell] * 12, st.sampled_from(SCORE_CELLS), cell)  # ~1 in 14 broken


@st.composite
def cls_csv(draw: st.DrawFn) -> bytes:
    """Mostly well-formed: unique ids, known columns, cells mostly numbers (some broken)."""
    ids = draw(st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), max_size=5, unique=True))
    cols = draw(
        st.lists(st.sampled_from(["A", "B", "label", "x"]), min_size=1, max_size=3, unique=True)
    )
    lines = [",".join([i, *(draw(score_cell).replace("\n", " ") for _ in cols)]) for i in ids]
    return "\n".join([",".join(["id", *cols]), *lines]).encode()


@SETTINGS
@given(
    pred=st.one_of(cls_csv(), cls_csv(), cls_csv(), csv_bytes(), st.binary(max_size=40)),
    tgt=st.one_of(cls_csv(), cls_csv(), cls_csv(), csv_bytes()),
    metric=st.sampled_from(["auto", "auc", "accuracy"]),
)
def test_evaluate_cls_raises_only_ecamp_errors(pred: bytes, tgt: bytes, metric: str) -> None:
    from ecamp.eval.cli import evaluate_cls

    with tempfile.TemporaryDirectory() as d:
        p, t = _write(Path(d), "p.csv", pred), _write(Path(d), "t.csv", tgt)
        _only_user_errors(lambda: evaluate_cls(p, t, metric))


@st.composite
def npz_bytes(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 5)) == 0:
        return draw(st.binary(max_size=60))
    arrays = {}
    for key in draw(st.lists(st.sampled_from(["a", "b", "c"]), max_size=3, unique=True)):
        shape = draw(st.sampled_from([(), (3,), (2, 3), (3, 2), (1, 2, 3), (0, 2)]))
        dtype = draw(st.sampled_from(["f8", "f4", "i4", "bool", "U2", "c8"]))
        fill = draw(st.sampled_from([0.0, 1.0, 0.7, float("nan"), float("inf")]))
        with np.errstate(invalid="ignore"):
            arrays[key] = (
                np.full(shape, fill).astype(dtype) if dtype != "U2" else np.full(shape, "x")
            )
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = buf.getvalue()
    if draw(st.booleans()):  # a member that is not an array, or an archive cut short
        with zipfile.ZipFile(buf, "a") as z:
            z.writestr("b.npy" if "b" not in arrays else "z.npy", b"\x93NUMPY broken")
        data = buf.getvalue()
    return data[: draw(st.sampled_from([len(data), len(data) // 2]))]


@SETTINGS
@given(pred=npz_bytes(), tgt=npz_bytes(), threshold=st.sampled_from([0.5, 0.0, float("nan")]))
def test_evaluate_seg_raises_only_ecamp_errors(pred: bytes, tgt: bytes, threshold: float) -> None:
    from ecamp.eval.cli import evaluate_seg

    with tempfile.TemporaryDirectory() as d:
        p, t = _write(Path(d), "p.npz", pred), _write(Path(d), "t.npz", tgt)
        _only_user_errors(lambda: evaluate_seg(p, t, threshold))


number = st.one_of(
    st.integers(-5, 30),
    st.floats(-5, 30, allow_nan=False),
    st.sampled_from([float("nan"), float("inf"), 1e39, True, "3"]),
)
box = st.one_of(st.lists(number, min_size=4, max_size=4), st.lists(number, max_size=5), json_value)
entry = st.one_of(
    st.fixed_dictionaries(
        {"boxes": st.lists(box, max_size=3), "scores": st.lists(number, max_size=3)}
    ),
    json_value,
)


@st.composite
def det_json(draw: st.DrawFn, value: st.SearchStrategy) -> bytes:
    if draw(st.integers(0, 6)) == 0:
        return draw(st.binary(max_size=40))
    obj = draw(st.dictionaries(st.sampled_from(["a", "b", "c"]), value, max_size=3))
    return json.dumps(obj).encode()


@settings(SETTINGS, max_examples=40)
@given(
    pred=det_json(entry),
    tgt=det_json(st.one_of(st.lists(box, max_size=3), entry)),
    protocol=st.sampled_from(["mgca", "coco"]),
)
def test_evaluate_det_raises_only_ecamp_errors(pred: bytes, tgt: bytes, protocol: str) -> None:
    from ecamp.eval.cli import evaluate_det

    with tempfile.TemporaryDirectory() as d:
        p, t = _write(Path(d), "p.json", pred), _write(Path(d), "t.json", tgt)
        _only_user_errors(lambda: evaluate_det(p, t, protocol))
