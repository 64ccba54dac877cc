"""Load the release's WordPiece tokenizer (default) or train a new one with ``tokenizers``.

Two tokenizers are bundled, each loaded by name:

- ``mimic``: ``mimic_wordpiece.json``, the authors' tokenizer (30,000 tokens, lower case,
  [PAD]=0 [UNK]=1 [CLS]=2 [MASK]=3 [SEP]=4), for real reports;
- ``phantom``: ``phantom_wordpiece.json``, trained with :func:`train_wordpiece` on the
  synthetic phantom world's reports, a few hundred tokens: every word the phantom reports use
  is one token, and the MLM output layer is ~100x smaller than with ``mimic``, which is what
  makes tiny pre-training on that world cheap.  Rebuild it with
  :func:`ecamp.data.synthetic.build_phantom_tokenizer` after changing the report generator
  (a test checks it).

A newly trained tokenizer gets the same special tokens in the same order, the same normaliser
and pre-tokeniser, so ids of the special tokens never change between them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import tokenizers
from tokenizers import normalizers, pre_tokenizers, trainers
from tokenizers.models import WordPiece

from ecamp.errors import UserError
from ecamp.utils.io import atomic_write_text

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[MASK]", "[SEP]")
BUNDLED = "mimic"
BUNDLED_FILES: dict[str, str] = {
    "mimic": "mimic_wordpiece.json",
    "phantom": "phantom_wordpiece.json",
}


def _bundled_json(name: str = BUNDLED) -> str:
    return resources.files("ecamp.resources").joinpath(BUNDLED_FILES[name]).read_text("utf-8")


def _folder_json(folder: Path) -> str:
    """The tokenizers JSON of a Hugging Face folder: its ``tokenizer.json``, or the fast
    tokenizer ``transformers`` builds from its ``vocab.txt`` (and tokenizer_config.json)."""
    if (folder / "tokenizer.json").is_file():
        return (folder / "tokenizer.json").read_text("utf-8", errors="replace")
    if not (folder / "vocab.txt").is_file():
        raise UserError(f"tokenizer folder {folder} has neither tokenizer.json nor vocab.txt")
    from transformers import AutoTokenizer

    try:
        fast = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, use_fast=True)
    except Exception as e:  # unreadable config / vocabulary
        raise UserError(f"cannot build a tokenizer from {folder}: {e}") from None
    backend = getattr(fast, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"{folder}: transformers built no fast tokenizer from its vocab.txt")
    return str(backend.to_str())


def load_tokenizer(name_or_path: str = BUNDLED) -> tokenizers.Tokenizer:
    """A bundled tokenizer (``"mimic"``, ``"phantom"``), a ``tokenizers`` JSON file, or a
    Hugging Face folder (``save_pretrained`` layout: tokenizer.json or vocab.txt).

    Raises :class:`UserError` when the file is missing, not a tokenizer JSON, not a
    WordPiece model, or lacks one of the special tokens.
    """
    if name_or_path in BUNDLED_FILES:
        text = _bundled_json(name_or_path)
        where = f"bundled {BUNDLED_FILES[name_or_path]}"
    elif Path(name_or_path).is_dir():
        text = _folder_json(Path(name_or_path))
        where = name_or_path
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise UserError(
                f"tokenizer file {path} not found; give a tokenizers JSON file or one of "
                f"{sorted(BUNDLED_FILES)} for a bundled one (train one with `ecamp tokenizer train`)"
            )
        text = path.read_text("utf-8", errors="replace")
        where = str(path)
    try:
        model_type = json.loads(text).get("model", {}).get("type")
        tok = tokenizers.Tokenizer.from_str(text)
    except Exception as e:  # json / tokenizers parse errors have many types
        raise UserError(f"{where} is not a tokenizers JSON file: {e}") from e
    if model_type != "WordPiece":
        raise UserError(
            f"{where} holds a {model_type} model; ecamp's masking needs a WordPiece tokenizer "
            "('##' continuation pieces), e.g. one from `ecamp tokenizer train`"
        )
    missing = [t for t in SPECIAL_TOKENS if tok.token_to_id(t) is None]
    if missing:
        raise UserError(f"{where} lacks the special tokens {missing}")
    return tok


def fit_vocab_size(vocab_size: int, tokenizer: tokenizers.Tokenizer, name: str) -> int:
    """The rows a model's vocabulary needs for ``tokenizer`` (named ``name`` in errors):
    ``vocab_size``, or the tokenizer's size when it is 0.

    Raises :class:`UserError` when the tokenizer has more tokens than ``vocab_size`` rows.
    """
    n = tokenizer.get_vocab_size()
    if vocab_size == 0:
        return n
    if n > vocab_size:
        raise UserError(
            f"the tokenizer {name!r} has {n} tokens but model.vocab_size={vocab_size}; "
            f"set model.vocab_size={n} (or 0 for the tokenizer's size)"
        )
    return vocab_size


def train_wordpiece(
    texts: Iterable[str], vocab_size: int, out_path: str | Path, min_frequency: int = 2
) -> tokenizers.Tokenizer:
    """Train a WordPiece tokenizer like the release's and save it (atomically) as JSON."""
    if vocab_size <= len(SPECIAL_TOKENS):
        raise UserError(f"--vocab-size {vocab_size} is too small; give at least a few hundred")
    tok = tokenizers.Tokenizer(WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Lowercase(), normalizers.NFKD(), normalizers.StripAccents()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=False)]
    )
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        continuing_subword_prefix="##",
    )
    tok.train_from_iterator((t for t in texts if t and t.strip()), trainer=trainer)
    if tok.get_vocab_size() <= len(SPECIAL_TOKENS):
        raise UserError("no text to train the tokenizer on (every report is empty)")
    atomic_write_text(out_path, tok.to_str(pretty=True))
    return tok
