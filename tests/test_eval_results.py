"""Statistics over world seeds: deltas, mean, standard error, robustness (hand-computed values),
and the rows a finished run folder holds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ecamp.errors import UserError
from ecamp.eval.results import (
    format_mean_se,
    paired_deltas,
    robust_sentence,
    run_rows,
    seed_deltas,
    summarize,
)


def test_mean_and_standard_error_match_hand_values() -> None:
    s = summarize({"0": 0.10, "1": 0.20, "2": 0.30})
    # mean 0.2; sample var (0.01 + 0 + 0.01) / 2 = 0.01; SE = 0.1 / sqrt(3)
    assert s.n == 3 and s.mean == pytest.approx(0.2)
    assert s.se == pytest.approx(0.1 / math.sqrt(3))
    assert s.above_2se and s.all_positive and s.robust
    assert format_mean_se(s) == "+0.2000 ± 0.0577"


def test_a_noisy_effect_is_not_above_two_se() -> None:
    s = summarize({"0": 0.05, "1": -0.01, "2": 0.08})
    # mean 0.04; squared deviations 0.0001 + 0.0025 + 0.0016 = 0.0042; var 0.0021
    assert s.mean == pytest.approx(0.04)
    assert s.se == pytest.approx(math.sqrt(0.0021 / 3))  # 0.02646: 2 SE = 0.0529 > 0.04
    assert not s.above_2se and not s.all_positive and not s.robust


def test_above_two_se_with_one_negative_seed_is_not_robust() -> None:
    s = summarize({"0": 0.30, "1": 0.31, "2": 0.29, "3": -0.01})
    # mean 0.2225; var 0.072275 / 3; SE 0.0776: mean > 2 SE, but seed 3 loses
    assert s.se == pytest.approx(math.sqrt(0.072275 / 3 / 4))
    assert s.above_2se and not s.all_positive and not s.robust


def test_one_seed_has_no_spread_and_missing_values_are_listed() -> None:
    one = summarize({"0": 0.5})
    assert one.mean == 0.5 and one.se is None and not one.above_2se and not one.robust
    assert format_mean_se(one) == "+0.5000"
    s = summarize({"0": 0.2, "1": None, "2": 0.4, "3": float("nan")})
    assert s.values == {"0": 0.2, "2": 0.4} and s.missing == ("1", "3")
    assert s.mean == pytest.approx(0.3) and s.se == pytest.approx(0.1)
    assert s.above_2se and not s.robust  # a seed without a value cannot count as a win
    empty = summarize({})
    assert empty.mean is None and format_mean_se(empty) == "n/a"
    assert summarize({"a": 1.0, "b": 1.0}).se == 0.0


def test_paired_deltas_pair_by_seed() -> None:
    assert paired_deltas({"0": 0.7, "1": 0.6, "2": None}, {"1": 0.5, "0": 0.4, "2": 0.3}) == {
        "0": pytest.approx(0.3),
        "1": pytest.approx(0.1),
        "2": None,
    }


def _rows(lp: tuple[float, float], seg: tuple[float, float]) -> list[dict]:
    out = []
    for task, metric, (p, r) in (("linear_probe", "auc", lp), ("segmentation", "dice", seg)):
        out.append({"task": task, "metric": metric, "encoder": "pretrained", "value": p})
        out.append({"task": task, "metric": metric, "encoder": "random", "value": r})
    return out


def test_seed_deltas_and_the_robustness_sentence() -> None:
    stats = seed_deltas(
        {
            "0": _rows((0.70, 0.60), (0.45, 0.40)),
            "1": _rows((0.72, 0.60), (0.38, 0.40)),
            "2": _rows((0.69, 0.58), (0.44, 0.41)),
        }
    )
    assert list(stats) == [("linear_probe", "auc"), ("segmentation", "dice")]
    lp, seg = stats[("linear_probe", "auc")], stats[("segmentation", "dice")]
    assert lp.values == pytest.approx({"0": 0.10, "1": 0.12, "2": 0.11})
    assert lp.mean == pytest.approx(0.11) and lp.se == pytest.approx(0.01 / math.sqrt(3))
    assert seg.values == pytest.approx({"0": 0.05, "1": -0.02, "2": 0.03})
    assert lp.robust and not seg.robust
    assert robust_sentence(stats) == (
        "Over 3 seeds, pre-training beats random init robustly (mean delta > 2 SE and every "
        "seed positive) on linear_probe auc; not on segmentation dice."
    )
    worse = seed_deltas({"0": _rows((0.5, 0.6), (0.4, 0.4)), "1": _rows((0.5, 0.5), (0.5, 0.4))})
    assert robust_sentence(worse).startswith("Over 2 seeds, no effect of pre-training is robust")
    assert robust_sentence(seed_deltas({"0": _rows((0.7, 0.6), (0.5, 0.4))})).startswith(
        "Only 1 seed was run"
    )


def test_run_rows_add_the_stages_other_scalar_metrics(tmp_path: Path) -> None:
    rows = [
        {"task": "linear_probe", "metric": "auc", "encoder": "pretrained", "value": 0.7},
        {"task": "segmentation", "metric": "dice", "encoder": "pretrained", "value": 0.4},
        {"task": "segmentation", "metric": "dice", "encoder": "random", "value": 0.3},
    ]
    (tmp_path / "results.json").write_text(json.dumps(rows))
    for enc, per_image in (("pretrained", 0.35), ("random", None)):
        d = tmp_path / "finetune" / "segmentation" / enc
        d.mkdir(parents=True)
        metrics = {"dice": 0.4, "dice_per_image": per_image}
        (d / "stage.json").write_text(json.dumps({"result": {"metrics": metrics}}))
    d = tmp_path / "finetune" / "linear_probe" / "pretrained"
    d.mkdir(parents=True)
    metrics = {"auc": 0.7, "per_label": {"nodule": 0.6}}  # not a scalar: left out
    (d / "stage.json").write_text(json.dumps({"result": {"metrics": metrics}}))
    d = tmp_path / "finetune" / "gone" / "random"  # a stage no longer in results.json
    d.mkdir(parents=True)
    (d / "stage.json").write_text(json.dumps({"result": {"metrics": {"auc": 0.1}}}))

    got = run_rows(tmp_path)
    assert [(r["task"], r["metric"], r["encoder"], r["value"]) for r in got] == [
        ("linear_probe", "auc", "pretrained", 0.7),
        ("segmentation", "dice", "pretrained", 0.4),
        ("segmentation", "dice", "random", 0.3),
        ("segmentation", "dice_per_image", "pretrained", 0.35),
        ("segmentation", "dice_per_image", "random", None),
    ]
    with pytest.raises(UserError, match="no results.json"):
        run_rows(tmp_path / "nothing")
