"""`ecamp distill`: the distillation stage's config (YAML via --config, flags and --set override)."""

from __future__ import annotations

import os
import typing
from dataclasses import dataclass
from typing import Any, Literal

Backend = Literal["rules", "openai", "llamacpp", "transformers"]
BACKENDS: tuple[str, ...] = typing.get_args(Backend)


@dataclass
class DistillConfig:
    """Backend, server / model, prompt and robustness settings of ``ecamp distill``.

    The API key is never stored here from the command line and never logged: it comes from
    the environment variable named by ``api_key_env`` (or ``api_key`` in a private YAML).
    """

    backend: Backend = "rules"
    # openai-compatible server (ChatGPT, vLLM, llama.cpp server, Ollama)
    base_url: str | None = None  # default: $OPENAI_BASE_URL, else the OpenAI API
    # the server's model name ($ECAMP_LLM_MODEL by default); transformers: a local model folder
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    api_key: str | None = None
    concurrency: int = 4
    timeout_s: float = 60.0
    max_retries: int = 4  # transport retries on timeouts, 429 and 5xx, with backoff
    backoff_s: float = 1.0  # first backoff; doubles per retry, capped at 30 s
    max_consecutive_failures: int = 20  # then the run stops (server down): rerun to resume
    # llama-cpp-python in process
    gguf: str | None = None
    n_ctx: int = 4096
    n_threads: int | None = None
    # transformers in process (a fine-tuned student's folder): greedy, batched
    batch_size: int = 16  # reports per generate() call
    device: str = "auto"  # auto (CUDA when present, else CPU) | cpu | cuda | cuda:N | mps
    # decoding (both LLM backends)
    temperature: float = 0.0
    max_tokens: int = 384
    repeat_penalty: float = 1.1  # set explicitly: llama.cpp server and API defaults differ
    seed: int = 0
    # prompt
    prompt_file: str | None = None
    validation_retries: int = 1  # rejected answers are asked again this often, then rules
    # a valid answer that leaves entities out: ask once more for just those (small students
    # stop early); like validation_retries, not part of the cache key
    complete_omitted: bool = True

    def resolved_api_key(self) -> str:
        """The key to send ("none" for local servers that need no key)."""
        return self.api_key or os.environ.get(self.api_key_env) or "none"

    def api_key_source(self) -> str:
        """Where the key sent comes from, for error messages (never the key itself)."""
        if self.api_key:
            return "the api_key setting (a config file, --set or a pipeline override)"
        if os.environ.get(self.api_key_env):
            return f"the environment variable ${self.api_key_env}"
        return f"nowhere (neither api_key nor ${self.api_key_env} is set)"

    def resolved_model(self) -> str | None:
        return self.model or os.environ.get("ECAMP_LLM_MODEL")

    def resolved_base_url(self) -> str | None:
        return self.base_url or os.environ.get("OPENAI_BASE_URL")

    def public_dict(self) -> dict[str, Any]:
        """The settings with the key redacted (for logs, summaries and the resolved config)."""
        from ecamp.config.loader import to_dict
        from ecamp.utils.secrets import mask_secrets

        return mask_secrets(to_dict(self))

    def fingerprint_fields(self) -> dict[str, Any]:
        """What changes an answer: cached results are reused only when these match."""
        if self.backend == "rules":
            return {"backend": "rules"}
        if self.backend == "transformers":  # always greedy; the model id names its weights
            return {"backend": self.backend, "model": self.model, "max_tokens": self.max_tokens}
        return {
            "backend": self.backend,
            "model": self.resolved_model() if self.backend == "openai" else self.gguf,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "repeat_penalty": self.repeat_penalty,
            "seed": self.seed,
        }
