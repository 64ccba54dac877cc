"""Settings of the distillation stage: moved to :mod:`ecamp.config.distill` (re-exported)."""

from ecamp.config.distill import BACKENDS, Backend, DistillConfig  # noqa: F401
