"""Full-size ECAMP pre-training steps on synthetic tensors; prints ONE JSON line on stdout.

    python benchmarks/pretrain_step.py --preset release --batch 4 --steps 5

Each step is forward + backward + AdamW step of :class:`ecamp.models.ecamp.ECAMPModel`
on tensors shaped like the release's batches: 448x448 images (the model down-samples them
to 224 itself), 256 text tokens, all real (attention mask all ones), a 12x12-patch SR
window per image.  Reported: median seconds per step, images/s, FLOPs of one step
(``torch.utils.flop_counter.FlopCounterMode`` over forward+backward), achieved GFLOP/s,
peak RSS, and the bf16 / fp32 peak of a 2048x2048 matmul on the same threads (8192x8192 on
CUDA), so the step's efficiency reads against what this machine can do.

``--precision auto`` (the default) is what ``train.precision=auto`` trains with: fp32 on a
CPU, bf16 on a GPU that has it.  On a CPU without bf16 instructions (``ecamp.utils.cpu``;
AVX2-only x86, where a bf16 matmul is hundreds of times slower than fp32) the bf16 peak is not
measured (``bf16_peak_gflops`` null) unless the step itself runs in bf16, which then warns.

Where the arithmetic differs from the authors' release (same model, same losses):
- MLM: the 30k-vocabulary projection runs only at the scored positions (labels != -100;
  ``--labels masked``, ~75% of the 256 tokens as the entity-centred masking gives), where
  the release projects and scores every position (its labels are never -100).
  ``--labels all`` reproduces the release's scoring (all positions labelled).
- No per-sample Python loops: the SR window mask is built by broadcasting (the release
  loops over the batch and builds pixel masks with ``kron`` on full images); the MIM loss
  is computed in patch space instead of multiplying whole images by pixel masks.
- bf16 autocast with ``--precision bf16`` (``fp32`` turns it off); losses are in fp32.
- Fused attention (``scaled_dot_product_attention``) in the ViT encoder/decoder (timm);
  the release's BERT used eager attention.
- Text-side dropout (p = 0.1 on hidden states and attention probabilities, as the release):
  on a CPU each mask element takes 16 bits of a 64-bit random draw instead of one 32-bit
  Mersenne-Twister draw (``ecamp.models.dropout``), so p is 0.1 rounded to a multiple of
  2**-16 (0.100006) and the mask stream differs; the attention with dropout is the math form
  (softmax in fp32), which is what sdpa itself runs on a CPU when dropout is on.  On CUDA
  torch's fused dropout and sdpa are used unchanged.
- The MLM cross-entropy computes its gradient in its forward pass, in the one softmax buffer
  (``ecamp.models.cross_entropy``), instead of the three other (scored tokens x 30k) buffers
  of ``F.cross_entropy`` + backward; same loss and gradient up to rounding.
- The BERT pooler that the release builds and evaluates (and never uses) is not built.
- AdamW is the training loop's (``ecamp.train.optimizer.build_optimizer``): fused on CPU and CUDA.
- On a CPU, glibc keeps freed memory for reuse (``ecamp.utils.allocator``, as the training
  loop does on a CPU), so re-allocated gradients and activations do not page-fault each step;
  ``--malloc default`` measures without it.  This changes no arithmetic.
- ``--compile`` (= ``train.compile=true``) runs the model through ``torch.compile``: the same
  arithmetic, with the elementwise work between the matmuls (dropout, LayerNorm, GELU, the
  bf16 casts, the loss) fused into generated kernels.  The one-off compile time is reported
  as ``warmup_s`` and not timed.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from typing import Any

import torch

RELEASE_S_PER_STEP = 6.1  # release model, batch 4, fp32, on the AVX-512 CPU of the README table;
# speedup_vs_release is only meaningful there: elsewhere time the release side by side
RELEASE_GFLOP_PER_STEP = 541.0


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 0, reps: int = 6) -> float:
    """GFLOP/s of an n x n matmul in ``dtype``, best of ``reps`` (n=0: 2048 CPU, 8192 GPU)."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bf16_is_native(device: torch.device) -> bool:
    """Whether bf16 matmuls on ``device`` run on bf16 instructions (CPU) / hardware (CUDA)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        from ecamp.utils.cpu import cpu_has_native_bf16

        return cpu_has_native_bf16()
    return True


def peaks(device: torch.device, use_bf16: bool, n: int = 0) -> dict[str, float | None]:
    """The bf16 and fp32 matmul peaks; bf16 is skipped where it is emulated and not used."""
    bf16: float | None = None
    if bf16_is_native(device):
        bf16 = matmul_peak(torch.bfloat16, device, n)
    elif use_bf16:  # emulated: a small matrix, or this alone would take minutes
        bf16 = matmul_peak(torch.bfloat16, device, 256, reps=2)
    return {"bf16_peak_gflops": bf16, "fp32_peak_gflops": matmul_peak(torch.float32, device, n)}


def make_batch(cfg, batch: int, labels: str, device: torch.device, seed: int = 0) -> dict:
    """Synthetic tensors with the release's shapes."""
    g = torch.Generator().manual_seed(seed)
    n, L = batch, cfg.max_text_len
    ids = torch.randint(5, cfg.vocab_size, (n, L), generator=g)
    lab = ids.clone()
    if labels == "masked":
        lab[torch.rand(n, L, generator=g) >= 0.75] = -100
    grid = cfg.img_size // cfg.patch_size
    hi = max(grid - cfg.sr_window_patches, 0) + 1
    out = {
        "image_hr": torch.randn(n, cfg.in_chans, cfg.hr_size, cfg.hr_size, generator=g),
        "input_ids": ids,
        "attention_mask": torch.ones(n, L, dtype=torch.long),
        "mlm_labels": lab,
        "mlm_weights": torch.rand(n, L, generator=g) + 0.5,
        "guidance_window": torch.randint(0, hi, (n, 2), generator=g),
        "guidance": torch.rand(n, 1, cfg.hr_size, cfg.hr_size, generator=g),
    }
    return {k: v.to(device) for k, v in out.items()}


def build(preset: str, device: torch.device) -> tuple[Any, torch.nn.Module, torch.optim.Optimizer]:
    """``(cfg, model, optimizer)`` of ``preset`` on ``device``, seeded: what one run trains."""
    from ecamp.config import TrainConfig, model_config
    from ecamp.models.ecamp import ECAMPModel
    from ecamp.train.optimizer import build_optimizer

    torch.manual_seed(0)
    cfg = model_config(preset)
    model = ECAMPModel(cfg).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    # the training loop's optimizer (fused AdamW on CPU and CUDA), at the release's settings
    train_cfg = TrainConfig(lr=1.5e-4, weight_decay=0.05, betas=(0.9, 0.95))
    return cfg, model, build_optimizer(train_cfg, [{"params": params}], device)


def measure_step(
    preset: str,
    batch: int,
    device: torch.device,
    *,
    precision: str = "auto",
    steps: int = 5,
    warmup: int = 1,
    labels: str = "masked",
    compile_mode: str | None = None,
    verbose: bool = True,
    profile: int = 0,
    built: tuple[Any, torch.nn.Module, torch.optim.Optimizer] | None = None,
) -> dict[str, Any]:
    """Time ``steps`` pre-training steps of ``preset`` at ``batch``; FLOPs of one step.

    ``precision`` is a ``train.precision`` value (resolved as the training loop does).
    ``compile_mode`` None runs eager, else ``torch.compile(mode=compile_mode)``.
    ``profile`` > 0 profiles one more step and prints that many ops by self time to stderr.
    ``built``: a ``(cfg, model, optimizer)`` from :func:`build` to reuse (batch searches).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from ecamp.train.precision import resolve_precision

    amp = resolve_precision(precision, device)
    cfg, model, opt = built if built is not None else build(preset, device)
    data = make_batch(cfg, batch, labels, device)
    run_model = torch.compile(model, mode=compile_mode) if compile_mode else model

    def autocast() -> Any:
        return torch.autocast(
            device_type=device.type, dtype=amp or torch.bfloat16, enabled=amp is not None
        )

    def step() -> dict[str, float]:
        opt.zero_grad(set_to_none=True)
        with autocast():
            out = run_model(data)
        out["loss"].backward()
        opt.step()
        return {k: float(v.detach()) for k, v in out.items()}

    # FLOPs of forward + backward (the optimizer's elementwise work is not counted)
    with FlopCounterMode(display=False) as counter:
        opt.zero_grad(set_to_none=True)
        with autocast():
            model(data)["loss"].backward()
    flops = counter.get_total_flops()
    opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    for _ in range(max(warmup, 2 if compile_mode else 0)):
        step()
    _sync(device)
    warmup_s = time.perf_counter() - t0
    times, losses = [], {}
    faults = -resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for i in range(steps):
        _sync(device)
        t = time.perf_counter()
        losses = step()
        _sync(device)
        times.append(time.perf_counter() - t)
        if verbose:
            print(f"step {i}: {times[-1]:.3f} s {losses}", file=sys.stderr)
    faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with torch_profile(activities=acts) as prof:
            step()
            _sync(device)
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=profile), file=sys.stderr)
    med = statistics.median(times)
    result = {
        "preset": preset,
        "batch": batch,
        "steps": steps,
        "s_per_step_median": round(med, 4),
        "images_per_s": round(batch / med, 4),
        "flops_per_step": int(flops),
        "achieved_gflops": round(flops / med / 1e9, 2),
        "precision": "bf16" if amp == torch.bfloat16 else "fp16" if amp else "fp32",
        "compile": compile_mode or False,
        "warmup_s": round(warmup_s, 1),
        "labels": labels,
        "minor_faults_per_step": round(faults / max(steps, 1)),
        "device": str(device),
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "s_per_step": [round(t, 4) for t in times],
        "losses": {k: round(v, 4) for k, v in losses.items()},
    }
    if device.type == "cuda":
        result["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="release", help="model preset: tiny | paper | release")
    ap.add_argument("--batch", type=int, default=4, help="images per step")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    ap.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="autocast dtype; auto: what train.precision=auto trains with (fp32 on a CPU)",
    )
    ap.add_argument(
        "--labels",
        choices=("masked", "all"),
        default="masked",
        help="masked: ~75%% of tokens scored (paper); all: every token (release)",
    )
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model (as train.compile=true does); compile time is reported "
        "apart (warmup_s) and excluded from the timed steps",
    )
    ap.add_argument(
        "--compile-mode",
        default="default",
        help="torch.compile mode with --compile: default | max-autotune-no-cudagraphs | ...",
    )
    ap.add_argument(
        "--threads", type=int, default=0, help="torch threads (0: leave torch's default)"
    )
    ap.add_argument(
        "--malloc",
        choices=("keep", "default"),
        default="keep",
        help="keep: glibc keeps freed memory (what the training loop sets on a CPU); "
        "default: glibc's own thresholds",
    )
    ap.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="profile one more step (torch.profiler) and print its N costliest ops by self time",
    )
    ap.add_argument(
        "--peak-n", type=int, default=0, help="matmul size of the peaks (0: 2048 CPU, 8192 GPU)"
    )
    args = ap.parse_args(argv)

    from ecamp.train.distributed import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    malloc_kept = False
    if args.malloc == "keep" and device.type == "cpu":
        from ecamp.utils.allocator import keep_freed_memory

        malloc_kept = keep_freed_memory()
    res = measure_step(
        args.preset,
        args.batch,
        device,
        precision=args.precision,
        steps=args.steps,
        warmup=args.warmup,
        labels=args.labels,
        compile_mode=args.compile_mode if args.compile else None,
        profile=args.profile,
    )
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    use_bf16 = res["precision"] == "bf16"
    pk = peaks(device, use_bf16, args.peak_n)
    peak = pk["bf16_peak_gflops"] if use_bf16 else pk["fp32_peak_gflops"]
    med = res["s_per_step_median"]
    result = {
        "s_per_step_median": med,
        "images_per_s": res["images_per_s"],
        "flops_per_step": res["flops_per_step"],
        "achieved_gflops": res["achieved_gflops"],
        "peak_rss_gib": round(peak_rss, 3),
        **{k: (round(v, 2) if v is not None else None) for k, v in pk.items()},
        "bf16_native": bf16_is_native(device),
        "fraction_of_peak": round(res["achieved_gflops"] / peak, 4) if peak else None,
        "speedup_vs_release": round(RELEASE_S_PER_STEP / med, 3),
        "release_gflop_per_step": RELEASE_GFLOP_PER_STEP,
        "malloc_kept": malloc_kept,
        "threads": torch.get_num_threads(),
        **{k: v for k, v in res.items() if k not in ("s_per_step_median", "images_per_s")},
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
