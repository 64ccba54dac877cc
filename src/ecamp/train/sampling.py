"""The data order of a training run: reproducible whatever the number of processes or workers.

* epoch ``e`` visits a permutation drawn from ``(seed, e)``; the global batch ``j`` is
  positions ``[j*G, (j+1)*G)`` of it (``G`` = batch_size x world_size) and rank ``r`` takes
  the ``r``-th slice, so the global batch does not depend on the number of processes;
* every item reaches the dataset as ``(index, sample_seed)`` with the seed derived from
  ``(seed, epoch, position)``: augmentation is reproducible whatever the worker layout.
  Datasets that set ``accepts_seed = True`` get the tuple; others get the index, with the
  global Python/NumPy/torch RNGs seeded from the sample seed around the call;
* with item ``lengths`` (``train.group_by_length``) each window of ``GROUP_WINDOW`` global
  batches of the permutation is sorted by length and the full global batches are then
  shuffled: a batch holds items of similar length, so little of it is padding, and the order
  stays a function of ``(seed, epoch)`` only.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ecamp.config import TrainConfig
from ecamp.errors import UserError

_MASK63 = np.uint64((1 << 63) - 1)
GROUP_WINDOW = 50  # global batches sorted together by length (HF's megabatch of 50)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A well-mixed 64-bit hash of each element (vectorised; wraps modulo 2**64)."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x += np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def derive_seeds(seed: int, epoch: int, positions: np.ndarray) -> np.ndarray:
    """Per-item seeds in [0, 2**63) from (run seed, epoch, position in the epoch)."""
    base = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    base = _splitmix64(base ^ np.uint64(epoch & 0xFFFFFFFF))
    with np.errstate(over="ignore"):
        mixed = _splitmix64(base ^ positions.astype(np.uint64))
    return mixed & _MASK63


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The visiting order of epoch ``epoch`` (same on every rank)."""
    g = torch.Generator()
    g.manual_seed(int(derive_seeds(seed, epoch, np.array([n]))[0]))
    return torch.randperm(n, generator=g)


class ShardedBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields this rank's micro-batches of ``(index, sample_seed)`` for one epoch.

    ``set_epoch(e, start_batch)`` picks the epoch and the first micro-batch (resume).
    With ``drop_last`` the tail that does not fill a global batch is skipped; otherwise the
    order is padded (wrapping around) to a multiple of the world size and the last global
    batch is shorter, split equally among ranks.  ``lengths`` (one per item) groups items of
    similar length into the same global batch (see the module docstring).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        drop_last: bool = True,
        shuffle: bool = True,
        lengths: np.ndarray | None = None,
    ) -> None:
        if batch_size < 1:
            raise UserError(f"train.batch_size must be >= 1, got {batch_size}")
        if lengths is not None and len(lengths) != n:
            raise ValueError(f"lengths has {len(lengths)} entries for {n} items")
        self.lengths = None if lengths is None else np.asarray(lengths, dtype=np.int64)
        self.n, self.batch_size, self.world_size, self.rank = n, batch_size, world_size, rank
        self.seed, self.drop_last, self.shuffle = seed, drop_last, shuffle
        self.global_batch = batch_size * world_size
        if drop_last:
            self.num_batches = n // self.global_batch
            self.padded_len = self.num_batches * self.global_batch
        else:
            self.padded_len = math.ceil(n / world_size) * world_size
            self.num_batches = math.ceil(self.padded_len / self.global_batch)
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = min(max(0, start_batch), self.num_batches)

    def __len__(self) -> int:
        return self.num_batches - self.start_batch

    def epoch_items(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, sample seeds) of the whole global epoch ``epoch`` (every rank's share)."""
        if self.shuffle:
            order = epoch_permutation(self.n, self.seed, epoch)
        else:
            order = torch.arange(self.n)
        if self.padded_len > self.n:
            order = torch.cat([order, order[: self.padded_len - self.n]])
        idx = order[: self.padded_len].numpy()
        if self.lengths is not None:
            idx = self._group_by_length(idx, epoch)
        return idx, derive_seeds(self.seed, epoch, np.arange(self.padded_len))

    def _group_by_length(self, idx: np.ndarray, epoch: int) -> np.ndarray:
        """``idx`` sorted by length (longest first) in windows of GROUP_WINDOW global
        batches, then its full global batches in a shuffled order (the short tail stays last)."""
        assert self.lengths is not None
        G = self.global_batch
        w = GROUP_WINDOW * G
        out = np.concatenate(
            [
                idx[a : a + w][np.argsort(-self.lengths[idx[a : a + w]], kind="stable")]
                for a in range(0, len(idx), w)
            ]
        )
        full = len(out) // G
        g = torch.Generator()
        g.manual_seed(int(derive_seeds(self.seed, epoch, np.array([self.n + 1]))[0]))
        perm = torch.randperm(full, generator=g).numpy()
        head = out[: full * G].reshape(full, G)[perm].reshape(-1)
        return np.concatenate([head, out[full * G :]])

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        idx, seeds = self.epoch_items(self.epoch)
        G, B = self.global_batch, self.batch_size
        for j in range(self.start_batch, self.num_batches):
            lo = j * G
            per_rank = B if lo + G <= self.padded_len else (self.padded_len - lo) // self.world_size
            a = lo + self.rank * per_rank
            b = a + per_rank
            yield list(zip(idx[a:b].tolist(), seeds[a:b].tolist()))


@contextlib.contextmanager
def _seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed Python/NumPy/torch global RNGs for one call, then put them back."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed & 0xFFFFFFFF)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class SeededIndexDataset(Dataset):
    """Adapts a dataset that takes plain int indices to ``(index, sample_seed)`` items."""

    accepts_seed = True

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        with _seeded_global_rngs(seed):
            return self.dataset[index]


def _item_lengths(dataset: Any) -> np.ndarray:
    lengths = getattr(dataset, "lengths", None)
    if lengths is None:
        raise UserError(
            f"train.group_by_length needs a dataset with item lengths; "
            f"{type(dataset).__name__} has none: set train.group_by_length=false"
        )
    return np.asarray(lengths)


def training_loader(
    dataset: Dataset,
    cfg: TrainConfig,
    world_size: int,
    rank: int,
    device: torch.device,
    collate_fn: Callable | None = None,
    num_workers: int = 0,
    persistent_workers: bool = False,
) -> tuple[ShardedBatchSampler, DataLoader]:
    """This rank's sampler and the DataLoader that draws its micro-batches from ``dataset``."""
    ds: Any = dataset if getattr(dataset, "accepts_seed", False) else SeededIndexDataset(dataset)
    sampler = ShardedBatchSampler(
        len(ds),
        cfg.batch_size,
        world_size,
        rank,
        cfg.seed,
        drop_last=cfg.drop_last,
        lengths=_item_lengths(dataset) if cfg.group_by_length else None,
    )
    if sampler.num_batches == 0:
        raise UserError(
            f"the dataset has {len(ds)} samples, fewer than one global batch "
            f"({cfg.batch_size} x {world_size} processes); lower train.batch_size "
            "or set train.drop_last=false"
        )
    loader_gen = torch.Generator()
    loader_gen.manual_seed(cfg.seed)
    loader = DataLoader(
        ds,
        batch_sampler=sampler,
        collate_fn=collate_fn,
        num_workers=num_workers,
        persistent_workers=persistent_workers and num_workers > 0,
        pin_memory=device.type == "cuda",
        generator=loader_gen,  # keeps DataLoader from drawing on the global torch RNG
    )
    return sampler, loader
