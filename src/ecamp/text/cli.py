"""`ecamp text`: text utilities; `ecamp text stats CORPUS` gives the Appendix A statistics."""

from __future__ import annotations

import argparse

HELP = "text utilities: descriptor statistics of a report corpus (Appendix A)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the sub-commands of ``ecamp text``."""
    sub = parser.add_subparsers(dest="text_command", metavar="SUBCOMMAND")
    p = sub.add_parser(
        "stats",
        help="descriptor statistics (words before entities), imbalance ratio, suggested lambda",
        description="Count the 1..N words before each entity mention in a report corpus, class "
        "them negative / uncertain / positive, and write a CSV table, a JSON summary (imbalance "
        "ratio and the re-balance lambda it suggests) and a bar chart PNG.",
    )
    p.add_argument("corpus", metavar="CORPUS", help="CSV or JSONL file with one report per row")
    p.add_argument(
        "--column",
        default="report",
        help="column holding the report text; 'a,b' joins several (default: report)",
    )
    p.add_argument(
        "--output",
        "-o",
        default="descriptor_stats",
        metavar="DIR",
        help="output folder (default: descriptor_stats)",
    )
    p.add_argument(
        "--max-words", type=int, default=3, help="longest descriptor, in words (default: 3)"
    )
    p.add_argument(
        "--top", type=int, default=30, help="descriptors shown in the bar chart (default: 30)"
    )
    p.set_defaults(func=run_stats)


def run_stats(args: argparse.Namespace) -> int:
    """Compute and write the descriptor statistics of ``args.corpus``."""
    import json

    from ecamp.text.stats import descriptor_stats, read_corpus, write_outputs

    texts = read_corpus(args.corpus, args.column)
    stats = descriptor_stats(texts, max_words=args.max_words)
    paths = write_outputs(stats, args.output, top=args.top)
    summary = stats.summary()
    print(
        json.dumps(
            {
                k: summary[k]
                for k in ("n_reports", "n_mentions", "imbalance_ratio", "suggested_lambda")
            }
        )
    )
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0
