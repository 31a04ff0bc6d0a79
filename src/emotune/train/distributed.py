"""Data-parallel training: several processes, one model replica each, gradients averaged every step.

The processes come from the launchers practitioners already run: ``torchrun`` and ``accelerate launch``
(both set ``RANK``/``WORLD_SIZE``), or ``emotune train --processes N``, which starts them through
``torch.distributed.run`` (torchrun's own entry point). The process group uses gloo on the CPU and NCCL on
GPUs (one GPU per process: ``LOCAL_RANK``).

Why gradients are averaged by hand after the step's backward passes rather than by wrapping the model in
``DistributedDataParallel``: adversarial training and R-Drop run several forward/backward passes per step,
which DDP's per-backward hooks do not fit, and the bf16 path averages the float32 master gradients. One
flattened all-reduce per step is what DDP's buckets amount to without overlap.

Every process builds the same global batches (same seed) and takes its own share (``shard``), so a run has
the same global batch, schedule and checkpoints whatever the number of processes; a checkpoint written by
one process count resumes under any other.
"""

from __future__ import annotations

import atexit
import os
import time
from typing import Any, Callable, Sequence, TypeVar

import torch
import torch.distributed as dist

from ..errors import ConfigError

T = TypeVar("T")


class Processes:
    """This process's place among the data-parallel ones. With one process (rank 0 of 1) every collective
    is a no-op, so the training loop has one code path."""

    def __init__(self, rank: int = 0, world: int = 1):
        self.rank, self.world = rank, world

    @property
    def main(self) -> bool:
        """The process that writes the run folder and prints."""
        return self.rank == 0

    def shard(self, idx: Sequence[int]) -> list[int]:
        """This process's share of a global batch (strided, so lengths stay balanced in grouped batches)."""
        return list(idx[self.rank::self.world])

    def average_grads(self, params: list[torch.Tensor], local: int, total: int) -> None:
        """Replace each gradient by the global batch's mean gradient: each process's mean over its ``local``
        examples weighted by local / total (a process with no example contributes zeros)."""
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads]) * (local / total)
        dist.all_reduce(flat)
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(g).to(g.dtype)
            offset += n

    def any(self, flag: bool) -> bool:
        """True on every process when it is True on any (a stop request seen by one stops all)."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj``, in rank order, on every process."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any = None) -> Any:
        """The main process's ``obj`` on every process."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def from_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` run by the main process alone and its value (or its exception) shared with the others,
        so a refusal on the main process is the same one-line error everywhere instead of a hang."""
        if self.world == 1:
            return fn()
        value, error = None, None
        if self.main:
            try:
                value = fn()
            except Exception as e:  # noqa: BLE001 - re-raised below, on every process
                error = e
        value, error = self.broadcast((value, error))
        if error is not None:
            raise error
        return value

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def sync_parameters(self, module: torch.nn.Module) -> None:
        """Every replica starts from the main process's weights (randomly initialised heads and adapters)."""
        if self.world == 1:
            return
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0)

    def _device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
            else torch.device("cpu")


_PROCESSES: Processes | None = None


def processes() -> Processes:
    """This process's place, joining the process group the launcher describes (once per process)."""
    global _PROCESSES
    if _PROCESSES is None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and not dist.is_initialized():
            cuda = torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() != "true"
            if cuda:
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl" if cuda else "gloo")
            close_at_exit()
        _PROCESSES = Processes(dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else Processes()
    return _PROCESSES


def _close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
        # gloo's worker threads drop a finished collective's tensors after the caller's wait returned, and need
        # the GIL to do it; a process that exits straight after its last collective can reach the interpreter's
        # teardown first, where such a thread aborts the process ("terminate called without an active
        # exception", SIGABRT). Giving up the GIL here lets them finish.
        time.sleep(0.2)


def close_at_exit() -> None:
    """Destroy the process group emotune joined, and let its threads let go of their last tensors, before the
    interpreter's teardown (see ``_close``). Registered once; a no-op when the group is already gone."""
    atexit.unregister(_close)
    atexit.register(_close)


def local_device(name: str) -> str:
    """The device of this process: under several CUDA processes, each its own GPU (``cuda`` means
    ``cuda:LOCAL_RANK``)."""
    if name in ("auto", "cuda") and processes().world > 1 and dist.get_backend() == "nccl":
        return f"cuda:{torch.cuda.current_device()}"
    return name


def launch(n: int, argv: list[str]) -> None:
    """Run ``python -m emotune.cli ARGV`` in ``n`` processes on this machine through torchrun's entry point
    (one thread each on the CPU unless OMP_NUM_THREADS says otherwise); a failed process is one line."""
    import logging

    from torch.distributed.run import main as torchrun

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # the workers print the error
    try:
        torchrun(["--standalone", "--nproc-per-node", str(n), "-m", "emotune.cli", *argv])
    except Exception as e:  # torchrun's ChildFailedError: the workers' own errors are printed above it
        raise ConfigError(f"a training process failed ({type(e).__name__}); its error is printed above") from None


def accelerate_cpu_processes() -> int | None:
    """How many processes ``accelerate launch --cpu --num_processes N`` asked for when it started just this
    one (without an MPI host file its CPU launcher starts a single process: it then sets MASTER_ADDR but no
    WORLD_SIZE); None otherwise. Read from the launcher's own command line with its own parser."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() != "true" or "WORLD_SIZE" in os.environ \
            or "MASTER_ADDR" not in os.environ:
        return None
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            parent = [a.decode() for a in f.read().split(b"\0") if a]
        from accelerate.commands.launch import launch_command_parser

        # `accelerate launch ...`, `accelerate-launch ...` or `python -m accelerate.commands.launch ...`
        at = next(i for i, a in enumerate(parent) if a == "launch" or a.endswith(("accelerate-launch",
                                                                               "accelerate.commands.launch")))
        args = parent[at + 1:]
        n = launch_command_parser().parse_known_args(args)[0].num_processes
    except (OSError, StopIteration, SystemExit):
        return None
    return n if n and n > 1 else None
