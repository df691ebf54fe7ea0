"""Where training runs: the device (``--device``), mixed precision, and, under ``torchrun``,
the process group that DistributedDataParallel trains over.

One process is the common case and costs nothing here: ``Dist`` then has ``world == 1``, every
collective below returns its input, and the loader is the single-process one, so a run without
torchrun trains exactly as it did before this module existed.

Under ``torchrun --nproc_per_node N`` (it sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT)
every process runs the same command; ``init`` joins them into one process group (NCCL on CUDA,
gloo on CPU) and gives process ``LOCAL_RANK`` the GPU ``cuda:LOCAL_RANK``.

Equal results to one process, by construction:
- The global batch stays the configured one: each rank takes ``batch_size / world`` samples a
  step, and DDP averages the gradients, so a step's update is the mean over the same samples a
  single process would use. The shard is a ``DistributedSampler`` over the single-process
  loader's own shuffled order for the epoch, so global batch k holds the same samples as a
  single process's batch k (rank r takes every world-th of them; ``Dist.shard``).
- BatchNorm stays plain BatchNorm, one set of statistics per rank over its ``batch / world``
  samples: torch's SyncBatchNorm runs on GPUs only (CPU input raises), and a CPU run must be the
  same code path as a GPU one. The per-rank statistics make a DDP run differ from a single
  process by a little (test_distributed measures how little). DDP broadcasts rank 0's running
  statistics before each forward, and ``sync_state`` does once more after each epoch, so every
  rank evaluates, keeps and rolls back identical weights.
- Decisions (accept or roll back an epoch, stop early, stop on a NaN loss) are taken on values
  every rank holds identically: the all-reduced loss, and validation metrics rank 0 computes and
  broadcasts. A rank that decided alone would leave the others waiting in a collective forever.
"""
from __future__ import annotations

import atexit
import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler, Subset, TensorDataset

from edgeprune.errors import UsageError

# How long a rank waits in a collective: in ``prune`` the other ranks wait while rank 0 profiles
# and measures alone (pipeline_ranks), which takes far longer than torch's default 10-30 min.
WAIT = timedelta(hours=12)
NO_CUDA = "no CUDA device is available here (torch.cuda.is_available() is False); use --device cpu or auto"


def resolve_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N`` as a device.

    Under torchrun (``local_rank`` given) ``cuda`` and ``auto`` mean this process's own GPU,
    ``cuda:LOCAL_RANK``; an explicit ``cuda:N`` is refused there, as it would put every rank on
    one GPU (NCCL refuses that, late and obscurely)."""
    text = (name or "auto").strip().lower()
    if text == "cpu" or (text == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if text not in ("auto", "cuda") and not (text.startswith("cuda:") and text[5:].isdigit()):
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {text}: {NO_CUDA}")
    if text.startswith("cuda:") and local_rank is not None:
        raise UsageError(f"--device {text} under torchrun: each process uses cuda:LOCAL_RANK; pass --device cuda")
    index = local_rank if local_rank is not None else int(text[5:]) if ":" in text else 0
    if index >= torch.cuda.device_count():
        raise UsageError(f"--device cuda:{index}: only {torch.cuda.device_count()} CUDA device(s) here")
    return torch.device("cuda", index)


@dataclass
class Precision:
    """Mixed precision for one run: autocast to ``dtype`` (None: float32 throughout), and a
    GradScaler when that dtype is float16 (its narrow range underflows small gradients)."""

    device: torch.device
    dtype: torch.dtype | None = None
    scaler: object | None = None

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else nullcontext()

    def step(self, loss: torch.Tensor, opt: torch.optim.Optimizer) -> None:
        """Backward and optimiser step (scaled when float16)."""
        if self.scaler is None:
            loss.backward()
            opt.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(opt)
        self.scaler.update()


def precision(device: torch.device, amp: bool | None = None) -> Precision:
    """Mixed precision on CUDA unless ``amp`` is False: bfloat16 where the GPU supports it (no
    scaler needed, float32's range), else float16 with a GradScaler. On CPU training stays in
    float32: CPU autocast speeds up few convolutions and changes the numbers a CPU run gives."""
    enabled = device.type == "cuda" if amp is None else amp
    if not enabled:
        return Precision(device)
    if device.type != "cuda":
        raise UsageError(f"mixed precision (amp) needs a CUDA device; training on {device} runs in float32")
    if torch.cuda.is_bf16_supported():
        return Precision(device, torch.bfloat16)
    return Precision(device, torch.float16, torch.amp.GradScaler("cuda"))


@dataclass
class Dist:
    """This process's place in the job: rank, world size, local rank and device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, weights and reports, and prints."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank (any picklable value; others pass anything)."""
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0, device=self._comm_device())
        return box[0]

    def sync_state(self, model: nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank (BN statistics drift per rank)."""
        if self.world == 1:
            return
        with torch.no_grad():
            for t in model.state_dict().values():
                torch.distributed.broadcast(t, src=0)

    def sum(self, *values: float) -> list[float]:
        """``values`` summed over all ranks (float64, so sums of losses stay exact enough)."""
        if self.world == 1:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        torch.distributed.all_reduce(t)
        return t.tolist()

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to call in training: DDP over ``model`` when distributed, else itself."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def per_rank_batch(self, batch_size: int) -> int:
        """Each rank's share of the global ``batch_size`` (which stays the single-process one)."""
        if self.world > 1 and batch_size % self.world and self.is_main:
            print(f"edgeprune: batch size {batch_size} does not divide over {self.world} processes; "
                  f"the global batch is {max(1, batch_size // self.world) * self.world}", file=sys.stderr)
        return max(1, batch_size // self.world)

    def shard(self, single: DataLoader) -> DataLoader:
        """This rank's part of each batch of ``single``, a shuffled single-process loader.

        The order is ``single``'s own: the same generator state drives the same kind of loader
        over the indices (a DataLoader draws a seed from its generator before shuffling, so a
        plain ``randperm`` of the seed would be another order). A ``DistributedSampler`` (not
        shuffled: the order is already the epoch's) then gives rank r every world-th sample, so
        per-rank batch k holds exactly the samples of ``single``'s batch k split across ranks.
        Every rank takes the same number of steps; the tail that fills no global batch is
        dropped as ``single`` drops it."""
        n = len(single.dataset)
        g = torch.Generator()
        g.set_state(single.generator.get_state())
        indices = DataLoader(TensorDataset(torch.arange(n)), batch_size=max(1, n), shuffle=True, generator=g)
        ordered = Subset(single.dataset, next(iter(indices))[0].tolist())
        sampler = DistributedSampler(ordered, num_replicas=self.world, rank=self.rank, shuffle=False,
                                     drop_last=True)
        return DataLoader(ordered, batch_size=self.per_rank_batch(single.batch_size), sampler=sampler,
                          num_workers=0, drop_last=single.drop_last)

    def _comm_device(self) -> torch.device:
        return self.device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")


def init(device: str = "auto") -> Dist:
    """This process's ``Dist``: one process, or (WORLD_SIZE > 1, as torchrun sets) a rank of a
    process group joined here once and reused by every later training in the process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=resolve_device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if not torch.distributed.is_available():
        raise UsageError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if not torch.distributed.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=WAIT)
        atexit.register(_shutdown)
    return Dist(torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank, dev)


def _shutdown() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
