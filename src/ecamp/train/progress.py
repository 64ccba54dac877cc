"""What a fit reports as it runs: metrics.csv, eval.csv, TensorBoard and a tqdm bar or log lines.

Only rank 0 writes; on other ranks the loggers are disabled and no bar is shown.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ecamp.train.metrics_log import MetricsLogger, open_tensorboard
from ecamp.utils.logging import get_logger

# the lines a fit logs keep the training loop's logger name, as before this module split off
log = get_logger("ecamp.train.loop")


def batch_length(batch: Any) -> int | None:
    """Number of samples in a collated batch: the leading size of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else None
    values = (
        batch.values()
        if isinstance(batch, dict)
        else batch
        if isinstance(batch, (list, tuple))
        else ()
    )
    for v in values:
        n = batch_length(v)
        if n is not None:
            return n
    return None


class TrainingProgress:
    """The training and evaluation logs of one fit (``resumed``: the step a resume starts at)."""

    def __init__(
        self, output_dir: Path, main: bool, tensorboard: bool, resumed: int | None
    ) -> None:
        self.tb = open_tensorboard(output_dir / "tensorboard", resumed) if tensorboard else None
        self.train_log = MetricsLogger(
            output_dir,
            "metrics.csv",
            tb_prefix="train",
            enabled=main,
            resume_step=resumed,
            tb_writer=self.tb,
        )
        self.eval_log = MetricsLogger(
            output_dir,
            "eval.csv",
            tb_prefix="eval",
            enabled=main,
            resume_step=resumed,
            tb_writer=self.tb,
        )
        self.bar: Any = None

    def show_bar(self, step: int, stop_step: int) -> None:
        """A tqdm bar of optimizer steps instead of one log line per logged step."""
        from tqdm.auto import tqdm

        self.bar = tqdm(total=stop_step, initial=step, unit="step", dynamic_ncols=True)

    def step_done(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def log_train(
        self,
        step: int,
        stop_step: int,
        epoch: int,
        lr: float,
        loss: float,
        values: dict[str, float],
        images_per_s: float,
    ) -> None:
        """One metrics.csv row of interval means, and the bar's postfix or a log line."""
        row = {"step": step, "epoch": epoch, "lr": lr, "loss": loss}
        row.update({k: v for k, v in values.items() if k != "loss"})
        row["images_per_s"] = images_per_s
        self.train_log.log(row)
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{images_per_s:.1f}", refresh=False
            )
        else:
            log.info(
                "step %d/%d epoch %d loss %.4f lr %.3e %.1f img/s",
                step,
                stop_step,
                epoch,
                loss,
                lr,
                images_per_s,
            )

    def log_eval(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        """One eval.csv row, and a log line unless validation was skipped (all NaN)."""
        self.eval_log.log({"step": step, "epoch": epoch, **metrics})
        if any(math.isfinite(v) for v in metrics.values()):
            log.info(
                "epoch %d eval: %s",
                epoch,
                ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()),
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.train_log.close()
        self.eval_log.close()
        if self.tb is not None:
            self.tb.close()
