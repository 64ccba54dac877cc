"""Text assembly, descriptor masking, labels and re-balance weights (ecamp.text.masking)."""

from __future__ import annotations

import csv
import math
from dataclasses import replace
from functools import lru_cache

import numpy as np
import pytest
import torch

from ecamp.config import TextConfig
from ecamp.errors import UserError
from ecamp.text.entities import ENTITIES, split_sentences
from ecamp.text.masking import TextBatcher, assemble_paper, assemble_release
from ecamp.text.tokenizer import load_tokenizer
from test_text_entities import APPENDIX_C

NO_RANDOM = dict(
    entity_mask_prob=0.0, random_mask_prob_with_entity=0.0, random_mask_prob_no_entity=0.0
)


@lru_cache(maxsize=1)
def _tok():  # type: ignore[no-untyped-def]
    return load_tokenizer()


def make(**kw) -> TextBatcher:  # type: ignore[no-untyped-def]
    cfg = replace(TextConfig(max_length=32, use_distilled=False), **kw)
    return TextBatcher(cfg, _tok())


def run(b: TextBatcher, texts: list[str], seed: int = 0) -> dict[str, np.ndarray]:
    out = b.from_texts(texts, np.random.default_rng(seed))
    return {k: v.numpy() for k, v in out.items()}


def tokens(b: TextBatcher, text: str) -> list[str]:
    return b.tokenizer.encode(text).tokens


def where(flags: np.ndarray, toks: list[str]) -> list[str]:
    return [toks[i] for i in np.nonzero(flags[: len(toks)])[0]]


def test_descriptors_are_the_k_words_before_entities_and_always_masked() -> None:
    text = "There is no pneumothorax. Heart is normal. There is mild cardiomegaly."
    b = make(**NO_RANDOM)
    out = run(b, [text])
    toks = tokens(b, text)
    assert where(out["entity_mask"][0], toks) == ["pneumothorax", "cardiomegaly"]
    assert where(out["descriptor_mask"][0], toks) == ["is", "no", "is", "mild"]
    masked = out["input_ids"][0] == b.mask_id
    assert where(masked, toks) == ["is", "no", "is", "mild"]
    # k=3 takes "there" too; k=0 has no descriptors
    assert where(run(make(descriptor_k=3, **NO_RANDOM), [text])["descriptor_mask"][0], toks) == [
        "there", "is", "no", "there", "is", "mild",
    ]  # fmt: skip
    assert not run(make(descriptor_k=0, **NO_RANDOM), [text])["descriptor_mask"].any()
    # descriptor masking off: descriptors are found but not forced
    off = run(make(descriptor_masking=False, **NO_RANDOM), [text])
    assert off["descriptor_mask"].any() and not (off["input_ids"] == b.mask_id).any()


def test_descriptors_stop_at_sentence_end_skip_punctuation_and_entities() -> None:
    b = make(descriptor_k=2, **NO_RANDOM)
    text = "Heart is normal. Small pneumothorax; stable effusion. A 1.5 cm nodule."
    toks = tokens(b, text)
    out = run(b, [text])
    # "normal" is in the previous sentence, "pneumothorax" is an entity, "1.5" is one sentence
    assert where(out["descriptor_mask"][0], toks) == ["small", "stable", "5", "cm"]
    text2 = "No pleural effusion, or pneumothorax."
    toks2 = tokens(b, text2)
    # "effusion" (entity) and "," (punctuation) are skipped: "or" is the descriptor
    assert where(run(b, [text2])["descriptor_mask"][0], toks2) == ["no", "pleural", "or"]


def test_special_tokens_never_masked_and_pieces_masked_together() -> None:
    b = make(entity_mask_prob=1.0, random_mask_prob_with_entity=1.0, random_mask_prob_no_entity=1.0)
    out = run(b, ["Pneumothorax. Cafe au lait zzqx."])
    ids, attn = out["input_ids"][0], out["attention_mask"][0]
    n = int(attn.sum())
    assert ids[0] == b.cls_id and ids[n - 1] == b.sep_id and (ids[n:] == b.pad_id).all()
    assert (ids[1 : n - 1] == b.mask_id).all()
    # half the words at random: every word's pieces share one decision
    b = make(random_mask_prob_with_entity=0.5, random_mask_prob_no_entity=0.5)
    text = "Hyperlucent calcifications zzqxv unfoldings periaortic bronchovascular " * 3
    toks = tokens(b, text)
    word_of = np.cumsum([not t.startswith("##") for t in toks])
    for seed in range(20):
        m = run(b, [text], seed)["input_ids"][0][: len(toks)] == b.mask_id
        for w in np.unique(word_of):
            assert len(set(m[word_of == w])) == 1


def test_mask_probabilities_depend_on_entity_presence() -> None:
    b = make(random_mask_prob_with_entity=0.0, random_mask_prob_no_entity=1.0, entity_mask_prob=0.0)
    out = run(b, ["Lungs are clear.", "Lungs are clear without pneumothorax."])
    masked = out["input_ids"] == b.mask_id
    assert masked[0].sum() == 4  # every word of the entity-free text
    assert where(masked[1], tokens(b, "Lungs are clear without pneumothorax.")) == [
        "clear",
        "without",
    ]


def test_entity_and_random_rates() -> None:
    b = make(max_length=256, descriptor_masking=False)
    text = " ".join(["There is mild cardiomegaly and small effusion."] * 25)
    out = b.from_texts([text] * 64, np.random.default_rng(1))
    m = (out["input_ids"] == b.mask_id).numpy()
    ent = out["entity_mask"].numpy()
    other = (out["attention_mask"].numpy() == 1) & ~ent
    other[:, 0] = False
    other[np.arange(64), out["attention_mask"].sum(1).numpy() - 1] = False
    assert abs(m[ent].mean() - 0.75) < 0.03
    assert abs(m[other].mean() - 0.70) < 0.03


def test_labels_masked_and_all() -> None:
    text = "There is no pneumothorax."
    out = run(make(), [text], 3)
    scored = out["mlm_labels"] != -100
    assert (scored == (out["input_ids"] == 3)).all()
    ids = np.asarray(_tok().encode(text).ids)
    labels = out["mlm_labels"][0]
    assert (labels[scored[0]] == np.r_[2, ids, 4, [0] * 32][:32][scored[0]]).all()
    assert (out["mlm_weights"][~scored] == 0).all()
    full = run(make(mlm_labels="all"), [text], 3)
    assert (full["mlm_labels"][0][:7] == np.r_[2, ids, 4]).all() and (
        full["mlm_labels"][0][7:] == 0
    ).all()


def test_negative_template_weights_hand_worked() -> None:
    # all positions scored (release labels), no masking draws: weights depend on positions only
    b = make(max_length=16, mlm_labels="all", **NO_RANDOM)
    text = "There is no evidence of pneumothorax. Mild cardiomegaly."
    toks = tokens(b, text)
    assert toks[1:6] == ["there", "is", "no", "evidence", "of"]
    out = run(b, [text])
    w = out["mlm_weights"][0]
    desc = where(out["descriptor_mask"][0], toks)
    assert desc == ["evidence", "of", "mild"]
    # D = 5 template tokens, M = 3 descriptors, d = 2 of them inside the template
    lam, big_d, m, d = 0.05, 5, 3, 2
    e = ((1 - lam) * (big_d - d) + m) / (m - (1 - lam) * d)
    expected = np.ones(16)
    expected[1:6] = lam
    expected[[4, 5]] *= e
    expected[toks.index("mild")] *= e
    assert np.allclose(w, expected, atol=1e-6)
    assert math.isclose(w.sum(), 16, rel_tol=1e-6)
    # the template must be whole words: "there is nodular" is not "there is no"
    b2 = make(max_length=16, mlm_labels="all", **NO_RANDOM)
    assert (run(b2, ["There is nodular opacity."])["mlm_weights"] == 1).all()


def test_no_descriptor_fallback_and_rebalance_off() -> None:
    b = make(max_length=12, mlm_labels="all", descriptor_k=0, **NO_RANDOM)
    w = run(b, ["There is no change."])["mlm_weights"][0]
    # M = 0: every weight scaled by n / (n - (1 - lam) D) with n = 12, D = 3
    f = 12 / (12 - 0.95 * 3)
    assert (
        np.allclose(w[1:4], 0.05 * f)
        and np.allclose(w[4:], f)
        and math.isclose(w.sum(), 12, rel_tol=1e-6)
    )
    off = run(make(max_length=12, mlm_labels="all", rebalance=False), ["There is no change."])
    assert (off["mlm_weights"] == 1).all()


def iu_texts(test_data, n: int = 300) -> list[str]:  # type: ignore[no-untyped-def]
    with open(test_data("iu_xray/iu_xray_reports_dev.csv"), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:n]
    return [f"{r['findings']} {r['impression']}".strip() for r in rows]


@pytest.mark.parametrize("mode", ["paper", "release"])
@pytest.mark.parametrize("labels", ["masked", "all"])
def test_weight_total_is_kept_on_real_reports(test_data, mode: str, labels: str) -> None:  # type: ignore[no-untyped-def]
    texts = iu_texts(test_data)
    distilled = [APPENDIX_C[i % 3][1] for i in range(len(texts))]
    b = TextBatcher(TextConfig(masking_mode=mode, mlm_labels=labels), _tok())
    out = b(texts, distilled, np.random.default_rng(0))
    w = out["mlm_weights"].double()
    scored = (
        (out["mlm_labels"] != -100) if labels == "masked" else torch.ones_like(w, dtype=torch.bool)
    )
    assert torch.allclose((w * scored).sum(1), scored.sum(1).double(), atol=1e-3)
    assert (w[~scored] == 0).all()
    assert (w < 1).any() and (w > 1).any()  # templates were found and descriptors scaled up
    assert out["input_ids"].shape == (len(texts), 256) and out["input_ids"].dtype == torch.int64
    assert out["mlm_weights"].dtype == torch.float32
    if mode == "paper":
        assert ((out["input_ids"] == 3) | ~out["descriptor_mask"]).all()


def test_determinism() -> None:
    b = TextBatcher(TextConfig(max_length=64), _tok())
    reports = [p[0] for p in APPENDIX_C]
    distilled = [p[1] for p in APPENDIX_C]
    a = b(reports, distilled, np.random.default_rng(7))
    c = b(reports, distilled, np.random.default_rng(7))
    d = b(reports, distilled, np.random.default_rng(8))
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert not torch.equal(a["input_ids"], d["input_ids"])


def test_assembly_inserts_distilled_at_sentence_boundaries() -> None:
    report, distilled = APPENDIX_C[1]
    sents = [report[s:e] for s, e in split_sentences(report)]
    seen = set()
    for where_ in np.linspace(0, 0.999, 12):
        text = assemble_paper(report, distilled, True, float(where_))
        i = text.index(distilled)
        before = text[:i].strip()
        assert before == " ".join(sents[: len(split_sentences(before))])
        assert text.replace(distilled, "").split() == report.split()
        seen.add(i)
    assert len(seen) == len(sents) + 1  # every boundary, ends included
    assert assemble_paper(report, "No pneumothorax", True, 0.0).startswith("No pneumothorax. ")
    assert assemble_paper("", distilled, True, 0.5) == distilled
    b = TextBatcher(TextConfig(distill_prob=1.0), _tok())
    assert all(
        distilled in t for t in b.assemble([report] * 5, [distilled] * 5, np.random.default_rng(0))
    )
    never = TextBatcher(TextConfig(distill_prob=1.0, use_distilled=False), _tok())
    assert never.assemble([report], [distilled], np.random.default_rng(0)) == [report]
    half = TextBatcher(TextConfig(distill_prob=0.5), _tok())
    got = half.assemble([report] * 400, [distilled] * 400, np.random.default_rng(0))
    assert 150 < sum(distilled in t for t in got) < 250


def test_release_assembly() -> None:
    # the release splits on "." and re-joins without spaces, then turns ".." into "."
    assert assemble_release("A. B.", "X.", True, 0.0) == "X.A. B."
    assert assemble_release("A. B.", "X.", True, 0.4) == "A.X. B."
    assert assemble_release("A. B.", "X.", True, 0.999) == "A. B.X."
    assert assemble_release("A. B.", "X.", False, 0.4) == "A. B."


def test_bad_input() -> None:
    b = make()
    out = run(b, ["", "   \n ", "Pneumothorax café — naïve ✓ effusion.", "no entity here " * 40])
    ids = out["input_ids"]
    for row in (0, 1):
        assert list(ids[row][:2]) == [b.cls_id, b.sep_id] and (ids[row][2:] == b.pad_id).all()
        assert (out["mlm_weights"][row] == 0).all() and (out["mlm_labels"][row] == -100).all()
    assert out["entity_mask"][2].sum() == 2  # non-ASCII text is tokenised, offsets still map
    assert ids[3][-1] == b.sep_id and out["attention_mask"][3].all()  # truncated to L, [SEP] kept
    full = TextBatcher(TextConfig(), _tok())
    o = full([None, float("nan")], [None, ""], np.random.default_rng(0))
    assert (o["attention_mask"].sum(1) == 2).all()
    with pytest.raises(UserError):
        full(["a"], [], np.random.default_rng(0))
    with pytest.raises(UserError, match="masking_mode"):
        TextBatcher(TextConfig(masking_mode="bert"), _tok())
    with pytest.raises(UserError, match="not found"):
        TextBatcher(TextConfig(tokenizer="/nonexistent/tok.json"))
    from tokenizers import Tokenizer
    from tokenizers.models import BPE

    with pytest.raises(UserError, match="WordPiece"):
        TextBatcher(TextConfig(), Tokenizer(BPE()))
    empty = full([], [], np.random.default_rng(0))
    assert empty["input_ids"].shape == (0, 256)


# ---------------------------------------------------------------- release mode, step by step
def release_reference(ids: list[int], u: np.ndarray, vocab: dict[int, str], cfg: TextConfig):  # type: ignore[no-untyped-def]
    """SPEC section 9 read token by token: the release's loop, dead branch included."""
    names = {("COPD" if e == "copd" else e) for e in ENTITIES}
    length = len(ids)
    masked = list(ids)
    exist = any(vocab[ids[i]] in names for i in range(1, length - 1))
    entity_pos: list[int] = []
    mask_pos: list[int] = []
    for i in range(1, length - 1):
        if masked[i] == 0:
            break
        piece = vocab[masked[i]].startswith("##")
        if piece:
            if masked[i - 1] == 3:
                masked[i] = 3
            continue
        if vocab[masked[i]] in names:
            entity_pos.append(i)
            for j in range(1, cfg.descriptor_k + 1):
                if i - j <= 0:
                    break
                if ids[i - j] != 16 and i - j not in mask_pos:
                    mask_pos.append(i - j)
                # (the release's masking branch here tests "not an entity" on an entity: dead)
        if not exist:
            if u[i] < cfg.random_mask_prob_no_entity:
                masked[i] = 3
        elif u[i] < cfg.random_mask_prob_with_entity and i not in entity_pos and i not in mask_pos:
            masked[i] = 3
    for i in entity_pos:
        if u[i] < cfg.entity_mask_prob:
            masked[i] = 3
    # re-balance weights over all positions, templates greedy left to right from i < L-4
    lam = cfg.rebalance_lambda
    w = [1.0] * length
    t1, t2 = [219, 149, 152, 422, 158], [219, 149, 152]
    dim: list[int] = []
    i = 0
    while i < length - 4:
        if ids[i : i + 5] == t1:
            dim += range(i, i + 5)
            i += 5
        elif ids[i : i + 3] == t2:
            dim += range(i, i + 3)
            i += 3
        else:
            i += 1
    for p in dim:
        w[p] = lam
    dm = len([p for p in mask_pos if p in dim])
    if mask_pos and dim:
        e = ((1 - lam) * (len(dim) - dm) + len(mask_pos)) / (len(mask_pos) - (1 - lam) * dm)
        for p in mask_pos:
            w[p] *= e
    elif dim:
        w = [x * length / (length - (1 - lam) * len(dim)) for x in w]
    return masked, w, sorted(mask_pos), entity_pos


def test_release_mode_matches_step_by_step_reading(test_data) -> None:  # type: ignore[no-untyped-def]
    cfg = TextConfig(max_length=96, masking_mode="release", mlm_labels="all", assembly="release")
    b = TextBatcher(cfg, _tok())
    vocab = {i: t for t, i in b.vocab.items()}
    texts = (
        iu_texts(test_data, 120)
        + [p[1] for p in APPENDIX_C]
        + ["There is no evidence of copd. " * 30]
    )
    rng = np.random.default_rng(5)
    reports = texts
    assembled = b.assemble(reports, [APPENDIX_C[0][1]] * len(reports), rng)
    out = b.from_texts(assembled, np.random.default_rng(11))
    u = np.random.default_rng(11).random((len(assembled), cfg.max_length))
    ids = out["mlm_labels"].numpy()
    assert (ids[:, 0] == 2).all() and not (ids == b.sep_id).any()  # "[CLS] " + text, no [SEP]
    n_desc = 0
    for r in range(len(assembled)):
        masked, w, mask_pos, entity_pos = release_reference(ids[r].tolist(), u[r], vocab, cfg)
        assert out["input_ids"][r].tolist() == masked, r
        assert np.allclose(out["mlm_weights"][r].numpy(), w, rtol=1e-5), r
        assert np.nonzero(out["descriptor_mask"][r].numpy())[0].tolist() == mask_pos
        assert np.nonzero(out["entity_mask"][r].numpy())[0].tolist() == entity_pos
        n_desc += len(mask_pos)
    assert n_desc > 100


def test_fast_encoding_path_equals_the_full_tokenizer() -> None:
    b = make()
    texts = [
        "Right lower lobe OPACITY, 1.5 cm; no effusion.",
        "Heart size normal.\nNo pneumothorax (stable) since 12/3/2019!",
        "Naïve café-like opacité in the left base.",  # non-ASCII: the full tokenizer
        "There is [MASK] effusion and a [SEP]-like token.",  # added tokens: the full tokenizer
        "   tabs\tand   spaces   ",
        "",
    ]
    fast = b._encode(texts, offsets=True)
    full = b.tokenizer.encode_batch(texts)
    for t, a, e in zip(texts, fast, full):
        assert a.ids == e.ids and a.offsets == e.offsets, t
