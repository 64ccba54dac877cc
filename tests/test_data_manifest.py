"""Pre-training manifest: formats, validation errors, normalisation."""

from __future__ import annotations

import pandas as pd
import pytest

from ecamp.data.manifest import load_pretrain_manifest, read_table, validate_pretrain, write_table
from ecamp.errors import DataError, UserError


def _df() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": ["001", "002", "003"],
            "image": ["a.png", "b.png", "/abs/c.png"],
            "report": ["No effusion.", "Small opacity.", "Normal."],
            "distilled": ["There is no effusion.", None, ""],
            "study_id": ["10", "10", "11"],
            "split": ["train", "val", "test"],
        }
    )


@pytest.mark.parametrize("name", ["m.csv", "m.csv.gz", "m.jsonl", "m.parquet"])
def test_round_trip_formats_keep_ids_as_strings(tmp_path, name):
    path = write_table(_df(), tmp_path / name)
    df = load_pretrain_manifest(path)
    assert df["id"].tolist() == ["001", "002", "003"]  # leading zeros survive
    assert df["split"].tolist() == ["train", "val", "test"]
    assert df["distilled"].tolist() == ["There is no effusion.", "", ""]
    assert df.attrs["root"] == str(tmp_path.resolve())


def test_missing_column_names_file_column_and_present_ones(tmp_path):
    path = write_table(_df().drop(columns=["report"]), tmp_path / "m.csv")
    with pytest.raises(UserError) as e:
        load_pretrain_manifest(path)
    msg = str(e.value)
    assert "m.csv" in msg and "'report'" in msg and "image" in msg and "study_id" in msg


def test_empty_reports_reported_by_row_or_skipped(tmp_path):
    df = _df()
    df.loc[1, "report"] = "   "
    df.loc[2, "report"] = None
    path = write_table(df, tmp_path / "m.csv")
    with pytest.raises(DataError, match=r"2 row\(s\).*rows 1, 2"):
        load_pretrain_manifest(path)
    kept = load_pretrain_manifest(path, bad_rows="skip")
    assert kept["id"].tolist() == ["001"]


def test_duplicate_ids_and_unknown_split_fail():
    df = _df()
    df.loc[2, "id"] = "001"
    with pytest.raises(DataError, match="duplicate"):
        validate_pretrain(df, "x.csv")
    df = _df()
    df.loc[0, "split"] = "holdout"
    with pytest.raises(DataError, match="holdout"):
        validate_pretrain(df, "x.csv")


def test_defaults_for_optional_columns():
    df = validate_pretrain(_df()[["id", "image", "report"]], "x.csv")
    assert df["split"].eq("train").all()
    assert df["study_id"].tolist() == df["id"].tolist()
    assert df["distilled"].eq("").all()


def test_unknown_extension_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="unknown table format"):
        read_table(tmp_path / "m.xlsx")
    with pytest.raises(UserError, match="does not exist"):
        read_table(tmp_path / "nope.csv")
