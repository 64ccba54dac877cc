"""Under 2-process DDP (gloo) only rank 0 writes the phantom world; rank 1 waits and reads it."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from helpers import set_ddp_env


def _worker(rank: int, world: int, port: int, out: str) -> None:
    set_ddp_env(rank, world, port)
    torch.set_num_threads(1)
    import ecamp.data.synthetic as synthetic
    from ecamp.train import distributed as du
    from ecamp.train.attention import attention_config, load_manifest

    real = synthetic.make_phantom_world
    calls: list[int] = []

    def recording(*args, **kwargs):  # what this rank wrote
        calls.append(rank)
        return real(*args, **kwargs)

    synthetic.make_phantom_world = recording
    cfg = attention_config({"data": {"synthetic_n": 16}, "train": {"device": "cpu"}})
    try:
        du.init_distributed("cpu")
        df = load_manifest(cfg, Path(out))
        report = {"calls": calls, "rows": len(df), "ids": sorted(map(str, df["id"]))}
        (Path(out) / f"rank{rank}.json").write_text(json.dumps(report))
    finally:
        du.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_attention_phantom_world_written_by_rank0_only(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["calls"] == [0] and r1["calls"] == []  # one writer
    assert r0["rows"] == r1["rows"] == 16 and r0["ids"] == r1["ids"]  # the same world
