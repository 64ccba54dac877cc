"""ECAMP's stage list for the engine: data -> distill -> attention -> pretrain -> finetune -> report.

    data -> distill -> attention -> pretrain -> finetune (every run x {pretrained, random}) -> report

A pipeline YAML has one section per stage (see ``resources/configs/pipeline_default.yaml``,
the embedded default that ``ecamp run`` with no file runs); :func:`load_pipeline` reads it
and :func:`default_stages` turns it into :class:`~ecamp.pipeline.engine.Stage` objects.
Each stage's ``run`` is a small adapter: it reads its inputs' results, calls the stage's
library function and returns the paths the next stages read.  The random-init baselines do
not depend on pre-training, so changing pre-training re-runs only the pre-trained runs; the
distillation cache is keyed by its own fingerprint and is never thrown away.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ecamp.errors import UserError
from ecamp.pipeline.engine import Stage, StageContext, file_stamp
from ecamp.utils.logging import get_logger

DEFAULT_PIPELINE = "pipeline_default.yaml"
SECTIONS = (
    "name",
    "description",
    "seed",
    "data",
    "distill",
    "attention",
    "pretrain",
    "finetune",
    "report",
)
ENCODERS = ("pretrained", "random")
# the data section: a manifest of one's own, or the phantom world's size, seed and cache side
DATA_KEYS = (
    "manifest",
    "image_root",
    "synthetic_n",
    "synthetic_size",
    "synthetic_seed",
    "downstream_cache",
)

log = get_logger(__name__)


# --------------------------------------------------------------------------- config


def embedded_pipeline_path(name: str = DEFAULT_PIPELINE) -> Path:
    """A pipeline config shipped in ``ecamp/resources/configs``."""
    from ecamp.config.embedded import embedded_config

    return embedded_config(name)


def _config_file(name: str) -> Path:
    """A config named by path, or by file name inside the package's embedded configs."""
    p = Path(name)
    if p.is_file():
        return p
    embedded = embedded_pipeline_path(name)
    if embedded.is_file():
        return embedded
    raise UserError(f"config {name} is neither a file nor one of the embedded configs")


def load_pipeline(path: str | Path | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The embedded default (or ``path``) with dotted overrides, top-level sections checked."""
    from ecamp.config import ConfigError, apply_overrides, read_yaml
    from ecamp.utils.secrets import register_secrets_in

    data = read_yaml(path or embedded_pipeline_path())
    apply_overrides(data, list(overrides))
    register_secrets_in(data)  # masked in every log line from here on
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(
            f"pipeline config: unknown section(s) {unknown}; valid: {', '.join(SECTIONS)}"
        )
    for key in SECTIONS[3:]:
        if not isinstance(data.setdefault(key, {}), dict):
            raise ConfigError(f"pipeline config: {key} must be a mapping")
    return data


def _section(cfg: dict[str, Any], key: str, drop: Sequence[str] = ("enabled",)) -> dict[str, Any]:
    return {k: v for k, v in (cfg.get(key) or {}).items() if k not in drop}


def _stage_config(base: str, section: dict[str, Any]) -> dict[str, Any]:
    """A stage's own config dict: its ``base`` YAML (embedded name or path) <- the section."""
    from ecamp.config import deep_merge, read_yaml

    data = read_yaml(_config_file(base)) if base else {}
    return deep_merge(data, {k: v for k, v in section.items() if k not in ("base", "enabled")})


# --------------------------------------------------------------------------- stages


def _data_run(ctx: StageContext) -> dict[str, Any]:
    c = ctx.config
    if c.get("manifest"):
        path = Path(c["manifest"]).resolve()
        if not path.is_file():
            raise UserError(f"data.manifest {path} does not exist")
        root = Path(c.get("image_root") or path.parent).resolve()
    else:
        from ecamp.data.synthetic import make_phantom_world

        path = make_phantom_world(
            ctx.dir / "phantom",
            n=int(c.get("synthetic_n", 256)),
            size=int(c.get("synthetic_size", 256)),
            seed=int(c.get("synthetic_seed", 0)),
        ).resolve()
        root = path.parent
        out = {"manifest": str(path), "image_root": str(root), "phantom": True}
        side = int(c.get("downstream_cache", 0) or 0)
        if side:
            out["downstream_cache"] = str(_phantom_downstream_cache(root, ctx.dir / "cache", side))
        return out
    return {"manifest": str(path), "image_root": str(root), "phantom": False}


def _phantom_downstream_cache(root: Path, out: Path, side: int) -> Path:
    """Every downstream image of the phantom world in ``root`` decoded once into a ``side``-px
    cache (with the segmentation masks), which every fine-tuning run then reads: decoding the
    PNGs again every epoch and every validation pass was half of a fine-tuning run's time."""
    from ecamp.data.downstream_cache import build_set_cache, source_manifests

    build_set_cache(source_manifests("phantom", str(root), ("cls", "seg", "det")), out, size=side)
    return out


_DISTILL_KEYS = ("input", "id_column", "text_columns", "merge_id_column", "column")


def _distill_config(c: dict[str, Any]) -> Any:
    from ecamp.config import from_dict
    from ecamp.distill.config import DistillConfig

    return from_dict(DistillConfig, {k: v for k, v in c.items() if k not in _DISTILL_KEYS})


def _distill_resolved(c: dict[str, Any]) -> dict[str, Any]:
    """The backend config (defaults filled in) plus the pipeline's own distill keys."""
    from ecamp.config import to_dict

    return {"backend": to_dict(_distill_config(c)), **{k: c[k] for k in _DISTILL_KEYS if k in c}}


def _distill_run(ctx: StageContext) -> dict[str, Any]:
    """Distil the reports and merge the text into the manifest (column ``distilled``)."""
    from ecamp.data.manifest import rebase_paths
    from ecamp.distill import run as R
    from ecamp.distill.backends import make_backend
    from ecamp.distill.merge import merge_manifest
    from ecamp.distill.prompt import load_prompt

    c = ctx.config
    data = ctx.inputs["data"]
    cfg = _distill_config(c)
    id_col = c.get("id_column", "study_id")
    text_cols = tuple(c.get("text_columns") or ("report",))
    if c.get("input"):
        reports = R.read_reports(c["input"], c.get("id_column"), text_cols)
    else:
        from ecamp.data.manifest import read_table

        df = read_table(data["manifest"]).drop_duplicates(id_col)  # one report per study
        missing = [x for x in (id_col, *text_cols) if x not in df.columns]
        if missing:
            raise UserError(
                f"{data['manifest']}: no column(s) {missing} (distill.id_column / distill.text_columns)"
            )
        texts = df[list(text_cols)].fillna("").astype(str).agg(" ".join, axis=1)
        reports = [R.Report(str(i), t.strip()) for i, t in zip(df[id_col], texts)]
    backend = make_backend(cfg)
    prompt = load_prompt(cfg.prompt_file) if backend is not None else None
    out = ctx.dir / "distilled.jsonl"
    ok = False
    try:
        summary = R.distill_corpus(
            reports, cfg, ctx.dir / "cache.jsonl", backend, prompt, progress=False
        )
        ok = True
    finally:
        if backend is not None:
            backend.close()
        records = list(R.collect(reports, ctx.dir / "cache.jsonl"))
        if ok or records:  # a stage that finished nothing leaves no empty output
            R.write_output(iter(records), out)
    if summary.failures:
        raise UserError(
            f"{summary.failures} report(s) could not be distilled (server unreachable); rerun to retry them"
        )
    suffix = Path(data["manifest"]).suffix or ".csv"
    stats = merge_manifest(
        data["manifest"],
        [out],
        ctx.dir / f"manifest{suffix}",
        c.get("merge_id_column", "study_id"),
        c.get("column", "distilled"),
        overwrite=True,  # a new file in the run folder: the data manifest itself is untouched
    )
    rebase_paths(stats["output"], data["image_root"], ctx.run_dir)
    log.info("distilled %d reports (%d cached); merged: %s", summary.reports, summary.cached, stats)
    return {
        "manifest": stats["output"],
        "image_root": str(Path(stats["output"]).parent),
        "distilled": str(out),
        "reports": summary.reports,
        "missing": stats["missing"],
    }


def _attention_cfg(c: dict[str, Any], manifest: str, image_root: str) -> Any:
    from ecamp.train.attention import attention_config

    data = copy.deepcopy(c)
    d = data.setdefault("data", {})
    d.setdefault("manifest", manifest)
    d.setdefault("image_root", image_root)
    return attention_config(data)


def _manifest_input(ctx: StageContext) -> tuple[str, str]:
    """The distilled manifest when distillation ran, else the data stage's."""
    src = ctx.inputs.get("distill") or ctx.inputs["data"]
    return src["manifest"], src["image_root"]


def _attention_run(ctx: StageContext) -> dict[str, Any]:
    """Train GLoRIA, export the guidance maps, draw a few overlays."""
    from ecamp.train import attention as A

    manifest, root = _manifest_input(ctx)
    train_dir, guidance = ctx.dir / "gloria", ctx.dir / "guidance"
    cfg = _attention_cfg(ctx.config, manifest, root)
    summary = A.train(cfg, train_dir)
    model, cfg = A.load_trained(train_dir, cfg)
    df = A.select_splits(A.load_manifest(cfg, None), cfg.export.splits)
    A.export(model, cfg, df, guidance, device=cfg.train.device)
    return {
        "guidance": str(guidance),
        "model": str(train_dir / A.MODEL_FILE),
        "manifest": manifest,
        "image_root": root,
        "last_eval": summary.get("last_eval", {}),
    }


def _pretrain_cfg(c: dict[str, Any], manifest: str, image_root: str, guidance: str) -> Any:
    from ecamp.config import PretrainConfig, from_dict

    data = copy.deepcopy(c)
    d = data.setdefault("data", {})
    if not d.get("manifest"):
        d["manifest"], d["image_root"] = manifest, image_root
    if guidance and not d.get("guidance"):
        d["guidance"] = guidance
    return from_dict(PretrainConfig, data)


def _pretrain_run(ctx: StageContext) -> dict[str, Any]:
    from ecamp.train.pretrain import pretrain

    manifest, root = _manifest_input(ctx)
    guidance = (ctx.inputs.get("attention") or {}).get("guidance", "")
    cfg = _pretrain_cfg(ctx.config, manifest, root, guidance)
    cfg.output = str(ctx.dir)
    summary = pretrain(cfg, ctx.dir)
    return {
        "encoder": str(ctx.dir / "encoder"),
        "checkpoints": str(ctx.dir / "checkpoints"),
        "manifest": cfg.data.manifest,
        "image_root": cfg.data.image_root,
        "steps": summary.get("steps"),
        "last": summary.get("last"),
    }


# pipeline-only keys of a finetune run; share_world: false = the run draws its own phantom world
_FINETUNE_KEYS = ("metric", "enabled", "base", "share_world")


def _finetune_resolved(c: dict[str, Any]) -> dict[str, Any]:
    """What a finetune stage's fingerprint covers: its FinetuneConfig and the pipeline keys."""
    return {
        "config": _finetune_cfg(c),
        "metric": c.get("metric"),
        "share_world": c.get("share_world", True),
    }


def _finetune_cfg(
    c: dict[str, Any], init: str = "random", phantom_root: str = "", phantom_cache: str = ""
) -> Any:
    """The FinetuneConfig of one run: its dict, the encoder to start from, the shared world
    (and its downstream cache, for a run that selects the default lesion classes)."""
    from ecamp.config import from_dict
    from ecamp.train.finetune import FinetuneConfig, check_config

    data = {k: v for k, v in copy.deepcopy(c).items() if k not in _FINETUNE_KEYS}
    data.setdefault("model", {})["init"] = init
    d = data.setdefault("data", {})
    if phantom_root and d.get("dataset", "phantom") == "phantom" and not d.get("root"):
        d["root"] = phantom_root  # the pipeline's phantom world, not a fresh one per run
        if phantom_cache and not d.get("cache") and not d.get("labels"):
            d["cache"] = phantom_cache  # masks of the default classes are the ones cached
    cfg = from_dict(FinetuneConfig, data)
    check_config(cfg)
    return cfg


def _finetune_run(run: str, encoder: str) -> Callable[[StageContext], dict[str, Any]]:
    """A finetune stage for one downstream run and one encoder (pretrained or random)."""

    def go(ctx: StageContext) -> dict[str, Any]:
        from ecamp.train.finetune import finetune

        if encoder == "pretrained":
            if "pretrain" not in ctx.inputs:
                raise UserError(
                    f"{ctx.name}: no pre-trained encoder (the pretrain stage did not run)"
                )
            init = ctx.inputs["pretrain"]["encoder"]
        else:
            init = "random"
        data = ctx.inputs["data"]
        share = data.get("phantom") and ctx.config.get("share_world", True)
        phantom = data["image_root"] if share else ""
        cache = data.get("downstream_cache", "") if share else ""
        cfg = _finetune_cfg(ctx.config, init, phantom, cache)
        cfg.output = str(ctx.dir)
        res = finetune(cfg, ctx.dir)
        wanted = ctx.config.get("metric") or res.get("metric") or []
        rows = []
        for metric in [wanted] if isinstance(wanted, str) else list(wanted):
            value = (
                res.get("value")
                if metric == res.get("metric")
                else (res.get("metrics") or {}).get(metric)
            )
            if value is None:
                log.warning(
                    "%s: %s is undefined on the test split (recorded as null)", ctx.name, metric
                )
            value = None if value is None else float(value)
            rows.append({"task": run, "metric": metric, "encoder": encoder, "value": value})
        return {"rows": rows, "metrics": res.get("metrics"), "output": str(ctx.dir)}

    return go


def _report_run(ctx: StageContext) -> dict[str, Any]:
    from ecamp.viz.report import build_report

    inputs = dict(ctx.inputs)
    pre = inputs.get("pretrain") or {}
    if pre.get("checkpoints"):
        from ecamp.train.checkpoint import CheckpointDir

        # which step file is the newest is the trainer's convention: the report gets the file
        latest = CheckpointDir(pre["checkpoints"]).latest()
        if latest is not None:
            inputs["pretrain"] = {**pre, "checkpoint": str(latest)}
    path = build_report(
        ctx.run_dir, ctx.dir, inputs, ctx.pipeline, n_images=int(ctx.config.get("images", 4))
    )
    return {"report": str(path)}


def default_stages(cfg: dict[str, Any]) -> list[Stage]:
    """The stage registry for a pipeline config (the order is the run order)."""
    stages: list[Stage] = []
    data = _section(cfg, "data")
    unknown = sorted(set(data) - set(DATA_KEYS))
    if unknown:  # a typo (data.synthtic_n) would otherwise run the default world silently
        from ecamp.config import ConfigError

        raise ConfigError(f"pipeline data: unknown key(s) {unknown}; valid: {', '.join(DATA_KEYS)}")
    extra = (lambda: file_stamp(data["manifest"])) if data.get("manifest") else None
    stages.append(Stage("data", _data_run, config=data, extra_fingerprint=extra))

    dist = _section(cfg, "distill")
    stages.append(
        Stage(
            "distill",
            _distill_run,
            ("data",),
            dist,
            ("distilled.jsonl",),
            "ecamp.distill.run",
            enabled=cfg["distill"].get("enabled", True),
            keep_on_change=True,
            resolve=_distill_resolved,
            extra_fingerprint=(lambda: file_stamp(dist["input"])) if dist.get("input") else None,
        )
    )
    att = _stage_config(cfg["attention"].get("base", ""), cfg["attention"])
    stages.append(
        Stage(
            "attention",
            _attention_run,
            ("data", "distill"),
            att,
            ("guidance/meta.json",),
            "ecamp.train.attention",
            enabled=cfg["attention"].get("enabled", True),
            all_ranks=True,
            resolve=lambda c: _attention_cfg(c, "", ""),
        )
    )
    pre = _stage_config(cfg["pretrain"].get("base", "pretrain_default.yaml"), cfg["pretrain"])
    stages.append(
        Stage(
            "pretrain",
            _pretrain_run,
            ("data", "distill", "attention"),
            pre,
            ("encoder",),
            "ecamp.train.pretrain",
            enabled=cfg["pretrain"].get("enabled", True),
            all_ranks=True,
            resolve=lambda c: _pretrain_cfg(c, "", "", ""),
        )
    )
    from ecamp.config import deep_merge

    ft = cfg["finetune"]
    shared = {k: v for k, v in ft.items() if k not in ("runs", "encoders", "enabled")}
    encoders = list(ft.get("encoders", ENCODERS))
    bad = [e for e in encoders if e not in ENCODERS]
    if bad:
        from ecamp.config import ConfigError

        raise ConfigError(f"finetune.encoders: unknown {bad}; use {list(ENCODERS)}")
    pretrain_on = cfg["pretrain"].get("enabled", True)
    for run, spec in (ft.get("runs") or {}).items():
        spec = spec or {}
        merged = deep_merge(shared, spec)
        task = merged.get("task", "cls")
        # the run's base: its own `base`, else the section's, else the embedded finetune_<task>.yaml
        conf = _stage_config(merged.get("base") or f"finetune_{task}.yaml", merged)
        for enc in encoders:
            deps = ("data", "pretrain") if enc == "pretrained" else ("data",)
            on = (
                ft.get("enabled", True)
                and spec.get("enabled", True)
                and (enc == "random" or pretrain_on)
            )
            stages.append(
                Stage(
                    f"finetune.{run}.{enc}",
                    _finetune_run(run, enc),
                    deps,
                    conf,
                    ("results.json",),
                    "ecamp.train.finetune",
                    enabled=bool(on),
                    all_ranks=True,
                    resolve=_finetune_resolved,
                )
            )
    rep = _section(cfg, "report")
    stages.append(
        Stage(
            "report",
            _report_run,
            tuple(s.name for s in stages),
            rep,
            ("report.html",),
            enabled=cfg["report"].get("enabled", True),
        )
    )
    return stages


# --------------------------------------------------------------------------- results


def results_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table: one line per (task, metric), pre-trained vs random init."""
    from ecamp.eval.results import pivot_results

    keyed = pivot_results(rows)
    if not keyed:
        return "(no downstream results)"
    mw = max(8, *(len(m) for _, m in keyed))
    head = f"{'task':<24} {'metric':<{mw}} {'pretrained':>10} {'random':>10} {'delta':>8}"
    lines = [head, "-" * len(head)]
    for (task, metric), v in keyed.items():
        pre, rnd = v.get("pretrained"), v.get("random")
        cell = lambda x: f"{x:10.4f}" if x is not None else f"{'-':>10}"  # noqa: E731
        delta = f"{pre - rnd:+8.4f}" if pre is not None and rnd is not None else f"{'-':>8}"
        lines.append(f"{task:<24} {metric:<{mw}} {cell(pre)} {cell(rnd)} {delta}")
    return "\n".join(lines)
