"""The pipeline's results rows, pivoted for tables: pre-trained vs random-init encoder, and
summarised over world seeds (mean, standard error, robustness) for the seed benchmark, the
seeds report and the ablations."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecamp.errors import UserError


def pivot_results(
    rows: Sequence[Mapping[str, Any]],
) -> dict[tuple[str, str], dict[str, float | None]]:
    """``{(task, metric): {encoder: value}}`` from ``results.json`` rows (``None`` = no value)."""
    keyed: dict[tuple[str, str], dict[str, float | None]] = {}
    for r in rows:
        v = r["value"]
        keyed.setdefault((r["task"], r["metric"]), {})[r["encoder"]] = (
            None if v is None else float(v)
        )
    return keyed


# --------------------------------------------------------------------------- over seeds


@dataclass(frozen=True)
class SeedSummary:
    """Values of one quantity over several seeds (a delta or a score), their mean and SE.

    ``se`` is the standard error of the mean, ``std(ddof=1) / sqrt(n)``; undefined (None)
    below two seeds, so one run is never called significant.
    """

    values: dict[str, float]  # seed label -> value, in seed order
    mean: float | None
    se: float | None
    missing: tuple[str, ...] = ()  # seeds that had no value (a metric undefined on that run)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def above_2se(self) -> bool:
        """The mean is larger than twice its standard error (needs >= 2 seeds)."""
        return self.mean is not None and self.se is not None and self.mean > 2 * self.se

    @property
    def all_positive(self) -> bool:
        return self.n > 0 and all(v > 0 for v in self.values.values())

    @property
    def robust(self) -> bool:
        """mean > 2 SE and every seed positive: an effect that does not flip with the seed."""
        return self.above_2se and self.all_positive and not self.missing

    def as_dict(self) -> dict[str, Any]:
        return {
            "values": dict(self.values),
            "n": self.n,
            "mean": self.mean,
            "se": self.se,
            "above_2se": self.above_2se,
            "all_positive": self.all_positive,
            "robust": self.robust,
            "missing": list(self.missing),
        }


def summarize(values: Mapping[str, float | None]) -> SeedSummary:
    """Mean and standard error over seeds of ``{seed: value}`` (``None`` values are left out)."""
    kept = {str(k): float(v) for k, v in values.items() if v is not None and math.isfinite(v)}
    missing = tuple(str(k) for k, v in values.items() if str(k) not in kept)
    n = len(kept)
    if n == 0:
        return SeedSummary({}, None, None, missing)
    mean = math.fsum(kept.values()) / n
    if n < 2:
        return SeedSummary(kept, mean, None, missing)
    var = math.fsum((v - mean) ** 2 for v in kept.values()) / (n - 1)
    return SeedSummary(kept, mean, math.sqrt(var / n), missing)


def paired_deltas(
    a: Mapping[str, float | None], b: Mapping[str, float | None]
) -> dict[str, float | None]:
    """``a[seed] - b[seed]`` per seed of ``a`` (None where either side has no value)."""
    out: dict[str, float | None] = {}
    for seed, x in a.items():
        y = b.get(seed)
        out[seed] = None if x is None or y is None else float(x) - float(y)
    return out


def seed_deltas(
    rows_by_seed: Mapping[str, Sequence[Mapping[str, Any]]],
    a: str = "pretrained",
    b: str = "random",
) -> dict[tuple[str, str], SeedSummary]:
    """``{(task, metric): summary of (encoder a - encoder b) over seeds}`` from each seed's rows.

    A (task, metric) present in some seeds only lists the others as ``missing``.
    """
    pivots = {seed: pivot_results(rows) for seed, rows in rows_by_seed.items()}
    keys = list(dict.fromkeys(k for p in pivots.values() for k in p))
    out = {}
    for key in keys:
        pre = {s: p.get(key, {}).get(a) for s, p in pivots.items()}
        rnd = {s: p.get(key, {}).get(b) for s, p in pivots.items()}
        out[key] = summarize(paired_deltas(pre, rnd))
    return out


def format_mean_se(s: SeedSummary, digits: int = 4, sign: bool = True) -> str:
    """``+0.0123 ± 0.0045`` (``n/a`` without values, no ``±`` part for one seed)."""
    if s.mean is None:
        return "n/a"
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    mean = round(s.mean, digits) + 0.0  # no "-0.0000" for a float-noise mean
    return f.format(mean) + ("" if s.se is None else f" ± {s.se:.{digits}f}")


def robust_sentence(stats: Mapping[tuple[str, str], SeedSummary]) -> str:
    """One sentence naming the robust effects (mean > 2 SE and every seed positive) and the rest."""
    if not stats:
        return "No downstream results to compare."
    n = max(s.n + len(s.missing) for s in stats.values())
    if n < 2:
        return f"Only {n} seed was run: the spread, and so robustness, is unknown."
    good = [f"{t} {m}" for (t, m), s in stats.items() if s.robust]
    bad = [f"{t} {m}" for (t, m), s in stats.items() if not s.robust]
    rule = "mean delta > 2 SE and every seed positive"
    if not good:
        return (
            f"Over {n} seeds, no effect of pre-training is robust ({rule}): not {', '.join(bad)}."
        )
    head = f"Over {n} seeds, pre-training beats random init robustly ({rule}) on {', '.join(good)}"
    return head + (f"; not on {', '.join(bad)}." if bad else ", every metric.")


def run_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    """A finished ``ecamp run``'s results rows plus every other scalar test metric its
    downstream stages recorded (segmentation's ``dice_per_image`` beside ``dice``, ...)."""
    run = Path(run_dir)
    path = run / "results.json"
    if not path.is_file():
        raise UserError(f"{run}: no results.json (not a finished `ecamp run` folder)")
    try:
        rows = [dict(r) for r in json.loads(path.read_text(encoding="utf-8"))]
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e}); rerun `ecamp run --output {run}`") from None
    seen = {(r["task"], r["metric"], r["encoder"]) for r in rows}
    for stage in sorted((run / "finetune").glob("*/*/stage.json")):
        task, encoder = stage.parent.parent.name, stage.parent.name
        if not any(r["task"] == task for r in rows):
            continue  # a stage the run no longer has (disabled since)
        try:
            metrics = (json.loads(stage.read_text(encoding="utf-8")).get("result") or {}).get(
                "metrics"
            ) or {}
        except ValueError:
            continue
        for metric, v in metrics.items():
            if (task, metric, encoder) in seen or not isinstance(v, (int, float, type(None))):
                continue
            rows.append({"task": task, "metric": metric, "encoder": encoder, "value": v})
            seen.add((task, metric, encoder))
    order = list(dict.fromkeys(r["task"] for r in rows))
    return sorted(rows, key=lambda r: order.index(r["task"]))  # stable: a task's metrics together
