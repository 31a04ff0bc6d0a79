"""How often two gloo processes abort at exit, with and without emotune's exit handler.

Each launch runs two processes under torchrun: a few all-gathers and a barrier, then process 0 keeps working a
moment while process 1 exits, as emotune's main process does when it writes a run's files. Without a handler a
gloo worker thread can still hold the last collective's tensors at the interpreter's teardown and abort its
process ("terminate called without an active exception"), failing the whole launch.

    python benchmarks/distributed_exit.py --launches 60     # prints failed launches per mode

Modes: `none` (the group left to the interpreter), `destroy` (only destroy_process_group at exit) and `emotune`
(`emotune.train.distributed.close_at_exit`).
"""

from __future__ import annotations

import argparse
import atexit
import os
import subprocess
import sys


def worker(mode: str) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    if mode == "emotune":
        from emotune.train.distributed import close_at_exit

        close_at_exit()
    elif mode == "destroy":
        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    rank = dist.get_rank()
    for _ in range(20):
        dist.all_gather([torch.empty(1000) for _ in range(2)], torch.ones(1000) * rank)
        dist.all_gather_object([None, None], {"rank": rank})
    dist.barrier()
    if rank == 0:  # the main process works on alone
        y = torch.randn(300, 300)
        for _ in range(50):
            y = y @ y.T / 300


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--launches", type=int, default=60, help="torchrun launches per mode")
    parser.add_argument("--modes", default="none,destroy,emotune")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for mode in args.modes.split(","):
        failed = 0
        for _ in range(args.launches):
            p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                                "2", __file__, "--worker", mode], env=env, capture_output=True, text=True)
            failed += p.returncode != 0
        print(f"{mode}: {failed}/{args.launches} launches failed", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(sys.argv[2])
    else:
        main()
