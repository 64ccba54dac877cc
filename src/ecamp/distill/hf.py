"""Local Hugging Face causal LMs: load a folder or a GGUF file offline, greedy batched answers.

Shared by the student trainer (:mod:`ecamp.distill.student`) and the in-process
``transformers`` distillation backend.  Nothing is ever fetched from a hub: the model must be
a local ``save_pretrained`` folder or a ``.gguf`` file (de-quantised by transformers with the
``gguf`` package), loaded with ``local_files_only=True`` and the hub set offline.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from ecamp.errors import UserError


def _offline() -> None:
    # belt and braces beside local_files_only: no hub call even from a nested helper
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _split(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """(folder, extra from_pretrained kwargs) for a model folder or a GGUF file."""
    p = Path(path).expanduser()
    if p.is_file() and p.suffix.lower() == ".gguf":
        return p.parent, {"gguf_file": p.name}
    if p.is_dir():
        return p, {}
    if p.exists():
        raise UserError(
            f"model {p} is neither a model folder (save_pretrained layout) nor a .gguf file"
        )
    raise UserError(
        f"model {p} does not exist; pass a local model folder or a .gguf file "
        "(nothing is downloaded from a hub)"
    )


def load_tokenizer(path: str | Path, chat_template: str | None = None):
    """The tokenizer of a local model, with a pad token and, if given, ``chat_template``."""
    _offline()
    from transformers import AutoTokenizer

    folder, extra = _split(path)
    try:
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True, **extra)
    except Exception as e:  # transformers raises many types for a broken folder
        raise UserError(
            f"cannot load a tokenizer from {path} ({type(e).__name__}: {_short(e)}); "
            "the folder needs tokenizer files (tokenizer.json or tokenizer.model + config)"
        ) from None
    if chat_template:
        tok.chat_template = chat_template
    if not getattr(tok, "chat_template", None):
        raise UserError(
            f"the tokenizer of {path} has no chat template; set chat_template in the config "
            "(a Jinja template, e.g. the one in configs/paper/student_vicuna.yaml)"
        )
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    if tok.pad_token_id is None:
        raise UserError(f"the tokenizer of {path} has no pad, eos or unk token to pad with")
    return tok


def load_causal_lm(path: str | Path, dtype: Any = None):
    """A causal LM from a local folder or GGUF file (on the CPU; the caller moves it)."""
    _offline()
    from transformers import AutoModelForCausalLM

    folder, extra = _split(path)
    if extra:
        from transformers import GgufConfig

        # dense weights: trainable, and save_pretrained writes a plain folder afterwards
        extra["quantization_config"] = GgufConfig(dequantize=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder, local_files_only=True, dtype=dtype, **extra
        )
    except ImportError as e:
        raise UserError(f"loading {path} needs a package: {e}") from None
    except Exception as e:
        raise UserError(
            f"cannot load a causal language model from {path} ({type(e).__name__}: {_short(e)}); "
            "pass a save_pretrained folder (config.json + weights) or a .gguf file"
        ) from None
    if extra:
        # the weights are plain tensors now; without this, save_pretrained refuses the model
        setattr(model, "hf_quantizer", None)  # noqa: B010
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model


def model_id(path: str | Path) -> str:
    """A short id of a local model's files (name, size, mtime): cached answers of another
    model, or of the same folder retrained, are not reused."""
    folder, extra = _split(path)
    files = [folder / extra["gguf_file"]] if extra else sorted(folder.iterdir())
    h = hashlib.sha256()
    for f in files:
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return f"{Path(path).name}@{h.hexdigest()[:12]}"


def _short(e: Exception) -> str:
    text = " ".join(str(e).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def prompt_text(tokenizer, messages: list[dict[str, str]]) -> str:
    """The chat template applied to ``messages``, ending where the assistant's answer starts."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def generate_answers(
    model,
    tokenizer,
    chats: list[list[dict[str, str]]],
    max_new_tokens: int = 384,
    batch_size: int = 16,
) -> list[str]:
    """Greedy answers to ``chats``, ``batch_size`` at a time (prompts padded on the left)."""
    import torch

    device = next(model.parameters()).device
    answers: list[str] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # every prompt ends at the same position: one step per token
    try:
        for i in range(0, len(chats), max(1, batch_size)):
            texts = [prompt_text(tokenizer, m) for m in chats[i : i + max(1, batch_size)]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(device) for k, v in enc.items()}
            with torch.inference_mode():
                out = model.generate(
                    **enc,
                    do_sample=False,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            new = out[:, enc["input_ids"].shape[1] :]
            answers.extend(t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
    return answers
