"""Tokenizer loading and training (ecamp.text.tokenizer, `ecamp tokenizer train`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ecamp.cli import main
from ecamp.errors import UserError
from ecamp.text.tokenizer import SPECIAL_TOKENS, load_tokenizer, train_wordpiece

CORPUS = [
    "There is no focal consolidation, pleural effusion or pneumothorax.",
    "Mild cardiomegaly. There may be pneumonia in the right lower lobe.",
    "No evidence of pneumothorax. Small bilateral pleural effusions.",
] * 20


def test_bundled_tokenizer_ids_match_the_release() -> None:
    tok = load_tokenizer()
    assert tok.get_vocab_size() == 30000
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert tok.token_to_id(".") == 16
    assert tok.encode("There is NO evidence of").ids == [219, 149, 152, 422, 158]


def test_missing_and_wrong_tokenizer_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_tokenizer(str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not a tokenizers JSON"):
        load_tokenizer(str(bad))
    from tokenizers import Tokenizer
    from tokenizers.models import BPE

    bpe = tmp_path / "bpe.json"
    Tokenizer(BPE()).save(str(bpe))
    with pytest.raises(UserError, match="WordPiece"):
        load_tokenizer(str(bpe))


def test_train_wordpiece_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "tok.json"
    tok = train_wordpiece(CORPUS + ["", "   "], vocab_size=200, out_path=out, min_frequency=1)
    loaded = load_tokenizer(str(out))
    assert [loaded.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert json.loads(out.read_text())["model"]["type"] == "WordPiece"
    assert loaded.encode("PNEUMOTHORAX").tokens == tok.encode("pneumothorax").tokens
    with pytest.raises(UserError):
        train_wordpiece(["", " "], vocab_size=200, out_path=tmp_path / "x.json")


def test_cli_train(tmp_path: Path) -> None:
    corpus = tmp_path / "c.csv"
    corpus.write_text("report\n" + "\n".join(f'"{t}"' for t in CORPUS))
    out = tmp_path / "t.json"
    rc = main(
        ["tokenizer", "train", "--input", str(corpus), "--vocab-size", "150", "--output", str(out)]
    )
    assert rc == 0 and load_tokenizer(str(out)).get_vocab_size() <= 150
    assert (
        main(["tokenizer", "train", "--input", str(corpus), "--column", "text", "-o", str(out)])
        == 2
    )


def test_phantom_tokenizer_covers_the_phantom_world_word_for_word() -> None:
    """Every word of phantom reports it was not trained on (another seed) is one token."""
    from ecamp.data.synthetic import phantom_reports
    from ecamp.distill.rules import distilled_text

    tok = load_tokenizer("phantom")
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert 200 < tok.get_vocab_size() < 1000  # ~100x smaller than the release's 30,000
    texts = [t for r, d in phantom_reports(120, seed=7) for t in (r, d, distilled_text(r))]
    pieces = {p for enc in tok.encode_batch(texts) for p in enc.tokens}
    assert "[UNK]" not in pieces
    assert not [p for p in pieces if p.startswith("##")]


def test_fit_vocab_size_takes_the_tokenizer_size_for_zero_and_refuses_too_few_rows() -> None:
    from ecamp.text.tokenizer import fit_vocab_size

    tok = load_tokenizer("phantom")
    n = tok.get_vocab_size()
    assert fit_vocab_size(0, tok, "phantom") == n
    assert fit_vocab_size(30000, tok, "phantom") == 30000
    with pytest.raises(UserError, match=f"set model.vocab_size={n}"):
        fit_vocab_size(n - 1, tok, "phantom")
