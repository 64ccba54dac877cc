"""A generic resumable stage engine: run a list of stages into one run directory, each once.

Every stage runs into its own folder under the run directory and, when it finishes, leaves
``stage.json`` there: its *fingerprint* (a hash of its resolved config and of the
fingerprints of the stages it depends on), its result (what the next stages read) and its
wall time.  A rerun skips a stage whose fingerprint is unchanged and whose outputs exist, so

* a crashed run resumes at the stage that failed (and that stage resumes from its own
  checkpoints when it has them);
* a changed config re-runs the stage it belongs to and the stages that depend on it, and
  nothing else.

A stage that must re-run because its fingerprint changed starts from an empty folder (the
old one is kept as ``<folder>.previous``) unless it is marked ``keep_on_change``.  A stage
whose module is not installed is a placeholder: it is reported as unavailable and its
dependents run without its output.

Under ``torchrun`` every process runs the stages: those marked ``all_ranks`` run on every
process, the others on rank 0 while the rest wait for its ``stage.json``.

This module knows nothing of what the stages do; :mod:`ecamp.pipeline.ecamp_stages` builds
ECAMP's stage list.
"""

from __future__ import annotations

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
from ecamp.utils.env import launch_rank
from ecamp.utils.logging import get_logger
from ecamp.utils.records import RECORD

STARTED = ".stage_started.json"
FAILED = ".stage_failed.json"
PIPELINE_VERSION = 1  # bump when a stage's outputs change meaning: every stage then re-runs

log = get_logger(__name__)


# --------------------------------------------------------------------------- stages


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


def _rebase(value: Any, old: str, new: str) -> Any:
    """``value`` with every string path under the folder ``old`` moved under ``new``."""
    if isinstance(value, str):
        if value == old or value.startswith(old + os.sep):
            return new + value[len(old) :]
        return value
    if isinstance(value, dict):
        return {k: _rebase(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_rebase(v, old, new) for v in value]
    return value


def record_result(rec: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """A record's ``result``, its paths inside the run folder moved to where that folder is now.

    Results name files by absolute path (the next stage opens them); a run folder that was
    moved or copied would otherwise point its later stages at the old place.
    """
    result = rec.get("result") or {}
    old = rec.get("run_dir")
    new = str(Path(run_dir).resolve())
    return _rebase(result, old, new) if isinstance(old, str) and old != new else result


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
    rank = launch_rank() if rank is None else rank
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
                results[s.name] = record_result(rec, run_dir)
            outcomes.append(StageOutcome(s.name, "not-selected", fp))
            continue
        missing = [d for d in s.depends_on if _produces(d, stages) and d not in results]
        if missing:
            raise UserError(
                f"stage {s.name} needs {missing} done first; run without --only, or --only {missing[0]}"
            )
        if s.name not in forced and is_done(s, folder, fp):
            results[s.name] = record_result(read_record(folder) or {}, run_dir)
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
            results[s.name] = record_result(rec, run_dir)
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
            _write_record(s, folder, fp, fps, result, seconds, run_dir)
        else:
            result = record_result(_wait_for_record(folder, fp, s.name, started), run_dir)
        results[s.name] = result
        outcomes.append(StageOutcome(s.name, "ran", fp, seconds))
        log.info("stage %s: done in %.1f s", s.name, seconds)
    return outcomes


def _produces(name: str, stages: Sequence[Stage]) -> bool:
    """Whether stage ``name`` is one that produces outputs (enabled and available)."""
    s = next(x for x in stages if x.name == name)
    return s.enabled and not s.unavailable()


def _write_record(
    s: Stage,
    folder: Path,
    fp: str,
    fps: dict[str, str],
    result: dict[str, Any],
    seconds: float,
    run_dir: Path,
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
        "run_dir": str(run_dir.resolve()),  # where the result's paths were: see record_result
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


def plan(stages: Sequence[Stage], run_dir: Path) -> list[tuple[str, str]]:
    """(stage, state) without running anything (``--list``): done | will run | disabled |
    placeholder (...)."""
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
