"""`ecamp distill train-student`: the student (LoRA fine-tuning) config."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ecamp.config.loader import apply_overrides, from_dict, read_yaml, to_dict
from ecamp.config.train import TrainConfig


def _student_train() -> TrainConfig:
    """Loop defaults for LoRA fine-tuning of a chat model."""
    return TrainConfig(
        epochs=3,
        batch_size=8,
        lr=2e-4,
        min_lr=0.0,
        weight_decay=0.0,
        betas=(0.9, 0.999),
        warmup_epochs=0.1,
        clip_grad=1.0,
        log_every=5,
        keep_last=1,
        drop_last=False,
        group_by_length=True,
        tensorboard=False,
    )


@dataclass
class LoraSettings:
    """LoRA adapters (peft); ``enabled: false`` trains every weight instead."""

    enabled: bool = True
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    # the attention and MLP projections of Llama-family models (Vicuna, SmolLM, Mistral, Qwen)
    target_modules: list[str] = field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
    )


@dataclass
class StudentConfig:
    """`ecamp distill train-student`: base model, pairs, adapters and the loop."""

    data: str = ""  # chat JSONL from `ecamp distill export-chat`
    base: str = ""  # a local model folder or a .gguf file (nothing is downloaded)
    chat_template: str | None = None  # Jinja template when the base tokenizer has none
    max_length: int = 1024  # longer pairs (prompt + answer tokens) are left out, with a warning
    val_size: int = 32  # held-out pairs scored each epoch (at most a tenth of the pairs)
    eval_batch_size: int = 16
    eval_max_tokens: int = 256
    gradient_checkpointing: bool = False  # less activation memory (7B models), ~30% slower
    load_dtype: Literal["auto", "fp32", "bf16"] = (
        "auto"  # auto (bf16 base on CUDA with LoRA, else fp32) | fp32 | bf16
    )
    # >0: train only the top N decoder layers (and the final norm; with LoRA, adapters there
    # only); the layers below need no backward pass, so a step costs less.  0 = every layer
    top_layers: int = 0
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainConfig = field(default_factory=_student_train)


def load_student_config(path: str | Path | None, overrides: list[str]) -> StudentConfig:
    """Student defaults (``train`` included) <- YAML file <- dotted overrides."""
    data = to_dict(StudentConfig())

    def merge(into: dict[str, Any], new: dict[str, Any]) -> None:
        for k, v in new.items():
            if isinstance(v, dict) and isinstance(into.get(k), dict):
                merge(into[k], v)
            else:
                into[k] = v

    if path:
        merge(data, read_yaml(path))
    apply_overrides(data, list(overrides))
    return from_dict(StudentConfig, data)
