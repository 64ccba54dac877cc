"""Entity-centered context-enhanced MLM inputs: text assembly, descriptor masking, weights.

:class:`TextBatcher` turns a batch of reports (and their distilled reports) into the text
tensors of the pre-training batch.  Everything after tokenisation is numpy over the whole
``(B, L)`` batch: no per-token Python loop.

Two masking modes (``TextConfig.masking_mode``, SPEC.md sections 3 and 9):

``paper`` (default)
    Words are WordPiece words (a first piece plus its ``##`` pieces); a word's pieces are
    masked together.  Entity words come from :func:`ecamp.text.entities.entity_spans`
    (inflections included) mapped to tokens by the encoding's char-to-token map.  The ``descriptor_k``
    alphanumeric words before each entity word, in the same sentence (a sentence ends at
    a ``. ! ? ; :`` token that is not a decimal point) and not entity words themselves,
    are descriptors and ALWAYS masked when ``descriptor_masking``.  Entity words are masked
    with ``entity_mask_prob``; every other word (punctuation included) with
    ``random_mask_prob_with_entity`` when the sequence holds an entity word, else
    ``random_mask_prob_no_entity``.  [CLS]/[SEP]/[PAD] are never masked.  Masked tokens
    become [MASK] (no BERT 80/10/10: the paper replaces masked words with [MASK]).

``release``
    The authors' ``_context_mask``: entities are tokens spelled exactly like a canonical
    name (the release lists ``'COPD'`` in upper case, so ``copd`` never matches); the two
    TOKENS before each entity token (skipping a ``.`` token but not stopping there) are the
    descriptor positions; the branch meant to mask them never runs, so they only get the
    generic draw; only an entity's first piece is masked (0.75); other first pieces are
    masked at 0.7 (0.75 without entity) and their ``##`` pieces follow; positions run from
    1 to L-2 and stop at the first [PAD].  Negative templates are matched as raw id runs
    starting before L-4.  The probabilities come from the config, as in paper mode.

Re-balance weights (both modes).  Let S be the scored positions (the masked ones for
``mlm_labels="masked"``, every position for ``"all"``), N the tokens of negative templates,
Dsc the descriptor positions; over one sequence D=|N∩S|, M=|Dsc∩S|, d=|N∩Dsc∩S|, n=|S|.
Template tokens get weight λ, scored descriptors are multiplied by e (a descriptor inside
a template gets λe).  Keeping the sum of weights over S equal to n::

    (n - D - M + d) + λ(D - d) + e(M - d) + λ e d = n
    =>  e = ((1 - λ)(D - d) + M) / (M - (1 - λ) d)

which is the release's ``expand_weight`` with 0.95 = 1 - λ.  When M = 0 (nothing to scale
up) and D > 0 every scored weight is multiplied by n / (n - (1 - λ) D) instead (the
release's fallback).  Unscored positions get weight 0, so the loss is
``(w * ce).sum() / w.sum()`` (or ``/ n``: the two agree), the plain mean without rebalance.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from itertools import chain
from typing import Any

import numpy as np
import tokenizers
import torch
from tokenizers import pre_tokenizers
from tokenizers.processors import TemplateProcessing

from ecamp.config import TextConfig
from ecamp.errors import UserError
from ecamp.text.entities import ENTITIES, entity_spans, split_sentences
from ecamp.text.tokenizer import load_tokenizer

_BOUNDARY_CHARS = frozenset(".!?;:")
# a period between digits; the look-behind after the literal lets re jump from "." to "."
_DECIMAL = re.compile(r"\.(?<=\d\.)(?=\d)")
# the reference tokenizer's pre-tokenizer (Whitespace, then Digits)
_WHITESPACE_DIGITS = {
    "type": "Sequence",
    "pretokenizers": [{"type": "Whitespace"}, {"type": "Digits", "individual_digits": False}],
}
_MODES = ("paper", "release")
_LABELS = ("masked", "all")
_ASSEMBLY = ("paper", "release")
# The release's entity list spells COPD in upper case; its lower-casing tokenizer never
# produces that token, so in release mode "copd" is not an entity.
RELEASE_ENTITY_NAMES = tuple("COPD" if e == "copd" else e for e in ENTITIES)


def _clean(text: Any) -> str:
    """A report cell as text: None / NaN / non-strings become ""; whitespace-only is ""."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""
    s = str(text)
    return s if s.strip() else ""


def assemble_paper(report: str, distilled: str, insert: bool, where: float) -> str:
    """Insert ``distilled`` at sentence boundary ``floor(where * (n + 1))`` of ``report``."""
    if not insert or not distilled:
        return report
    distilled = distilled.strip()
    if distilled[-1] not in ".!?":
        distilled += "."  # keep the insertion a sentence of its own
    spans = split_sentences(report)
    idx = min(int(where * (len(spans) + 1)), len(spans))
    cut = spans[idx][0] if idx < len(spans) else len(report)
    head, tail = report[:cut].rstrip(), report[cut:].lstrip()
    return " ".join(p for p in (head, distilled, tail) if p)


def assemble_release(report: str, distilled: str, insert: bool, where: float) -> str:
    """The release's assembly: split on '.', re-join with '.', then replace '..' by '.'."""
    if not insert:
        return report
    parts = report.split(".")
    loc = min(int(where * (len(parts) + 1)), len(parts))
    sent = "".join(p + "." for p in parts[:loc]) + distilled
    sent += "".join(p + "." for p in parts[loc:])
    return sent.replace("..", ".")


class TextBatcher:
    """Batched, vectorised text assembly + tokenisation + masking + loss weights."""

    def __init__(self, cfg: TextConfig, tokenizer: tokenizers.Tokenizer | None = None):
        for name, value, allowed in (
            ("masking_mode", cfg.masking_mode, _MODES),
            ("mlm_labels", cfg.mlm_labels, _LABELS),
            ("assembly", cfg.assembly, _ASSEMBLY),
        ):
            if value not in allowed:
                raise UserError(f"text.{name}={value!r}; choose one of {list(allowed)}")
        if cfg.max_length < 3:
            raise UserError(f"text.max_length={cfg.max_length} is too short (at least 3)")
        self.cfg = cfg
        base = tokenizer if tokenizer is not None else load_tokenizer(cfg.tokenizer)
        model_type = json.loads(base.model.__getstate__()).get("type")
        if model_type != "WordPiece":
            raise UserError(f"TextBatcher needs a WordPiece tokenizer, got a {model_type} model")
        self.vocab = base.get_vocab()
        ids = {t: base.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[MASK]", "[SEP]")}
        if any(v is None for v in ids.values()):
            raise UserError("the tokenizer lacks one of [PAD] [UNK] [CLS] [MASK] [SEP]")
        self.pad_id, self.unk_id = int(ids["[PAD]"]), int(ids["[UNK]"])  # type: ignore[arg-type]
        self.cls_id, self.mask_id = int(ids["[CLS]"]), int(ids["[MASK]"])  # type: ignore[arg-type]
        self.sep_id = int(ids["[SEP]"])  # type: ignore[arg-type]
        self.tokenizer = self._configured(base)
        self._plain_tokenizer = self._without_normalizer(self.tokenizer)
        self._added = tuple(t.content for t in base.get_added_tokens_decoder().values())
        self._build_tables()
        self.templates = [self._template_ids(base, t) for t in cfg.negative_templates]

    # ----------------------------------------------------------------- setup
    def _configured(self, base: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
        tok = tokenizers.Tokenizer.from_str(base.to_str())
        single = "[CLS] $A" if self.cfg.assembly == "release" else "[CLS] $A [SEP]"
        tok.post_processor = TemplateProcessing(
            single=single, special_tokens=[("[CLS]", self.cls_id), ("[SEP]", self.sep_id)]
        )
        tok.enable_truncation(max_length=self.cfg.max_length)
        tok.no_padding()  # padding in numpy is cheaper than padded Encoding objects
        return tok

    @staticmethod
    def _without_normalizer(tok: tokenizers.Tokenizer) -> tokenizers.Tokenizer | None:
        """A copy without the normalizer when that is Lowercase / NFKD / StripAccents (all
        of them the identity on lower-cased ASCII): it then encodes ``text.lower()`` of an
        ASCII text exactly like ``tok`` encodes ``text``, offsets included, and faster.
        Only ever used on ASCII text (see :meth:`_encode`)."""
        spec = tok.to_str()
        parsed = json.loads(spec)
        norm = parsed.get("normalizer")
        if norm is None:
            return None
        steps = norm.get("normalizers", [norm]) if norm.get("type") == "Sequence" else [norm]
        if not all(n.get("type") in ("Lowercase", "NFKD", "StripAccents") for n in steps):
            return None
        plain = tokenizers.Tokenizer.from_str(spec)
        plain.normalizer = None
        if parsed.get("pre_tokenizer") == _WHITESPACE_DIGITS:
            # the same splits on ASCII text in one regex pass instead of two (~10% faster)
            plain.pre_tokenizer = pre_tokenizers.Split(
                tokenizers.Regex(r"[0-9]+|[^\W0-9]+|[^\w\s]+"), behavior="removed", invert=True
            )
        return plain

    def _encode(self, texts: list[str], offsets: bool) -> list[tokenizers.Encoding]:
        """Encodings of ``texts``; ASCII texts go through the normalizer-free copy."""
        full, plain = self.tokenizer, self._plain_tokenizer
        name = "encode_batch" if offsets else "encode_batch_fast"

        def run(tok: tokenizers.Tokenizer, batch: list[str]) -> list[tokenizers.Encoding]:
            return (getattr(tok, name, None) or tok.encode_batch)(batch)

        if plain is None:
            return run(full, texts)
        # added tokens are matched on the raw text, case-sensitively: such texts keep
        # the full tokenizer
        easy = [t.isascii() and not any(a in t for a in self._added) for t in texts]
        if all(easy):
            return run(plain, [t.lower() for t in texts])
        out: list[Any] = [None] * len(texts)
        idx_easy = [i for i, e in enumerate(easy) if e]
        idx_hard = [i for i, e in enumerate(easy) if not e]
        for i, enc in zip(idx_easy, run(plain, [texts[i].lower() for i in idx_easy])):
            out[i] = enc
        for i, enc in zip(idx_hard, run(full, [texts[i] for i in idx_hard])):
            out[i] = enc
        return out

    def _build_tables(self) -> None:
        size = max(self.vocab.values()) + 1
        self.is_cont = np.zeros(size, bool)
        self.is_alnum = np.zeros(size, bool)
        self.is_boundary = np.zeros(size, bool)
        self.is_special = np.zeros(size, bool)
        self.is_release_entity = np.zeros(size, bool)
        for tok, i in self.vocab.items():
            self.is_cont[i] = tok.startswith("##")
            self.is_alnum[i] = any(c.isalnum() for c in tok)
            self.is_boundary[i] = not self.is_alnum[i] and bool(set(tok) & _BOUNDARY_CHARS)
        self.is_alnum[self.unk_id] = True
        self.is_special[[self.pad_id, self.cls_id, self.sep_id, self.mask_id]] = True
        for name in RELEASE_ENTITY_NAMES:
            if name in self.vocab:
                self.is_release_entity[self.vocab[name]] = True
        self.period_id = self.vocab.get(".", -1)

    @staticmethod
    def _template_ids(tok: tokenizers.Tokenizer, words: str) -> np.ndarray:
        ids = tok.encode(words, add_special_tokens=False).ids
        if not ids:
            raise UserError(f"negative template {words!r} tokenizes to nothing")
        return np.asarray(ids, np.int64)

    # ----------------------------------------------------------------- public
    def assemble(
        self, reports: Sequence[Any], distilled: Sequence[Any], rng: np.random.Generator
    ) -> list[str]:
        """The text of each sample: the report, with its distilled report inserted
        (probability ``distill_prob``) at a uniformly drawn sentence boundary."""
        if len(reports) != len(distilled):
            raise UserError(f"{len(reports)} reports but {len(distilled)} distilled reports")
        b = len(reports)
        draw, where = rng.random(b), rng.random(b)
        p = self.cfg.distill_prob if self.cfg.use_distilled else 0.0
        fn = assemble_release if self.cfg.assembly == "release" else assemble_paper
        out = []
        for i in range(b):
            rep, dis = _clean(reports[i]), _clean(distilled[i])
            out.append(fn(rep, dis, bool(draw[i] < p) and bool(dis), float(where[i])))
        return out

    def __call__(
        self, reports: Sequence[Any], distilled: Sequence[Any], rng: np.random.Generator
    ) -> dict[str, torch.Tensor]:
        """Tensors for one batch: input_ids, attention_mask, mlm_labels (int64),
        mlm_weights (float32), entity_mask and descriptor_mask (bool), all (B, max_length)."""
        return self.from_texts(self.assemble(reports, distilled, rng), rng)

    def from_texts(self, texts: list[str], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Tokenise and mask already assembled texts (see :meth:`__call__`); the only
        random draw is one ``rng.random((B, max_length))`` array."""
        release = self.cfg.masking_mode == "release"
        # release mode needs no character offsets: the cheaper encoder suffices
        encs = self._encode(texts, offsets=not release)
        ids, attn = self._pad(encs)
        u = rng.random(ids.shape)
        if release:
            mask, ent, desc = self._mask_release(ids, u)
        else:
            ent_tok, decimal = self._char_marks(encs, texts, ids.shape)
            mask, ent, desc = self._mask_paper(ids, ent_tok, decimal, u)
        scored = mask if self.cfg.mlm_labels == "masked" else np.ones_like(mask)
        weights = self._weights(ids, scored, desc)
        labels = np.where(scored, ids, -100) if self.cfg.mlm_labels == "masked" else ids.copy()
        return {
            "input_ids": torch.from_numpy(np.where(mask, self.mask_id, ids)),
            "attention_mask": torch.from_numpy(attn),
            "mlm_labels": torch.from_numpy(labels),
            "mlm_weights": torch.from_numpy(weights),
            "entity_mask": torch.from_numpy(ent),
            "descriptor_mask": torch.from_numpy(desc),
        }

    def _pad(self, encs: list[tokenizers.Encoding]) -> tuple[np.ndarray, np.ndarray]:
        """(B, L) ids padded with [PAD], and the attention mask."""
        b, length = len(encs), self.cfg.max_length
        lens = np.fromiter((len(e) for e in encs), np.int64, b)
        total = int(lens.sum())
        flat = np.fromiter(chain.from_iterable(e.ids for e in encs), np.int64, total)
        rows = np.repeat(np.arange(b), lens)
        cols = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens)
        ids = np.full((b, length), self.pad_id, np.int64)
        ids[rows, cols] = flat
        attn = (np.arange(length)[None, :] < lens[:, None]).astype(np.int64)
        return ids, attn

    # ----------------------------------------------------------------- paper mode
    def _char_marks(
        self, encs: list[tokenizers.Encoding], texts: list[str], shape: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Tokens inside entity mentions, and tokens that are decimal points ("1.5").

        Mentions are found on the text (character spans) and mapped to tokens with the
        encoding's char-to-token map: one lookup per mention, none per token.
        """
        rows: list[int] = []
        first: list[int] = []
        last: list[int] = []
        dec_rows: list[int] = []
        dec_cols: list[int] = []
        n_valid = shape[1] - 1  # truncated away -> None; a cut mention runs to [SEP]
        for r, (enc, text) in enumerate(zip(encs, texts, strict=True)):
            to_token = enc.char_to_token
            for start, end in entity_spans(text):
                t0 = to_token(start)
                if t0 is None:
                    continue
                t1 = to_token(end - 1)
                rows.append(r)
                first.append(t0)
                last.append(t1 if t1 is not None else n_valid)
            for m in _DECIMAL.finditer(text):
                t = to_token(m.start())
                if t is not None:
                    dec_rows.append(r)
                    dec_cols.append(t)
        diff = np.zeros((shape[0], shape[1] + 1), np.int32)
        r_arr = np.asarray(rows, np.int64)
        np.add.at(diff, (r_arr, np.asarray(first, np.int64)), 1)
        np.add.at(diff, (r_arr, np.asarray(last, np.int64) + 1), -1)
        ent = np.cumsum(diff[:, :-1], axis=1) > 0
        dec = np.zeros(shape, bool)
        dec[dec_rows, dec_cols] = True
        return ent, dec

    def _mask_paper(
        self, ids: np.ndarray, ent_tok: np.ndarray, decimal: np.ndarray, u: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cfg = self.cfg
        b, length = ids.shape
        cols = np.broadcast_to(np.arange(length), ids.shape)
        valid = ~self.is_special[ids]
        word_start = valid & ~self.is_cont[ids]
        # index of each token's word's first piece (specials point at themselves)
        first = np.maximum.accumulate(np.where(word_start | ~valid, cols, 0), axis=1)
        ent = np.take_along_axis(ent_tok, first, axis=1) & valid
        # a sentence ends at a . ! ? ; : token, unless it is a decimal point ("1.5")
        brk = self.is_boundary[ids] & valid & ~decimal
        sent = np.cumsum(brk, axis=1) - brk  # a boundary token closes its own sentence

        # descriptors: the k alphanumeric words before each entity word, same sentence
        alnum_start = word_start & self.is_alnum[ids]
        alnum_idx = np.cumsum(alnum_start, axis=1) - 1
        pos_of = np.full(ids.shape, -1, np.int64)  # (row, alnum word index) -> token
        ar, ac = np.nonzero(alnum_start)
        pos_of[ar, alnum_idx[ar, ac]] = ac
        er, ec = np.nonzero(alnum_start & ent)
        desc_first = np.zeros(ids.shape, bool)
        for d in range(1, cfg.descriptor_k + 1):  # k is tiny; each step is whole-batch
            a = alnum_idx[er, ec] - d
            ok = a >= 0
            r, c = er[ok], ec[ok]
            cand = pos_of[r, a[ok]]
            keep = (sent[r, cand] == sent[r, c]) & ~ent[r, cand]
            desc_first[r[keep], cand[keep]] = True
        desc = np.take_along_axis(desc_first, first, axis=1) & valid

        has_ent = ent.any(axis=1, keepdims=True)
        p_other = np.where(
            has_ent, cfg.random_mask_prob_with_entity, cfg.random_mask_prob_no_entity
        )
        uw = np.take_along_axis(u, first, axis=1)  # one draw per word, shared by its pieces
        forced = desc if cfg.descriptor_masking else np.zeros_like(desc)
        drawn = np.where(ent, uw < cfg.entity_mask_prob, uw < p_other)
        mask = valid & (forced | drawn)
        return mask, ent, desc

    # ----------------------------------------------------------------- release mode
    def _mask_release(
        self, ids: np.ndarray, u: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cfg = self.cfg
        b, length = ids.shape
        cols = np.broadcast_to(np.arange(length), ids.shape)
        rows = np.broadcast_to(np.arange(b)[:, None], ids.shape)
        before_pad = np.cumsum(ids == self.pad_id, axis=1) == 0
        in_loop = before_pad & (cols >= 1) & (cols <= length - 2)
        cont = self.is_cont[ids]
        ent = self.is_release_entity[ids] & in_loop
        desc = np.zeros(ids.shape, bool)
        for j in range(1, cfg.descriptor_k + 1):
            desc[:, :-j] |= ent[:, j:] & (ids[:, :-j] != self.period_id) & (cols[:, :-j] >= 1)
        has_ent = (
            ent[:, 1:-1].any(axis=1, keepdims=True) if length > 2 else ent.any(1, keepdims=True)
        )
        p_other = np.where(
            has_ent, cfg.random_mask_prob_with_entity, cfg.random_mask_prob_no_entity
        )
        first_piece = in_loop & ~cont
        drawn = first_piece & ~ent & (u < p_other)
        # a ## piece is masked when the token before it was masked by the draw: the word's
        # first piece decides, through a run of ## pieces inside the loop range
        start = ~(cont & in_loop)
        first = np.maximum.accumulate(np.where(start, cols, 0), axis=1)
        pieces = cont & in_loop & drawn[rows, first]
        ent_masked = ent & (u < cfg.entity_mask_prob)
        return drawn | pieces | ent_masked, ent, desc

    # ----------------------------------------------------------------- weights
    def _template_tokens(self, ids: np.ndarray) -> np.ndarray:
        """Tokens of negative-template occurrences (every occurrence of every template)."""
        b, length = ids.shape
        neg = np.zeros((b, length + 1), bool)
        release = self.cfg.masking_mode == "release"
        longest = max((len(t) for t in self.templates), default=1)
        for tpl in self.templates:  # a couple of templates, each matched batch-wide
            n = len(tpl)
            last_start = length - longest if release else length - n  # release scans i < L-4
            if last_start < 0:
                continue
            r, c = np.nonzero(ids[:, : last_start + 1] == tpl[0])
            for off in range(1, n):  # narrow the candidates word by word
                keep = ids[r, c + off] == tpl[off]
                r, c = r[keep], c[keep]
            if not release and len(c):  # whole words only: no ## piece may follow
                nxt = np.minimum(c + n, length - 1)
                keep = ~((c + n < length) & self.is_cont[ids[r, nxt]])
                r, c = r[keep], c[keep]
            for off in range(n):
                neg[r, c + off] = True
        return neg[:, :length]

    def _weights(self, ids: np.ndarray, scored: np.ndarray, desc: np.ndarray) -> np.ndarray:
        if not self.cfg.rebalance:
            return scored.astype(np.float32)
        lam = float(self.cfg.rebalance_lambda)
        neg = self._template_tokens(ids) & scored
        dsc = desc & scored
        n_s = scored.sum(axis=1, keepdims=True).astype(np.float64)
        n_d = neg.sum(axis=1, keepdims=True).astype(np.float64)
        n_m = dsc.sum(axis=1, keepdims=True).astype(np.float64)
        n_dm = (neg & dsc).sum(axis=1, keepdims=True).astype(np.float64)
        w = np.where(neg, lam, 1.0)
        denom = n_m - (1.0 - lam) * n_dm
        case_a = (n_d > 0) & (n_m > 0) & (denom > 0)
        e = np.where(case_a, ((1.0 - lam) * (n_d - n_dm) + n_m) / np.where(case_a, denom, 1.0), 1.0)
        w = np.where(dsc, w * e, w)
        rest = n_s - (1.0 - lam) * n_d
        case_b = (n_d > 0) & ~case_a & (rest > 0)
        w = w * np.where(case_b, n_s / np.where(case_b, rest, 1.0), 1.0)
        return np.where(scored, w, 0.0).astype(np.float32)
