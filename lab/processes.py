"""Stopping a child process the exercises started (a model server, an agent CLI): SIGTERM first, so it
can close its sockets and files, SIGKILL only after a grace period, and always reaped (no zombies)."""

from __future__ import annotations

import subprocess


def stop(proc: subprocess.Popen, grace_s: float) -> None:
    """Terminate ``proc``, wait up to ``grace_s`` seconds, then kill it if it still runs."""
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
