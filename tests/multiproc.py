"""Run a function on several gloo ranks in forked processes, with a deadline, for the tests."""
import time

import pytest
import torch


def _child(rank, fn, world_size, init_file, args):
    import torch.distributed as dist
    # One thread: a forked child must not enter the OpenMP pool the parent already started (it deadlocks).
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()


def run_ranks(fn, *args, init_file, world_size=2, timeout=120):
    """Call fn(rank, *args) on `world_size` ranks; fail the test, never hang, if they do not finish in time.

    fork, not spawn: the children need no fresh import of torch, which would cost seconds each.
    """
    context = torch.multiprocessing.start_processes(_child, args=(fn, world_size, str(init_file), args),
                                                    nprocs=world_size, start_method="fork", join=False)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {world_size}-rank run did not finish in {timeout} s")
