"""`python -m timestep_sampling.launch` is torchrun, with the same arguments, except for its exit status
when a process stops on an input mistake.

torchrun's elastic agent turns any failed worker into its own exit status 1 (it raises ChildFailedError,
with a traceback of its own), so a mistake that exits 2 from one process exits 1 from `torchrun`. This
wrapper runs the same launcher and, when the first process to fail exited 2 (the command line's status for
a user mistake, errors.UserError), exits 2 without that traceback: what reaches the shell is then what a
single process gives. Each process has printed its own one `error: ...` line; torchrun adds its one log
line naming the failed rank. Any other failure is torchrun's, unchanged (status 1 and its report).

    python -m timestep_sampling.launch --standalone --nproc-per-node=2 -m timestep_sampling train --data ...
"""
from __future__ import annotations

import sys

USER_MISTAKE = 2  # cli.main's exit status for a UserError


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(sys.argv[1:] if argv is None else argv)
    except ChildFailedError as e:
        _, first = e.get_first_failure()  # the root cause: the others may only have been stopped because of it
        if first.exitcode == USER_MISTAKE:
            return USER_MISTAKE
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
