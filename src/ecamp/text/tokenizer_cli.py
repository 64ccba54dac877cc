"""`ecamp tokenizer train`: train a WordPiece tokenizer like the release's on a report corpus."""

from __future__ import annotations

import argparse

HELP = "train a WordPiece tokenizer (same special tokens and normalisation as the release's)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the sub-commands of ``ecamp tokenizer``."""
    sub = parser.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND")
    p = sub.add_parser(
        "train",
        help="train a WordPiece tokenizer on a CSV/JSONL report corpus",
        description="Train a lower-casing WordPiece tokenizer with the special tokens "
        "[PAD] [UNK] [CLS] [MASK] [SEP] (ids 0-4, as in the release's) and save it as a "
        "tokenizers JSON file usable as text.tokenizer=PATH.",
    )
    p.add_argument(
        "--input",
        "-i",
        required=True,
        metavar="CORPUS",
        help="CSV or JSONL file, one report per row",
    )
    p.add_argument(
        "--column", default="report", help="report column; 'a,b' joins several (default: report)"
    )
    p.add_argument(
        "--vocab-size",
        type=int,
        default=30000,
        help="vocabulary size (default: 30000, the release's)",
    )
    p.add_argument(
        "--min-frequency", type=int, default=2, help="minimum pair frequency to merge (default: 2)"
    )
    p.add_argument(
        "--output", "-o", required=True, metavar="FILE", help="where to write the tokenizer JSON"
    )
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    """Train and save the tokenizer."""
    from ecamp.text.stats import read_corpus
    from ecamp.text.tokenizer import train_wordpiece

    texts = read_corpus(args.input, args.column)
    tok = train_wordpiece(texts, args.vocab_size, args.output, min_frequency=args.min_frequency)
    print(f"wrote {args.output}: {tok.get_vocab_size()} tokens from {len(texts)} texts")
    return 0
