"""benchmarks/embedded_seeds.py without the pipeline: one child per (seed, threads) with its
threads set, finished runs reused, the JSON line and the delta table over seeds."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench():
    sys.path.insert(0, str(BENCH))
    try:
        import embedded_seeds
    finally:
        sys.path.remove(str(BENCH))
    return embedded_seeds


class FakeRun:
    """Stands in for the `ecamp run` child: writes results.json from the seed it was given."""

    def __init__(self, ran: bool = True) -> None:
        self.calls: list[dict[str, Any]] = []
        self.ran = ran  # False: every stage's fingerprint matched, `ecamp run` skipped them all

    def __call__(self, cmd: list[str], stdout: Any, stderr: Any, env: dict[str, str]) -> int:
        out = Path(cmd[cmd.index("--output") + 1])
        keys = dict(k.split("=", 1) for k in cmd if "=" in k and not k.startswith("import"))
        seed = int(keys["data.synthetic_seed"])
        threads = int(cmd[3])  # the child's first argument: torch.set_num_threads
        self.calls.append({"seed": seed, "threads": threads, "env": env["OMP_NUM_THREADS"]})
        out.mkdir(parents=True, exist_ok=True)
        # linear probe: +0.1, +0.2 (robust with 2 seeds? mean 0.15, SE 0.05: yes); seg flips sign
        lp = 0.6 + 0.1 * (seed + 1)
        seg = 0.4 + (0.05 if seed == 0 else -0.01)
        rows = [
            {"task": "linear_probe", "metric": "auc", "encoder": "pretrained", "value": lp},
            {"task": "linear_probe", "metric": "auc", "encoder": "random", "value": 0.6},
            {"task": "segmentation", "metric": "dice", "encoder": "pretrained", "value": seg},
            {"task": "segmentation", "metric": "dice", "encoder": "random", "value": 0.4},
        ]
        (out / "results.json").write_text(json.dumps(rows))
        status = "ran" if self.ran else "skipped"
        stages = [{"name": "data", "status": "skipped"}, {"name": "pretrain", "status": status}]
        (out / "pipeline.json").write_text(json.dumps({"stages": stages}))
        return 0


def _main(bench, monkeypatch: pytest.MonkeyPatch, argv: list[str], fake: FakeRun) -> int:
    monkeypatch.setattr(bench.subprocess, "call", fake)
    monkeypatch.setattr(sys, "argv", ["embedded_seeds.py", *argv])
    return bench.main()


def test_runs_each_seed_and_thread_count_then_reuses_them(
    bench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeRun()
    argv = ["--seeds", "0,1", "--threads", "1,2", "--output", str(tmp_path), "x.y=1"]
    assert _main(bench, monkeypatch, argv, fake) == 0
    assert [(c["seed"], c["threads"], c["env"]) for c in fake.calls] == [
        (0, 1, "1"),
        (1, 1, "1"),
        (0, 2, "2"),
        (1, 2, "2"),
    ]
    out = capsys.readouterr().out
    line = json.loads(out.splitlines()[0])
    assert line["benchmark"] == "embedded_seeds" and "model" in line["cpu"]
    lp = line["deltas"]["1"]["linear_probe/auc"]
    assert lp["values"] == pytest.approx({"0": 0.1, "1": 0.2})
    assert lp["mean"] == pytest.approx(0.15) and lp["se"] == pytest.approx(0.05)
    assert lp["robust"] and not line["deltas"]["2"]["segmentation/dice"]["robust"]
    assert "| linear_probe | auc | +0.1000 | +0.2000 | +0.1500 ± 0.0500 | yes | yes |" in out
    assert "| segmentation | dice | +0.0500 | -0.0100 | +0.0200 ± 0.0300 | no | no |" in out
    assert "not on segmentation dice" in out
    assert (tmp_path / "report_t2" / "report.html").is_file()
    assert json.loads((tmp_path / "summary.json").read_text())["seeds"] == [0, 1]

    first = json.loads((tmp_path / "seed0_t1" / "bench.json").read_text())
    again = FakeRun(ran=False)
    assert _main(bench, monkeypatch, argv, again) == 0
    # `ecamp run` re-checks each finished run; none ran a stage, so each is reused as it was
    assert len(again.calls) == 4
    assert json.loads((tmp_path / "seed0_t1" / "bench.json").read_text()) == first
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert all(r["reused"] for r in summary["runs"])
    assert "| 0 | 1 | " in capsys.readouterr().out

    # a changed default re-runs some stage: the run is measured again, not reused
    rerun = FakeRun(ran=True)
    assert _main(bench, monkeypatch, [*argv, "--no-report"], rerun) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert not any(r["reused"] for r in summary["runs"])

    changed = FakeRun()
    assert _main(bench, monkeypatch, [*argv[:-1], "x.y=2", "--no-report"], changed) == 0
    assert len(changed.calls) == 4  # other overrides: `ecamp run` again (it resumes by itself)


def test_the_seed_is_not_an_override(bench, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit):
        _main(bench, monkeypatch, ["data.synthetic_seed=3"], FakeRun())


def test_cpu_kind_names_the_model_and_simd_flags(bench) -> None:
    cpu = bench.cpu_kind()
    assert cpu["model"] and cpu["cpus"] >= 1
    if Path("/proc/cpuinfo").is_file():
        assert set(cpu["flags"]) <= set(bench.FLAGS)
