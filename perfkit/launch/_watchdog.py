"""Run a server as this process's child, and stop it when the perfkit that started us is gone.

    python -I -S _watchdog.py LIFELINE_FD PID_FD GRACE_S -- COMMAND...

perfkit (`ProcessServer`) holds the write end of a pipe whose read end is LIFELINE_FD: when perfkit
exits in any way, SIGKILL included, the kernel closes that end and we read EOF here, then stop the
server (SIGTERM, SIGKILL after GRACE_S). A pipe, not PR_SET_PDEATHSIG on the server: that fires when
the *thread* that forked the child exits, and perfkit may start a server from any thread. Here, on
Linux, the server does get PR_SET_PDEATHSIG=SIGKILL, set in the child before exec (safe: this process
has one thread), so it also dies if this watchdog is killed alone. We write the server's pid to
PID_FD, forward SIGTERM/SIGINT/SIGHUP to it, and exit as it exits (same code, same signal).

Run as a script by path: stdlib only, and it must not import perfkit (nor perfkit_server).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable
from types import FrameType

_PR_SET_PDEATHSIG = 1


def _pdeathsig() -> Callable[[], None] | None:
    """Linux: the child's pre-exec hook, SIGKILL when this watchdog dies (exit if it already has).
    libc is loaded here, in the parent: the hook itself only calls prctl and getppid."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The watchdog may have died between fork and prctl: then we are already reparented.
        if os.getppid() != parent:
            os._exit(1)

    return hook


def _stop(child: subprocess.Popen[bytes], grace_s: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        child.terminate()
    try:
        child.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        child.wait()


def _exit_as(code: int) -> None:
    """Exit the way the child did: its exit code, or the signal that ended it."""
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


def main(argv: list[str]) -> None:
    if len(argv) < 5 or argv[3] != "--":
        sys.exit("usage: _watchdog.py LIFELINE_FD PID_FD GRACE_S -- COMMAND...")
    lifeline, pid_fd, grace_s, command = int(argv[0]), int(argv[1]), float(argv[2]), argv[4:]
    try:
        # One thread here: a pre-exec hook is safe.
        child = subprocess.Popen(command, preexec_fn=_pdeathsig())
    except OSError as exc:
        sys.stderr.write(f"perfkit watchdog: cannot start {command[0]}: {exc}\n")
        sys.exit(127)
    os.write(pid_fd, f"{child.pid}\n".encode())
    os.close(pid_fd)

    def forward(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)

    try:
        exited = os.pidfd_open(child.pid)
    except (AttributeError, OSError):
        exited = None  # no pidfd (not Linux, or a kernel before 5.3): poll the child instead
    watch = [lifeline] + ([exited] if exited is not None else [])
    while True:
        ready, _, _ = select.select(watch, [], [], 0.2 if exited is None else None)
        code = child.poll()
        if code is not None:
            _exit_as(code)
        if lifeline in ready and not os.read(lifeline, 4096):
            # EOF: every copy of the write end is closed, perfkit is gone.
            _stop(child, grace_s)
            sys.exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
