"""Data parallelism over samples on torch.distributed, for evaluate, generate and train-estimator's collection.

A launcher (``torchrun --nproc-per-node N -m vattr_bench.cli …`` or ``accelerate launch -m vattr_bench.cli …``)
starts one process per device and sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; `Ranks.from_env`
joins the process group from them (NCCL for CUDA devices, gloo for CPU). Each rank takes every world_size-th
sample, writes what it scores to its own shard file (so no two processes append to one file), and rank 0 merges
the shards when all are done. A run killed on any rank resumes on the next launch, with any number of ranks:
what is in the merged file or in any shard counts as done.
"""
from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .results import RECORD_KEYS, read_records
from .storage import write_text_atomically

# ranks wait for each other at the end of a run: long enough for the slowest rank's share of a big run
BARRIER_TIMEOUT = datetime.timedelta(hours=48)


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, device: str = "cpu") -> "Ranks":
        """This process's place in a launched run (joining the process group the first time), or a single rank."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        import torch.distributed as dist

        ranks = cls(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
        if not dist.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            if backend == "nccl":
                import torch

                torch.cuda.set_device(ranks.local_rank)
            dist.init_process_group(backend, timeout=BARRIER_TIMEOUT)
        return ranks

    def device(self, device: str) -> str:
        """Each rank its own accelerator: ``cuda`` becomes ``cuda:LOCAL_RANK``; an explicit index or the CPU stays."""
        return f"{device}:{self.local_rank}" if self.distributed and device in ("cuda", "xpu", "npu") else device

    def shard(self, items: list) -> list:
        """This rank's share: every world_size-th item, from the rank's own index."""
        return items[self.rank::self.world_size]

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, obj) -> list:
        """Every rank's ``obj`` on every rank (a list in rank order)."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def on_main(self, action, what: str) -> None:
        """``action()`` on rank 0 alone (making and claiming an output folder), every rank learning whether it
        worked: rank 0 raises its own error, the others one naming it, so that no rank waits for a rank 0 that
        gave up."""
        problem = None
        if self.is_main:
            try:
                action()
            except (ValueError, OSError) as e:
                problem = e
        told = self.gather(None if problem is None else f"{type(problem).__name__}: {problem}")
        if problem is not None:
            raise problem
        if told[0] is not None:
            raise ValueError(f"rank 0 could not use {what}: {told[0]}")

    def shard_path(self, merged: Path) -> Path:
        """Where this rank writes the records that end in ``merged`` (the merged file itself on a single rank)."""
        if not self.distributed:
            return merged
        return merged.parent / "shards" / f"{merged.stem}.rank{self.rank}{merged.suffix}"


def read_all_records(merged: Path, required=RECORD_KEYS) -> list[dict]:
    """The records of a run's merged file and of every shard a launch left beside it (a run killed before its
    merge), each record once (the merged copy first); a record is named by its ``required`` keys."""
    records, seen = [], set()
    for path in [merged, *sorted((merged.parent / "shards").glob(f"{merged.stem}.rank*{merged.suffix}"))]:
        for record in read_records(path, required):
            key = json.dumps({k: record.get(k) for k in sorted(required)})
            if key not in seen:
                seen.add(key)
                records.append(record)
    return records


def merge_shards(merged: Path, required=RECORD_KEYS) -> list[dict]:
    """Rank 0, after every rank is done: the shards' records appended to the merged file (replaced whole), the
    shard files removed. Returns every record."""
    records = read_all_records(merged, required)
    write_text_atomically(merged, "".join(json.dumps(r) + "\n" for r in records))
    for shard in (merged.parent / "shards").glob(f"{merged.stem}.rank*{merged.suffix}"):
        shard.unlink()
    shards = merged.parent / "shards"
    if shards.is_dir() and not any(shards.iterdir()):
        shards.rmdir()
    return records


def finish(ranks: Ranks) -> None:
    """Leave the process group at the end of a command (so the launcher sees a clean exit)."""
    if ranks.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
