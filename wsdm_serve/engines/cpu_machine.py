"""The CPUs and memory this process may use: cores (its affinity mask), NUMA nodes, free memory and
instruction-set flags, read from /proc and /sys; and the kernel's core-list format ("0-3,8"), which
is also the format of vLLM's VLLM_CPU_OMP_THREADS_BIND.

The CPU plan (:mod:`.cpu_plan`) takes a :class:`CpuMachine`; tests hand it written ones.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import WsdmError

GIB = 1024**3


@dataclass(frozen=True)
class CpuMachine:
    """The CPUs and memory this process may use."""

    cores: tuple[int, ...]
    """Logical CPUs of this process's affinity mask (os.sched_getaffinity), ascending."""
    numa_nodes: tuple[tuple[int, ...], ...] = ()
    """The allowed cores of each NUMA node that has some; empty when the machine does not say."""
    free_memory: int = 0
    total_memory: int = 0
    flags: frozenset[str] = frozenset()
    """/proc/cpuinfo flags (avx512f, avx512_bf16, amx_bf16, ...)."""

    @property
    def native_bf16(self) -> bool:
        """bf16 arithmetic in hardware (AVX512-BF16 or AMX), where vLLM's bf16 kernels are fast."""
        return bool({"avx512_bf16", "amx_bf16"} & self.flags)

    def nodes(self) -> tuple[tuple[int, ...], ...]:
        """NUMA nodes, or all cores as one node where none are visible."""
        return self.numa_nodes or (self.cores,)

    def describe(self) -> str:
        isa = next(
            (name for name in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if name in self.flags), ""
        )
        return (
            f"{len(self.cores)} core(s) ({format_core_list(self.cores)}) on {len(self.nodes())} NUMA node(s), "
            f"{self.free_memory / GIB:.1f} of {self.total_memory / GIB:.1f} GiB free"
            + (f", {isa}" if isa else "")
        )


# ------------------------------------------------------------------------------- core lists
def parse_core_list(text: str) -> list[int]:
    """``"0-3,8"`` -> [0, 1, 2, 3, 8] (the kernel's cpulist format, also VLLM_CPU_OMP_THREADS_BIND's)."""
    cores: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            raise WsdmError(f"--cpus {text}: {part!r} is not a core number or range; expected e.g. 0-3,8")
        start, end = int(first), int(last or first)
        if end < start:
            raise WsdmError(f"--cpus {text}: the range {part} runs backwards")
        cores.extend(range(start, end + 1))
    if len(set(cores)) != len(cores):
        raise WsdmError(f"--cpus {text}: a core is listed twice")
    return cores


def format_core_list(cores: Sequence[int]) -> str:
    """[0, 1, 2, 3, 8] -> ``"0-3,8"``."""
    runs: list[list[int]] = []
    for core in sorted(cores):
        if runs and core == runs[-1][1] + 1:
            runs[-1][1] = core
        else:
            runs.append([core, core])
    return ",".join(str(first) if first == last else f"{first}-{last}" for first, last in runs)


# ------------------------------------------------------------------------------- the machine
def detect_machine(root: str | Path = "/") -> CpuMachine:
    """This process's cores (affinity mask), its NUMA nodes and free memory, from /proc and /sys.

    A cgroup memory limit lower than the machine's free memory wins (containers).
    """
    root = Path(root)
    cores = tuple(sorted(os.sched_getaffinity(0)))
    nodes = []
    for node in sorted((root / "sys/devices/system/node").glob("node[0-9]*")):
        try:
            listed = parse_core_list((node / "cpulist").read_text().strip())
        except (OSError, WsdmError):
            continue
        allowed = tuple(core for core in listed if core in cores)
        if allowed:
            nodes.append(allowed)
    meminfo = _read_meminfo(root / "proc/meminfo")
    free = meminfo.get("MemAvailable", 0)
    limit = _cgroup_memory_left(root / "sys/fs/cgroup")
    if limit is not None:
        free = min(free, limit)
    return CpuMachine(
        cores=cores,
        numa_nodes=tuple(nodes),
        free_memory=free,
        total_memory=meminfo.get("MemTotal", 0),
        flags=_cpu_flags(root / "proc/cpuinfo"),
    )


def _read_meminfo(path: Path) -> dict[str, int]:
    values = {}
    try:
        for line in path.read_text().splitlines():
            name, _, rest = line.partition(":")
            fields = rest.split()
            if fields and fields[0].isdigit():
                values[name] = int(fields[0]) * (1024 if fields[1:2] == ["kB"] else 1)
    except OSError:
        pass
    return values


def _cgroup_memory_left(cgroup: Path) -> int | None:
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        used = int((cgroup / "memory.current").read_text().strip())
    except (OSError, ValueError):
        return None
    return None if limit == "max" or not limit.isdigit() else max(int(limit) - used, 0)


def _cpu_flags(path: Path) -> frozenset[str]:
    try:
        for line in path.read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()
