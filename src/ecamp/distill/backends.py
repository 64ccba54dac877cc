"""LLM backends behind one interface: ``chat(messages) -> answer text``.

* :class:`OpenAIBackend`: any OpenAI-compatible chat-completions server (ChatGPT, vLLM,
  llama.cpp server, Ollama) through the official ``openai`` client, with a timeout per
  request and retries with exponential backoff on timeouts, connection errors, 429 and 5xx.
* :class:`LlamaCppBackend`: a local GGUF model through llama-cpp-python, in process.
* :class:`TransformersBackend`: a local Hugging Face model folder (e.g. a student trained by
  ``ecamp distill train-student``) in process, greedy, many reports per ``generate`` call.

The offline ``rules`` backend needs no such object (see :mod:`ecamp.distill.rules`).
"""

from __future__ import annotations

import os
import random
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from urllib.parse import urlparse

from ecamp.distill.config import DistillConfig
from ecamp.errors import UserError
from ecamp.utils.logging import get_logger

log = get_logger(__name__)
MAX_BACKOFF_S = 30.0


class BackendUnavailable(Exception):
    """A request failed after all retries (server down, timing out, overloaded)."""


class BackendFatal(UserError):
    """A request the server refuses for good (bad key, unknown model): stop the run."""


class ChatBackend(ABC):
    """A chat model: one call per prompt, safe to call from ``max_concurrency`` threads."""

    name: str = "llm"
    max_concurrency: int = 1
    model_id: str | None = None  # what answers (a cached answer is reused only for the same)
    target: str = ""  # where requests go, for the log

    @abstractmethod
    def chat(self, messages: list[dict[str, str]]) -> str:
        """The answer text; raises BackendUnavailable or BackendFatal."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections / model memory."""


class OpenAIBackend(ChatBackend):
    """OpenAI-compatible chat completions, temperature 0 by default."""

    name = "openai"

    def __init__(self, cfg: DistillConfig, sleep=time.sleep) -> None:
        import openai

        self._openai = openai
        self.cfg = cfg
        self.max_concurrency = max(1, cfg.concurrency)
        base_url = cfg.resolved_base_url()
        from ecamp.utils.secrets import register_secret

        register_secret(cfg.resolved_api_key())  # masked in every log line
        self._client = openai.OpenAI(
            base_url=base_url,
            api_key=cfg.resolved_api_key(),
            timeout=cfg.timeout_s,
            max_retries=0,  # retried here, with our backoff and logging
        )
        host = urlparse(base_url or "https://api.openai.com").hostname or ""
        # llama.cpp / vLLM take repeat_penalty; the OpenAI API rejects unknown fields
        self._extra = {} if host.endswith("openai.com") else {"repeat_penalty": cfg.repeat_penalty}
        self._sleep = sleep
        self._rng = random.Random(cfg.seed)
        self._model = cfg.resolved_model() or self._first_model()
        self.model_id = self._model
        self.target = f"{base_url or 'https://api.openai.com/v1'} model={self._model}"

    def _first_model(self) -> str:
        """Local servers serve one model: ask for its name when none is configured."""
        try:
            models = self._client.models.list().data
        except self._openai.OpenAIError as e:
            raise BackendFatal(
                f"no --model given and the server's model list is unavailable ({type(e).__name__}); pass --model"
            ) from None
        if not models:
            raise BackendFatal("no --model given and the server lists no model; pass --model")
        return models[0].id

    def chat(self, messages: list[dict[str, str]]) -> str:
        oa = self._openai
        last = ""
        for attempt in range(self.cfg.max_retries + 1):
            retry_after = None
            try:
                resp = self._client.chat.completions.create(
                    model=self._model,
                    messages=messages,  # type: ignore[arg-type]
                    temperature=self.cfg.temperature,
                    max_tokens=self.cfg.max_tokens,
                    seed=self.cfg.seed,
                    extra_body=self._extra or None,
                )
                if not resp.choices:
                    return ""
                return resp.choices[0].message.content or ""
            except (oa.APITimeoutError, oa.APIConnectionError) as e:
                last = type(e).__name__
            except oa.APIStatusError as e:
                if e.status_code in (401, 403):
                    raise BackendFatal(_refused_key_message(self.cfg, e.status_code)) from None
                if e.status_code == 404:
                    raise BackendFatal(
                        f"the server has no model {self._model!r} (HTTP 404); check --model"
                    ) from None
                if e.status_code not in (408, 409, 429) and e.status_code < 500:
                    raise BackendFatal(
                        f"the server rejected the request: HTTP {e.status_code}"
                    ) from None
                last = f"HTTP {e.status_code}"
                retry_after = _retry_after(e)
            except oa.APIResponseValidationError as e:
                last = f"unreadable response ({type(e).__name__})"
            if attempt < self.cfg.max_retries:
                delay = min(self.cfg.backoff_s * 2**attempt, MAX_BACKOFF_S)
                delay = (
                    retry_after if retry_after is not None else delay * (0.5 + self._rng.random())
                )
                log.debug("request failed (%s); retry %d in %.1f s", last, attempt + 1, delay)
                self._sleep(min(delay, MAX_BACKOFF_S))
        raise BackendUnavailable(f"{last} after {self.cfg.max_retries + 1} attempts")

    def close(self) -> None:
        self._client.close()


def _refused_key_message(cfg: DistillConfig, status: int) -> str:
    """A 401/403 names where the key came from and what to change there."""
    where = cfg.api_key_source()
    if cfg.api_key:
        fix = f"correct api_key, or remove it to use ${cfg.api_key_env}"
    elif os.environ.get(cfg.api_key_env):
        fix = f"set ${cfg.api_key_env} to a valid key (or name another variable with --api-key-env)"
    else:
        fix = f"set ${cfg.api_key_env} (or name another variable with --api-key-env)"
    return f"the server refused the API key (HTTP {status}); the key came from {where}: {fix}"


def _retry_after(e) -> float | None:
    try:
        value = e.response.headers.get("retry-after")
        return max(0.0, float(value)) if value is not None else None
    except (AttributeError, ValueError):
        return None


class LlamaCppBackend(ChatBackend):
    """A GGUF model run in process by llama-cpp-python (one request at a time)."""

    name = "llamacpp"
    max_concurrency = 1

    def __init__(self, cfg: DistillConfig) -> None:
        if not cfg.gguf:
            raise UserError("the llamacpp backend needs a model file: pass --gguf PATH.gguf")
        path = Path(cfg.gguf)
        if not path.is_file():
            raise UserError(f"GGUF model file {path} does not exist")
        try:
            from llama_cpp import Llama
        except ImportError:
            raise UserError(
                "the llamacpp backend needs llama-cpp-python: pip install 'ecamp[llama]'"
            ) from None
        self.cfg = cfg
        self._llm = Llama(
            model_path=str(path),
            n_ctx=cfg.n_ctx,
            n_threads=cfg.n_threads,
            seed=cfg.seed,
            verbose=False,
        )
        self._lock = threading.Lock()
        self.target = str(path)
        self.model_id = path.name

    def chat(self, messages: list[dict[str, str]]) -> str:
        with self._lock:
            try:
                out = self._llm.create_chat_completion(
                    messages=messages,  # type: ignore[arg-type]
                    temperature=self.cfg.temperature,
                    max_tokens=self.cfg.max_tokens,
                    repeat_penalty=self.cfg.repeat_penalty,
                    seed=self.cfg.seed,
                )
            except ValueError as e:  # e.g. prompt longer than n_ctx
                raise BackendUnavailable(f"llama.cpp: {e}") from None
        return out["choices"][0]["message"]["content"] or ""  # type: ignore[index]

    def close(self) -> None:
        self._llm.close() if hasattr(self._llm, "close") else None


class TransformersBackend(ChatBackend):
    """A local causal LM run in process by transformers: batched greedy generation.

    ``chat_batch`` answers a list of chats at once (left padding, one forward per generated
    token for the whole batch); on CUDA the model runs in bf16 (fp16 where bf16 is missing).
    """

    name = "transformers"
    max_concurrency = 1

    def __init__(self, cfg: DistillConfig) -> None:
        import torch

        from ecamp.distill import hf
        from ecamp.train.distributed import resolve_device

        if not cfg.model:
            raise UserError(
                "the transformers backend needs a local model: pass --model DIR "
                "(e.g. the model/ folder ecamp distill train-student wrote)"
            )
        self.cfg = cfg
        self.batch_size = max(1, cfg.batch_size)
        device = resolve_device(cfg.device)
        dtype = None
        if device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self._tok = hf.load_tokenizer(cfg.model)
        self._model = hf.load_causal_lm(cfg.model, dtype=dtype).to(device).eval()
        self._lock = threading.Lock()
        self.model_id = hf.model_id(cfg.model)
        self.target = f"{cfg.model} on {device}"

    def chat_batch(self, chats: list[list[dict[str, str]]]) -> list[str]:
        """One answer per chat, in order."""
        from ecamp.distill.hf import generate_answers

        with self._lock:
            try:
                return generate_answers(
                    self._model, self._tok, chats, self.cfg.max_tokens, self.batch_size
                )
            except RuntimeError as e:  # e.g. out of memory: a smaller batch_size helps
                raise BackendUnavailable(f"transformers: {e}") from None

    def chat(self, messages: list[dict[str, str]]) -> str:
        return self.chat_batch([messages])[0]

    def close(self) -> None:
        self._model = None


def make_backend(cfg: DistillConfig) -> ChatBackend | None:
    """The chat backend of ``cfg`` (None for the rules backend)."""
    if cfg.backend == "rules":
        return None
    if cfg.backend == "openai":
        return OpenAIBackend(cfg)
    if cfg.backend == "llamacpp":
        return LlamaCppBackend(cfg)
    if cfg.backend == "transformers":
        return TransformersBackend(cfg)
    raise UserError(
        f"unknown backend {cfg.backend!r}; choose rules, openai, llamacpp or transformers"
    )
