"""`ecamp run`: the whole job in one resumable command.

    data -> distill -> attention -> pretrain -> finetune (every run x {pretrained, random}) -> report

A pipeline YAML has one section per stage (see ``resources/configs/pipeline_default.yaml``,
the embedded default that ``ecamp run`` with no file runs).  Every stage runs into its own
folder under one run directory and, when it finishes, leaves ``stage.json`` there: its
*fingerprint* (a hash of its resolved config section and of the fingerprints of the stages
it depends on), its result (paths the next stages read) and its wall time.  A rerun skips a
stage whose fingerprint is unchanged and whose outputs exist, so

* a crashed pipeline resumes at the stage that failed (and that stage resumes from its own
  checkpoints when it has them);
* a changed config re-runs the stage it belongs to and the stages that depend on it, and
  nothing else (the random-init baselines do not depend on pre-training, for instance).

A stage that must re-run because its fingerprint changed starts from an empty folder (the
old one is kept as ``<folder>.previous``) unless it is marked ``keep_on_change`` (the
distillation cache is keyed by its own fingerprint and is never thrown away).

The stage list is a registry of small :class:`Stage` objects; :func:`default_stages` builds
it from a pipeline config.  A stage whose module is not installed yet is a placeholder: it is
reported as unavailable and its dependents run without its output.

Under ``torchrun`` every process runs the pipeline: stages marked ``all_ranks`` (training)
run on every process, the others on rank 0 while the rest wait for its ``stage.json``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecamp.errors import UserError
from ecamp.utils.logging import get_logger

HELP = "run the whole pipeline (distill -> attention -> pretrain -> finetune -> report), resumable"
DEFAULT_PIPELINE = "pipeline_default.yaml"
RECORD = "stage.json"
STARTED = ".stage_started.json"
FAILED = ".stage_failed.json"
PIPELINE_VERSION = 1  # bump when a stage's outputs change meaning: every stage then re-runs
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

log = get_logger(__name__)


# --------------------------------------------------------------------------- registry


@dataclass
class StageContext:
    """What a stage's run callable gets: its folder, its config, its inputs' results."""

    name: str
    dir: Path
    config: dict[str, Any]
    run_dir: Path
    inputs: dict[str, dict[str, Any]]  # dependency name -> its result (done, available stages only)
    pipeline: dict[str, Any] = field(default_factory=dict)


@dataclass
class Stage:
    """One step of the pipeline.

    ``run(ctx) -> result`` does the work inside ``ctx.dir`` and returns a JSON-able dict
    (paths for later stages; a ``rows`` list of ``{"task", "metric", "encoder", "value"}``
    becomes part of ``results.json``).  ``outputs`` (relative to the stage folder) must all
    exist for the stage to count as done.  ``requires`` names a module that must be
    importable; without it the stage is a placeholder.  ``resolve(config)`` builds the
    stage's config object from the section: it runs before anything else, so a typo fails in
    seconds, not after hours of earlier stages, and its result (not the section as written)
    goes into the fingerprint, so spelling out a default does not re-run a stage.
    ``extra_fingerprint()`` adds what the config alone does not pin (input files).
    """

    name: str
    run: Callable[[StageContext], dict[str, Any] | None]
    depends_on: tuple[str, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    requires: str = ""
    enabled: bool = True
    all_ranks: bool = False
    keep_on_change: bool = False
    resolve: Callable[[dict[str, Any]], Any] | None = None
    extra_fingerprint: Callable[[], Any] | None = None

    def folder(self, run_dir: Path) -> Path:
        """``finetune.seg.random`` -> ``run_dir/finetune/seg/random``."""
        return run_dir.joinpath(*self.name.split("."))

    def unavailable(self) -> str:
        """Why the stage cannot run in this installation ("" when it can)."""
        if not self.requires:
            return ""
        try:
            found = importlib.util.find_spec(self.requires) is not None
        except ModuleNotFoundError:
            found = False
        return "" if found else f"module {self.requires} is not installed yet"


@dataclass
class StageOutcome:
    """What happened to one stage in one invocation."""

    name: str
    status: str  # ran | skipped | disabled | unavailable | not-selected | failed
    fingerprint: str
    seconds: float = 0.0
    reason: str = ""


# --------------------------------------------------------------------------- fingerprints


def _hash(obj: Any) -> str:
    from ecamp.utils.secrets import mask_secrets

    # a key's value is not part of what a stage computes: changing it re-runs nothing
    text = json.dumps(
        mask_secrets(obj, redact=False), sort_keys=True, default=str, separators=(",", ":")
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_stamp(path: str | Path) -> dict[str, Any]:
    """Size and mtime of an input file (or of the files of a folder, shallowly)."""
    p = Path(path)
    if p.is_file():
        st = p.stat()
        return {"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if p.is_dir():
        entries = sorted(p.iterdir())
        return {"path": str(p.resolve()), "entries": len(entries), "mtime_ns": p.stat().st_mtime_ns}
    return {"path": str(p), "missing": True}


def resolved_config(stage: Stage) -> Any:
    """The stage's config as it will run (defaults filled in), for fingerprints."""
    if stage.resolve is None:
        return stage.config
    from ecamp.config import to_dict

    return to_dict(stage.resolve(stage.config))


def fingerprints(stages: Sequence[Stage]) -> dict[str, str]:
    """Each stage's fingerprint: its config, version, extra inputs and its dependencies' fingerprints."""
    fps: dict[str, str] = {}
    for s in stages:
        if not s.enabled:
            fps[s.name] = _hash({"stage": s.name, "disabled": True})
            continue
        if s.unavailable():
            fps[s.name] = _hash({"stage": s.name, "unavailable": True})
            continue
        fps[s.name] = _hash(
            {
                "stage": s.name,
                "version": PIPELINE_VERSION,
                "config": resolved_config(s),
                "inputs": {d: fps[d] for d in s.depends_on},
                "extra": s.extra_fingerprint() if s.extra_fingerprint else None,
            }
        )
    return fps


def check_order(stages: Sequence[Stage]) -> None:
    """Names unique, every dependency an earlier stage."""
    seen: set[str] = set()
    for s in stages:
        if s.name in seen:
            raise UserError(f"pipeline: stage {s.name!r} is defined twice")
        missing = [d for d in s.depends_on if d not in seen]
        if missing:
            raise UserError(
                f"pipeline: stage {s.name!r} depends on {missing}, which do not come before it"
            )
        seen.add(s.name)


def check_stages(stages: Sequence[Stage]) -> None:
    """Order and every enabled, available stage's config: fail before any work starts."""
    check_order(stages)
    for s in stages:
        if s.enabled and s.resolve is not None and not s.unavailable():
            try:
                s.resolve(s.config)
            except UserError as e:
                raise UserError(f"stage {s.name}: {e}") from None


def read_record(folder: Path) -> dict[str, Any] | None:
    """The ``stage.json`` of a finished stage, or None."""
    path = folder / RECORD
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def is_done(stage: Stage, folder: Path, fingerprint: str) -> bool:
    """Finished with this fingerprint and every declared output still present."""
    rec = read_record(folder)
    if rec is None or rec.get("fingerprint") != fingerprint:
        return False
    return all((folder / o).exists() for o in stage.outputs)


# --------------------------------------------------------------------------- runner


def _matches(name: str, selector: str) -> bool:
    return name == selector or name.startswith(selector + ".")


def _select(stages: Sequence[Stage], selector: str, flag: str) -> list[str]:
    names = [s.name for s in stages if _matches(s.name, selector)]
    if not names:
        raise UserError(
            f"{flag} {selector}: no such stage; stages: {', '.join(s.name for s in stages)}"
        )
    return names


def _prepare_folder(folder: Path, fingerprint: str, fresh: bool, keep: bool) -> None:
    """Empty the folder when it holds another fingerprint's work (or a forced rerun)."""
    old = read_record(folder)
    started = None
    if (folder / STARTED).is_file():
        try:
            started = json.loads((folder / STARTED).read_text(encoding="utf-8")).get("fingerprint")
        except (OSError, ValueError):
            started = None
    stale = (
        fresh
        or (old is not None and old.get("fingerprint") != fingerprint)
        or (old is None and started is not None and started != fingerprint)
    )
    if folder.exists() and stale and not keep and any(folder.iterdir()):
        backup = folder.with_name(folder.name + ".previous")
        if backup.exists():
            shutil.rmtree(backup)
        folder.rename(backup)
        log.info("%s: earlier outputs moved to %s", folder, backup)
    folder.mkdir(parents=True, exist_ok=True)
    for marker in (RECORD, FAILED):
        (folder / marker).unlink(missing_ok=True)
    from ecamp.utils.io import atomic_write_text

    atomic_write_text(
        folder / STARTED, json.dumps({"fingerprint": fingerprint, "started": time.time()}) + "\n"
    )


@contextmanager
def _stage_log(folder: Path) -> Iterator[None]:
    """Also copy the ``ecamp`` log into ``<stage folder>/pipeline.log`` while the stage runs."""
    import logging

    from ecamp.utils.secrets import SecretFilter

    handler = logging.FileHandler(folder / "pipeline.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(SecretFilter())
    root = logging.getLogger("ecamp")
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


WAIT_POLL_S = 2.0  # ranks > 0 look for rank 0's stage.json this often


def _wait_for_record(folder: Path, fingerprint: str, name: str, since: float) -> dict[str, Any]:
    """Ranks > 0: wait until rank 0 has finished (or failed, after ``since``) a stage."""
    while True:
        rec = read_record(folder)
        if rec is not None and rec.get("fingerprint") == fingerprint:
            return rec
        try:
            failed = json.loads((folder / FAILED).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            failed = {}
        # a marker left by an earlier invocation is not this one's failure
        if failed.get("fingerprint") == fingerprint and float(failed.get("time", 0)) > since:
            raise UserError(
                f"stage {name} failed on rank 0 ({failed.get('error')}); see {folder / FAILED}"
            )
        time.sleep(WAIT_POLL_S)


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def run_stages(
    stages: Sequence[Stage],
    run_dir: str | Path,
    from_stage: str | None = None,
    only: Sequence[str] | None = None,
    pipeline: dict[str, Any] | None = None,
    rank: int | None = None,
) -> list[StageOutcome]:
    """Run ``stages`` in order into ``run_dir``, skipping those already done.

    ``from_stage``: that stage and every later one re-run even when done (earlier stages
    behave as usual).  ``only``: run just the stages these select (forced); their
    dependencies must be done already (a stale one is used with a warning).
    A name selects a stage and its sub-stages (``finetune`` selects ``finetune.seg.random``).
    """
    started = time.time()
    run_dir = Path(run_dir)
    rank = _rank() if rank is None else rank
    check_stages(stages)
    fps = fingerprints(stages)
    names = [s.name for s in stages]
    forced: set[str] = set()
    selected: set[str] | None = None
    if only:
        selected = {n for sel in only for n in _select(stages, sel, "--only")}
        forced = set(selected)
    if from_stage:
        first = names.index(_select(stages, from_stage, "--from")[0])
        forced |= set(names[first:])
    results: dict[str, dict[str, Any]] = {}
    outcomes: list[StageOutcome] = []
    for s in stages:
        folder = s.folder(run_dir)
        fp = fps[s.name]
        if not s.enabled:
            outcomes.append(StageOutcome(s.name, "disabled", fp, reason="enabled: false"))
            continue
        why = s.unavailable()
        if why:
            log.warning("stage %s: placeholder (%s); later stages run without it", s.name, why)
            outcomes.append(StageOutcome(s.name, "unavailable", fp, reason=why))
            continue
        if selected is not None and s.name not in selected:
            rec = read_record(folder)
            if rec is not None:
                if rec.get("fingerprint") != fp:
                    log.warning(
                        "stage %s: its outputs come from another config; used as they are (--only)",
                        s.name,
                    )
                results[s.name] = rec.get("result") or {}
            outcomes.append(StageOutcome(s.name, "not-selected", fp))
            continue
        missing = [d for d in s.depends_on if _produces(d, stages) and d not in results]
        if missing:
            raise UserError(
                f"stage {s.name} needs {missing} done first; run without --only, or --only {missing[0]}"
            )
        if s.name not in forced and is_done(s, folder, fp):
            rec = read_record(folder) or {}
            results[s.name] = rec.get("result") or {}
            log.info("stage %s: up to date, skipped", s.name)
            outcomes.append(StageOutcome(s.name, "skipped", fp))
            continue
        ctx = StageContext(
            s.name,
            folder,
            copy.deepcopy(s.config),
            run_dir,
            {d: results[d] for d in s.depends_on if d in results},
            pipeline or {},
        )
        if rank != 0 and not s.all_ranks:
            rec = _wait_for_record(folder, fp, s.name, started)
            results[s.name] = rec.get("result") or {}
            outcomes.append(StageOutcome(s.name, "ran", fp, reason="on rank 0"))
            continue
        if rank == 0:
            _prepare_folder(folder, fp, fresh=s.name in forced, keep=s.keep_on_change)
        log.info("stage %s: running in %s", s.name, folder)
        t0 = time.perf_counter()
        try:
            with _stage_log(folder) if rank == 0 else nullcontext():
                result = s.run(ctx) or {}
        except BaseException as e:
            if rank == 0:
                from ecamp.utils.io import atomic_write_text
                from ecamp.utils.secrets import redact_text

                atomic_write_text(
                    folder / FAILED,
                    json.dumps(
                        {
                            "error": redact_text(f"{type(e).__name__}: {e}"),
                            "fingerprint": fp,
                            "time": time.time(),
                        }
                    )
                    + "\n",
                )
            log.error(
                "stage %s failed (%s: %s); rerun the same command to resume here",
                s.name,
                type(e).__name__,
                e,
            )
            raise
        seconds = time.perf_counter() - t0
        if rank == 0:
            _write_record(s, folder, fp, fps, result, seconds)
        else:
            result = (_wait_for_record(folder, fp, s.name, started).get("result")) or {}
        results[s.name] = result
        outcomes.append(StageOutcome(s.name, "ran", fp, seconds))
        log.info("stage %s: done in %.1f s", s.name, seconds)
    return outcomes


def _produces(name: str, stages: Sequence[Stage]) -> bool:
    """Whether stage ``name`` is one that produces outputs (enabled and available)."""
    s = next(x for x in stages if x.name == name)
    return s.enabled and not s.unavailable()


def _write_record(
    s: Stage, folder: Path, fp: str, fps: dict[str, str], result: dict[str, Any], seconds: float
) -> None:
    from ecamp.utils.io import atomic_write_text
    from ecamp.utils.secrets import mask_secrets

    missing = [o for o in s.outputs if not (folder / o).exists()]
    if missing:
        raise UserError(f"stage {s.name} finished but did not write {missing} in {folder}")
    record = {
        "stage": s.name,
        "fingerprint": fp,
        "inputs": {d: fps[d] for d in s.depends_on},
        "config": mask_secrets(s.config),
        "result": result,
        "seconds": round(seconds, 3),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    atomic_write_text(folder / RECORD, json.dumps(record, indent=1, default=str) + "\n")
    (folder / STARTED).unlink(missing_ok=True)


# --------------------------------------------------------------------------- results


def collect_rows(stages: Sequence[Stage], run_dir: Path) -> list[dict[str, Any]]:
    """Every finished stage's ``rows`` (task, metric, encoder, value), in stage order."""
    rows: list[dict[str, Any]] = []
    for s in stages:
        rec = read_record(s.folder(run_dir))
        if rec is None:
            continue
        for r in (rec.get("result") or {}).get("rows", []):
            rows.append({k: r[k] for k in ("task", "metric", "encoder", "value")})
    return rows


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


# --------------------------------------------------------------------------- config


def embedded_pipeline_path(name: str = DEFAULT_PIPELINE) -> Path:
    """A pipeline config shipped in ``ecamp/resources/configs``."""
    from ecamp.train.pretrain import embedded_config_path

    return embedded_config_path(name)


def _config_file(name: str) -> Path:
    """A config named by path, or by file name inside the package's embedded configs."""
    p = Path(name)
    if p.is_file():
        return p
    embedded = embedded_pipeline_path(name)
    if embedded.is_file():
        return embedded
    raise UserError(f"config {name} is neither a file nor one of the embedded configs")


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``extra`` recursively (new dict; mappings merge, the rest replaces)."""
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


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
    from ecamp.config import read_yaml

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
        return {"manifest": str(path), "image_root": str(root), "phantom": True}
    return {"manifest": str(path), "image_root": str(root), "phantom": False}


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


PATH_COLUMNS = ("image", "mask", "mask_classes")


def rebase_paths(manifest: str | Path, old_root: str | Path, run_dir: Path) -> None:
    """Rewrite the relative path columns of a manifest copied away from its images.

    Paths inside the run directory become relative to the manifest's new folder (the run
    directory can move as a whole); paths outside it become absolute.
    """
    import os

    from ecamp.data.manifest import read_table, write_table

    path = Path(manifest)
    df = read_table(path)
    new_root, run = path.parent.resolve(), run_dir.resolve()

    def rebase(p: Any) -> Any:
        if not isinstance(p, str) or not p or Path(p).is_absolute():
            return p
        target = (Path(old_root) / p).resolve()
        return os.path.relpath(target, new_root) if target.is_relative_to(run) else str(target)

    for col in PATH_COLUMNS:
        if col in df.columns:
            df[col] = df[col].map(rebase)
    write_table(df, path)


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


def _finetune_cfg(c: dict[str, Any], init: str = "random", phantom_root: str = "") -> Any:
    """The FinetuneConfig of one run: its dict, the encoder to start from, the shared world."""
    from ecamp.config import from_dict
    from ecamp.train.finetune import FinetuneConfig, check_config

    data = {k: v for k, v in copy.deepcopy(c).items() if k not in _FINETUNE_KEYS}
    data.setdefault("model", {})["init"] = init
    d = data.setdefault("data", {})
    if phantom_root and d.get("dataset", "phantom") == "phantom" and not d.get("root"):
        d["root"] = phantom_root  # the pipeline's phantom world, not a fresh one per run
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
        cfg = _finetune_cfg(ctx.config, init, phantom)
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

    path = build_report(
        ctx.run_dir, ctx.dir, ctx.inputs, ctx.pipeline, n_images=int(ctx.config.get("images", 4))
    )
    return {"report": str(path)}


def default_stages(cfg: dict[str, Any]) -> list[Stage]:
    """The stage registry for a pipeline config (the order is the run order)."""
    stages: list[Stage] = []
    data = _section(cfg, "data")
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


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `ecamp run`."""
    parser.add_argument(
        "items",
        nargs="*",
        metavar="[PIPELINE.yaml] [KEY=VALUE ...]",
        help="a pipeline YAML (default: the embedded phantom-world pipeline) and dotted overrides of "
        "its sections, e.g. pretrain.train.epochs=2 finetune.runs.detection.enabled=false",
    )
    parser.set_defaults(override_dest="items")  # overrides may follow options (ecamp.cli)
    parser.add_argument(
        "--config", "-c", metavar="FILE", help="the pipeline YAML (same as the positional file)"
    )
    parser.add_argument(
        "--output",
        "-o",
        metavar="DIR",
        help="run directory; rerun with the same DIR to resume (default: runs/<timestamp>)",
    )
    parser.add_argument(
        "--from",
        dest="from_stage",
        metavar="STAGE",
        help="re-run STAGE and every later stage even when up to date (earlier stages as usual)",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="STAGE",
        help="run only STAGE (repeatable; a prefix such as 'finetune' selects all its runs); "
        "its inputs must be done already",
    )
    parser.add_argument(
        "--list", action="store_true", help="print the stages and whether each would run, then exit"
    )


def _split_items(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    files = [x for x in args.items if "=" not in x]
    overrides = [x for x in args.items if "=" in x]
    if len(files) + bool(args.config) > 1:
        raise UserError(
            f"give one pipeline file, got {files + ([args.config] if args.config else [])}"
        )
    return (args.config or (files[0] if files else None)), overrides


def plan(stages: Sequence[Stage], run_dir: Path) -> list[tuple[str, str]]:
    """(stage, state) for ``--list``: done | will run | disabled | placeholder (...)."""
    check_stages(stages)
    fps = fingerprints(stages)
    out = []
    for s in stages:
        if not s.enabled:
            state = "disabled"
        elif s.unavailable():
            state = f"placeholder ({s.unavailable()})"
        else:
            state = "done" if is_done(s, s.folder(run_dir), fps[s.name]) else "will run"
        out.append((s.name, state))
    return out


def run(args: argparse.Namespace) -> int:
    """Entry point of `ecamp run`."""
    from ecamp.config import save_config
    from ecamp.utils.io import atomic_write_text
    from ecamp.utils.logging import setup_logging

    path, overrides = _split_items(args)
    cfg = load_pipeline(path, overrides)
    run_dir = Path(args.output or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    stages = default_stages(cfg)
    if args.list:
        for name, state in plan(stages, run_dir):
            print(f"{name:<36} {state}")
        return 0
    rank = _rank()
    setup_logging(run_dir, rank=rank)
    log.info("run directory %s (rerun with --output %s to resume)", run_dir, run_dir)
    if rank == 0:
        save_config(cfg, run_dir / "pipeline.yaml")
    t0 = time.perf_counter()
    outcomes = run_stages(stages, run_dir, args.from_stage, args.only, cfg, rank)
    if rank != 0:
        return 0
    rows = collect_rows(stages, run_dir)
    atomic_write_text(run_dir / "results.json", json.dumps(rows, indent=1) + "\n")
    summary = {
        "seconds": round(time.perf_counter() - t0, 1),
        "stages": [o.__dict__ for o in outcomes],
    }
    atomic_write_text(run_dir / "pipeline.json", json.dumps(summary, indent=1) + "\n")
    for o in outcomes:
        print(f"{o.name:<36} {o.status:<12} {o.seconds:8.1f} s  {o.reason}")
    print()
    print(results_table(rows))
    report = run_dir / "report" / "report.html"
    if report.is_file():
        print(f"\nreport: {report}")
    print(f"results: {run_dir / 'results.json'}")
    return 0
