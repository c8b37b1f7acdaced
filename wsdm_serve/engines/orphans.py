"""Child processes that must not outlive this one: vLLM's engine processes.

vLLM starts its engine core (and that starts its workers) as child processes of the process that
creates the engine, and the engine core does not watch its parent: when that process is killed
(SIGKILL, the out-of-memory killer), the engine core keeps running, holding its memory (a GPU's, or
gigabytes of RAM on CPUs), and a resumed job cannot start. :class:`ChildGuard` closes that gap: a
small watcher process holds the read end of a pipe whose write end only this process has; when this
process ends without saying so, the pipe reaches end-of-file and the watcher terminates the children
it was given (each recognised by its start time, so a reused process id is never hit). Closing the
guard after the engine has shut down tells the watcher to leave.

Linux only (it reads /proc); elsewhere the guard does nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

_WATCHER = r"""
import json, os, signal, sys, time
children = json.loads(sys.argv[1])
told = sys.stdin.buffer.read()
if told == b"closed":
    sys.exit(0)
def same(pid, started):
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[19] == started and fields[0] != "Z"
for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 0.0)):
    alive = [pid for pid, started in children if same(pid, started)]
    for pid in alive:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    deadline = time.monotonic() + wait
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [pid for pid, started in children if same(pid, started)]
    if not alive:
        break
"""


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time in clock ticks) of a process, from /proc/PID/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name may hold spaces and parentheses
    return int(fields[1]), fields[19]


def descendants(pid: int | None = None) -> dict[int, str]:
    """Every process below ``pid`` (default: this one), as pid -> start time."""
    if not Path("/proc/self/stat").exists():
        return {}
    root = os.getpid() if pid is None else pid
    parents: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            parents[int(entry.name)] = stat
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, started) in parents.items():
            if ppid == parent and child not in found:
                found[child] = started
                frontier.append(child)
    return found


class ChildGuard:
    """Ends ``children`` (pid -> start time) if this process dies before :meth:`close`."""

    def __init__(self, children: dict[int, str]) -> None:
        self.watcher: subprocess.Popen | None = None
        if not children or not Path("/proc/self/stat").exists():
            return
        listed = json.dumps(sorted(children.items()))
        self.watcher = subprocess.Popen(
            [sys.executable, "-c", _WATCHER, listed],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C meant for the job does not stop the watcher first
        )

    @classmethod
    def around(cls, before: Iterable[int]) -> ChildGuard:
        """A guard for the processes below this one that were not in ``before`` (those an engine
        just started)."""
        known = set(before)
        return cls({pid: started for pid, started in descendants().items() if pid not in known})

    def close(self) -> None:
        """The children were shut down (or are this process's to shut down): the watcher leaves."""
        watcher, self.watcher = self.watcher, None
        if watcher is None or watcher.stdin is None:
            return
        with contextlib.suppress(OSError):
            watcher.stdin.write(b"closed")
            watcher.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            watcher.wait(timeout=10)
