"""Worker processes that die with their parent.

A tool that starts processes (the corpus's readers and encoders) starts them inside `spawning()` and calls
`start_child` first thing in each of them: the child then ends when its parent does, even when the parent is
killed outright (SIGKILL gives it no chance to stop anyone), and leaves Ctrl-C to the parent, which stops its
children and says so in one line. (A terminal's Ctrl-C reaches every process of the group: a child that is still
importing when it comes must not print a traceback, so SIGINT stays blocked from its start until it ignores it.)
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import queue
import signal
import sys
import threading
from typing import Callable, Iterable, Iterator, Optional

_PR_SET_PDEATHSIG = 1  # <sys/prctl.h>


@contextlib.contextmanager
def spawning() -> Iterator[None]:
    """Around starting children: they inherit SIGINT blocked, until `start_child` ignores it. A Ctrl-C meanwhile
    reaches this process when the block ends."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def start_child(threads: Optional[int] = None) -> None:
    """Called first in a spawned child: die with the parent, ignore Ctrl-C (the parent handles it), and run torch
    on `threads` threads where given."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit)  # `stop` ends a child this way: it unwinds, so its own children stop too
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    parent = multiprocessing.parent_process()
    if sys.platform.startswith("linux"):
        # The kernel kills this process when the thread that started it ends; ours are started by the parent's
        # main thread, which ends with the parent.
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if parent is not None and os.getppid() != parent.pid:  # the parent died before prctl took hold
            os._exit(1)
    elif parent is not None:  # elsewhere: a thread that waits for the parent's end
        threading.Thread(target=lambda: (parent.join(), os._exit(1)), daemon=True).start()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _exit(signum: int, frame: object) -> None:
    sys.exit(128 + signum)


def stop(processes: Iterable[multiprocessing.Process], timeout: float = 10.0) -> None:
    """Terminates the processes that are still running and waits for them (killing those that linger)."""
    processes = list(processes)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join()


def run_workers(processes: list[multiprocessing.Process], reports, progress: Callable[..., None], what: str) -> None:
    """Starts worker processes and relays their reports until each is done: ("progress", *values) goes to
    `progress`; ("failed", where, why) from a worker, or a worker that exits with an error, is a RuntimeError that
    names it. Every worker is stopped on the way out (the others when one fails, all when this one is interrupted).

    Args:
        processes: Unstarted processes whose target calls `start_child` first and ends with a ("done", where, None)
            or ("failed", where, why) report.
        reports: The queue they report to.
        what: Their role in the messages ("encoder", "evaluation").
    """
    with spawning():
        for process in processes:
            process.start()
    finished = False
    try:
        running = len(processes)
        while running:
            try:
                kind, *payload = reports.get(timeout=1.0)
            except queue.Empty:
                dead = [p for p in processes if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"{dead[0].name} exited with code {dead[0].exitcode}; what was finished is "
                                       "kept: rerun the same command to resume.") from None
                continue
            if kind == "progress":
                progress(*payload)
            elif kind == "failed":
                raise RuntimeError(f"the {what} on {payload[0]} failed: {payload[1]}; what was finished is kept: "
                                   "rerun the same command to resume.")
            else:
                running -= 1
        finished = True
    finally:
        if finished:
            for process in processes:
                process.join(timeout=10)
        stop(processes)
