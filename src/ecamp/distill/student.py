"""`ecamp distill train-student`: fine-tune a causal LM on the teacher's answers (paper, Table S2).

The paper distils 10k reports with ChatGPT, fine-tunes Vicuna-7B on them and lets that student
distil the rest.  This trains such a student from the chat JSONL that ``ecamp distill
export-chat`` writes:

* every pair is rendered with the base model's chat template; the loss covers the answer
  tokens only (the prompt and the padding carry label -100), end-of-turn token included, so
  the student learns where to stop;
* LoRA adapters through ``peft`` by default (``lora.enabled=false``: full fine-tuning);
* the generic training loop (:class:`ecamp.train.loop.Trainer`): progress bar, metrics.csv,
  atomic checkpoints with exact resume, bf16 autocast on GPUs, DDP under ``torchrun``.  With
  LoRA a checkpoint holds only the adapter weights (the frozen base is re-read from --base);
* a fixed held-out slice of the pairs (by a hash of the pair id) is answered greedily at every
  epoch end and scored with the distillation validator: ``valid_rate`` (answers that pass
  :func:`ecamp.distill.validate.parse_answer`), ``agreement`` (the teacher's entity statuses
  the student repeats) and ``exact`` (answers with the teacher's statuses for every entity);
  the best ``agreement`` picks the weights that are kept;
* at the end the adapters are merged into the base and written to ``OUTPUT/model`` in
  ``save_pretrained`` layout with the tokenizer (and its chat template): load it with
  transformers, serve it with vLLM, or run ``ecamp distill --backend transformers --model``.
"""

from __future__ import annotations

import json
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ecamp.config import to_dict
from ecamp.config.student import (  # noqa: F401  (moved there; old import path kept)
    LoraSettings,
    StudentConfig,
    _student_train,
    load_student_config,
)
from ecamp.distill.prompt import entity_list
from ecamp.distill.validate import parse_answer
from ecamp.errors import DataError, UserError
from ecamp.utils.logging import get_logger

log = get_logger(__name__)
IGNORE = -100  # the label cross-entropy skips
MODEL_DIR = "model"


# --------------------------------------------------------------------------- pairs


@dataclass(frozen=True)
class Pair:
    """One teacher chat: the prompt messages and the teacher's answer."""

    id: str
    messages: list[dict[str, str]]  # ends with the user turn
    answer: str

    @property
    def entities(self) -> list[str]:
        """The entities of the report in the last user turn (what the validator allows)."""
        return entity_list(self.messages[-1]["content"])


def read_pairs(path: str | Path) -> list[Pair]:
    """The pairs of a chat JSONL file, with an error naming the line of a bad record."""
    p = Path(path)
    if not p.is_file():
        raise UserError(
            f"pairs file {p} does not exist; write one with `ecamp distill export-chat`"
        )
    pairs: list[Pair] = []
    seen: set[str] = set()
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{p} line {n}"
            try:
                rec = json.loads(line)
            except ValueError as e:
                raise DataError(f"{where}: not valid JSON ({e}); fix or delete the line") from None
            msgs = rec.get("messages") if isinstance(rec, dict) else None
            if not isinstance(msgs, list) or len(msgs) < 2:
                raise DataError(
                    f"{where}: needs a 'messages' list of at least a user and an assistant turn"
                )
            for m in msgs:
                if not (
                    isinstance(m, dict)
                    and m.get("role") in ("system", "user", "assistant")
                    and isinstance(m.get("content"), str)
                ):
                    raise DataError(
                        f"{where}: every message needs a role (system/user/assistant) and a "
                        f"string content, got {str(m)[:120]}"
                    )
            if msgs[-1]["role"] != "assistant" or msgs[-2]["role"] != "user":
                raise DataError(f"{where}: the chat must end with a user turn and the answer")
            if not msgs[-1]["content"].strip():
                raise DataError(f"{where}: the teacher's answer is empty")
            pid = str(rec.get("id", n))
            if pid in seen:
                raise DataError(f"{where}: pair id {pid!r} occurs twice; ids must be unique")
            seen.add(pid)
            pairs.append(Pair(pid, [dict(m) for m in msgs[:-1]], msgs[-1]["content"].strip()))
    if not pairs:
        raise DataError(
            f"pairs file {p} holds no pairs; export teacher answers with `ecamp distill export-chat`"
        )
    return pairs


def split_pairs(pairs: list[Pair], val_size: int) -> tuple[list[Pair], list[Pair]]:
    """(train, held-out): the held-out pairs are those with the smallest hash of their id, so
    the slice does not depend on the file's order."""
    n_val = max(0, min(val_size, len(pairs) // 10))
    order = sorted(range(len(pairs)), key=lambda i: (zlib.crc32(pairs[i].id.encode()), i))
    val = set(order[:n_val])
    return [p for i, p in enumerate(pairs) if i not in val], [pairs[i] for i in sorted(val)]


# --------------------------------------------------------------------------- tokens


def tokenize_pair(tokenizer, pair: Pair) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one pair: labels are -100 on every prompt token.

    The prompt is the chat template with the generation prompt (exactly what the student sees
    when it distils); the answer is the rest of the rendered chat, end-of-turn included.
    """
    from ecamp.distill.hf import prompt_text

    prompt = prompt_text(tokenizer, pair.messages)
    full = tokenizer.apply_chat_template(
        [*pair.messages, {"role": "assistant", "content": pair.answer}], tokenize=False
    )
    if not full.startswith(prompt):
        raise UserError(
            "the chat template renders a chat differently with and without the answer; "
            "set chat_template to one where the prompt is a prefix of the whole chat"
        )
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in a_ids:
        a_ids = [*a_ids, tokenizer.eos_token_id]  # templates without an end-of-turn token
    return [*p_ids, *a_ids], [IGNORE] * len(p_ids) + list(a_ids)


class PairDataset(Dataset):
    """Tokenised pairs (tokenised once, up front)."""

    def __init__(self, pairs: list[Pair], tokenizer, max_length: int) -> None:
        self.items: list[tuple[list[int], list[int]]] = []
        too_long = 0
        for pair in pairs:
            ids, labels = tokenize_pair(tokenizer, pair)
            if len(ids) > max_length:
                too_long += 1
                continue
            self.items.append((ids, labels))
        if too_long:
            log.warning("%d pair(s) longer than max_length=%d left out", too_long, max_length)
        if pairs and not self.items:
            raise UserError(f"every pair is longer than max_length={max_length}; raise it")

    def __len__(self) -> int:
        return len(self.items)

    @property
    def lengths(self) -> list[int]:
        """Token count of each item (``train.group_by_length`` batches similar ones)."""
        return [len(ids) for ids, _ in self.items]

    def __getitem__(self, index: int) -> tuple[list[int], list[int]]:
        return self.items[index]


class PadCollate:
    """Left-pads a batch: pad id in the inputs, -100 in the labels, 0 in the attention mask.

    Padding on the left makes every answer end at the last position, so the loss needs the
    logits of the last (longest answer + 1) positions only: the prompt's logits, most of the
    tokens, are never computed (a 49k-word vocabulary makes them the largest tensor).
    """

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        n = max(len(ids) for ids, _ in items)
        input_ids = torch.full((len(items), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(items), n), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(items), n), dtype=torch.long)
        for i, (ids, lab) in enumerate(items):
            input_ids[i, n - len(ids) :] = torch.tensor(ids)
            labels[i, n - len(lab) :] = torch.tensor(lab)
            mask[i, n - len(ids) :] = 1
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


# --------------------------------------------------------------------------- model


class AnswerLoss(nn.Module):
    """``model(batch) -> {"loss"}`` for the training loop: mean cross-entropy on answer tokens.

    With ``adapter_only`` its state dict holds only the trainable weights (adapters, or the
    top layers with ``top_layers``), so a checkpoint of a 7B base stays a few MB; the frozen
    base is re-read from --base on resume.
    """

    def __init__(self, lm: nn.Module, adapter_only: bool) -> None:
        super().__init__()
        self.lm = lm
        self.adapter_only = adapter_only

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        labels, mask = batch["labels"], batch["attention_mask"]
        answer = labels != IGNORE
        # first answer position in the batch (batches are left-padded: answers end last)
        first = int(answer.any(0).nonzero()[0]) if bool(answer.any()) else labels.shape[1] - 1
        # the position before each answer token predicts it
        keep = min(labels.shape[1] - first + 1, labels.shape[1])
        out = self.lm(
            input_ids=batch["input_ids"],
            attention_mask=mask,
            position_ids=(mask.cumsum(1) - 1).clamp(min=0),  # as generate() numbers them
            logits_to_keep=keep,
        )
        logits = out.logits[:, -keep:-1].float()
        target = labels[:, -(keep - 1) :]
        loss = nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE
        )
        return {"loss": loss, "answer_tokens": answer.sum().float()}

    def _trainable(self, prefix: str = "") -> set[str]:
        return {prefix + n for n, p in self.named_parameters() if p.requires_grad}

    def state_dict(self, *args, **kwargs):  # type: ignore[override]
        sd = super().state_dict(*args, **kwargs)
        if not self.adapter_only:
            return sd
        keep = self._trainable(kwargs.get("prefix", ""))
        for k in [k for k in sd if k not in keep]:
            del sd[k]
        return sd

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
        if not self.adapter_only:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        expected = self._trainable()
        missing, unexpected = expected - set(state_dict), set(state_dict) - expected
        if strict and (missing or unexpected):
            raise RuntimeError(
                f"adapter weights differ: missing {sorted(missing)[:4]}, unexpected {sorted(unexpected)[:4]}"
            )
        return super().load_state_dict(state_dict, strict=False, assign=assign)


def _load_dtype(cfg: StudentConfig) -> torch.dtype | None:
    d = cfg.load_dtype.lower()
    if d == "fp32":
        return torch.float32
    if d == "bf16":
        return torch.bfloat16
    if d != "auto":
        raise UserError(f"load_dtype={cfg.load_dtype!r}: choose auto, fp32 or bf16")
    # a frozen base in bf16 halves GPU memory; trained weights stay fp32 (full FT, adapters)
    if cfg.lora.enabled and torch.cuda.is_available() and cfg.train.device != "cpu":
        return torch.bfloat16
    return torch.float32


def build_student(cfg: StudentConfig):
    """(AnswerLoss module, tokenizer) for ``cfg.base``, adapters attached when LoRA is on."""
    from ecamp.distill import hf

    tok = hf.load_tokenizer(cfg.base, cfg.chat_template)
    lm = hf.load_causal_lm(cfg.base, dtype=_load_dtype(cfg))
    if cfg.gradient_checkpointing:
        lm.gradient_checkpointing_enable()
        lm.config.use_cache = False
    top = _top_layer_indices(lm, cfg.top_layers)
    if cfg.lora.enabled:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise UserError("LoRA needs peft: pip install 'ecamp[student]'") from None
        names = {n.rsplit(".", 1)[-1] for n, _ in lm.named_modules()}
        targets = [t for t in cfg.lora.target_modules if t in names]
        if not targets:
            raise UserError(
                f"none of lora.target_modules {cfg.lora.target_modules} is a module of {cfg.base}; "
                "name its projection layers (e.g. lora.target_modules=[c_attn])"
            )
        if cfg.gradient_checkpointing:
            lm.enable_input_require_grads()
        torch.manual_seed(cfg.train.seed)  # the adapters' random init: same run, same weights
        lm = get_peft_model(
            lm,
            LoraConfig(
                r=cfg.lora.r,
                lora_alpha=cfg.lora.alpha,
                lora_dropout=cfg.lora.dropout,
                target_modules=targets,
                layers_to_transform=top,
                task_type="CAUSAL_LM",
            ),
        )
        for p in lm.parameters():  # adapters train in fp32 over a bf16 base
            if p.requires_grad:
                p.data = p.data.float()
    elif top is not None:
        decoder = lm.get_decoder()
        for p in lm.parameters():
            p.requires_grad_(False)
        for i in top:
            decoder.layers[i].requires_grad_(True)
        if getattr(decoder, "norm", None) is not None:
            decoder.norm.requires_grad_(True)
    return AnswerLoss(lm, adapter_only=cfg.lora.enabled or top is not None), tok


def _top_layer_indices(lm: nn.Module, n: int) -> list[int] | None:
    """Indices of the top ``n`` decoder layers (None: train every layer)."""
    if n < 0:
        raise UserError(f"top_layers must be >= 0, got {n}")
    if n == 0:
        return None
    get_decoder: Any = getattr(lm, "get_decoder", None)
    layers = getattr(get_decoder(), "layers", None) if callable(get_decoder) else None
    if not isinstance(layers, nn.ModuleList):
        raise UserError(
            "top_layers needs a decoder with a `layers` list (Llama-family models); "
            "set top_layers=0 to train every layer"
        )
    if n > len(layers):
        raise UserError(f"top_layers={n}, but the base has only {len(layers)} decoder layers")
    return list(range(len(layers) - n, len(layers)))


# --------------------------------------------------------------------------- evaluation


def _statuses(answer: str, entities: list[str]) -> dict[str, str] | None:
    parsed = parse_answer(answer, entities)
    if not parsed.ok:
        return None
    out: dict[str, str] = {}
    for f in parsed.findings:
        out.setdefault(f.entity, f.status)
    return out


def score_answers(pairs: list[Pair], answers: list[str]) -> dict[str, float]:
    """valid_rate, agreement (teacher entity statuses repeated) and exact (all repeated)."""
    valid = agree = total = exact = 0
    for pair, answer in zip(pairs, answers):
        ents = pair.entities
        teacher = _statuses(pair.answer, ents) or {}
        student = _statuses(answer, ents)
        valid += student is not None
        student = student or {}
        hits = sum(student.get(e) == s for e, s in teacher.items())
        agree += hits
        total += len(teacher)
        exact += bool(teacher) and hits == len(teacher) and set(student) <= set(teacher)
    n = max(1, len(pairs))
    return {
        "valid_rate": valid / n,
        "agreement": agree / total if total else 0.0,
        "exact": exact / n,
    }


def make_eval_fn(val: list[Pair], tokenizer, cfg: StudentConfig):
    """The loop's per-epoch hook: greedy answers to the held-out pairs, scored."""
    from ecamp.distill.hf import generate_answers

    def evaluate(model: nn.Module, epoch: int) -> dict[str, float]:
        lm = model.lm if isinstance(model, AnswerLoss) else model
        answers = generate_answers(
            lm, tokenizer, [p.messages for p in val], cfg.eval_max_tokens, cfg.eval_batch_size
        )
        return score_answers(val, answers)

    return evaluate


# --------------------------------------------------------------------------- run


def save_merged(student: AnswerLoss, tokenizer, output: Path) -> Path:
    """Adapters merged into the base, written as a save_pretrained folder (atomically)."""
    lm: Any = student.lm
    if hasattr(lm, "merge_and_unload"):  # a peft model: fold the adapters in
        lm = lm.merge_and_unload()
    final = output / MODEL_DIR
    tmp = output / f".{MODEL_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    lm.config.use_cache = True
    lm.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    old = output / f".{MODEL_DIR}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def train_student(cfg: StudentConfig, output: str | Path) -> dict[str, Any]:
    """Fine-tune, score the held-out slice each epoch, write OUTPUT/model; returns results."""
    from ecamp.train import distributed as du
    from ecamp.train.checkpoint import load_checkpoint
    from ecamp.train.loop import Trainer
    from ecamp.utils.io import atomic_write_text

    out = Path(output)
    if not cfg.data:
        raise UserError(
            "give the teacher pairs: --data PAIRS.jsonl (from ecamp distill export-chat)"
        )
    if not cfg.base:
        raise UserError("give the base model: --base DIR or --base FILE.gguf")
    pairs = read_pairs(cfg.data)
    train, val = split_pairs(pairs, cfg.val_size)
    student, tok = build_student(cfg)
    dataset = PairDataset(train, tok, cfg.max_length)
    n_params = sum(p.numel() for p in student.parameters())
    n_train = sum(p.numel() for p in student.parameters() if p.requires_grad)
    log.info(
        "student %s: %d training pairs, %d held out; %s, %.1fM of %.1fM parameters trained",
        cfg.base,
        len(dataset),
        len(val),
        ("LoRA" if cfg.lora.enabled else "full fine-tuning")
        + (f" of the top {cfg.top_layers} layers" if cfg.top_layers else ""),
        n_train / 1e6,
        n_params / 1e6,
    )
    trainer = Trainer(
        student,
        dataset,
        cfg.train,
        out,
        collate_fn=PadCollate(tok.pad_token_id),
        eval_fn=make_eval_fn(val, tok, cfg) if val else None,
        config_to_save=cfg,
        best_metric="agreement" if val else None,
        best_mode="max",
    )
    summary = trainer.fit()
    result: dict[str, Any] = {
        "pairs": len(pairs),
        "train_pairs": len(dataset),
        "val_pairs": len(val),
        "trained_parameters": n_train,
        "parameters": n_params,
        "steps": summary["steps"],
        "last_loss": (summary.get("last") or {}).get("loss"),
        "last_eval": summary.get("last_eval") or {},
        "best_agreement": summary.get("best_value"),
    }
    if trainer.dist.is_main:
        best = summary.get("best_checkpoint")
        if best and Path(best).is_file():
            # keep the held-out best, not merely the last, weights
            student.load_state_dict(load_checkpoint(best)["model"])
        result["model"] = str(save_merged(student, tok, out))
        result["config"] = to_dict(cfg)
        atomic_write_text(out / "results.json", json.dumps(result, indent=2) + "\n")
    du.barrier()
    du.cleanup()
    return result
