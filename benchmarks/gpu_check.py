"""The pieces of ``benchmarks/gpu_check.sh``; each prints JSON lines on stdout, one per check.

    python benchmarks/gpu_check.py steps --device cuda      # peak, paper, release, fine-tune
    python benchmarks/gpu_check.py compiled --device cuda   # peak, paper torch.compile'd
    python benchmarks/gpu_check.py smoke --device cuda --output DIR   # ecamp pretrain + resume

Device-agnostic: ``--device cpu --smoke`` runs every code path in a minute (tiny preset,
small batches, an injected out-of-memory to exercise the batch search's recovery).

- ``matmul_peak``: the measured bf16 (and fp32) peak of a square matmul (8192 on CUDA).
- ``pretrain_step``: the largest batch that fits up to ``--max-batch`` (doubling from
  ``--start-batch``; an out-of-memory step ends the search and frees its memory), then the
  timed steps at that batch: images/s, FLOPs of a step counted as ``pretrain_step.py`` does
  (``FlopCounterMode`` over forward + backward) and MFU = achieved FLOP/s / measured peak.
- ``finetune_step``: a classification fine-tuning step (ViT-B/16 at 224 + linear head, BCE
  over 14 labels, AdamW), same counting.
- ``pretrain_smoke``: ``ecamp pretrain`` (the embedded tiny phantom-world run) for N steps
  with a checkpoint at N/2, then the same command again resuming to N, against one straight
  N-step run: the resumed run must start at step N/2, end at N and log the same losses.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pretrain_step as ps  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record, default=str), flush=True)


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_check(device: torch.device, n: int) -> dict[str, Any]:
    """bf16 / fp32 matmul peaks in TFLOP/s (bf16 skipped on a CPU that emulates it)."""
    pk = ps.peaks(device, use_bf16=False, n=n)
    return {
        "check": "matmul_peak",
        "device": device_name(device),
        "n": n or (8192 if device.type == "cuda" else 2048),
        "bf16_tflops": None if pk["bf16_peak_gflops"] is None else pk["bf16_peak_gflops"] / 1e3,
        "fp32_tflops": pk["fp32_peak_gflops"] / 1e3,  # type: ignore[operator]
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return (
        f"{device} ({torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads)"
    )


def search_batch(
    preset: str,
    device: torch.device,
    precision: str,
    start: int,
    largest: int,
    fake_oom_above: int = 0,
) -> tuple[int, list[dict[str, Any]], Any]:
    """Largest batch (doubling from ``start`` up to ``largest``) whose train step fits.

    Returns the batch (0 when even ``start`` does not fit), the tries, and the built model.
    ``fake_oom_above`` > 0 raises an out-of-memory above that batch (CPU tests of the path).
    """
    from ecamp.train.precision import resolve_precision

    built = ps.build(preset, device)
    cfg, model, opt = built
    amp = resolve_precision(precision, device)
    best, tries, b = 0, [], start
    while b <= largest:
        oom = False
        try:
            if fake_oom_above and b > fake_oom_above:
                raise torch.OutOfMemoryError(f"injected out of memory at batch {b}")
            data = ps.make_batch(cfg, b, "masked", device)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
                loss = model(data)["loss"]
            loss.backward()
            opt.step()
            ps._sync(device)
            del data, loss
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not is_oom(err):
                raise
            oom = True
        # the exception's frames are gone here, so its tensors can be freed
        opt.zero_grad(set_to_none=True)
        free(device)
        tries.append({"batch": b, "fits": not oom})
        if oom:
            break
        best, b = b, b * 2
    return best, tries, built


def pretrain_check(
    preset: str,
    device: torch.device,
    args: argparse.Namespace,
    peak_tflops: float | None,
    compile_mode: str | None,
) -> dict[str, Any]:
    """Batch search in eager mode, then the timed steps (eager or compiled) at that batch."""
    t0 = time.perf_counter()
    batch, tries, built = search_batch(
        preset, device, args.precision, args.start_batch, args.max_batch, args.fake_oom_above
    )
    if not batch:
        return {
            "check": "pretrain_step",
            "preset": preset,
            "error": "no batch fits",
            "tries": tries,
        }
    search_s = time.perf_counter() - t0
    res: dict[str, Any] | None = None
    while batch >= 1:  # a compiled step may need more memory than the eager one
        try:
            res = ps.measure_step(
                preset,
                batch,
                device,
                precision=args.precision,
                steps=args.steps,
                warmup=args.warmup,
                compile_mode=compile_mode,
                verbose=False,
                built=built,
            )
            break
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not is_oom(err):
                raise
        free(device)
        tries.append({"batch": batch, "fits": False, "timed": True})
        batch //= 2
    if res is None:
        return {"check": "pretrain_step", "preset": preset, "error": "timed step ran out of memory"}
    tflops = res["achieved_gflops"] / 1e3
    out = {
        "check": "pretrain_step",
        "preset": preset,
        "device": device_name(device),
        "batch": res["batch"],
        "max_batch_tried": args.max_batch,
        "images_per_s": res["images_per_s"],
        "s_per_step": res["s_per_step_median"],
        "tflops": round(tflops, 3),
        "mfu": round(tflops / peak_tflops, 4) if peak_tflops else None,
        "flops_per_image": res["flops_per_step"] // res["batch"],
        "precision": res["precision"],
        "compile": res["compile"],
        "warmup_s": res["warmup_s"],
        "search_s": round(search_s, 1),
        "tries": tries,
        "losses": res["losses"],
    }
    if "peak_gpu_mem_gib" in res:
        out["peak_gpu_mem_gib"] = res["peak_gpu_mem_gib"]
    del built
    free(device)
    return out


def finetune_check(
    device: torch.device, args: argparse.Namespace, peak_tflops: float | None
) -> dict[str, Any]:
    """A classification fine-tuning step (ViT-B/16, 224 px, 14 labels) at ``--finetune-batch``."""
    import timm
    from torch.utils.flop_counter import FlopCounterMode

    from ecamp.train.finetune import FinetuneConfig, build_model
    from ecamp.train.precision import resolve_precision

    amp = resolve_precision(args.precision, device)
    size, depth = (64, 2) if args.smoke else (224, 12)
    torch.manual_seed(0)
    enc = timm.create_model(
        "vit_base_patch16_224",
        pretrained=False,
        num_classes=0,
        img_size=size,
        depth=depth,
    )
    cfg = FinetuneConfig(task="cls")
    cfg.model.img_size = size
    model = build_model(cfg, enc, 14, True).to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    b = args.finetune_batch
    batch = {
        "image": torch.randn(b, 3, size, size, device=device),
        "label": torch.randint(0, 2, (b, 14), device=device).float(),
    }

    def step() -> float:
        with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            loss = model(batch)["loss"]
        loss.float().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    cast = torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None)
    with FlopCounterMode(display=False) as counter, cast:
        model(batch)["loss"].float().backward()
    opt.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()
    for _ in range(max(args.warmup, 1)):
        step()
    ps._sync(device)
    t = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    ps._sync(device)
    dt = (time.perf_counter() - t) / args.steps
    tflops = flops / dt / 1e12
    out = {
        "check": "finetune_step",
        "task": "cls",
        "device": device_name(device),
        "img_size": size,
        "depth": depth,
        "batch": b,
        "images_per_s": round(b / dt, 2),
        "s_per_step": round(dt, 4),
        "tflops": round(tflops, 3),
        "mfu": round(tflops / peak_tflops, 4) if peak_tflops else None,
        "precision": "bf16" if amp == torch.bfloat16 else "fp32" if amp is None else str(amp),
        "loss": round(loss, 4),
    }
    return out  # the model and its batch go with this frame


def guarded(name: str, fn: Any, *a: Any) -> dict[str, Any] | None:
    """Run one check; a failure becomes a JSON line with the error, the next check still runs."""
    try:
        return fn(*a)
    except Exception as err:  # noqa: BLE001 - every failure must end as a JSON line
        emit({"check": name, "error": f"{type(err).__name__}: {err}"[:2000]})
        return None


def run_steps(args: argparse.Namespace, device: torch.device, compiled: bool) -> int:
    pk = guarded("matmul_peak", peak_check, device, args.peak_n)
    if pk:
        emit(pk)
    from ecamp.train.precision import resolve_precision

    bf16 = resolve_precision(args.precision, device) == torch.bfloat16
    peak = (pk["bf16_tflops"] if bf16 else pk["fp32_tflops"]) if pk else None
    presets = [args.preset_small or "paper"]
    if compiled:
        r = guarded("pretrain_step", pretrain_check, presets[0], device, args, peak, "default")
        if r:
            emit(r)
        return 0
    for preset in [presets[0], args.release_preset or "release"]:
        r = guarded("pretrain_step", pretrain_check, preset, device, args, peak, None)
        if r:
            emit(r)
    r = guarded("finetune_step", finetune_check, device, args, peak)
    if r:
        emit(r)
    return 0


def _losses(path: Path) -> dict[int, float]:
    with path.open(newline="") as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f) if r.get("loss")}


def run_smoke(args: argparse.Namespace, device: torch.device) -> int:
    """``ecamp pretrain`` N steps with a checkpoint at N/2 and a resume, against a straight run."""
    n = args.smoke_steps
    half = n // 2
    out = Path(args.output)
    # this checkout's ecamp, whatever is installed
    paths = [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    common = [
        f"train.device={device.type}",
        f"train.ckpt_every={half}",
        "train.log_every=1",
        "train.progress=false",
        "train.tensorboard=false",
    ]

    def pretrain(folder: Path, steps: int) -> tuple[dict[str, Any], str, float]:
        cmd = [sys.executable, "-m", "ecamp.cli", "pretrain", "--output", str(folder)]
        t = time.perf_counter()
        p = subprocess.run(
            [*cmd, *common, f"train.max_steps={steps}"], env=env, capture_output=True, text=True
        )
        if p.returncode:
            raise RuntimeError(f"ecamp pretrain failed ({p.returncode}): {p.stderr[-1500:]}")
        summary = json.loads((folder / "train_summary.json").read_text())
        return summary, p.stderr, time.perf_counter() - t

    try:
        first, _, s1 = pretrain(out / "resumed", half)
        second, log2, s2 = pretrain(out / "resumed", n)
        straight, _, s3 = pretrain(out / "straight", n)
    except Exception as err:  # noqa: BLE001
        emit({"check": "pretrain_smoke", "error": f"{type(err).__name__}: {err}"[:2000]})
        return 1
    resumed_at = f"step {half}," in "".join(
        line for line in log2.splitlines() if "resumed from" in line
    )
    a, b = _losses(out / "resumed" / "metrics.csv"), _losses(out / "straight" / "metrics.csv")
    common_steps = sorted(set(a) & set(b))
    diff = max((abs(a[s] - b[s]) for s in common_steps), default=float("nan"))
    ok = (
        first["steps"] == half
        and second["steps"] == n
        and straight["steps"] == n
        and resumed_at
        and common_steps[-1:] == [n]
        and diff <= args.loss_tolerance
    )
    emit(
        {
            "check": "pretrain_smoke",
            "device": device_name(device),
            "ok": bool(ok),
            "steps": n,
            "resumed_from_step": half if resumed_at else None,
            "steps_after_resume": second["steps"],
            "straight_steps": straight["steps"],
            "loss_max_abs_diff": diff,
            "loss_tolerance": args.loss_tolerance,
            "logged_steps_compared": len(common_steps),
            "final_loss": b.get(n),
            "wall_s": [round(s1, 1), round(s2, 1), round(s3, 1)],
        }
    )
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("part", choices=("steps", "compiled", "smoke"), help="which checks to run")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="quick CPU test of every path: tiny preset, batches 1..4 with an injected OOM "
        "above 2, 64-px fine-tune, small matmul peak, 4-step pretrain smoke run",
    )
    ap.add_argument("--precision", default="auto", help="train.precision of the steps")
    ap.add_argument("--start-batch", type=int, default=8, help="first batch of the search")
    ap.add_argument("--max-batch", type=int, default=256, help="largest batch tried")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per check")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    ap.add_argument("--finetune-batch", type=int, default=256, help="fine-tuning batch")
    ap.add_argument("--peak-n", type=int, default=0, help="matmul size (0: 8192 GPU, 2048 CPU)")
    ap.add_argument("--output", default="runs/gpu_check", help="smoke: run folders go here")
    ap.add_argument("--smoke-steps", type=int, default=20, help="smoke: steps of the pretrain run")
    ap.add_argument(
        "--loss-tolerance",
        type=float,
        default=1e-3,
        help="smoke: largest |loss difference| between resumed and straight runs",
    )
    ap.add_argument("--fake-oom-above", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--preset-small", default="", help=argparse.SUPPRESS)
    ap.add_argument("--release-preset", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    from ecamp.train.distributed import resolve_device

    device = resolve_device(args.device)
    if args.smoke:
        args.start_batch, args.max_batch, args.fake_oom_above = 1, 4, 2
        args.steps, args.warmup, args.finetune_batch, args.peak_n = 1, 1, 2, 256
        args.smoke_steps = min(args.smoke_steps, 4)
        args.preset_small = args.release_preset = "tiny"
    if args.part == "smoke":
        return run_smoke(args, device)
    return run_steps(args, device, compiled=args.part == "compiled")


if __name__ == "__main__":
    raise SystemExit(main())
