"""`ecamp run` machinery with cheap fake stages: skipping, resume after a failure, re-running
only what a config change touches, --from / --only, placeholders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ecamp.data.manifest import rebase_paths
from ecamp.errors import UserError
from ecamp.pipeline import (
    RECORD,
    Stage,
    StageContext,
    collect_rows,
    default_stages,
    load_pipeline,
    record_result,
    results_table,
    run_stages,
)


class Calls:
    """Records which fake stages ran; ``fail_once`` names stages that raise on their first call."""

    def __init__(self, fail_once: tuple[str, ...] = ()) -> None:
        self.ran: list[str] = []
        self.fail_once = set(fail_once)

    def stage(
        self, name: str, deps: tuple[str, ...] = (), config: dict[str, Any] | None = None, **kw: Any
    ) -> Stage:
        def go(ctx: StageContext) -> dict[str, Any]:
            self.ran.append(ctx.name)
            # each stage reads its inputs' files: a missing upstream output would fail here
            total = sum(int(Path(r["out"]).read_text()) for r in ctx.inputs.values())
            (ctx.dir / "partial.txt").write_text("started")
            if ctx.name in self.fail_once:
                self.fail_once.discard(ctx.name)
                raise RuntimeError(f"injected failure in {ctx.name}")
            value = total + int(ctx.config.get("add", 1))
            (ctx.dir / "out.txt").write_text(str(value))
            return {"out": str(ctx.dir / "out.txt"), "value": value}

        return Stage(name, go, deps, dict(config or {}), outputs=("out.txt",), **kw)


def chain(calls: Calls, cfg: dict[str, dict[str, Any]] | None = None) -> list[Stage]:
    """a -> b -> c, and d depending on a only (like the random-init baseline)."""
    cfg = cfg or {}
    return [
        calls.stage("a", config=cfg.get("a")),
        calls.stage("b", ("a",), cfg.get("b")),
        calls.stage("c", ("b",), cfg.get("c")),
        calls.stage("d", ("a",), cfg.get("d")),
    ]


def statuses(outcomes) -> dict[str, str]:
    return {o.name: o.status for o in outcomes}


def test_second_run_skips_every_finished_stage(tmp_path: Path) -> None:
    calls = Calls()
    first = run_stages(chain(calls), tmp_path)
    assert calls.ran == ["a", "b", "c", "d"]
    assert set(statuses(first).values()) == {"ran"}
    assert json.loads((tmp_path / "c" / RECORD).read_text())["result"]["value"] == 3

    calls2 = Calls()
    second = run_stages(chain(calls2), tmp_path)
    assert calls2.ran == []
    assert set(statuses(second).values()) == {"skipped"}


def test_missing_output_reruns_the_stage(tmp_path: Path) -> None:
    run_stages(chain(Calls()), tmp_path)
    (tmp_path / "b" / "out.txt").unlink()
    calls = Calls()
    run_stages(chain(calls), tmp_path)
    assert calls.ran == [
        "b"
    ]  # b's fingerprint is unchanged, so c (reading b's new file) is not redone


def test_resume_after_a_failure_starts_at_the_failed_stage(tmp_path: Path) -> None:
    calls = Calls(fail_once=("c",))
    with pytest.raises(RuntimeError, match="injected failure in c"):
        run_stages(chain(calls), tmp_path)
    assert calls.ran == ["a", "b", "c"]
    assert not (tmp_path / "c" / RECORD).exists()
    assert (tmp_path / "c" / ".stage_failed.json").exists()

    calls.ran.clear()
    outcomes = run_stages(chain(calls), tmp_path)
    assert calls.ran == ["c", "d"]
    assert statuses(outcomes) == {"a": "skipped", "b": "skipped", "c": "ran", "d": "ran"}
    # the same fingerprint: the failed attempt's files were kept for the stage to resume from
    assert (tmp_path / "c" / "partial.txt").exists()
    assert not (tmp_path / "c" / ".stage_failed.json").exists()


def test_changed_config_reruns_only_dependent_stages(tmp_path: Path) -> None:
    run_stages(chain(Calls()), tmp_path)
    calls = Calls()
    outcomes = run_stages(chain(calls, {"b": {"add": 5}}), tmp_path)
    assert calls.ran == ["b", "c"]  # a upstream and d (depends on a only) untouched
    assert statuses(outcomes)["d"] == "skipped"
    assert json.loads((tmp_path / "c" / RECORD).read_text())["result"]["value"] == 7
    # the stale folder is kept once as a backup, the new one starts empty
    assert (tmp_path / "b.previous" / "out.txt").read_text() == "2"

    calls = Calls()
    run_stages(chain(calls, {"a": {"add": 2}, "b": {"add": 5}}), tmp_path)
    assert calls.ran == ["a", "b", "c", "d"]


def test_a_moved_run_folder_resumes_from_its_new_place(tmp_path: Path) -> None:
    # results name files by absolute path; after a move the old path is gone, so a stage that
    # re-runs would fail to open its input if the skipped stages' results were not rebased
    first = tmp_path / "first"
    run_stages(chain(Calls()), first)
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    first.rename(moved)
    calls = Calls()
    out = run_stages(chain(calls, {"c": {"add": 10}}), moved)
    assert calls.ran == ["c"] and statuses(out)["b"] == "skipped"
    rec = json.loads((moved / "c" / RECORD).read_text())
    assert rec["result"]["value"] == 2 + 10 and rec["run_dir"] == str(moved.resolve())
    assert rec["result"]["out"] == str(moved / "c" / "out.txt")
    # a record of an older ecamp (no run_dir) is read as it is
    legacy = {"result": {"out": "/old/place/x"}}
    assert record_result(legacy, moved) == {"out": "/old/place/x"}
    # only paths inside the old run folder move, not ones that merely share its prefix
    rec = {"run_dir": "/a/run", "result": {"p": ["/a/run/x", "/a/run2/y", "/a/run"], "n": 3}}
    assert record_result(rec, moved) == {
        "p": [str(moved.resolve() / "x"), "/a/run2/y", str(moved.resolve())],
        "n": 3,
    }


def test_from_forces_that_stage_and_later_ones(tmp_path: Path) -> None:
    run_stages(chain(Calls()), tmp_path)
    calls = Calls()
    run_stages(chain(calls), tmp_path, from_stage="c")
    assert calls.ran == ["c", "d"]


def test_only_runs_the_selected_stage_with_finished_inputs(tmp_path: Path) -> None:
    calls = Calls()
    with pytest.raises(UserError, match="needs \\['a'\\] done first"):
        run_stages(chain(calls), tmp_path, only=["b"])
    assert calls.ran == []
    run_stages(chain(Calls()), tmp_path)
    calls = Calls()
    run_stages(chain(calls), tmp_path, only=["b"])
    assert calls.ran == ["b"]


def test_prefix_selects_sub_stages(tmp_path: Path) -> None:
    calls = Calls()
    stages = [
        calls.stage("a"),
        calls.stage("ft.x.pretrained", ("a",)),
        calls.stage("ft.x.random", ("a",)),
    ]
    run_stages(stages, tmp_path)
    assert (tmp_path / "ft" / "x" / "random" / "out.txt").exists()
    calls.ran.clear()
    run_stages(stages, tmp_path, only=["ft"])
    assert calls.ran == ["ft.x.pretrained", "ft.x.random"]
    with pytest.raises(UserError, match="no such stage"):
        run_stages(stages, tmp_path, only=["nope"])


def test_placeholder_and_disabled_stages_are_passed_over(tmp_path: Path) -> None:
    calls = Calls()
    stages = [
        calls.stage("a"),
        calls.stage("b", ("a",), requires="ecamp.no_such_module_yet"),
        calls.stage("c", ("a", "b"), enabled=False),
        calls.stage("d", ("a", "b")),
    ]
    outcomes = statuses(run_stages(stages, tmp_path))
    assert outcomes == {"a": "ran", "b": "unavailable", "c": "disabled", "d": "ran"}
    assert calls.ran == ["a", "d"]  # d ran on a's output alone


def test_dependency_order_is_checked(tmp_path: Path) -> None:
    calls = Calls()
    with pytest.raises(UserError, match="do not come before it"):
        run_stages([calls.stage("b", ("a",)), calls.stage("a")], tmp_path)


def test_rows_become_results_and_table(tmp_path: Path) -> None:
    def stage(enc: str, value: float) -> Stage:
        return Stage(
            f"ft.{enc}",
            lambda ctx: {
                "rows": [{"task": "linear_probe", "metric": "auc", "encoder": enc, "value": value}]
            },
        )

    stages = [stage("pretrained", 0.8), stage("random", 0.6)]
    run_stages(stages, tmp_path)
    rows = collect_rows(stages, tmp_path)
    assert rows == [
        {"task": "linear_probe", "metric": "auc", "encoder": "pretrained", "value": 0.8},
        {"task": "linear_probe", "metric": "auc", "encoder": "random", "value": 0.6},
    ]
    table = results_table(rows)
    assert "linear_probe" in table and "+0.2000" in table
    # an undefined metric (e.g. mAP with no detection) stays in the results as null
    table = results_table(
        [*rows, {"task": "detection", "metric": "map", "encoder": "random", "value": None}]
    )
    assert table.splitlines()[-1].split() == ["detection", "map", "-", "-", "-"]


def test_default_registry_wires_the_stages() -> None:
    cfg = load_pipeline(None, ["finetune.encoders=[pretrained, random]"])
    stages = {s.name: s for s in default_stages(cfg)}
    assert list(stages)[:4] == ["data", "distill", "attention", "pretrain"]
    assert list(stages)[-1] == "report"
    assert stages["finetune.linear_probe.random"].depends_on == (
        "data",
    )  # baseline ignores pretraining
    assert "pretrain" in stages["finetune.segmentation.pretrained"].depends_on
    assert (
        stages["pretrain"].config["model"]["preset"] == "tiny"
    )  # from the base pretrain_default.yaml
    with pytest.raises(UserError, match="unknown section"):
        load_pipeline(None, ["pretrian.train.epochs=1"])
    with pytest.raises(UserError, match=r"unknown key\(s\) \['synthtic_n'\]"):
        default_stages(load_pipeline(None, ["data.synthtic_n=64"]))


def test_finetune_runs_read_the_worlds_downstream_cache_only_for_the_cached_classes() -> None:
    """A run of the shared phantom world reads its cache; one selecting other lesion classes
    (whose masks the cache does not hold) or naming its own cache does not."""
    from ecamp.pipeline.ecamp_stages import _finetune_cfg

    run = {"task": "seg", "data": {"fraction": 5}}
    cfg = _finetune_cfg(run, "random", "/w/phantom", "/w/cache")
    assert (cfg.data.root, cfg.data.cache) == ("/w/phantom", "/w/cache")
    other = {"task": "seg", "data": {"labels": ["nodule"]}}
    assert _finetune_cfg(other, "random", "/w/phantom", "/w/cache").data.cache == ""
    own = {"task": "cls", "data": {"cache": "/mine"}}
    assert _finetune_cfg(own, "random", "/w/phantom", "/w/cache").data.cache == "/mine"
    assert load_pipeline(None, [])["data"]["downstream_cache"] == 128


def test_changing_pretrain_config_keeps_baseline_fingerprints() -> None:
    from ecamp.pipeline import fingerprints

    a = fingerprints(default_stages(load_pipeline(None, [])))
    b = fingerprints(default_stages(load_pipeline(None, ["pretrain.train.epochs=9"])))
    changed = {k for k in a if a[k] != b[k]}
    assert "pretrain" in changed and "report" in changed
    assert {"data", "distill", "attention"}.isdisjoint(changed)
    assert not any(k.endswith(".random") for k in changed)


def test_spelling_out_a_default_changes_no_fingerprint() -> None:
    """The fingerprint hashes the resolved config: writing a default value re-runs nothing."""
    from ecamp.pipeline import fingerprints

    a = fingerprints(default_stages(load_pipeline(None, [])))
    b = fingerprints(
        default_stages(
            load_pipeline(
                None,
                [
                    "pretrain.model.use_sr=true",  # a ModelConfig default
                    "pretrain.model.embed_dim=64",  # what the tiny preset sets anyway
                    "attention.train.weight_decay=1.0e-6",  # the attention default
                    "finetune.runs.segmentation.train.seed=0",
                    "distill.backend=rules",
                ],
            )
        )
    )
    assert a == b
    c = fingerprints(default_stages(load_pipeline(None, ["pretrain.model.use_sr=false"])))
    assert c["pretrain"] != a["pretrain"] and c["data"] == a["data"]


def test_rebase_paths_keeps_images_reachable(tmp_path: Path) -> None:
    import pandas as pd

    run = tmp_path / "run"
    (run / "data" / "images").mkdir(parents=True)
    (run / "data" / "images" / "x.png").write_bytes(b"")
    (run / "distill").mkdir()
    out = run / "distill" / "manifest.csv"
    pd.DataFrame({"id": ["x"], "image": ["images/x.png"], "report": ["r"], "mask": [""]}).to_csv(
        out, index=False
    )
    rebase_paths(out, run / "data", run)
    df = pd.read_csv(out, keep_default_na=False)
    assert df["image"][0] == "../data/images/x.png"
    assert (out.parent / df["image"][0]).is_file()


def test_cli_writes_results_json_and_prints_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ecamp.cli import main
    from ecamp.pipeline import cli as pipeline_cli

    def fake_stages(cfg: dict[str, Any]) -> list[Stage]:
        value = float(cfg["pretrain"]["train"]["epochs"]) / 10

        def row(enc: str, v: float) -> dict[str, Any]:
            return {
                "rows": [{"task": "segmentation", "metric": "dice", "encoder": enc, "value": v}]
            }

        return [
            Stage("ft.pretrained", lambda ctx: row("pretrained", value), config={"v": value}),
            Stage("ft.random", lambda ctx: row("random", 0.25)),
        ]

    monkeypatch.setattr(pipeline_cli, "default_stages", fake_stages)
    out = tmp_path / "run"
    assert main(["run", "--output", str(out), "pretrain.train.epochs=5"]) == 0
    assert json.loads((out / "results.json").read_text()) == [
        {"task": "segmentation", "metric": "dice", "encoder": "pretrained", "value": 0.5},
        {"task": "segmentation", "metric": "dice", "encoder": "random", "value": 0.25},
    ]
    printed = capsys.readouterr().out
    assert "segmentation" in printed and "+0.2500" in printed
    assert (out / "pipeline.yaml").is_file()
    assert main(["run", "--list", "--output", str(out), "pretrain.train.epochs=5"]) == 0
    assert capsys.readouterr().out.split() == ["ft.pretrained", "done", "ft.random", "done"]
    assert main(["run", "--list", "--output", str(out), "pretrain.train.epochs=6"]) == 0
    assert "will run" in capsys.readouterr().out
    assert (
        main(["run", "--output", str(out), "nosuchsection.x=1"]) == 2
    )  # a clear error, no traceback


def test_other_ranks_wait_for_rank0_and_share_its_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from ecamp.pipeline import engine

    monkeypatch.setattr(engine, "WAIT_POLL_S", 0.01)
    rank1_calls, rank0_calls = Calls(), Calls(fail_once=("c",))
    got: dict[str, Any] = {}

    def rank1() -> None:
        try:
            got["outcomes"] = run_stages(chain(rank1_calls), tmp_path, rank=1)
        except Exception as e:
            got["error"] = e

    t = threading.Thread(target=rank1)
    t.start()
    with pytest.raises(RuntimeError):
        run_stages(chain(rank0_calls), tmp_path, rank=0)
    t.join(timeout=30)
    assert "failed on rank 0" in str(got["error"])  # rank 1 stops instead of waiting forever

    # rank 0 starts c and d only once rank 1 waits for them, so rank 1 must wait, not find
    # them done: one outcome only
    waiting = {name: threading.Event() for name in ("c", "d")}
    real_wait = engine._wait_for_record

    def wait(folder: Path, fingerprint: str, name: str, since: float) -> dict[str, Any]:
        waiting[name].set()
        return real_wait(folder, fingerprint, name, since)

    monkeypatch.setattr(engine, "_wait_for_record", wait)

    def gated(run: Any, event: threading.Event) -> Any:
        def go(ctx: StageContext) -> Any:
            assert event.wait(10), f"rank 1 never waited for {ctx.name}"
            return run(ctx)

        return go

    stages = chain(rank0_calls)
    for s in stages:
        if s.name in waiting:
            s.run = gated(s.run, waiting[s.name])
    got.clear()
    t = threading.Thread(target=rank1)
    t.start()
    outcomes0 = run_stages(stages, tmp_path, rank=0)
    t.join(timeout=30)
    assert all(ev.is_set() for ev in waiting.values())
    assert rank1_calls.ran == []  # rank-0-only stages never run on other ranks
    assert rank0_calls.ran[-2:] == ["c", "d"]
    done = statuses(got["outcomes"])
    assert done == {"a": "skipped", "b": "skipped", "c": "ran", "d": "ran"}
    assert [o.reason for o in got["outcomes"] if o.status == "ran"] == ["on rank 0"] * 2
    assert statuses(outcomes0) == done


def test_a_downstream_run_reports_each_metric_it_names(tmp_path: Path, monkeypatch) -> None:
    import ecamp.train.finetune as ft
    from ecamp.pipeline.ecamp_stages import _finetune_run

    res = {"metric": "map", "value": 0.0, "metrics": {"map": 0.0, "map_coco": 0.09}}
    monkeypatch.setattr(ft, "finetune", lambda cfg, out: res)
    data = {"data": {"phantom": False, "image_root": ""}}
    ctx = StageContext("finetune.detection.random", tmp_path, {"task": "det"}, tmp_path, data)
    one = _finetune_run("detection", "random")(ctx)["rows"]
    assert [(r["metric"], r["value"]) for r in one] == [("map", 0.0)]
    ctx.config["metric"] = ["map", "map_coco", "missing"]
    rows = _finetune_run("detection", "random")(ctx)["rows"]
    assert [(r["metric"], r["value"]) for r in rows] == [
        ("map", 0.0),
        ("map_coco", 0.09),
        ("missing", None),
    ]
    # the default pipeline shows both detection metrics
    runs = load_pipeline(None)["finetune"]["runs"]
    assert runs["detection"]["metric"] == ["map", "map_coco"]


def test_reported_metric_and_world_choice_are_fingerprinted() -> None:
    from ecamp.pipeline import fingerprints

    def fp(*overrides: str) -> str:
        cfg = load_pipeline(None, list(overrides))
        return fingerprints(default_stages(cfg))["finetune.detection.random"]

    base = fp()
    assert fp("finetune.runs.detection.metric=map") != base
    assert fp("finetune.runs.detection.share_world=false") != base
    assert fp("finetune.runs.detection.metric=[map, map_coco]") == base
