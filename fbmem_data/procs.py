"""Process hygiene: worker processes that die with their parent, SIGTERM handled like Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

_PR_SET_PDEATHSIG = 1
_PARENT_POLL_S = 0.5


def die_with_parent(parent_pid: int) -> None:
    """Call first thing in a worker process: it is killed when `parent_pid` dies, even by SIGKILL.

    Linux: the kernel's parent-death signal (prctl PR_SET_PDEATHSIG, via ctypes). Everywhere: a
    daemon thread that exits the worker once its parent is gone (re-parented: getppid changes),
    which also covers a parent that died before prctl took effect. SIGTERM gets its default
    action back (a forked worker inherits the parent's handler, which raises KeyboardInterrupt).
    """
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):  # no libc or no prctl: the watchdog below still works
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="fbmem-parent-watch", daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(_PARENT_POLL_S)
        if os.getppid() != parent_pid:
            os._exit(1)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While active (main thread only), SIGTERM raises KeyboardInterrupt, so `kill PID` stops a
    command the way Ctrl-C does: finished work written, the run recorded interrupted."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
