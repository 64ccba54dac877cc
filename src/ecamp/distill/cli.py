"""`ecamp distill`: reports -> entity-centred sentences; `merge` and `export-chat` helpers.

ecamp distill --input reports.csv --output distilled.jsonl [--backend rules]
ecamp distill --input mimic/files --output d.jsonl --backend openai --base-url http://127.0.0.1:8080/v1
ecamp distill merge --manifest pretrain.csv --distilled d.jsonl [--output merged.csv]
ecamp distill export-chat --input reports.csv --distilled d.jsonl --output chats.jsonl
ecamp distill train-student --data chats.jsonl --base MODEL_DIR_OR.gguf --output runs/student
ecamp distill --input rest.csv --output d2.jsonl --backend transformers --model runs/student/model
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ecamp.utils.cliargs import add_config_args

HELP = "distil reports into entity-centred sentences (rules offline, or an LLM)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Run flags on ``ecamp distill`` itself; ``merge`` and ``export-chat`` as sub-commands."""
    _add_run_arguments(parser)
    sub = parser.add_subparsers(dest="distill_action", metavar="ACTION")
    m = sub.add_parser("merge", help="join distilled text to the pre-training manifest by study id")
    m.add_argument(
        "--manifest",
        required=True,
        metavar="FILE",
        help="pre-training manifest (CSV/TSV/JSONL/Parquet)",
    )
    m.add_argument(
        "--distilled",
        required=True,
        nargs="+",
        metavar="FILE",
        help="`ecamp distill` output(s), e.g. every shard",
    )
    m.add_argument(
        "--output",
        metavar="FILE",
        help="where to write the merged manifest (default: replace --manifest atomically)",
    )
    m.add_argument(
        "--id-column",
        default="study_id",
        help="manifest column holding the study id (default: study_id)",
    )
    m.add_argument(
        "--column", default="distilled", help="name of the added text column (default: distilled)"
    )
    m.add_argument(
        "--overwrite",
        action="store_true",
        help="replace text the column already holds with the new distilled text (default: keep "
        "it; rows without new text always keep theirs)",
    )
    e = sub.add_parser(
        "export-chat", help="teacher prompt/answer pairs as chat JSONL for student fine-tuning"
    )
    _add_input_arguments(e)
    e.add_argument(
        "--distilled",
        required=True,
        metavar="FILE",
        help="`ecamp distill` output holding the teacher answers",
    )
    e.add_argument("--output", required=True, metavar="FILE", help="chat JSONL to write")
    e.add_argument(
        "--prompt-file",
        metavar="FILE",
        help="prompt YAML used for the teacher (default: the packaged one)",
    )
    e.add_argument(
        "--no-example",
        action="store_true",
        help="leave the one-shot example out of each chat (student sees only instruction + report)",
    )
    e.add_argument(
        "--statuses",
        default="ok",
        help="comma-separated record statuses to export (default: ok = validated LLM answers)",
    )
    e.add_argument(
        "--backends", default=None, help="comma-separated backends to export (default: any)"
    )
    t = sub.add_parser(
        "train-student",
        help="fine-tune a local causal LM (LoRA or full) on export-chat pairs; writes OUTPUT/model",
    )
    t.add_argument(
        "--data", metavar="PAIRS.jsonl", help="teacher chats from `ecamp distill export-chat`"
    )
    t.add_argument(
        "--base",
        metavar="MODEL",
        help="base model: a local save_pretrained folder or a .gguf file (never downloaded)",
    )
    add_config_args(t)


def _add_input_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--input",
        "-i",
        required=required,
        metavar="REPORTS",
        help="CSV/TSV/JSONL/Parquet table of reports, or a MIMIC-CXR reports folder (s<study_id>.txt files)",
    )
    p.add_argument(
        "--id-column",
        default=None,
        help="table column with the report id (default: study_id, id or uid)",
    )
    p.add_argument(
        "--text-columns",
        default="findings,impression",
        help="comma-separated table columns joined as the report text (default: findings,impression)",
    )


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    _add_input_arguments(p, required=False)
    p.add_argument(
        "--output",
        "-o",
        metavar="OUT",
        help="output file: .jsonl, .csv or .parquet (required to run)",
    )
    p.add_argument(
        "--backend",
        choices=["rules", "openai", "llamacpp", "transformers"],
        default=None,
        help="rules (default, offline), openai (any OpenAI-compatible server), llamacpp (local "
        "GGUF) or transformers (a local model folder in process, e.g. a trained student)",
    )
    p.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        help="YAML with any DistillConfig fields (backend, base_url, model, concurrency ...)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config field, e.g. --set max_tokens=256 (repeatable)",
    )
    p.add_argument(
        "--base-url",
        default=None,
        help="OpenAI-compatible server URL, e.g. http://127.0.0.1:8080/v1 (default: $OPENAI_BASE_URL)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="model name sent to the server (default: $ECAMP_LLM_MODEL, else the server's first "
        "model); transformers backend: the local model folder",
    )
    p.add_argument(
        "--api-key-env",
        default=None,
        help="environment variable holding the API key (default: OPENAI_API_KEY); the key is never logged",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="requests in flight at once (openai backend; default 4)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds per request before it is retried (default 60)",
    )
    p.add_argument(
        "--max-retries",
        type=int,
        default=None,
        help="retries per request on timeouts, 429 and 5xx, with exponential backoff (default 4)",
    )
    p.add_argument(
        "--gguf", default=None, metavar="FILE", help="GGUF model file (llamacpp backend)"
    )
    p.add_argument(
        "--prompt-file",
        default=None,
        metavar="FILE",
        help="prompt YAML (system, user, example.report, example.answer; report: full or "
        "entity_sentences); default: the packaged one-shot prompt; `student`: the packaged short "
        "prompt without the example, showing only the sentences that name an entity (for trained "
        "students). An answer that leaves entities out is asked once more for just those "
        "(--set complete_omitted=false: not)",
    )
    p.add_argument("--max-tokens", type=int, default=None, help="answer length limit (default 384)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="reports per generate() call (transformers backend; default 16)",
    )
    p.add_argument(
        "--repeat-penalty",
        type=float,
        default=None,
        help="llama.cpp repeat penalty, set explicitly (default 1.1)",
    )
    p.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="distil only shard I of N (stable hash of the id); output and cache names get .shardIofN",
    )
    p.add_argument(
        "--cache",
        default=None,
        metavar="FILE",
        help="append-only cache of finished reports (default: OUT.cache.jsonl); reruns reuse it",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="distil only the first N reports (a quick try)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Dispatch to the run, merge or export-chat action."""
    from ecamp.utils.logging import setup_logging

    setup_logging()
    action = getattr(args, "distill_action", None)
    if action == "merge":
        return _merge(args)
    if action == "export-chat":
        return _export(args)
    if action == "train-student":
        return _train_student(args)
    return _distill(args)


def load_distill_config(args: argparse.Namespace):
    """Defaults <- --config <- --set <- explicit flags."""
    from ecamp.config import load_config
    from ecamp.distill.config import DistillConfig

    cfg = load_config(DistillConfig, args.config, args.overrides)
    flags = {
        "backend": args.backend,
        "base_url": args.base_url,
        "model": args.model,
        "api_key_env": args.api_key_env,
        "concurrency": args.concurrency,
        "timeout_s": args.timeout,
        "max_retries": args.max_retries,
        "gguf": args.gguf,
        "prompt_file": args.prompt_file,
        "max_tokens": args.max_tokens,
        "repeat_penalty": args.repeat_penalty,
        "batch_size": args.batch_size,
    }
    for k, v in flags.items():
        if v is not None:
            setattr(cfg, k, v)
    return cfg


def _shard_path(path: Path, i: int, n: int) -> Path:
    return path if n == 1 else path.with_name(f"{path.stem}.shard{i}of{n}{path.suffix}")


def _distill(args: argparse.Namespace) -> int:
    from ecamp.distill import run as R
    from ecamp.distill.prompt import load_prompt
    from ecamp.errors import UserError
    from ecamp.utils.io import atomic_write_text
    from ecamp.utils.lock import output_lock
    from ecamp.utils.logging import get_logger
    from ecamp.utils.secrets import register_secret

    log = get_logger("distill")
    if not args.input or not args.output:
        raise UserError("give --input REPORTS and --output OUT (or an action: merge, export-chat)")
    cfg = load_distill_config(args)
    register_secret(cfg.api_key)
    i, n = R.parse_shard(args.shard)
    out = _shard_path(Path(args.output), i, n)
    if out.suffix.lower() not in (".jsonl", ".json", ".csv", ".parquet"):
        raise UserError(f"--output {out}: use a .jsonl, .csv or .parquet file name")
    cache = Path(args.cache) if args.cache else R.default_cache_path(out)
    reports = R.read_reports(
        args.input,
        args.id_column,
        tuple(c.strip() for c in args.text_columns.split(",") if c.strip()),
    )
    reports = R.shard(reports, i, n)
    if args.limit is not None:
        reports = reports[: max(0, args.limit)]
    prompt = load_prompt(cfg.prompt_file) if cfg.backend != "rules" else None
    # one run per output: a second one would redo (on a paid backend: pay for) the same reports
    with output_lock(out, "ecamp distill"):
        summary = _distill_locked(reports, cfg, cache, prompt, out, i, n, args.no_progress)
    result = summary.as_dict()
    result["backend"] = cfg.backend
    atomic_write_text(
        out.with_name(out.name + ".summary.json"),
        json.dumps({**result, "config": cfg.public_dict()}, indent=1),
    )
    print(json.dumps(result))
    if summary.failures:
        log.warning(
            "%d report(s) failed (server unreachable); rerun the same command to retry them",
            summary.failures,
        )
        return 1
    return 0


def _distill_locked(
    reports, cfg, cache: Path, prompt, out: Path, i: int, n: int, no_progress: bool
):
    """Distil into ``cache`` and rebuild ``out`` from it (the caller holds the output lock)."""
    from ecamp.distill import run as R
    from ecamp.distill.backends import make_backend
    from ecamp.utils.logging import get_logger

    log = get_logger("distill")
    backend = make_backend(cfg)
    log.info(
        "distilling %d reports (shard %d/%d) with %s%s",
        len(reports),
        i,
        n,
        cfg.backend,
        f" -> {backend.target}" if backend is not None else "",
    )
    ok = False
    try:
        summary = R.distill_corpus(reports, cfg, cache, backend, prompt, progress=not no_progress)
        ok = True
    finally:
        if backend is not None:
            backend.close()
        # the output reflects everything finished so far, even after an interruption; a run
        # that failed before finishing anything leaves no (empty) output behind
        records = list(R.collect(reports, cache))
        written = R.write_output(iter(records), out) if ok or records else 0
    summary.written = written
    summary.output = str(out)
    return summary


def _merge(args: argparse.Namespace) -> int:
    from ecamp.distill.merge import merge_manifest

    stats = merge_manifest(
        args.manifest,
        args.distilled,
        args.output,
        args.id_column,
        args.column,
        overwrite=args.overwrite,
    )
    print(json.dumps(stats))
    if stats["kept_existing"]:
        print(
            f"warning: {stats['kept_existing']} row(s) kept the {args.column!r} text they already "
            "had; pass --overwrite to replace it",
            file=sys.stderr,
        )
    if stats["missing"]:
        print(
            f"warning: {stats['missing']} manifest row(s) have no distilled text", file=sys.stderr
        )
    return 0


def _export(args: argparse.Namespace) -> int:
    from ecamp.distill.export import export_chat
    from ecamp.distill.prompt import load_prompt
    from ecamp.distill.run import read_reports

    reports = read_reports(
        args.input,
        args.id_column,
        tuple(c.strip() for c in args.text_columns.split(",") if c.strip()),
    )
    n = export_chat(
        reports,
        args.distilled,
        load_prompt(args.prompt_file),
        args.output,
        include_example=not args.no_example,
        statuses=tuple(s.strip() for s in args.statuses.split(",") if s.strip()),
        backends=tuple(b.strip() for b in args.backends.split(",")) if args.backends else None,
    )
    print(json.dumps({"chats": n, "output": str(args.output)}))
    return 0


def _train_student(args: argparse.Namespace) -> int:
    from ecamp.distill.student import load_student_config, train_student
    from ecamp.errors import UserError
    from ecamp.utils.env import launch_rank
    from ecamp.utils.logging import setup_logging

    if not args.output:
        raise UserError("give --output DIR for the checkpoints, logs and the trained model/")
    cfg = load_student_config(args.config, args.overrides)
    cfg.data = args.data or cfg.data
    cfg.base = args.base or cfg.base
    setup_logging(args.output, rank=launch_rank())
    result = train_student(cfg, args.output)
    if "model" in result:
        print(json.dumps({k: v for k, v in result.items() if k != "config"}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m ecamp.distill.cli``: this stage alone, without importing the others."""
    from ecamp.errors import UserError

    parser = argparse.ArgumentParser(prog="ecamp distill", description=HELP)
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.command = "distill"
    try:
        return run(args)
    except (UserError, FileNotFoundError) as e:
        print(f"ecamp distill: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ecamp distill: interrupted; finished work is kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
