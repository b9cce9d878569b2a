"""The stream of micro-batches a rank trains on: deterministic, resumable, and prepared on a
background thread so the training thread never waits on data when the loader keeps up.

All ranks see one global sequence of samples: epoch e is an order of the whole dataset drawn from
(seed, e), and the epochs follow each other without a break (as Google's `dataset.repeat()`).
Global micro-batch g holds samples [g*B, (g+1)*B); at micro-step u, rank r takes g = u*world + r.
So the same seed and global batch give the same samples whether they are split over processes or
over accumulation steps, and a resumed run continues at micro-step u exactly.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator

import numpy as np
import torch


def shuffled(n: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of range(n) drawn from (seed, epoch) alone."""
    return np.random.default_rng([seed, epoch]).permutation(n)


class Stream:
    """Micro-batches for one rank.

    `order(epoch)` gives the dataset indices of an epoch (default: `shuffled`); `collate(samples)`
    turns a list of dataset items into a batch of tensors. A dataset with `set_epoch` is told the
    epoch of each item before it is read (load-time masking depends on it).
    """

    def __init__(self, dataset, batch_size: int, collate: Callable, seed: int = 0, rank: int = 0,
                 world_size: int = 1, order: Callable[[int], np.ndarray] | None = None, prefetch: int = 4):
        self.dataset, self.batch_size, self.collate = dataset, batch_size, collate
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.n = len(dataset)
        if self.n == 0:
            raise ValueError("the dataset is empty")
        self.order = order or (lambda epoch: shuffled(self.n, seed, epoch))
        self.prefetch = prefetch
        self._orders: dict[int, np.ndarray] = {}

    def indices(self, micro_step: int) -> list[tuple[int, int]]:
        """(epoch, dataset index) of each sample this rank reads at `micro_step`."""
        g = micro_step * self.world_size + self.rank
        out = []
        for k in range(g * self.batch_size, (g + 1) * self.batch_size):
            epoch, pos = divmod(k, self.n)
            if epoch not in self._orders:
                self._orders = {epoch: self.order(epoch)}  # one epoch's order at a time
            out.append((epoch, int(self._orders[epoch][pos])))
        return out

    def batch(self, micro_step: int):
        items = []
        for epoch, i in self.indices(micro_step):
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
            items.append(self.dataset[i])
        return self.collate(items)

    def iterate(self, start: int = 0) -> Iterator:
        """Batches for micro-steps start, start+1, ... prepared `prefetch` ahead on a thread."""
        if self.prefetch <= 0:
            u = start
            while True:
                yield self.batch(u)
                u += 1
        q: queue.Queue = queue.Queue(self.prefetch)
        stop = threading.Event()

        def put(entry: tuple) -> None:
            while not stop.is_set():
                try:
                    q.put(entry, timeout=0.1)
                    return
                except queue.Full:
                    pass

        def work() -> None:
            u = start
            try:
                while not stop.is_set():
                    put(("ok", self.batch(u)))
                    u += 1
            except BaseException as e:  # noqa: BLE001 - handed to the training thread to raise
                put(("error", e))

        thread = threading.Thread(target=work, name="bertkit-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                kind, item = q.get()
                if kind == "error":
                    raise item
                yield item
        finally:
            # Joined, not left to die with the interpreter: a daemon thread still inside torch
            # at exit can abort the process ("terminate called without an active exception").
            stop.set()
            thread.join()


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
