"""Images/s of one fine-tuning train step (forward + backward + AdamW) per task at full size.

ViT-B/16 at 224 (12 blocks; ``--depth 8`` for the paper's encoder), random weights and
random inputs, so only the compute is timed.  Prints one JSON line per task.  Run briefly:

    python benchmarks/finetune_step.py --steps 3 --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def batch_for(task: str, bsz: int, size: int, device: torch.device) -> dict:
    b = {"image": torch.randn(bsz, 3, size, size, device=device)}
    if task == "cls":
        b["label"] = torch.randint(0, 2, (bsz, 14), device=device).float()
    elif task == "seg":
        b["mask"] = (torch.rand(bsz, 1, size, size, device=device) > 0.9).float()
    else:
        xy = torch.rand(bsz, 2, 2, device=device) * size * 0.6
        b["boxes"] = torch.cat([xy, xy + size * 0.3], -1)
        b["num_boxes"] = torch.full((bsz,), 2, device=device)
    return b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="cls,seg,det")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per task (after 1 warm-up)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", help="auto | bf16 | fp16 | fp32")
    args = ap.parse_args()

    from ecamp.train.distributed import resolve_device
    from ecamp.train.finetune import FinetuneConfig, build_model
    from ecamp.train.precision import resolve_precision

    device = resolve_device(args.device)
    amp = resolve_precision(args.precision, device)
    for task in args.tasks.split(","):
        import timm

        enc = timm.create_model(
            "vit_base_patch16_224",
            pretrained=False,
            num_classes=0,
            img_size=args.img_size,
            depth=args.depth,
        )
        cfg = FinetuneConfig(task=task)
        cfg.model.img_size = args.img_size
        model = build_model(cfg, enc, 14, True).to(device).train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        batch = batch_for(task, args.batch_size, args.img_size, device)

        def step(model=model, batch=batch, opt=opt) -> None:
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss = model(batch)["loss"]
            loss.float().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        print(
            json.dumps(
                {
                    "benchmark": "finetune_step",
                    "task": task,
                    "device": str(device),
                    "precision": str(amp or "fp32"),
                    "img_size": args.img_size,
                    "depth": args.depth,
                    "batch_size": args.batch_size,
                    "steps": args.steps,
                    "images_per_s": round(args.batch_size * args.steps / dt, 2),
                    "threads": torch.get_num_threads(),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
