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
