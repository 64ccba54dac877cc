"""`ecamp distill train-student` and the transformers backend on a tiny random Llama (seconds).

The model is a 2-layer LlamaConfig written with save_pretrained; its tokenizer is a byte-level
BPE trained here with `tokenizers` on the test's own reports, with a ChatML chat template.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft", reason="peft not installed: pip install 'ecamp[student]'")

from ecamp.distill.cli import main as distill_main  # noqa: E402
from ecamp.distill.config import DistillConfig  # noqa: E402
from ecamp.distill.prompt import load_prompt  # noqa: E402
from ecamp.distill.rules import distill_text  # noqa: E402
from ecamp.distill.run import Report, ResultCache, distill_corpus  # noqa: E402
from ecamp.distill.student import (  # noqa: E402
    IGNORE,
    AnswerLoss,
    PadCollate,
    PairDataset,
    StudentConfig,
    read_pairs,
    tokenize_pair,
    train_student,
)
from ecamp.errors import DataError, UserError  # noqa: E402

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
FINDINGS = [
    ("No pneumothorax.", "There is no pneumothorax."),
    ("Mild cardiomegaly.", "There is mild cardiomegaly."),
    ("No pleural effusion.", "There is no effusion."),
    ("Possible pneumonia.", "There may be pneumonia."),
    ("No edema.", "There is no edema."),
    ("Small nodule.", "There is small nodule."),
]


def _reports(n: int, seed: int = 0) -> list[Report]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        parts = rng.sample([f for f, _ in FINDINGS], k=rng.randint(1, 3))
        out.append(Report(f"r{i}", " ".join(parts)))
    return out


def _pairs(reports: list[Report], path: Path) -> Path:
    """Chat JSONL as export-chat writes it (student prompt, rules teacher)."""
    prompt = load_prompt("student")
    with open(path, "w", encoding="utf-8") as f:
        for r in reports:
            answer = " ".join(dict.fromkeys(x.sentence for x in distill_text(r.text)))
            msgs = [*prompt.messages(r.text), {"role": "assistant", "content": answer}]
            f.write(json.dumps({"id": r.id, "messages": msgs}) + "\n")
    return path


def _tiny_model(folder: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    prompt = load_prompt("student")
    corpus = [prompt.system, prompt.user] + [f"{a} {b}" for a, b in FINDINGS] * 4
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<|im_start|>", "<|im_end|>"]
    tk.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", eos_token="<|im_end|>", bos_token="<|im_start|>"
    )
    tok.chat_template = CHATML
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.25,  # a frozen random head needs a wide logit range for LoRA to fit
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """A 32-wide model's matmuls are microseconds: a second OpenMP thread only adds waiting
    (seconds per step on a loaded machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return _tiny_model(tmp_path_factory.mktemp("tiny") / "base")


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    return _pairs(_reports(48), tmp_path_factory.mktemp("pairs") / "pairs.jsonl")


def _cfg(tiny: Path, pairs: Path, **train) -> StudentConfig:
    cfg = StudentConfig(data=str(pairs), base=str(tiny), val_size=4, eval_max_tokens=24)
    cfg.lora.r = 8
    cfg.train.epochs = 3
    cfg.train.batch_size = 8
    cfg.train.lr = 1e-2
    cfg.train.progress = False
    cfg.train.device = "cpu"
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def _answer_loss(model_dir: Path, pairs: Path) -> float:
    from ecamp.distill.hf import load_causal_lm, load_tokenizer

    tok, lm = load_tokenizer(model_dir), load_causal_lm(model_dir).eval()
    items = [tokenize_pair(tok, p) for p in read_pairs(pairs)]
    batch = PadCollate(tok.pad_token_id)(items)
    with torch.no_grad():
        return float(AnswerLoss(lm, adapter_only=False)(batch)["loss"])


def test_labels_mask_exactly_the_prompt_and_the_padding(tiny, pairs_file):
    from ecamp.distill.hf import load_tokenizer, prompt_text

    tok = load_tokenizer(tiny)
    pairs = read_pairs(pairs_file)[:3]
    items = [tokenize_pair(tok, p) for p in pairs]
    for p, (ids, labels) in zip(pairs, items):
        n_prompt = len(tok(prompt_text(tok, p.messages), add_special_tokens=False)["input_ids"])
        assert labels[:n_prompt] == [IGNORE] * n_prompt
        assert IGNORE not in labels[n_prompt:] and labels[n_prompt:] == ids[n_prompt:]
        answer = tok.decode(labels[n_prompt:])
        assert answer.startswith(p.answer) and "<|im_end|>" in answer  # the student learns to stop
    batch = PadCollate(tok.pad_token_id)(items)
    pad = batch["attention_mask"] == 0
    assert pad.any()
    assert (batch["labels"][pad] == IGNORE).all() and (
        batch["input_ids"][pad] == tok.pad_token_id
    ).all()
    n_answer = sum(sum(x != IGNORE for x in lab) for _, lab in items)
    assert int((batch["labels"] != IGNORE).sum()) == n_answer
    # the student's batches group pairs of similar length (train.group_by_length)
    assert PairDataset(pairs, tok, 1024).lengths == [len(ids) for ids, _ in items]
    assert StudentConfig().train.group_by_length


def test_answer_loss_equals_the_models_own_loss_per_sequence(tiny, pairs_file):
    """Left padding + logits of the answer positions only == HF's loss on each pair alone."""
    from ecamp.distill.hf import load_causal_lm, load_tokenizer

    tok, lm = load_tokenizer(tiny), load_causal_lm(tiny).eval()
    items = [tokenize_pair(tok, p) for p in read_pairs(pairs_file)[:6]]
    with torch.no_grad():
        mine = AnswerLoss(lm, adapter_only=False)(PadCollate(tok.pad_token_id)(items))["loss"]
        total = count = 0.0
        for ids, lab in items:
            k = sum(x != IGNORE for x in lab[1:])
            total += float(lm(input_ids=torch.tensor([ids]), labels=torch.tensor([lab])).loss) * k
            count += k
    assert float(mine) == pytest.approx(total / count, rel=1e-5)


def test_train_student_lowers_the_answer_loss_and_writes_a_merged_model(tiny, pairs_file, tmp_path):
    out = tmp_path / "run"
    result = train_student(_cfg(tiny, pairs_file), out)
    model = Path(result["model"])
    assert (model / "config.json").is_file() and (model / "tokenizer_config.json").is_file()
    assert not any("lora" in k for k in json.loads((model / "config.json").read_text()))
    before, after = _answer_loss(tiny, pairs_file), _answer_loss(model, pairs_file)
    assert after < 0.7 * before, (before, after)
    assert (out / "metrics.csv").is_file() and (out / "eval.csv").is_file()
    head, *rows = (out / "eval.csv").read_text().splitlines()
    assert {"valid_rate", "agreement", "exact"} <= set(head.split(",")) and len(rows) == 3
    ckpt = torch.load(next((out / "checkpoints").glob("step_*.pt")), weights_only=True)
    assert ckpt["model"] and all("lora_" in k for k in ckpt["model"])  # adapters only
    assert result["val_pairs"] == 4 and result["train_pairs"] == 44


def test_train_student_resumes_exactly(tiny, pairs_file, tmp_path):
    straight = train_student(_cfg(tiny, pairs_file, epochs=2), tmp_path / "a")
    train_student(_cfg(tiny, pairs_file, epochs=2, max_steps=7), tmp_path / "b")  # mid-epoch 2
    resumed = train_student(_cfg(tiny, pairs_file, epochs=2), tmp_path / "b")
    from safetensors.torch import load_file

    a = load_file(Path(straight["model"]) / "model.safetensors")
    b = load_file(Path(resumed["model"]) / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    evals = [(tmp_path / x / "eval.csv").read_text() for x in "ab"]
    assert evals[0] == evals[1] and len(evals[0].splitlines()) == 3


def test_full_fine_tuning_option(tiny, pairs_file, tmp_path):
    cfg = _cfg(tiny, pairs_file, epochs=1, lr=3e-3)
    cfg.lora.enabled = False
    result = train_student(cfg, tmp_path / "full")
    assert result["trained_parameters"] == result["parameters"]
    assert _answer_loss(Path(result["model"]), pairs_file) < _answer_loss(tiny, pairs_file)


def test_top_layers_trains_only_the_top_decoder_layers(tiny, pairs_file, tmp_path):
    from safetensors.torch import load_file

    cfg = _cfg(tiny, pairs_file, epochs=1, lr=3e-3)
    cfg.lora.enabled = False
    cfg.top_layers = 1
    result = train_student(cfg, tmp_path / "top")
    base = load_file(tiny / "model.safetensors")
    tuned = load_file(Path(result["model"]) / "model.safetensors")
    n_layers = json.loads((tiny / "config.json").read_text())["num_hidden_layers"]
    top = f"model.layers.{n_layers - 1}."
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed and all(k.startswith(top) or k == "model.norm.weight" for k in changed)
    assert any(k.startswith(top) for k in changed)
    ckpt = torch.load(next((tmp_path / "top" / "checkpoints").glob("step_*.pt")), weights_only=True)
    assert ckpt["model"] and all(top in k or "model.norm" in k for k in ckpt["model"])
    assert _answer_loss(Path(result["model"]), pairs_file) < _answer_loss(tiny, pairs_file)
    cfg.top_layers = n_layers + 1
    with pytest.raises(UserError, match="decoder layers"):
        train_student(cfg, tmp_path / "too_many")


def test_transformers_backend_answers_in_the_cache_format(tiny, tmp_path):
    reports = [*_reports(5, seed=3), Report("empty", " ")]
    cfg = DistillConfig(backend="transformers", model=str(tiny), batch_size=4, max_tokens=12)
    cfg.device = "cpu"
    from ecamp.distill.backends import make_backend

    backend = make_backend(cfg)
    assert backend is not None
    answers = backend.chat_batch([load_prompt("student").messages(r.text) for r in reports[:3]])
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    s = distill_corpus(
        reports, cfg, tmp_path / "c.jsonl", backend, load_prompt("student"), progress=False
    )
    assert s.done == 6 and s.failures == 0 and s.seconds > 0
    cache = ResultCache(tmp_path / "c.jsonl")
    recs = [cache.latest(r.id) for r in reports]
    for rec in recs:
        assert rec is not None and {
            "id",
            "key",
            "distilled",
            "findings",
            "backend",
            "status",
        } <= set(rec)
    # a random model does not answer in the sentence forms: validation rejects it -> rules
    assert {r["status"] for r in recs[:5]} <= {"ok", "fallback"}
    assert recs[-1]["status"] == "empty"
    again = distill_corpus(
        reports, cfg, tmp_path / "c.jsonl", backend, load_prompt("student"), progress=False
    )
    assert again.cached == 6 and again.done == 0  # resume: nothing redone


def test_cli_train_student_then_distil_with_the_student(tiny, pairs_file, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = distill_main(
        [
            "train-student",
            "--data",
            str(pairs_file),
            "--base",
            str(tiny),
            "--output",
            str(out),
            "train.epochs=1",
            "train.progress=false",
            "train.device=cpu",
            "eval_max_tokens=8",
            "val_size=2",
        ]
    )
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["steps"] == 6 and Path(result["model"]).is_dir()
    csv = tmp_path / "r.csv"
    csv.write_text("id,findings,impression\na,No pneumothorax.,\nb,Mild cardiomegaly.,\n")
    rc = distill_main(
        [
            "--input",
            str(csv),
            "--output",
            str(tmp_path / "d.jsonl"),
            "--backend",
            "transformers",
            "--model",
            str(out / "model"),
            "--prompt-file",
            "student",
            "--max-tokens",
            "8",
            "--no-progress",
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["written"] == 2 and summary["reports_per_s"] > 0


def test_garbage_model_folder_is_a_clear_error(tmp_path, pairs_file):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="junk"):
        train_student(StudentConfig(data=str(pairs_file), base=str(junk)), tmp_path / "o")
    with pytest.raises(UserError, match="does not exist"):
        train_student(
            StudentConfig(data=str(pairs_file), base=str(tmp_path / "nope")), tmp_path / "o"
        )
    rc = distill_main(
        ["--input", str(pairs_file), "--output", str(tmp_path / "x.jsonl"), "--backend",
         "transformers", "--model", str(junk)]
    )  # fmt: skip
    assert rc == 2


def test_bad_and_empty_pairs_files_are_clear_errors(tmp_path, pairs_file, tiny, capsys):
    bad = tmp_path / "bad.jsonl"
    lines = pairs_file.read_text().splitlines()
    bad.write_text("\n".join([lines[0], '{"id": "x", "messages": [{"role": "user"}]}', *lines[1:]]))
    with pytest.raises(DataError, match=r"bad.jsonl line 2"):
        read_pairs(bad)
    torn = tmp_path / "torn.jsonl"
    torn.write_text(lines[0] + "\n" + lines[1][:40] + "\n")
    with pytest.raises(DataError, match=r"torn.jsonl line 2: not valid JSON"):
        read_pairs(torn)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="holds no pairs"):
        read_pairs(empty)
    rc = distill_main(
        [
            "train-student",
            "--data",
            str(empty),
            "--base",
            str(tiny),
            "--output",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 2 and "holds no pairs" in capsys.readouterr().err


def test_paper_vicuna_config_loads_and_its_template_masks_the_prompt(tiny, pairs_file):
    from ecamp.distill.hf import load_tokenizer
    from ecamp.distill.student import load_student_config

    root = Path(__file__).resolve().parents[1]
    cfg = load_student_config(root / "configs/paper/student_vicuna.yaml", ["train.lr=1e-4"])
    assert cfg.lora.enabled and cfg.train.lr == 1e-4 and cfg.train.accum_steps == 4
    tok = load_tokenizer(tiny, cfg.chat_template)
    pair = read_pairs(pairs_file)[0]
    ids, labels = tokenize_pair(tok, pair)
    answer = tok.decode([x for x in labels if x != IGNORE])
    assert answer.strip().startswith(pair.answer) and answer.endswith(tok.eos_token)
