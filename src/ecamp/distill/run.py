"""Distil a corpus: read reports, shard, call a backend, validate, cache, write the output.

A run appends every finished report to an append-only cache (one JSON line, written with
one ``write`` call) before anything else happens, so a killed run loses at most the
requests in flight, and a rerun does no repeated work.  The output file (JSONL / CSV /
Parquet, chosen by extension) is rebuilt from the cache in input order at the end of
every run, each report once.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecamp.distill.backends import BackendUnavailable, ChatBackend
from ecamp.distill.config import DistillConfig
from ecamp.distill.findings import Distillation
from ecamp.distill.prompt import Prompt, entity_list
from ecamp.distill.rules import distill_text
from ecamp.distill.validate import parse_answer
from ecamp.errors import DataError, UserError
from ecamp.utils.io import atomic_write
from ecamp.utils.logging import get_logger

log = get_logger(__name__)
RULES_VERSION = "1"  # bump when rules.py changes what it writes: cached rules output is redone
OUTPUT_FIELDS = ("id", "distilled", "findings", "backend", "status", "reason")


@dataclass(frozen=True)
class Report:
    """One report: its id (study id for MIMIC) and the text to distil."""

    id: str
    text: str


# --------------------------------------------------------------------------- input


def read_reports(
    path: str | Path,
    id_column: str | None = None,
    text_columns: tuple[str, ...] = ("findings", "impression"),
) -> list[Report]:
    """Reports from a CSV / TSV / JSONL / Parquet table or a MIMIC-CXR reports folder.

    Tables: ``text_columns`` are joined (missing values skipped) as the report text; the id
    comes from ``id_column`` (default: the first of study_id, id, uid present).  A folder:
    every ``s<study_id>.txt`` below it, FINDINGS + IMPRESSION, id = study id.
    """
    p = Path(path)
    if p.is_dir():
        reports = _read_mimic_folder(p)
    elif not p.is_file():
        raise UserError(
            f"input {p} does not exist; pass a CSV/JSONL/Parquet file or a MIMIC reports folder"
        )
    else:
        reports = _read_table(p, id_column, text_columns)
    seen: set[str] = set()
    for r in reports:
        if r.id in seen:
            raise DataError(
                f"{p}: report id {r.id!r} occurs more than once; ids must be unique (see --id-column)"
            )
        seen.add(r.id)
    return reports


def _read_mimic_folder(folder: Path) -> list[Report]:
    try:
        from ecamp.text.sections import report_text
    except ImportError:  # pragma: no cover - older text pipeline
        raise UserError("reading a MIMIC folder needs ecamp.text.sections") from None
    files = sorted(folder.rglob("s*.txt"))
    if not files:
        raise DataError(
            f"{folder}: no MIMIC-CXR report files (s<study_id>.txt) found below this folder"
        )
    out = []
    for f in files:
        try:
            raw = f.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise DataError(f"{f}: cannot read report ({e})") from None
        out.append(Report(f.stem[1:] if f.stem[1:].isdigit() else f.stem, report_text(raw)))
    return out


def _read_table(p: Path, id_column: str | None, text_columns: tuple[str, ...]) -> list[Report]:
    from ecamp.utils import tables

    suffix = "".join(p.suffixes[-2:]).lower()
    if suffix.endswith((".jsonl", ".jsonl.gz")):
        df = tables.read_jsonl(p, what="reports")
    elif suffix.endswith(".json"):
        df = tables.read_json(p, what="reports")
    elif suffix.endswith(".parquet"):
        df = tables.read_parquet(p, what="reports")
    else:
        df = tables.read_csv(
            p,
            sep="\t" if suffix.endswith((".tsv", ".tsv.gz")) else ",",
            dtype=str,
            keep_default_na=False,
            what="reports",
        )
    cols = list(df.columns)
    if id_column is None:
        id_column = next((c for c in ("study_id", "id", "uid") if c in cols), None)
        if id_column is None:
            raise DataError(
                f"{p}: no id column (study_id, id or uid); name one with --id-column (columns: {cols})"
            )
    missing = [c for c in (id_column, *text_columns) if c not in cols]
    if missing:
        raise DataError(
            f"{p}: missing column(s) {missing}; columns are {cols} (see --id-column / --text-columns)"
        )
    if df.empty:
        return []
    text = df[list(text_columns)].astype(object).where(df[list(text_columns)].notna(), "")
    joined = text.astype(str).agg(" ".join, axis=1).str.split().str.join(" ")
    ids = df[id_column].astype(str).str.strip()
    return [Report(i, t) for i, t in zip(ids, joined)]


def shard(reports: list[Report], index: int, count: int) -> list[Report]:
    """The reports of shard ``index`` of ``count`` (by a stable hash of the id)."""
    if count < 1 or not 0 <= index < count:
        raise UserError(f"--shard {index}/{count}: need 0 <= i < n")
    if count == 1:
        return reports
    return [r for r in reports if zlib.crc32(r.id.encode()) % count == index]


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` -> (i, n)."""
    if not text:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard {text!r} must look like i/n, e.g. 0/8") from None
    if n < 1 or not 0 <= i < n:
        raise UserError(f"--shard {text}: need 0 <= i < n")
    return i, n


# --------------------------------------------------------------------------- cache


class ResultCache:
    """Append-only JSONL of finished reports; the last line per id wins."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._index: dict[str, tuple[int, str]] = {}  # id -> (offset, key)
        self._fd: int | None = None
        self.torn_lines = 0
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        offset = 0
        with open(self.path, "rb") as f:
            for raw in f:
                try:
                    rec = json.loads(raw)
                    self._index[str(rec["id"])] = (offset, str(rec["key"]))
                except (ValueError, KeyError, TypeError):
                    self.torn_lines += 1  # a line cut by a kill: its report is redone
                offset += len(raw)

    def get(self, report_id: str, key: str) -> dict[str, Any] | None:
        hit = self._index.get(report_id)
        if hit is None or hit[1] != key:
            return None
        with open(self.path, "rb") as f:
            f.seek(hit[0])
            return json.loads(f.readline())

    def latest(self, report_id: str) -> dict[str, Any] | None:
        """The last record written for ``report_id`` (any key), or None."""
        hit = self._index.get(report_id)
        return None if hit is None else self.get(report_id, hit[1])

    def has(self, report_id: str, key: str) -> bool:
        hit = self._index.get(report_id)
        return hit is not None and hit[1] == key

    def append(self, record: dict[str, Any]) -> None:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            size = os.fstat(self._fd).st_size
            if size and _last_byte(self.path) != b"\n":
                os.write(self._fd, b"\n")  # never glue a record onto a torn line
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        offset = os.fstat(self._fd).st_size
        os.write(self._fd, line)  # one write per record: whole lines survive a kill
        self._index[str(record["id"])] = (offset, str(record["key"]))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


def cache_key(report: Report, fingerprint: str) -> str:
    """Identifies a result: same text, backend settings and prompt -> reuse."""
    return hashlib.sha256(f"{fingerprint}\x00{report.text}".encode()).hexdigest()[:20]


def run_fingerprint(
    cfg: DistillConfig, prompt: Prompt | None, backend: ChatBackend | None = None
) -> str:
    parts = dict(cfg.fingerprint_fields())
    if backend is not None and backend.model_id:
        parts["model"] = backend.model_id  # the model the server actually serves
    parts["rules_version"] = RULES_VERSION
    if prompt is not None:
        parts["prompt"] = prompt.fingerprint()
    return json.dumps(parts, sort_keys=True)


# --------------------------------------------------------------------------- distil


def distill_with_rules(report: Report) -> Distillation:
    """The rules backend on one report."""
    if not report.text.strip():
        return Distillation([], backend="rules", status="empty", reason="empty report text")
    return Distillation(distill_text(report.text), backend="rules", status="ok")


def distill_with_llm(
    report: Report, backend: ChatBackend, prompt: Prompt, retries: int = 1, complete: bool = True
) -> Distillation:
    """Ask the LLM; a rejected answer is asked again ``retries`` times, then rules replace it.
    With ``complete``, entities a valid answer leaves out are asked for once more, alone.

    Raises BackendUnavailable when the server cannot be reached (the report is not cached
    and a rerun tries it again).
    """
    if not report.text.strip():
        return Distillation([], backend=backend.name, status="empty", reason="empty report text")
    entities = entity_list(report.text)
    if not entities:
        return Distillation([], backend=backend.name, status="ok", reason="no entity mentioned")
    messages = prompt.messages(report.text, entities)
    problem = ""
    for _ in range(1 + max(0, retries)):
        answer = backend.chat(messages)
        parsed = parse_answer(answer, entities)
        if parsed.ok:
            d = Distillation(parsed.findings, backend=backend.name, status="ok")
            missing = omitted(d, entities) if complete else []
            if missing:
                _complete(d, backend.chat(prompt.messages(report.text, missing)), entities, missing)
            return d
        problem = parsed.problem or "rejected"
        messages = _retry_messages(messages, answer, problem, entities)
    return _fallback(report, backend, problem)


def omitted(d: Distillation, entities: list[str]) -> list[str]:
    """The entities of the report that no finding of ``d`` names, in report order."""
    named = {f.entity for f in d.findings}
    return [e for e in entities if e not in named]


def _complete(d: Distillation, answer: str, entities: list[str], missing: list[str]) -> None:
    """Add to ``d`` the findings about ``missing`` entities that ``answer`` (to a question
    about just those) gives; an invalid answer adds nothing (the first answer stands)."""
    parsed = parse_answer(answer, entities)
    if not parsed.ok:
        return
    added = [f for f in parsed.findings if f.entity in missing]
    got = list(dict.fromkeys(f.entity for f in added))
    if got:
        d.findings.extend(added)
        d.completed = len(got)
        d.reason = f"asked again for omitted entities: {', '.join(got)}"


def _retry_messages(
    messages: list[dict[str, str]], answer: str, problem: str, entities: list[str]
) -> list[dict[str, str]]:
    """The chat asking again after a rejected answer."""
    return [
        *messages,
        {"role": "assistant", "content": answer},
        {
            "role": "user",
            "content": f"That answer was rejected ({problem}). Answer again with one sentence "
            f"per entity in the given forms, about only these entities: {', '.join(entities)}.",
        },
    ]


def _fallback(report: Report, backend: ChatBackend, problem: str) -> Distillation:
    return Distillation(
        distill_text(report.text),
        backend="rules",
        status="fallback",
        reason=f"{backend.name}: {problem}",
    )


def distill_batch_with_llm(
    reports: list[Report],
    backend: ChatBackend,
    prompt: Prompt,
    retries: int = 1,
    complete: bool = True,
) -> list[Distillation]:
    """:func:`distill_with_llm` for a batch, through ``backend.chat_batch`` (one call per
    round: the first answers, the rejected ones asked again, then the omitted entities)."""
    out: list[Distillation | None] = [None] * len(reports)
    todo: list[tuple[int, list[str], list[dict[str, str]]]] = []
    asked: dict[int, list[str]] = {}  # report index -> its entities, for the omission round
    for i, r in enumerate(reports):
        if not r.text.strip():
            out[i] = Distillation(
                [], backend=backend.name, status="empty", reason="empty report text"
            )
            continue
        entities = entity_list(r.text)
        if not entities:
            out[i] = Distillation(
                [], backend=backend.name, status="ok", reason="no entity mentioned"
            )
            continue
        asked[i] = entities
        todo.append((i, entities, prompt.messages(r.text, entities)))
    problems: dict[int, str] = {}
    for _ in range(1 + max(0, retries)):
        if not todo:
            break
        answers = backend.chat_batch([m for _, _, m in todo])  # type: ignore[attr-defined]
        rejected = []
        for (i, entities, messages), answer in zip(todo, answers):
            parsed = parse_answer(answer, entities)
            if parsed.ok:
                out[i] = Distillation(parsed.findings, backend=backend.name, status="ok")
                continue
            problems[i] = parsed.problem or "rejected"
            rejected.append((i, entities, _retry_messages(messages, answer, problems[i], entities)))
        todo = rejected
    for i, _, _ in todo:
        out[i] = _fallback(reports[i], backend, problems[i])
    if complete:
        gaps = []
        for i, entities in asked.items():
            d = out[i]
            if d is not None and d.status == "ok" and d.findings:
                missing = omitted(d, entities)
                if missing:
                    gaps.append((d, entities, missing, prompt.messages(reports[i].text, missing)))
        if gaps:
            answers = backend.chat_batch([g[3] for g in gaps])  # type: ignore[attr-defined]
            for (d, entities, missing, _), answer in zip(gaps, answers):
                _complete(d, answer, entities, missing)
    return [d for d in out if d is not None]


@dataclass
class Summary:
    """Counts of one run (printed as JSON at the end)."""

    reports: int = 0
    done: int = 0
    cached: int = 0
    fallbacks: int = 0
    completed: int = 0  # answers an omitted-entity question added to
    failures: int = 0
    empty: int = 0
    written: int = 0
    seconds: float = 0.0
    output: str = ""
    failed_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["failed_ids"] = self.failed_ids[:20]
        d["reports_per_s"] = round(self.done / self.seconds, 3) if self.seconds > 0 else None
        return d


def distill_corpus(
    reports: list[Report],
    cfg: DistillConfig,
    cache_path: str | Path,
    backend: ChatBackend | None = None,
    prompt: Prompt | None = None,
    progress: bool = True,
) -> Summary:
    """Distil every report not already in the cache; results go to the cache only."""
    summary = Summary(reports=len(reports))
    cache = ResultCache(cache_path)
    fingerprint = run_fingerprint(cfg, prompt if backend is not None else None, backend)
    keys = {r.id: cache_key(r, fingerprint) for r in reports}
    todo = [r for r in reports if not cache.has(r.id, keys[r.id])]
    summary.cached = len(reports) - len(todo)
    if cache.torn_lines:
        log.warning(
            "%s: %d torn line(s) from an interrupted run ignored", cache.path, cache.torn_lines
        )
    bar = _progress(len(todo), progress)
    t0 = time.perf_counter()

    def record(r: Report, d: Distillation) -> None:
        rec = d.to_record(r.id)
        rec["key"] = keys[r.id]
        cache.append(rec)
        summary.done += 1
        summary.fallbacks += d.status == "fallback"
        summary.completed += d.completed > 0
        summary.empty += d.status == "empty"
        bar.update(1)

    try:
        if backend is None:
            for r in todo:
                record(r, distill_with_rules(r))
        else:
            assert prompt is not None
            _run_llm(todo, backend, prompt, cfg, record, summary, bar)
    finally:
        summary.seconds = time.perf_counter() - t0
        bar.close()
        cache.close()
    return summary


def _run_llm(todo, backend, prompt, cfg, record, summary, bar) -> None:
    if hasattr(backend, "chat_batch"):
        _run_batched(todo, backend, prompt, cfg, record, summary, bar)
        return
    workers = max(1, min(cfg.concurrency, backend.max_concurrency))
    consecutive = 0
    it: Iterator[Report] = iter(todo)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: dict[Future, Report] = {}

        def submit_next() -> None:
            r = next(it, None)
            if r is not None:
                pending[
                    pool.submit(
                        distill_with_llm,
                        r,
                        backend,
                        prompt,
                        cfg.validation_retries,
                        cfg.complete_omitted,
                    )
                ] = r

        for _ in range(2 * workers):  # a bounded window: memory stays flat on big corpora
            submit_next()
        while pending:
            finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for fut in finished:
                r = pending.pop(fut)
                try:
                    d = fut.result()
                except BackendUnavailable as e:
                    summary.failures += 1
                    summary.failed_ids.append(r.id)
                    consecutive += 1
                    log.warning("report %s failed: %s", r.id, e)
                    bar.update(1)
                    if consecutive >= cfg.max_consecutive_failures:
                        for f in pending:
                            f.cancel()
                        raise UserError(
                            f"{consecutive} requests in a row failed ({e}); the server looks down. "
                            "Finished reports are cached: rerun the same command to resume."
                        ) from None
                else:
                    consecutive = 0
                    record(r, d)
                submit_next()
                bar.set_postfix(fallbacks=summary.fallbacks, failed=summary.failures, refresh=False)


def _run_batched(todo, backend, prompt, cfg, record, summary, bar) -> None:
    """In-process backends that answer many chats per call (transformers)."""
    size = max(1, getattr(backend, "batch_size", 1))
    consecutive = 0
    for lo in range(0, len(todo), size):
        chunk = todo[lo : lo + size]
        try:
            results = distill_batch_with_llm(
                chunk, backend, prompt, cfg.validation_retries, cfg.complete_omitted
            )
        except BackendUnavailable as e:
            summary.failures += len(chunk)
            summary.failed_ids.extend(r.id for r in chunk)
            consecutive += len(chunk)
            log.warning("%d report(s) failed: %s", len(chunk), e)
            bar.update(len(chunk))
            if consecutive >= cfg.max_consecutive_failures:
                raise UserError(
                    f"{consecutive} reports in a row failed ({e}); finished reports are cached: "
                    "fix the cause (e.g. a smaller batch_size) and rerun the same command to resume."
                ) from None
            continue
        consecutive = 0
        for r, d in zip(chunk, results):
            record(r, d)
        bar.set_postfix(fallbacks=summary.fallbacks, refresh=False)


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    # tqdm shows rate and ETA; disable=None turns it off when stderr is not a terminal
    return tqdm(
        total=total,
        unit="report",
        desc="distill",
        disable=None if enabled else True,
        smoothing=0.05,
    )


# --------------------------------------------------------------------------- output


def collect(reports: list[Report], cache_path: str | Path) -> Iterator[dict[str, Any]]:
    """Output records in input order, each report once (those the cache holds)."""
    cache = ResultCache(cache_path)
    for r in reports:
        rec = cache.latest(r.id)
        if rec is not None:
            yield {k: rec.get(k) for k in OUTPUT_FIELDS}


def write_output(records: Iterator[dict[str, Any]], path: str | Path) -> int:
    """Write records as JSONL, CSV or Parquet (by extension), atomically; returns the count."""
    p = Path(path)
    rows = list(records)
    suffix = p.suffix.lower()

    if suffix in (".jsonl", ".json"):

        def write(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as f:
                for rec in rows:
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")

    elif suffix in (".csv", ".parquet"):
        import pandas as pd

        df = pd.DataFrame(
            [{**r, "findings": json.dumps(r["findings"], ensure_ascii=False)} for r in rows],
            columns=list(OUTPUT_FIELDS),
        )

        def write(tmp: str) -> None:
            if suffix == ".csv":
                df.to_csv(tmp, index=False)
            else:
                df.to_parquet(tmp, index=False)

    else:
        raise UserError(f"output {p}: use a .jsonl, .csv or .parquet file name")
    atomic_write(p, write)
    return len(rows)


def default_cache_path(output: str | Path, shard_index: int = 0, shard_count: int = 1) -> Path:
    """``OUT.cache.jsonl`` beside the output (one per shard)."""
    out = Path(output)
    tag = f".shard{shard_index}of{shard_count}" if shard_count > 1 else ""
    return out.with_name(out.name + tag + ".cache.jsonl")
