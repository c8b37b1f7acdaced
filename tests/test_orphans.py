"""The guard that ends an engine's child processes when the process holding the engine is killed:
real processes (a holder with ``sleep`` children standing in for vLLM's engine core), SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wsdm_serve.engines.orphans import ChildGuard, descendants

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the guard reads /proc (Linux)")

HOLDER = """
import subprocess, sys, time
from wsdm_serve.engines.orphans import ChildGuard, descendants
before = descendants()
children = [subprocess.Popen(["sleep", "600"]) for _ in range(2)]
guard = ChildGuard.around(before)
if sys.argv[1] == "closed":
    guard.close()
print(" ".join(str(child.pid) for child in children), flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def start_holder(mode: str) -> tuple[subprocess.Popen, list[int]]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, mode], stdout=subprocess.PIPE, text=True, env=env
    )
    assert holder.stdout is not None
    return holder, [int(pid) for pid in holder.stdout.readline().split()]


def test_the_children_end_when_their_holder_is_killed():
    holder, children = start_holder("guarded")
    try:
        assert len(children) == 2 and all(alive(pid) for pid in children)
        assert set(children) <= set(descendants(holder.pid))
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in children)
    finally:
        holder.kill()
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_closed_guard_leaves_the_children_alone():
    holder, children = start_holder("closed")
    try:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        time.sleep(2)
        assert all(alive(pid) for pid in children)  # closed: the holder had shut them down itself
    finally:
        holder.kill()
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_no_children_no_watcher():
    guard = ChildGuard({})
    assert guard.watcher is None
    guard.close()
