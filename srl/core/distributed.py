"""Several processes, one run: every rank runs the whole loop; generation is split, files are written once.

A multi-process run (``torchrun``, SLURM's ``srun``, or ``python -m srl.run trainer.devices=N`` which
re-launches itself through torchrun, ``srl/run.py``) starts one process per device. Each runs every
stage of the loop in the same order, and:

* **Generation is sharded.** ``generation.sample_chat`` and ``judge.score_first`` give each rank the
  items ``rank, rank + world, ...`` of the call and gather the results back into the call's order, so
  every rank holds the same records. Each item samples with its own seed, so the records are the
  ones one process writes (``tests/integration/test_distributed.py``).
* **Training is data-parallel** through the Lightning strategy of ``conf/trainer`` (DDP, FSDP,
  DeepSpeed), which finds the process group initialised here.
* **Files are written by rank 0 alone** (``rundir.atomic_write_text``, ``PartialJsonl``, model
  saves, the manifest); ranks wait at ``barrier`` where one reads what another wrote (a finished
  stage, a finished resumable file).

With one process every function here is a no-op, and nothing imports ``torch.distributed`` state.
"""

from __future__ import annotations

import datetime
import logging
import os
from typing import Any, Callable, Sequence, TypeVar

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


T = TypeVar("T")


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    for key in ("LOCAL_RANK", "SLURM_LOCALID"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def local_device() -> torch.device:
    """This process's device: ``cuda:<local rank>`` when CUDA is there, else the CPU."""
    return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")


def launched_world_size() -> int:
    """Processes the launcher started (torchrun's WORLD_SIZE, SLURM's SLURM_NTASKS), 1 without one."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    if "SLURM_NTASKS" in os.environ and "SLURM_PROCID" in os.environ and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        return int(os.environ["SLURM_NTASKS"])
    return 1


def init_from_env(timeout_minutes: int = 120) -> bool:
    """Join the launcher's process group (NCCL on CUDA, gloo on CPU); False when there is one process.

    torchrun sets RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT; under SLURM, Lightning's SLURM environment
    gives rank, world size and the main node's address. The timeout is long because ranks wait at a
    barrier while rank 0 saves a model (minutes for a 70B one).
    """
    if active() or launched_world_size() <= 1:
        return active()
    if "WORLD_SIZE" not in os.environ:  # SLURM without torchrun
        from lightning.fabric.plugins.environments import SLURMEnvironment

        env = SLURMEnvironment()
        os.environ.update(
            RANK=str(env.global_rank()), WORLD_SIZE=str(env.world_size()), LOCAL_RANK=str(env.local_rank()),
            MASTER_ADDR=env.main_address, MASTER_PORT=str(env.main_port),
        )
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    log.info("rank %d of %d (%s, local rank %d)", rank(), world_size(), backend, local_rank())
    return True


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast(value: T) -> T:
    """Rank 0's ``value`` on every rank (any picklable object)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard_indices(n: int, keys: Sequence[Any] | None = None) -> list[int]:
    """This rank's items of ``n``. Without ``keys``: ``rank, rank + world, ...`` (strided, so long and
    short items mix). With ``keys``: items with equal keys stay on one rank (the N candidates of a
    prompt share one prefill in the engine), distinct keys dealt out in order of first appearance."""
    if keys is None:
        return list(range(rank(), n, world_size()))
    group: dict[Any, int] = {}
    for key in keys:
        group.setdefault(key, len(group))
    return [i for i, key in enumerate(keys) if group[key] % world_size() == rank()]


def gather_shards(n: int, indices: Sequence[int], local: Sequence[Any]) -> list[Any]:
    """Every rank's ``local`` results (for its ``indices``), put back in item order on every rank."""
    if not active():
        return list(local)
    parts: list[Any] = [None] * world_size()
    dist.all_gather_object(parts, (list(indices), list(local)))
    out: list[Any] = [None] * n
    for part_indices, values in parts:
        for i, value in zip(part_indices, values):
            out[i] = value
    return out


def sharded(fn: Callable[[list[int]], list[T]], n: int, keys: Sequence[Any] | None = None) -> list[T]:
    """``fn`` over this rank's indices of ``n`` items (``shard_indices``), gathered in order on every rank."""
    if not active():
        return fn(list(range(n)))
    indices = shard_indices(n, keys)
    return gather_shards(n, indices, fn(indices) if indices else [])


def on_main(fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on rank 0 (a write), then wait until it is done on every rank; its value is broadcast."""
    value = fn() if is_main() else None
    barrier()
    return broadcast(value)
