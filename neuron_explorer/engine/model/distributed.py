"""Data parallelism over torch.distributed, launched by `torchrun`: each process (rank) takes every world_size-th
batch of prompts, float64 sums are added across ranks, and per-batch results travel to rank 0, which alone writes.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them the run is one process and every collective below is the
identity, so the single-process path is the same code. NCCL on GPUs (each rank takes the GPU of its LOCAL_RANK), gloo
on CPUs. Whole batches are dealt out, not prompts, so each batch is padded and computed exactly as in a single-process
run: a data-parallel result differs from a single-process one only by the order of float64 additions.

A rank that fails prints its own error and exits; the ranks waiting for it in a collective see their peer gone and
stop with `PeerFailed`, one line that points at that error (torchrun also stops them with SIGTERM, which here unwinds
like ctrl-c, so temporaries are removed).
"""

from __future__ import annotations

import atexit
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeVar

import numpy as np
import torch

from neuron_explorer.errors import UserError

T = TypeVar("T")

SHARDING = "batches dealt round-robin: batch b (of batch_size prompts, in prompt order) on rank b mod world_size"


class PeerFailed(UserError):
    """Another rank of this torchrun stopped; its own error says why."""


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mine(self, batch_index: int) -> bool:
        return batch_index % self.world_size == self.rank

    def deal(self, items: list[T], batch_size: int) -> Iterator[tuple[int, list[T]]]:
        """(batch index, batch) of this rank's batches of `items`."""
        for index, start in enumerate(range(0, len(items), batch_size)):
            if self.mine(index):
                yield index, items[start : start + batch_size]

    def count(self, n_items: int, batch_size: int) -> int:
        """How many of `n_items` fall in this rank's batches."""
        return sum(len(batch) for _, batch in self.deal(list(range(n_items)), batch_size))

    def steps(self, n_items: int, batch_size: int) -> int:
        """Batches each rank goes through, in lockstep: the busiest rank's count (others end with empty steps)."""
        return math.ceil(math.ceil(n_items / batch_size) / self.world_size)

    def device(self, requested: str) -> str:
        """The device of this rank: with several ranks on GPUs, `auto` and `cuda` mean the GPU of LOCAL_RANK."""
        if self.world_size == 1:
            return requested
        if requested in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        if requested.startswith("cuda:"):
            raise UserError(
                f"--device {requested} under torchrun would put every process on one GPU: give --device "
                f"auto or cuda, and each process takes the GPU of its LOCAL_RANK"
            )
        return requested

    def provenance(self) -> dict:
        """How the run was spread, for the file's provenance (a reader tells a data-parallel result by it)."""
        return {
            "world_size": self.world_size,
            "backend": self.backend or "none",
            "sharding": SHARDING if self.world_size > 1 else "none: one process",
        }

    def sum(self, value: np.ndarray | float) -> np.ndarray:
        """The float64 sum of `value` over the ranks, on every rank."""
        array = np.asarray(value, dtype=np.float64)
        if self.world_size == 1:
            return array
        tensor = torch.as_tensor(array.copy(), device=self._collective_device())
        _collective(torch.distributed.all_reduce, tensor)
        return tensor.cpu().numpy()

    def gather(self, value) -> list | None:
        """Every rank's `value` (picklable) on rank 0, in rank order; None on the others."""
        if self.world_size == 1:
            return [value]
        received = [None] * self.world_size if self.main else None
        _collective(torch.distributed.gather_object, value, received, dst=0)
        return received

    def in_order(self, batches: list[tuple[int, list]]) -> list:
        """Every rank's (batch index, items) joined in batch order into one list, on every rank."""
        parts = sorted((part for shared in self.share(batches) for part in shared), key=lambda part: part[0])
        return [item for _, items in parts for item in items]

    def first(self, value):
        """Rank 0's `value` on every rank (what rank 0 alone read or decided)."""
        if self.world_size == 1:
            return value
        box = [value]
        _collective(torch.distributed.broadcast_object_list, box, src=0)
        return box[0]

    def share(self, value) -> list:
        """Every rank's `value` on every rank, in rank order."""
        if self.world_size == 1:
            return [value]
        received = [None] * self.world_size
        _collective(torch.distributed.all_gather_object, received, value)
        return received

    def _collective_device(self) -> torch.device:
        return torch.device(f"cuda:{self.local_rank}") if self.backend == "nccl" else torch.device("cpu")


class BatchGather:
    """Per-batch results of every rank delivered to `receive` on rank 0 in batch order, one collective per step.

    Each rank calls `send` once per batch it computed, then `finish`, which sends empty steps until every rank has
    taken part in `ranks.steps(...)` of them: at step k rank r holds batch k·world_size + r, so rank order is batch
    order.
    """

    def __init__(self, ranks: Ranks, n_items: int, batch_size: int, receive: Callable[[object], None]):
        self.ranks, self.receive = ranks, receive
        self.remaining = ranks.steps(n_items, batch_size)

    def send(self, item) -> None:
        self.remaining -= 1
        for received in self.ranks.gather(item) or ():
            if received is not None:
                self.receive(received)

    def finish(self) -> None:
        while self.remaining > 0:
            self.send(None)


def _collective(operation: Callable, *args, **kwargs) -> None:
    started = time.perf_counter()
    try:
        operation(*args, **kwargs)
    except (RuntimeError, torch.distributed.DistError) as error:
        raise PeerFailed(
            f"rank {torch.distributed.get_rank()} stopped: another process of this torchrun failed "
            f"(its error is printed above; {type(error).__name__})"
        ) from None
    finally:
        _waited[0] += time.perf_counter() - started


_waited = [0.0]


def collective_seconds() -> float:
    """Seconds this process has spent in collectives (moving data, and waiting for slower ranks): the price of
    running data-parallel, which `compute` reports beside its stages."""
    return _waited[0]


@lru_cache(maxsize=1)
def current_ranks() -> Ranks:
    """This process's place in a torchrun launch, joining its process group the first time; one rank otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Ranks()
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
        atexit.register(_leave)
    signal.signal(signal.SIGTERM, _interrupted)  # torchrun stops the others this way when one rank fails
    return Ranks(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, backend=backend)


def _interrupted(signum, frame) -> None:
    raise KeyboardInterrupt


def leave_together() -> None:
    """Wait for every rank to reach the end of the command, then leave the process group. Rank 0 alone writes the
    records, so the others finish first; one that tore down its half of the group while rank 0 was still busy could
    abort in gloo's threads ("terminate called without an active exception"). Called only after a command returned:
    a rank that raised must not wait here for peers stuck in another collective."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _leave() -> None:
    """At exit (a rank that failed): leave the group while the interpreter is still whole."""
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
