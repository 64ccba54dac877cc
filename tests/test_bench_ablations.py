"""benchmarks/ablations.py's tables: each row's score and its effect over the previous row,
mean ± SE over seeds (hand-computed values), without running the pipeline."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def abl():
    sys.path.insert(0, str(BENCH))
    try:
        import ablations
    finally:
        sys.path.remove(str(BENCH))
    return ablations


LP = ("linear_probe", "auc")
SEG = ("segmentation", "dice")


def test_scores_and_paired_effects_over_seeds(abl) -> None:
    base = {"0": {LP: 0.60, SEG: 0.40}, "1": {LP: 0.70, SEG: 0.30}, "2": {LP: 0.65, SEG: 0.35}}
    row = {"0": {LP: 0.66, SEG: 0.41}, "1": {LP: 0.74, SEG: 0.29}, "2": {LP: 0.70, SEG: None}}
    sc = abl.over_seeds(row)
    # LP scores 0.66, 0.74, 0.70: mean 0.70, var (0.0016 + 0.0016 + 0) / 2, SE 0.0231
    assert sc[LP].mean == pytest.approx(0.70) and sc[LP].se == pytest.approx(0.04 / 3**0.5)
    eff = abl.effect(row, base)
    # paired LP gains 0.06, 0.04, 0.05: mean 0.05, SE 0.01 / sqrt(3) -> more than 2 SE
    assert eff[LP].values == pytest.approx({"0": 0.06, "1": 0.04, "2": 0.05})
    assert eff[LP].se == pytest.approx(0.01 / 3**0.5)
    assert eff[SEG].values == pytest.approx({"0": 0.01, "1": -0.01}) and eff[SEG].missing == ("2",)
    assert abl.cell(eff[LP], sign=True) == "+0.050 ± 0.006 *"
    assert abl.cell(eff[SEG], sign=True) == "+0.000 ± 0.010"
    text = abl.table([("+ x vs random init", eff)], sign=True)
    lines = text.splitlines()
    assert lines[0] == "| row | LP AUC | Seg Dice |"  # columns nobody measured are dropped
    assert lines[2] == "| + x vs random init | +0.050 ± 0.006 * | +0.000 ± 0.010 |"
    # a large loss is flagged too: the marker is two-sided
    worse = abl.effect(base, row)
    assert abl.cell(worse[LP], sign=True) == "-0.050 ± 0.006 *"


def test_main_runs_each_row_on_each_seed_and_prints_both_tables(
    abl, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    rows = tmp_path / "rows"
    rows.mkdir()
    (rows / "01_a.yaml").write_text("name: row a\noverrides: {pretrain.x: 1}\n")
    (rows / "02_b.yaml").write_text("name: row b\noverrides: {pretrain.x: 2}\n")
    (rows / "03_c.yaml").write_text("name: row c\noverrides: {pretrain.x: 3}\n")
    calls = []

    def fake_run(out: Path, overrides: list[str]) -> float:
        keys = dict(o.split("=", 1) for o in overrides)
        calls.append((out.relative_to(tmp_path / "out").as_posix(), keys.get("y.z")))
        seed, x = int(keys["data.synthetic_seed"]), int(keys.get("pretrain.x", 0))
        # row x scores 0.6 + 0.1 x, plus 0.01 per seed; random init 0.5 + 0.01 per seed
        value = 0.5 + 0.01 * seed + (0.1 + 0.1 * x if x else 0.0)
        res = [
            {"task": "linear_probe", "metric": "auc", "encoder": "pretrained", "value": value},
            {
                "task": "linear_probe",
                "metric": "auc",
                "encoder": "random",
                "value": 0.5 + 0.01 * seed,
            },
        ]
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(res))
        return 1.0

    monkeypatch.setattr(abl, "ecamp_run", fake_run)
    argv = [
        "--seeds",
        "0,2",
        "--rows",
        str(rows),
        "--only",
        "01_a,03_c",
        "-o",
        str(tmp_path / "out"),
    ]
    monkeypatch.setattr(sys, "argv", ["ablations.py", *argv, "y.z=5"])
    assert abl.main() == 0
    assert calls == [
        ("seed0/base", "5"),
        ("seed0/01_a", "5"),
        ("seed0/03_c", "5"),
        ("seed2/base", "5"),
        ("seed2/01_a", "5"),
        ("seed2/03_c", "5"),
    ]  # --only takes a list and leaves the overrides alone
    out = capsys.readouterr().out
    assert "| row a | 0.710 ± 0.010 |" in out  # 0.70, 0.72
    assert "| random init (no pre-training) | 0.510 ± 0.010 |" in out
    assert "| row a vs random init | +0.200 ± 0.000 * |" in out
    assert "| row c vs row a | +0.200 ± 0.000 * |" in out
    summary = json.loads([ln for ln in out.splitlines() if '"benchmark"' in ln][0])
    assert summary["effects"]["row c vs row a"]["linear_probe/auc"]["mean"] == pytest.approx(0.2)
